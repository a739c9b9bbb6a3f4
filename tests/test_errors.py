"""Errors are part of the interface: each names what is wrong."""

import re

import pytest
from harness import TINY

import mmzoo
from mmzoo.export import grpc_request
from mmzoo.export import rest_request


def test_unknown_fusion_lists_choices_and_closest_match():
    with pytest.raises(ValueError) as error:
        mmzoo.build_model(fusion="gatd", num_classes=2)
    message = str(error.value)
    assert message.startswith("`fusion` must be one of ['bilinear', 'concat', ")
    assert "Received: fusion='gatd'. Did you mean 'gated'?" in message
    for name in mmzoo.list_fusions():
        assert repr(name) in message


@pytest.mark.parametrize(
    "argument, value, suggestion",
    [
        ("image_tower", "resnet_50", "'resnet50'"),
        ("text_tower", "lstm", "'bilstm'"),
        ("task", "multi_class", "'multiclass'"),
    ],
)
def test_unknown_component_names(argument, value, suggestion):
    with pytest.raises(
        ValueError,
        match=re.escape(f"Received: {argument}={value!r}. Did you mean {suggestion}"),
    ):
        mmzoo.build_model(**{argument: value}, num_classes=2)


def test_unknown_preset():
    with pytest.raises(
        ValueError,
        match=r"`preset` must be one of \[.*Did you mean 'resnet50_transformer_gated'",
    ):
        mmzoo.build_model("resnet50_transformer_gate", num_classes=2)


def test_no_suggestion_when_nothing_is_close():
    with pytest.raises(ValueError) as error:
        mmzoo.build_model(fusion="zzzz", num_classes=2)
    assert "Did you mean" not in str(error.value)


def test_unknown_keyword_argument_suggests_the_right_one():
    with pytest.raises(
        TypeError,
        match=r"unexpected keyword argument\(s\): 'fusoin' \(did you mean 'fusion'\?\)",
    ):
        mmzoo.build_model(fusoin="gated", num_classes=2)


def test_cross_attention_needs_the_image_grid():
    with pytest.raises(
        ValueError, match="use image_pooling=None. Received: image_pooling='avg'"
    ):
        mmzoo.build_model(fusion="cross_attention", image_pooling="avg", **TINY)


def test_grid_only_suits_grid_fusions():
    with pytest.raises(
        ValueError,
        match=r"image_pooling=None \(a grid\) only suits \['cross_attention', 'film'\]",
    ):
        mmzoo.build_model(fusion="gated", image_pooling=None, **TINY)


@pytest.mark.parametrize(
    "task, num_classes, match",
    [
        (
            "multiclass",
            None,
            "needs `num_classes`, a positive integer .*Received: num_classes=None",
        ),
        ("multiclass", 1, "at least 2 classes; use task='binary'"),
        ("binary", 5, "must be None, 1 or 2. Received: num_classes=5"),
        ("multilabel", 0, "Received: num_classes=0"),
    ],
)
def test_num_classes_is_checked(task, num_classes, match):
    with pytest.raises(ValueError, match=match):
        mmzoo.build_model(task=task, num_classes=num_classes)


def test_modality_dropout_needs_both_modalities():
    with pytest.raises(ValueError, match="`modality_dropout` .* needs both"):
        mmzoo.build_model(fusion="image_only", modality_dropout=0.2, **TINY)


def test_modality_dropout_rate_is_checked():
    with pytest.raises(
        ValueError, match=r"`rate` must be in \[0, 1\). Received: rate=1.5"
    ):
        mmzoo.build_model(modality_dropout=1.5, **TINY)


def test_image_size_is_checked():
    with pytest.raises(ValueError, match="at least 32. Received: image_size=16"):
        mmzoo.build_model(**{**TINY, "image_size": 16})


def test_text_sizes_are_checked():
    with pytest.raises(
        ValueError,
        match="`vocab_size` must be a positive integer. Received: vocab_size=0",
    ):
        mmzoo.build_model(**{**TINY, "vocab_size": 0})


def test_transformer_width_must_split_into_heads():
    with pytest.raises(ValueError, match="divisible by `text_heads=3`"):
        mmzoo.build_model(**{**TINY, "text_tower": "transformer", "text_heads": 3})


def test_late_combine_is_checked():
    with pytest.raises(
        ValueError, match="`late_combine` must be one of .*Did you mean 'average'"
    ):
        mmzoo.build_model(fusion="late", late_combine="avg", **TINY)


# === Client helpers: the offending item named ===

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "images, texts, error, match",
    [
        (
            [PNG, PNG],
            ["ok", b"caf\xe9"],
            ValueError,
            r"texts\[1\] is not valid UTF-8: "
            r"byte 0xe9 at position 3",
        ),
        (
            [PNG],
            ["a \ud83d b"],
            ValueError,
            r"texts\[0\] holds the lone surrogate "
            r"'\\ud83d' at position 2",
        ),
        ([PNG, PNG], ["a", None], TypeError, r"texts\[1\] is None"),
        ([PNG, None], ["a", "b"], TypeError, r"images\[1\] is None"),
        ([PNG, 3], ["a", "b"], TypeError, r"images\[1\] must be the image file's"),
        (
            ["x\ud800.png"],
            ["a"],
            ValueError,
            r"images\[0\]: the path .* holds the "
            r"lone surrogate",
        ),
        (["missing.png"], ["a"], FileNotFoundError, r"'missing.png' \(images\[0\]\)"),
        (None, ["a"], TypeError, r"`images` must be a list .*Received: None"),
        ([PNG], None, TypeError, r"`texts` must be a list .*Received: None"),
        (5, ["a"], TypeError, r"`images` must be a list .*not iterable"),
    ],
)
@pytest.mark.parametrize("helper", ["rest", "grpc"])
def test_client_helpers_name_the_bad_item(helper, images, texts, error, match):
    with pytest.raises(error, match=match):
        if helper == "rest":
            rest_request(images, texts)
        else:
            grpc_request(images, texts, "model")
