"""Modality balance: unimodal heads, gradient modulation, `--baselines`.

Each option is tested on what it claims: the heads add their losses in
training and vanish from inference, saving and both exports; OGM scales
the dominant tower's gradient by exactly 1 - tanh(alpha * rho) and leaves
the other alone; OGM-GE adds noise of the gradient's own spread; and
`mmzoo train --baselines` trains the unimodal runs with the same budget
and writes the comparison.
"""

import json

import data_fixtures
import keras
import numpy as np
import pytest
import tensorflow as tf
from harness import TINY
from harness import run_layer_test
from harness import task_batch

import mmzoo
from mmzoo.balance import GradientModulation
from mmzoo.cli import main as cli_main
from mmzoo.data import make_dataset
from mmzoo.layers import recalibrate_batch_norm
from mmzoo.runs import load_run
from mmzoo.training import trainer
from mmzoo.training.config import ConfigError

RUN = {
    "image_size": 32,
    "max_tokens": 8,
    "batch_size": 4,
    "model": {"image_filters": [8, 16], "head_units": [16], "fusion_units": 16},
}


def _model(**arguments):
    model = mmzoo.build_model(**{**TINY, **arguments})
    # Eager steps: tracing `fit` costs seconds per model (test_training.py
    # and the run below cover traced steps).
    model.compile(**model.task.compile_arguments(), run_eagerly=True)
    return model


def _tower_gradients(model, inputs, targets):
    """The gradients of the fused loss (only) on each tower's weights."""
    with tf.GradientTape() as tape:
        outputs = model(inputs, training=True)
        loss = keras.ops.mean(
            keras.losses.sparse_categorical_crossentropy(
                targets, outputs["probabilities"]
            )
        )
        # The heads' loss sets the coefficients (and, with the gradient
        # stopped, reaches the heads alone).
        heads = {m: outputs[f"{m}_only"] for m in ("image", "text")}
        loss = loss + model._unimodal.loss_of(targets, heads)
    towers = {
        "image": model.get_layer("image_tower").trainable_variables,
        "text": model.get_layer("text_tower").trainable_variables,
    }
    variables = [v for values in towers.values() for v in values]
    # (The embedding's gradient comes as IndexedSlices.)
    flat = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
    count = len(towers["image"])
    return {"image": flat[:count], "text": flat[count:]}, heads


# === GradientModulation ===


def test_gradient_modulation_scales_the_gradient_and_is_the_identity():
    layer = GradientModulation(name="modulation")
    features = tf.constant(np.random.default_rng(0).normal(size=(4, 6)), "float32")
    upstream = tf.constant(np.random.default_rng(1).normal(size=(4, 6)), "float32")
    layer.build(features.shape)
    layer.coefficient.assign(0.25)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(features)
        trained = layer(features, training=True)
        served = layer(features)
        trained_loss = tf.reduce_sum(trained * upstream)
        served_loss = tf.reduce_sum(served * upstream)
    np.testing.assert_array_equal(trained.numpy(), features.numpy())
    np.testing.assert_allclose(
        tape.gradient(trained_loss, features).numpy(), 0.25 * upstream.numpy()
    )
    # At inference the gradient passes unchanged.
    np.testing.assert_allclose(
        tape.gradient(served_loss, features).numpy(), upstream.numpy()
    )
    inactive = GradientModulation(active=False)
    inactive.build(features.shape)
    inactive.coefficient.assign(0.25)
    with tf.GradientTape() as tape:
        tape.watch(features)
        loss = tf.reduce_sum(inactive(features, training=True) * upstream)
    np.testing.assert_allclose(tape.gradient(loss, features).numpy(), upstream)


def test_gradient_modulation_noise_has_the_gradients_spread():
    layer = GradientModulation(noise=True, seed=3)
    features = tf.zeros((200, 100))
    upstream = tf.constant(
        np.random.default_rng(2).normal(0.5, 2.0, size=(200, 100)), "float32"
    )
    layer.build(features.shape)
    layer.coefficient.assign(0.5)
    with tf.GradientTape() as tape:
        tape.watch(features)
        loss = tf.reduce_sum(layer(features, training=True) * upstream)
    noise = tape.gradient(loss, features).numpy() - 0.5 * upstream.numpy()
    assert abs(noise.mean()) < 0.05
    assert noise.std() == pytest.approx(upstream.numpy().std(), rel=0.03)


def test_gradient_modulation_is_a_well_behaved_layer():
    features = np.random.default_rng(0).normal(size=(3, 5)).astype("float32")
    run_layer_test(lambda: GradientModulation(noise=True, seed=1), features)


# === Unimodal heads ===


def test_unimodal_heads_add_their_losses_in_training_only(tmp_path):
    inputs, targets, _, num_classes = task_batch("multiclass", batch=8)
    model = _model(fusion="gated", unimodal_heads=0.3, num_classes=num_classes)
    plain = _model(fusion="gated", num_classes=num_classes)
    assert sorted(model.output) == ["probabilities"]
    assert sorted(model(inputs)) == ["probabilities"]
    trained = model(inputs, training=True)
    assert sorted(trained) == ["image_only", "probabilities", "text_only"]
    # Two feature layers more than the plain model; the heads are not
    # layers of the graph (they exist for training only).
    assert len(model.layers) == len(plain.layers) + 2
    assert sorted(model.unimodal_heads) == ["image", "text"]

    def cross_entropy(output):
        return keras.ops.mean(
            keras.losses.sparse_categorical_crossentropy(targets, output)
        )

    loss = model.compute_loss(inputs, targets, trained)
    expected = cross_entropy(trained["probabilities"]) + 0.3 * (
        cross_entropy(trained["image_only"]) + cross_entropy(trained["text_only"])
    )
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    # Inference outputs carry no heads: the fused loss only.
    served = model(inputs)
    assert float(model.compute_loss(inputs, targets, served)) == pytest.approx(
        float(cross_entropy(served["probabilities"])), rel=1e-5
    )

    history = model.fit(
        inputs, targets, epochs=2, batch_size=4, validation_data=(inputs, targets)
    )
    assert {"image_only_loss", "text_only_loss"} <= set(history.history)
    # Validation has no heads: no zeros logged for them.
    assert not any(key.startswith("val_image") for key in history.history)
    assert all(np.isfinite(history.history["image_only_loss"]))

    path = tmp_path / "heads.keras"
    model.save(path)
    restored = mmzoo.load_model(path)
    for modality, head in model.unimodal_heads.items():
        np.testing.assert_array_equal(
            head.dense.kernel.numpy(),
            restored.unimodal_heads[modality].dense.kernel.numpy(),
        )
    np.testing.assert_allclose(
        model.predict(inputs, verbose=0)["probabilities"],
        restored.predict(inputs, verbose=0)["probabilities"],
        atol=1e-6,
    )


@pytest.mark.parametrize("fusion", ["cross_attention", "film", "late"])
def test_unimodal_heads_read_grids_and_token_sequences(fusion):
    inputs, targets, _, num_classes = task_batch("multiclass", batch=8)
    model = _model(fusion=fusion, unimodal_heads=1.0, num_classes=num_classes)
    outputs = model(inputs, training=True)
    for name in ("image_only", "text_only"):
        assert outputs[name].shape == (8, num_classes)
        np.testing.assert_allclose(outputs[name].numpy().sum(-1), 1.0, atol=1e-5)
    # Padding after a text changes nothing its head sees.
    padded = {**inputs, "tokens": inputs["tokens"].copy()}
    shorter = padded["tokens"][0] > 0
    padded["tokens"][0, shorter.sum() :] = 0
    np.testing.assert_allclose(
        model(padded, training=True)["text_only"][0],
        outputs["text_only"][0],
        atol=1e-6,
    )


@pytest.mark.parametrize("task", ["binary", "multilabel", "regression"])
def test_unimodal_heads_for_every_fused_task(task):
    inputs, targets, _, num_classes = task_batch(task, batch=8)
    model = _model(task=task, unimodal_heads=0.5, num_classes=num_classes)
    history = model.fit(inputs, targets, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["image_only_loss"][0])
    output = model.task.output_name
    assert (
        model(inputs, training=True)["image_only"].shape == model(inputs)[output].shape
    )


# === OGM ===


@pytest.mark.parametrize("balance", ["ogm", "ogm_ge"])
def test_ogm_slows_the_dominant_tower_only(balance):
    inputs, targets, _, num_classes = task_batch("multiclass", batch=8)
    # unimodal_heads=0: the heads score the towers without a gradient to
    # them, so the towers' gradients are the fused loss's alone.
    model = _model(balance=balance, balance_alpha=0.7, num_classes=num_classes)
    modulations = {m: model.get_layer(f"{m}_features") for m in ("image", "text")}
    for layer in modulations.values():
        layer.active = False
    keras.utils.set_random_seed(5)
    plain, heads = _tower_gradients(model, inputs, targets)
    for layer in modulations.values():
        layer.active = True
    keras.utils.set_random_seed(5)
    modulated, _ = _tower_gradients(model, inputs, targets)

    # The coefficients, by hand: rho is the ratio of the summed
    # probabilities of the right class (Peng et al. 2022, eq. 10).
    scores = {
        m: np.take_along_axis(p.numpy(), targets[:, None], -1).sum()
        for m, p in heads.items()
    }
    ratio = scores["image"] / scores["text"]
    dominant, weak = ("image", "text") if ratio > 1 else ("text", "image")
    rho = max(ratio, 1 / ratio)
    expected = 1 - np.tanh(0.7 * rho)
    assert float(modulations[dominant].coefficient) == pytest.approx(expected, 1e-5)
    assert float(modulations[weak].coefficient) == 1.0

    def norm(gradients):
        return np.sqrt(sum(float(tf.reduce_sum(g**2)) for g in gradients))

    if balance == "ogm":
        for modality, coefficient in ((dominant, expected), (weak, 1.0)):
            for before, after in zip(plain[modality], modulated[modality], strict=True):
                np.testing.assert_allclose(
                    after.numpy(), coefficient * before.numpy(), rtol=1e-4, atol=1e-7
                )
    else:
        # The noise moves both towers' gradients; the dominant one's
        # signal is still scaled down.
        for modality in modulations:
            assert not np.allclose(
                norm(modulated[modality]), norm(plain[modality]), rtol=1e-6
            )


def test_ogm_trains_and_logs_its_coefficients():
    inputs, targets, _, num_classes = task_batch("multiclass", batch=8)
    model = _model(unimodal_heads=0.5, balance="ogm_ge", num_classes=num_classes)
    history = model.fit(inputs, targets, epochs=3, batch_size=4, verbose=0)
    for modality in ("image", "text"):
        values = np.asarray(history.history[f"{modality}_coefficient"])
        assert np.all((values > 0) & (values <= 1))
    # Each step slows exactly one tower (the dominant one, to 1 - tanh(alpha
    # * rho) < 1) and leaves the other at 1: per epoch, the two means add up
    # to 1 + the mean slowdown, between 1 and 2.
    total = np.asarray(history.history["image_coefficient"]) + np.asarray(
        history.history["text_coefficient"]
    )
    assert np.all((total > 1) & (total < 2)), total


def test_balance_arguments_are_checked():
    cases = [
        ({"unimodal_heads": -1.0}, "`unimodal_heads` is the weight"),
        ({"balance": "ogn"}, "`balance` must be one of ['ogm', 'ogm_ge']"),
        ({"balance": "ogm", "balance_alpha": 0}, "`balance_alpha` scales"),
        ({"balance": "ogm", "task": "regression"}, "has no classes"),
        ({"unimodal_heads": 1.0, "fusion": "image_only"}, "uses only ['image']"),
    ]
    for arguments, message in cases:
        with pytest.raises(ValueError, match=_pattern(message)):
            _model(**arguments)


def _pattern(message):
    import re

    return re.escape(message)


def test_custom_fit_refuses_models_with_heads():
    from mmzoo.training.distributed import custom_fit
    from mmzoo.training.distributed import make_strategy

    model = _model(unimodal_heads=1.0)
    with pytest.raises(ValueError, match="has unimodal heads"):
        custom_fit(
            model, make_strategy(), lambda *a: None, epochs=1, global_batch_size=4
        )


# === Training runs ===


def test_baselines_run_compares_fusion_with_each_modality(tmp_path):
    manifest = data_fixtures.clean_manifest(tmp_path / "data", rows=12)
    out = tmp_path / "run"
    result = trainer.train(
        train=manifest,
        val=manifest,
        test=manifest,
        fusion="gated",
        unimodal_heads=0.5,
        balance="ogm_ge",
        baselines=True,
        epochs=1,
        out=out,
        verbose=0,
        **RUN,
    )
    history = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert {"image_only_loss", "image_coefficient", "text_coefficient"} <= set(history)
    comparison = json.loads((out / "baselines.json").read_text())
    assert comparison == {k: v for k, v in result["baselines"].items()}
    metrics = {
        name: json.loads((folder / "metrics.json").read_text())
        for name, folder in (
            ("fused", out),
            ("image_only", out / "baselines" / "image_only"),
            ("text_only", out / "baselines" / "text_only"),
        )
    }
    for name in ("image_only", "text_only"):
        config = (out / "baselines" / name / "config.yaml").read_text()
        # The same budget, plain unimodal models.
        assert f"fusion: {name}" in config and "epochs: 1" in config
        assert "balance: none" in config and "unimodal_heads: 0.0" in config
    for split in ("val", "test"):
        row = comparison["splits"][split]
        values = {name: m[split]["accuracy"] for name, m in metrics.items()}
        best = max(values["image_only"], values["text_only"])
        assert row["fusion_gain"] == pytest.approx(values["fused"] - best)
        assert row["best_unimodal"] in ("image_only", "text_only")
        assert values[row["best_unimodal"]] == best
    table = (out / "baselines.md").read_text()
    assert "| test |" in table and "fused (gated)" in table

    # (test_training.py exports runs with heads: both exports drop them.)
    run = load_run(out)
    assert sorted(run.model.output) == ["probabilities"]
    assert sorted(run.model.unimodal_heads) == ["image", "text"]

    # BatchNorm was recalibrated on the training data after training: its
    # moving means are the means of the data's batches (12 rows in equal
    # batches of 4), not a trailing average, which after 3 steps at momentum
    # 0.99 would hold about 3% of them. (Deeper layers see their inputs
    # normalised per batch, so another grouping of the rows moves them by
    # a few 1e-4.)
    final = mmzoo.load_model(out / "model.keras")
    norms = [
        layer
        for layer in final._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert norms
    saved = [layer.moving_mean.numpy().copy() for layer in norms]
    data = make_dataset(
        manifest, run.tokenizer, 32, 4, labels=run.labels, training=False
    )
    recalibrate_batch_norm(final, data)
    for before, layer in zip(saved, norms, strict=True):
        np.testing.assert_allclose(before, layer.moving_mean.numpy(), atol=3e-3)

    # Resuming a run interrupted in its baselines trains only what is missing.
    import shutil

    stamp = (out / "baselines" / "image_only" / "metrics.json").stat().st_mtime_ns
    shutil.rmtree(out / "baselines" / "text_only")
    again = trainer.train(resume=True, out=out, verbose=0)
    assert (out / "baselines" / "text_only" / "metrics.json").is_file()
    assert (
        out / "baselines" / "image_only" / "metrics.json"
    ).stat().st_mtime_ns == stamp
    assert again["baselines"]["metric"] == "accuracy"


def test_balance_configuration_errors_name_the_key(tmp_path):
    manifest = data_fixtures.clean_manifest(tmp_path / "data", rows=4)
    common = {"train": manifest, "out": tmp_path / "run"}
    cases = [
        ({"unimodal_heads": -0.5}, "unimodal_heads"),
        ({"balance": "ogm", "task": "regression"}, "balance"),
        ({"baselines": True, "fusion": "text_only"}, "baselines"),
        ({"unimodal_heads": 1.0, "task": "contrastive"}, "unimodal_heads"),
        ({"balance": "ogm", "strategy": "multiworker"}, "strategy"),
    ]
    for overrides, key in cases:
        with pytest.raises(ConfigError) as caught:
            trainer.train(**common, **overrides)
        assert caught.value.key == key, (overrides, str(caught.value))
    assert not (tmp_path / "run").exists()


def test_balance_flags_are_one_line_errors(tmp_path, capsys):
    manifest = data_fixtures.clean_manifest(tmp_path / "data", rows=4)
    for flags in (
        ["--balance", "ogn"],
        ["--unimodal-heads", "heavy"],
        ["--balance-alpha", "-1"],
    ):
        with pytest.raises(SystemExit) as caught:
            cli_main(["train", "--train", str(manifest), "--out", "x", *flags])
        assert caught.value.code == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and flags[0][2:] in error, error
