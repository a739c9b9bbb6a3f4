"""Registry-driven tests: every task, tower, fusion and preset keeps the
zoo model contract (`harness.run_model_test`), and the builder asks the
registry, never a name."""

import inspect

import numpy as np
import pytest
from harness import FUSED_TASKS
from harness import TINY
from harness import assert_saving_round_trip
from harness import assert_step_lowers_loss
from harness import gradients
from harness import run_model_test
from harness import task_batch
from harness import tiny_batch

import mmzoo
from mmzoo import registry
from mmzoo.builder import DEFAULTS
from mmzoo.builder import DERIVED
from mmzoo.towers import build_image_tower
from mmzoo.towers import build_text_tower

TOKEN_TEXT_TOWERS = [
    name
    for name, spec in registry.TEXT_TOWERS.items()
    if spec.tokenizer == "word" and spec.sequence
]
# The default text tower meets every fusion in the plain-Keras matrix.
OTHER_TEXT_TOWERS = [n for n in TOKEN_TEXT_TOWERS if n != DEFAULTS["text_tower"]]


def _image_tower_param(name):
    marks = [pytest.mark.slow] if registry.IMAGE_TOWERS[name].large else []
    return pytest.param(name, marks=marks)


def _fusion_layer_type(model):
    try:
        return type(model.get_layer("fusion"))
    except ValueError:
        return None


# === Every fusion x every task, used as plain Keras ===


@pytest.mark.parametrize("task", FUSED_TASKS)
@pytest.mark.parametrize("fusion", sorted(registry.FUSIONS))
def test_fusion_by_task_in_plain_keras(fusion, task, tmp_path):
    model = run_model_test(tmp_path, fusion=fusion, task=task)
    spec = registry.FUSIONS[fusion]
    # The layer the registry names is the one built, nothing else.
    expected = None if spec.layer is None else registry.resolve(spec.layer)
    assert _fusion_layer_type(model) is expected
    names = [layer.name for layer in model.layers]
    assert ("logits" in names) is (not spec.returns_logits)
    if model.returns_modality_weights:
        assert spec.modality_weights
        inputs, *_ = task_batch(task)
        weights = np.asarray(
            mmzoo.with_modality_weights(model)(inputs)["modality_weights"]
        )
        assert weights.shape == (len(inputs["image"]), 2)
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)


# === Towers ===


@pytest.mark.parametrize("text_tower", OTHER_TEXT_TOWERS)
@pytest.mark.parametrize(
    "fusion", [name for name, spec in registry.FUSIONS.items() if spec.layer]
)
def test_text_tower_by_fusion(fusion, text_tower, tmp_path):
    inputs, labels = tiny_batch()
    model = mmzoo.build_model(text_tower=text_tower, fusion=fusion, **TINY)
    assert model.get_layer("text_tower") is not None
    assert_step_lowers_loss(model, inputs, labels)
    assert_saving_round_trip(model, inputs, tmp_path)


@pytest.mark.parametrize("image_tower", map(_image_tower_param, registry.IMAGE_TOWERS))
def test_image_tower_trains_and_saves(image_tower, tmp_path):
    run_model_test(
        tmp_path, plain_keras=False, image_tower=image_tower, text_tower="bow"
    )


GRID_FUSIONS = [name for name, spec in registry.FUSIONS.items() if spec.image_grid]
# Every grid fusion on small_cnn, and each keras.applications tower with one
# of them, in turn: its grid then trains and saves too. (Every tower meets
# every fusion, forward and backward, in the matrix below.)
GRID_CASES = [("small_cnn", fusion) for fusion in GRID_FUSIONS] + [
    (tower, GRID_FUSIONS[index % len(GRID_FUSIONS)])
    for index, tower in enumerate(["vgg16", "resnet50", "mobilenet_v3_small"])
]


@pytest.mark.parametrize("image_tower, fusion", GRID_CASES)
def test_image_grid_trains_and_saves(image_tower, fusion, tmp_path):
    run_model_test(tmp_path, plain_keras=False, image_tower=image_tower, fusion=fusion)


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


@pytest.mark.parametrize("fusion", sorted(registry.FUSIONS))
@pytest.mark.parametrize("image_tower", map(_image_tower_param, registry.IMAGE_TOWERS))
def test_every_image_tower_with_every_fusion(image_tower, fusion, image_towers):
    spec = registry.FUSIONS[fusion]
    tower = image_towers(image_tower, spec.image_grid)
    model = mmzoo.build_model(
        image_tower=tower, text_tower="bow", fusion=fusion, **TINY
    )
    inputs, labels = tiny_batch()
    outputs = model(inputs)
    assert outputs["probabilities"].shape == (4, 3)
    assert np.all(np.isfinite(outputs["probabilities"]))
    if "image" in spec.modalities:
        # Training mode: batch statistics keep a deep random-weight ResNet's
        # features in range, so tanh-based fusions are not saturated. No
        # update is applied, since the tower is shared across the matrix.
        tower_variables = {id(v) for v in tower.trainable_variables}
        assert any(
            g is not None and np.any(np.asarray(g) != 0)
            for v, g in gradients(model, inputs, labels, training=True)
            if id(v) in tower_variables
        ), "no gradient reached the image tower"


# === Presets ===


@pytest.mark.parametrize("preset", sorted(registry.PRESETS))
def test_preset(preset, tmp_path):
    spec = registry.PRESETS[preset]
    model = mmzoo.build_model(preset, **TINY)
    assert model.name == preset
    for key in ("image_tower", "text_tower", "fusion"):
        assert model.build_arguments[key] == spec[key]
    modalities = registry.FUSIONS[spec["fusion"]].modalities
    for modality in modalities:
        model.get_layer(f"{modality}_tower")
    inputs, labels = tiny_batch()
    assert_step_lowers_loss(model, inputs, labels)
    assert_saving_round_trip(model, inputs, tmp_path)


def test_preset_keyword_overrides_win():
    model = mmzoo.build_model(
        "small_cnn_bow_gated",
        fusion="concat",
        image_size=48,
        **{k: v for k, v in TINY.items() if k != "image_size"},
    )
    assert model.input["image"].shape == (None, 48, 48, 3)
    assert _fusion_layer_type(model) is registry.resolve(
        registry.FUSIONS["concat"].layer
    )


# === The model keeps its recipe ===


def test_a_saved_model_rebuilds_at_another_size(tmp_path):
    model = mmzoo.build_model(fusion="film", **TINY)
    model.save(tmp_path / "film.keras")
    loaded = mmzoo.load_model(tmp_path / "film.keras")
    bigger = mmzoo.build_model(loaded, image_size=48, fusion_units=12)
    assert bigger.input["image"].shape == (None, 48, 48, 3)
    assert bigger.get_layer("fusion").units == 12
    recipe = {**loaded.build_arguments, "image_size": 48, "fusion_units": 12}
    assert bigger.build_arguments == recipe
    # The same recipe twice gives the same architecture, weights aside.
    again = mmzoo.build_model(loaded)
    assert again.count_params() == model.count_params()
    assert [layer.name for layer in again.layers] == [
        layer.name for layer in model.layers
    ]


def test_a_custom_image_tower_must_be_passed_again_to_rebuild():
    tower = build_image_tower("small_cnn", image_size=32, filters=(4,))
    model = mmzoo.build_model(image_tower=tower, **TINY)
    assert model.build_arguments["image_tower"] == {"custom": tower.name}
    with pytest.raises(ValueError, match="pass it again as `image_tower=`"):
        mmzoo.build_model(model)
    assert mmzoo.build_model(model, image_tower=tower).count_params() == (
        model.count_params()
    )


# === One table of defaults ===


def _defaults(function):
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


@pytest.mark.parametrize(
    "fusion", [name for name, spec in registry.FUSIONS.items() if spec.layer]
)
def test_fusion_layer_defaults_agree_with_build_model(fusion):
    spec = registry.FUSIONS[fusion]
    defaults = _defaults(registry.resolve(spec.layer).__init__)
    for argument, key in spec.arguments.items():
        assert key in DEFAULTS or key in DERIVED, (argument, key)
        if key in DEFAULTS and argument in defaults:
            # `fusion_units=None` means the fusion's own width.
            default = spec.units if key == "fusion_units" else DEFAULTS[key]
            assert defaults[argument] == default, (argument, key)


def test_cross_attention_is_narrower_by_default_and_the_width_is_an_argument():
    def width(**arguments):
        model = mmzoo.build_model(
            image_size=32, max_tokens=8, num_classes=3, **arguments
        )
        return model.get_layer("fusion").units

    assert width(fusion="cross_attention") == 128
    assert width(fusion="concat") == 256
    assert width(fusion="cross_attention", fusion_units=64) == 64


@pytest.mark.parametrize("text_tower", sorted(registry.TEXT_TOWERS))
def test_text_tower_defaults_agree_with_build_model(text_tower):
    spec = registry.TEXT_TOWERS[text_tower]
    builder = registry.resolve(spec.build)
    defaults = _defaults(builder)
    public = _defaults(build_text_tower)
    assert set(spec.arguments) == set(inspect.signature(builder).parameters)
    for argument, key in spec.arguments.items():
        assert key in DEFAULTS or key in DERIVED, (argument, key)
        if argument in defaults:
            assert defaults[argument] == public[argument], argument
        if key in DEFAULTS and argument in defaults:
            assert defaults[argument] == DEFAULTS[key], (argument, key)


def test_every_registered_component_resolves():
    for spec in registry.TEXT_TOWERS.values():
        assert callable(registry.resolve(spec.build))
    for spec in registry.IMAGE_TOWERS.values():
        if spec.backbone:
            assert callable(registry.resolve(spec.backbone))
        else:
            import keras

            assert callable(getattr(keras.applications, spec.application))
    for spec in registry.FUSIONS.values():
        if spec.layer:
            layer_class = registry.resolve(spec.layer)
            assert issubclass(layer_class, mmzoo.fusion.Fusion)
            # ...and is exported by its class name.
            assert getattr(mmzoo.fusion, layer_class.__name__) is layer_class


def test_listing_reads_the_registry():
    assert mmzoo.list_image_towers("resnet*") == [
        "resnet101",
        "resnet152",
        "resnet50",
        "resnet50v2",
    ]
    assert mmzoo.list_fusions("*only") == ["image_only", "text_only"]
    assert mmzoo.list_tasks() == [
        "binary",
        "captioning",
        "contrastive",
        "multiclass",
        "multilabel",
        "regression",
    ]
    assert mmzoo.registry.list_losses("*clip") == ["clip", "soft_clip"]
    assert "film" in mmzoo.list_fusions()


# === Heads ===


@pytest.mark.parametrize("task", FUSED_TASKS)
def test_heads(task):
    task_object = mmzoo.get_task(task)
    inputs, targets, _, num_classes = task_batch(task, batch=4)
    model = mmzoo.build_model(task=task, **{**TINY, "num_classes": num_classes})
    output = np.asarray(model(inputs)[task_object.output_name])
    assert output.shape == (4, task_object.num_outputs(num_classes))
    layer = model.get_layer(task_object.output_name)
    assert layer.get_config()["activation"] == task_object.activation
    assert model.get_layer("logits").units == output.shape[1]


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


def test_modality_weights_need_a_fusion_that_computes_them():
    model = mmzoo.build_model(fusion="concat", **TINY)
    assert not model.returns_modality_weights
    with pytest.raises(ValueError, match="computes no modality weights"):
        mmzoo.with_modality_weights(model)
    late = mmzoo.build_model(fusion="late", late_combine="learned", **TINY)
    assert late.returns_modality_weights


def test_list_command_reads_the_registry(capsys):
    from mmzoo import cli

    assert cli.main(["list", "tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Tasks (build_model(task=...)): 6"
    assert [line.split()[0] for line in lines[1:7]] == mmzoo.list_tasks()
    assert cli.main(["list", "losses"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed_losses = [line.split()[0] for line in lines[1:] if line]
    assert listed_losses == sorted(mmzoo.losses.LOSSES)
    assert "Deep CCA" in lines[1 + sorted(mmzoo.losses.LOSSES).index("dcca")]
    assert cli.main(["list", "fusions", "--pattern", "*only"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed[1:3]] == ["image_only", "text_only"]
    assert registry.FUSIONS["image_only"].description in listed[1]
