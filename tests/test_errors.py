"""Errors are part of the interface: each names what is wrong."""

import re

import pytest
from harness import TINY

import mmzoo


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
