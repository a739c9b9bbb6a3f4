"""Registry-driven smoke tests: every preset, every tower and every fusion
builds, answers with the right shapes, learns, and survives `.keras`."""

import numpy as np
import pytest
from harness import TINY
from harness import assert_saving_round_trip
from harness import assert_step_lowers_loss
from harness import gradients
from harness import tiny_batch

import mmzoo
from mmzoo.registry import FUSIONS
from mmzoo.registry import IMAGE_TOWERS
from mmzoo.registry import PRESETS
from mmzoo.towers import build_image_tower

TOKEN_TEXT_TOWERS = ("bow", "cnn", "bilstm", "transformer")
WEIGHTED_FUSIONS = ("weighted_sum", "gated", "modality_attention")
# Building and stepping these takes several seconds each.
LARGE_IMAGE_TOWERS = (
    "vgg19",
    "resnet101",
    "resnet152",
    "resnet50v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
)


def _image_tower_param(name):
    marks = [pytest.mark.slow] if name in LARGE_IMAGE_TOWERS else []
    return pytest.param(name, marks=marks)


def check_model(model, tmp_path, fusion):
    inputs, labels = tiny_batch()
    outputs = model(inputs)
    assert outputs["probabilities"].shape == (4, 3)
    np.testing.assert_allclose(np.sum(outputs["probabilities"], -1), 1.0, atol=1e-5)
    if fusion in WEIGHTED_FUSIONS or (
        fusion == "late" and "modality_weights" in outputs
    ):
        assert outputs["modality_weights"].shape == (4, 2)
    else:
        assert sorted(outputs) == ["probabilities"]
    assert_step_lowers_loss(model, inputs, labels)
    assert_saving_round_trip(model, inputs, tmp_path)


@pytest.mark.parametrize("text_tower", TOKEN_TEXT_TOWERS)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_text_tower_by_fusion(fusion, text_tower, tmp_path):
    model = mmzoo.build_model(
        image_tower="small_cnn", text_tower=text_tower, fusion=fusion, **TINY
    )
    check_model(model, tmp_path, fusion)


@pytest.mark.parametrize("image_tower", map(_image_tower_param, IMAGE_TOWERS))
def test_image_tower_trains_and_saves(image_tower, tmp_path):
    model = mmzoo.build_model(image_tower=image_tower, text_tower="bow", **TINY)
    check_model(model, tmp_path, "concat")


@pytest.mark.parametrize(
    "image_tower", ["small_cnn", "vgg16", "resnet50", "mobilenet_v3_small"]
)
def test_image_grid_trains_and_saves(image_tower, tmp_path):
    model = mmzoo.build_model(
        image_tower=image_tower, text_tower="bow", fusion="cross_attention", **TINY
    )
    check_model(model, tmp_path, "cross_attention")


@pytest.fixture(scope="module")
def image_towers():
    """Each tower built once, pooled and as a grid, shared by the matrix."""
    cache = {}

    def get(name, grid):
        if (name, grid) not in cache:
            cache[name, grid] = build_image_tower(
                name,
                image_size=TINY["image_size"],
                pooling=None if grid else "avg",
                filters=TINY["image_filters"],
            )
        return cache[name, grid]

    return get


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("image_tower", map(_image_tower_param, IMAGE_TOWERS))
def test_every_image_tower_with_every_fusion(image_tower, fusion, image_towers):
    tower = image_towers(image_tower, fusion == "cross_attention")
    model = mmzoo.build_model(
        image_tower=tower, text_tower="bow", fusion=fusion, **TINY
    )
    inputs, labels = tiny_batch()
    outputs = model(inputs)
    assert outputs["probabilities"].shape == (4, 3)
    assert np.all(np.isfinite(outputs["probabilities"]))
    if fusion != "text_only":
        # Training mode: batch statistics keep a deep random-weight ResNet's
        # features in range, so tanh-based fusions are not saturated. No
        # update is applied, since the tower is shared across the matrix.
        tower_variables = {id(v) for v in tower.trainable_variables}
        assert any(
            g is not None and np.any(np.asarray(g) != 0)
            for v, g in gradients(model, inputs, labels, training=True)
            if id(v) in tower_variables
        ), "no gradient reached the image tower"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset(preset, tmp_path):
    model = mmzoo.build_model(preset, **TINY)
    assert model.name == preset
    spec = PRESETS[preset]
    expected_layers = {"image_only": ("image_tower",), "text_only": ("text_tower",)}
    for layer in expected_layers.get(spec["fusion"], ("image_tower", "text_tower")):
        model.get_layer(layer)
    check_model(model, tmp_path, spec["fusion"])


def test_preset_keyword_overrides_win():
    model = mmzoo.build_model(
        "small_cnn_bow_gated",
        fusion="concat",
        image_size=48,
        **{k: v for k, v in TINY.items() if k != "image_size"},
    )
    assert model.input["image"].shape == (None, 48, 48, 3)
    assert "modality_weights" not in model.output


@pytest.mark.parametrize(
    "task, width, name",
    [
        ("multiclass", 3, "probabilities"),
        ("multilabel", 3, "probabilities"),
        ("binary", 1, "probabilities"),
        ("regression", 3, "predictions"),
    ],
)
def test_heads(task, width, name):
    config = {**TINY, "num_classes": 3 if task != "binary" else None}
    model = mmzoo.build_model(task=task, **config)
    inputs, _ = tiny_batch()
    output = np.asarray(model(inputs)[name])
    assert output.shape == (4, width)
    if task == "multiclass":
        np.testing.assert_allclose(output.sum(-1), 1.0, atol=1e-5)
    elif task in ("multilabel", "binary"):
        assert np.all((output > 0) & (output < 1))
        assert not np.allclose(output.sum(-1), 1.0)
    targets = (
        np.arange(4) % 3 if task == "multiclass" else np.ones((4, width), "float32")
    )
    history = model.fit(inputs, targets, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_unimodal_baselines_ignore_the_other_modality():
    inputs, _ = tiny_batch()
    for fusion, other in (("image_only", "tokens"), ("text_only", "image")):
        model = mmzoo.build_model(fusion=fusion, **TINY)
        assert sorted(model.input) == ["image", "tokens"]
        changed = dict(inputs)
        changed[other] = np.zeros_like(inputs[other])
        np.testing.assert_allclose(
            model(inputs)["probabilities"], model(changed)["probabilities"], atol=1e-6
        )


def test_head_sizes_and_dropout_are_configurable():
    config = {**TINY, "head_units": (16, 8), "dropout": 0.3}
    model = mmzoo.build_model(**config)
    assert model.get_layer("head_dense_0").units == 16
    assert model.get_layer("head_dense_1").units == 8
    assert model.get_layer("head_dropout_1").rate == 0.3
    assert model.get_layer("logits").units == 3
    bare = mmzoo.build_model(**{**TINY, "head_units": ()})
    assert not any(layer.name.startswith("head_") for layer in bare.layers)
