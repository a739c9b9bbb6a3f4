"""Dual encoders: towers into one shared space, trained in plain Keras."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import mmzoo
from mmzoo import registry
from mmzoo.dual_encoder import CLIP_LOGIT_SCALE
from mmzoo.dual_encoder import SIGLIP_LOGIT_BIAS
from mmzoo.dual_encoder import SIGLIP_LOGIT_SCALE
from mmzoo.dual_encoder import DualEncoder
from mmzoo.dual_encoder import build_dual_encoder

SIZES = {
    "image_size": 32,
    "max_tokens": 8,
    "vocab_size": 40,
    "embedding_dim": 16,
    "text_units": 16,
    "text_heads": 2,
    "text_layers": 1,
    "image_filters": (8, 16),
    "embed_dim": 16,
}
CONCEPTS = 8


def paired_batch(batch=32, seed=0):
    """Images and token rows that share a concept: each concept has its own
    colour and its own two words, so matching pairs can be learnt."""
    rng = np.random.default_rng(seed)
    concepts = rng.integers(0, CONCEPTS, batch)
    palette = np.random.default_rng(99).uniform(0, 255, (CONCEPTS, 3))
    image = palette[concepts][:, None, None, :] + rng.normal(0, 8, (batch, 32, 32, 3))
    tokens = np.zeros((batch, 8), "int32")
    tokens[:, 0] = 2 + 2 * concepts
    tokens[:, 1] = 3 + 2 * concepts
    tokens[:, 2] = rng.integers(2 + 2 * CONCEPTS, 40, batch)  # a noise word
    return {
        "image": np.clip(image, 0, 255).astype("float32"),
        "tokens": tokens,
    }, concepts


def in_batch_accuracy(model, inputs):
    """How often each image's most similar text is its own."""
    out = model.predict(inputs, verbose=0)
    similarity = out["image_embedding"] @ out["text_embedding"].T
    return float(np.mean(np.argmax(similarity, axis=1) == np.arange(len(similarity))))


def test_outputs_are_unit_float32_embeddings():
    model = build_dual_encoder(**SIZES)
    assert isinstance(model, DualEncoder)
    assert sorted(model.input) == ["image", "tokens"]
    assert sorted(model.output) == ["image_embedding", "text_embedding"]
    inputs, _ = paired_batch(4)
    out = model.predict(inputs, verbose=0)
    for name in ("image_embedding", "text_embedding"):
        assert out[name].shape == (4, 16) and out[name].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(out[name], axis=1), 1, atol=1e-5)
    # The halves are models of their own over the same weights.
    image = model.image_encoder.predict(inputs["image"], verbose=0)
    text = model.text_encoder.predict(inputs["tokens"], verbose=0)
    np.testing.assert_allclose(image, out["image_embedding"], atol=1e-6)
    np.testing.assert_allclose(text, out["text_embedding"], atol=1e-6)


@pytest.mark.parametrize(
    "loss, scale, bias",
    [
        ("clip", CLIP_LOGIT_SCALE, None),
        ("siglip", SIGLIP_LOGIT_SCALE, SIGLIP_LOGIT_BIAS),
        ("margin", None, None),
        ("dcca", None, None),
    ],
)
def test_the_temperature_layer_holds_what_the_loss_needs(loss, scale, bias):
    model = build_dual_encoder(loss=loss, **SIZES)
    temperature = model.temperature
    for weight, expected in (
        (temperature.logit_scale, scale),
        (temperature.logit_bias, bias),
    ):
        if expected is None:
            assert weight is None
        else:
            assert float(keras.ops.convert_to_numpy(weight)) == pytest.approx(expected)
            assert weight.dtype == "float32" and weight.trainable
    assert CLIP_LOGIT_SCALE == pytest.approx(np.log(1 / 0.07))
    assert SIGLIP_LOGIT_SCALE == pytest.approx(np.log(10)) and SIGLIP_LOGIT_BIAS == -10
    fixed = build_dual_encoder(loss=loss, learn_temperature=False, **SIZES)
    assert all(not w.trainable for w in fixed.temperature.weights)


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_plain_keras_fit_learns_the_pairs(loss):
    keras.utils.set_random_seed(0)
    model = build_dual_encoder(loss=loss, learning_rate=3e-3, **SIZES)
    inputs, concepts = paired_batch(1024)
    test, test_concepts = paired_batch(32, seed=1)
    # A batch of distinct concepts: each image has one right text.
    _, first = np.unique(test_concepts, return_index=True)
    test = {key: value[first] for key, value in test.items()}
    before = in_batch_accuracy(model, test)
    # Rows of one concept show "the same" image and text: ids say so. 256
    # steps: inference needs BatchNorm's moving statistics to have settled.
    ids = {"image_ids": concepts, "text_ids": concepts}
    history = model.fit(inputs, ids, batch_size=32, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.2 * losses[0], losses
    after = in_batch_accuracy(model, test)
    assert after >= 0.625 and after > before, (before, after)  # chance: 1/8
    # evaluate reports the same loss the model computes on the batch.
    evaluated = model.evaluate(test, verbose=0, return_dict=True)["loss"]
    out = model(test, training=False)
    direct = model.compute_loss(test, None, out, training=False)
    assert evaluated == pytest.approx(float(direct), rel=1e-4)


def test_retrieval_metrics_over_the_whole_validation_set_each_epoch():
    from mmzoo.metrics import retrieval_metrics

    model = build_dual_encoder(**SIZES)
    inputs, _ = paired_batch(64)
    val, concepts = paired_batch(40, seed=2)
    callback = mmzoo.RetrievalMetrics(val, image_ids=concepts, text_ids=concepts)
    history = model.fit(inputs, epochs=2, verbose=0, callbacks=[callback])
    for name in ("val_image_to_text_R@1", "val_text_to_image_R@10"):
        assert len(history.history[name]) == 2
    out = model.predict(val, verbose=0)
    expected = retrieval_metrics(
        out["image_embedding"], out["text_embedding"], concepts, concepts
    )
    for name, value in expected.items():
        assert history.history[f"val_{name}"][-1] == pytest.approx(value)


def test_ids_mark_rows_of_the_same_item_as_not_negatives():
    # The same pair twice in a batch: with ids, the copy is not a negative,
    # so the loss is lower than when it is pushed away from itself.
    model = build_dual_encoder(**SIZES)
    inputs, _ = paired_batch(4)
    inputs = {key: np.concatenate([value, value[:1]]) for key, value in inputs.items()}
    out = model(inputs, training=False)
    plain = float(model.compute_loss(inputs, None, out))
    ids = {
        "image_ids": np.array([0, 1, 2, 3, 0]),
        "text_ids": np.array([0, 1, 2, 3, 0]),
    }
    masked = float(model.compute_loss(inputs, ids, out))
    assert masked < plain
    # And fit takes them as targets.
    history = model.fit(inputs, ids, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_deep_cca_trains_on_unnormalised_embeddings():
    model = build_dual_encoder(loss="dcca", loss_arguments={"k": 4}, **SIZES)
    inputs, _ = paired_batch(64)
    out = model.predict(inputs, verbose=0)
    assert not np.allclose(np.linalg.norm(out["image_embedding"], axis=1), 1)
    history = model.fit(inputs, batch_size=64, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert -4 <= losses[-1] < 0  # minus the sum of the top 4 correlations


def test_deep_cca_ends_with_linear_cca_on_its_outputs():
    from mmzoo.cca import LinearCCA

    model = build_dual_encoder(loss="dcca", **SIZES)
    inputs, _ = paired_batch(96)
    model.fit(inputs, batch_size=96, epochs=2, verbose=0)
    raw = model.predict(inputs, verbose=0)
    correlations = model.fit_canonical_projection(inputs)
    projected = model.predict(inputs, verbose=0)

    # The projection is LinearCCA's, each component scaled by its correlation.
    cca = LinearCCA(16, r1=1e-3, r2=1e-3).fit(
        raw["image_embedding"], raw["text_embedding"]
    )
    np.testing.assert_allclose(correlations, cca.correlations_, rtol=1e-6)
    image, text = cca.transform(raw["image_embedding"], raw["text_embedding"])
    np.testing.assert_allclose(
        projected["image_embedding"], image * correlations, rtol=1e-3, atol=1e-3
    )
    np.testing.assert_allclose(
        projected["text_embedding"], text * correlations, rtol=1e-3, atol=1e-3
    )
    # Fitting again starts from the raw outputs, not the projected ones.
    np.testing.assert_allclose(model.fit_canonical_projection(inputs), correlations)
    with pytest.raises(ValueError, match="no canonical projections"):
        build_dual_encoder(**SIZES).fit_canonical_projection(inputs)


def test_a_loss_given_to_compile_replaces_the_models():
    from mmzoo.losses import MarginLoss

    model = build_dual_encoder(**SIZES)
    model.compile(optimizer="adam", loss=MarginLoss(margin=0.3))
    assert isinstance(model.contrastive_loss, MarginLoss)
    inputs, _ = paired_batch(8)
    assert np.isfinite(model.fit(inputs, epochs=1, verbose=0).history["loss"][0])


@pytest.mark.parametrize(
    "loss, options", [("triplet", {"margin": 0.3}), ("siglip", {"temperature": 0.2})]
)
def test_keras_round_trip_keeps_outputs_loss_and_recipe(loss, options, tmp_path):
    model = build_dual_encoder(
        loss=loss, loss_arguments=options, projection="mlp", **SIZES
    )
    inputs, _ = paired_batch(4)
    model.fit(inputs, epochs=1, verbose=0)
    temperature = model.temperature.get_weights()  # SigLIP's scale and bias
    path = str(tmp_path / "dual.keras")
    model.save(path)
    restored = mmzoo.load_model(path)  # safe mode, mmzoo's own checks first
    assert isinstance(restored, DualEncoder)
    assert restored.build_arguments == model.build_arguments
    assert type(restored.contrastive_loss) is type(model.contrastive_loss)
    assert restored.contrastive_loss.get_config() == model.contrastive_loss.get_config()
    expected = model.predict(inputs, verbose=0)
    for key, value in restored.predict(inputs, verbose=0).items():
        np.testing.assert_allclose(value, expected[key], atol=1e-6)
    # The trained temperature comes back, not its initial value.
    restored_temperature = restored.temperature.get_weights()
    assert len(restored_temperature) == (2 if loss == "siglip" else 0)
    for got, want in zip(restored_temperature, temperature, strict=True):
        assert got == want
    if loss == "siglip":
        assert temperature[0] != pytest.approx(SIGLIP_LOGIT_SCALE, abs=1e-7)
    # It trains on after loading.
    assert np.isfinite(restored.fit(inputs, epochs=1, verbose=0).history["loss"][0])


def test_locked_image_tuned_text():
    # LiT: the image tower (and so its embedding's input) stays as it was.
    model = build_dual_encoder(freeze_image_tower=True, **SIZES)
    tower = model.get_layer("image_tower")
    before = [w.numpy().copy() for w in tower.weights]
    text_before = [w.numpy().copy() for w in model.get_layer("text_tower").weights]
    inputs, _ = paired_batch(16)
    model.fit(inputs, epochs=2, verbose=0)
    for old, new in zip(before, tower.weights, strict=True):
        np.testing.assert_array_equal(old, new.numpy())
    changed = [
        not np.array_equal(old, new.numpy())
        for old, new in zip(
            text_before, model.get_layer("text_tower").weights, strict=True
        )
    ]
    assert any(changed)


def test_share_projection():
    shared = build_dual_encoder(share_projection=True, **{**SIZES, "embedding_dim": 16})
    names = [layer.name for layer in shared.layers]
    assert "projection" in names and "image_projection" not in names
    separate = build_dual_encoder(**SIZES)
    separate_names = {layer.name for layer in separate.layers}
    assert {"image_projection", "text_projection"} <= separate_names
    message = "same width. Received: image features of width 16, text features"
    with pytest.raises(ValueError, match=message + " of width 12"):
        build_dual_encoder(share_projection=True, **{**SIZES, "embedding_dim": 12})


@pytest.mark.parametrize(
    "text_tower",
    [name for name, spec in registry.TEXT_TOWERS.items() if spec.portable],
)
def test_every_portable_text_tower(text_tower):
    model = build_dual_encoder(text_tower=text_tower, **SIZES)
    inputs, _ = paired_batch(8)
    history = model.fit(inputs, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_bert_tower_from_a_local_preset(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=40,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=8,
    )
    backbone.save_to_preset(str(tmp_path / "bert"))
    model = build_dual_encoder(
        text_tower="bert", text_preset=str(tmp_path / "bert"), **SIZES
    )
    inputs, _ = paired_batch(8)
    assert np.isfinite(model.fit(inputs, epochs=1, verbose=0).history["loss"][0])


def test_mixed_precision_keeps_float32_embeddings():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_dual_encoder(**SIZES)
        inputs, _ = paired_batch(8)
        out = model.predict(inputs, verbose=0)
        assert out["image_embedding"].dtype == np.float32
        assert np.isfinite(model.fit(inputs, epochs=1, verbose=0).history["loss"][0])
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_arguments_are_checked():
    with pytest.raises(
        ValueError, match="applies to loss='clip'. Received: loss='siglip'"
    ):
        build_dual_encoder(loss="siglip", local_loss=True, **SIZES)
    with pytest.raises(TypeError, match="embed_dimension"):
        build_dual_encoder(embed_dimension=3)
    with pytest.raises(ValueError, match="`embed_dim` must be a positive integer"):
        build_dual_encoder(embed_dim=0)
    with pytest.raises(ValueError, match="`projection` must be one of"):
        build_dual_encoder(projection="deep")
    with pytest.raises(ValueError, match="clp"):
        build_dual_encoder(loss="clp")


JAX_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_dual_encoder import SIZES, paired_batch
    from mmzoo.dual_encoder import build_dual_encoder
    import keras
    model = build_dual_encoder(loss="siglip", **SIZES)  # no TF seeding here
    inputs, _ = paired_batch(16)
    history = model.fit(inputs, epochs=2, verbose=0)
    tensorflow = "tensorflow" in sys.modules  # (saving imports it for files)
    model.save({path!r})
    print(json.dumps({{
        "backend": keras.backend.backend(),
        "tensorflow": tensorflow,
        "loss": history.history["loss"],
        "image_embedding": model.predict(inputs, verbose=0)["image_embedding"].tolist(),
    }}))
    """
)


def test_jax_backend_trains_and_the_file_loads_on_tensorflow(tmp_path):
    path = str(tmp_path / "jax.keras")
    script = JAX_SCRIPT.format(tests=os.path.dirname(__file__), path=path)
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "KERAS_BACKEND": "jax"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax" and report["tensorflow"] is False
    assert np.all(np.isfinite(report["loss"]))
    restored = mmzoo.load_model(path)
    inputs, _ = paired_batch(16)
    np.testing.assert_allclose(
        restored.predict(inputs, verbose=0)["image_embedding"],
        report["image_embedding"],
        atol=1e-4,
    )


# === Negatives from every replica ===

MIRRORED = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf

    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_dual_encoder import SIZES, paired_batch
    from mmzoo.dual_encoder import build_dual_encoder

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    # 7 rows: the replicas get 4 and 3. Rows 0 and 5 show one image, and
    # the text ids mark a repeated caption.
    inputs, _ = paired_batch(7)
    ids = {{"image_ids": np.array([0, 1, 2, 3, 4, 0, 6]),
            "text_ids": np.array([0, 1, 2, 1, 4, 5, 6])}}
    results = {{}}
    uneven = inputs, ids
    # open_clip's local loss equals the global one for equal replica
    # batches (8 rows, 4 each), not for 4 + 3, where each replica's mean
    # weighs its rows.
    even = (paired_batch(8)[0],
            {{"image_ids": np.array([0, 1, 2, 3, 4, 0, 6, 7]),
              "text_ids": np.array([0, 1, 2, 1, 4, 5, 6, 7])}})
    cases = [("clip", True, False, uneven), ("siglip", True, False, uneven),
             ("triplet", True, False, uneven), ("clip", False, False, uneven),
             ("clip", True, True, even), ("clip", True, True, uneven)]
    for loss, gather, local, (inputs, ids) in cases:
        arguments = dict(loss=loss, gather_negatives=gather, local_loss=local,
                         **SIZES)
        keras.utils.set_random_seed(0)
        single = build_dual_encoder(**arguments)
        with strategy.scope():
            mirrored = build_dual_encoder(**arguments)
        mirrored.set_weights(single.get_weights())

        def loss_and_gradients(model, x, y):
            with tf.GradientTape() as tape:
                value = model.compute_loss(x, y, model(x, training=False))
            variables = model.trainable_variables  # the temperature's too
            gradients = tape.gradient(value, variables)
            return value, [tf.convert_to_tensor(g) for g in gradients]

        value, gradients = loss_and_gradients(single, inputs, ids)
        dataset = tf.data.Dataset.from_tensors((inputs, ids))
        (x, y), = strategy.experimental_distribute_dataset(dataset)
        values, grads = strategy.run(
            lambda x, y: loss_and_gradients(mirrored, x, y), (x, y))
        total = strategy.reduce("SUM", values, axis=None)
        grads = [strategy.reduce("SUM", g, axis=None) for g in grads]
        rows = len(ids["image_ids"])
        results[f"{{loss}}_{{gather}}{{'_local' * local}}_{{rows}}"] = {{
            "single": float(value),
            "mirrored": float(total),
            "gradient_error": max(
                float(np.max(np.abs(a - b))) for a, b in zip(gradients, grads)),
            "gradient_size": max(float(np.max(np.abs(a))) for a in gradients),
        }}

    # Keras fit, one SGD step on the global batch, the image tower locked
    # (its BatchNorm then normalises with its moving statistics, as on one
    # device): the same weights after it.
    arguments = dict(loss="clip", freeze_image_tower=True, compile=False, **SIZES)
    keras.utils.set_random_seed(1)
    single = build_dual_encoder(**arguments)
    single.compile(optimizer=keras.optimizers.SGD(0.5))
    with strategy.scope():
        mirrored = build_dual_encoder(**arguments)
        mirrored.compile(optimizer=keras.optimizers.SGD(0.5))
    mirrored.set_weights(single.get_weights())
    # 8 rows, 4 per replica (Keras' first distributed step averages the
    # replicas' batches to build the model, which needs equal shapes).
    inputs, _ = paired_batch(8)
    ids = {{"image_ids": np.array([0, 1, 2, 3, 4, 0, 6, 7]),
            "text_ids": np.array([0, 1, 2, 1, 4, 5, 6, 7])}}
    fit = [
        model.fit(inputs, ids, batch_size=8, epochs=1, shuffle=False,
                  verbose=0).history["loss"][0]
        for model in (single, mirrored)
    ]
    results["fit"] = {{
        "loss": fit,
        "weight_error": max(float(np.max(np.abs(a - b))) for a, b in
                            zip(single.get_weights(), mirrored.get_weights())),
        "scale": [float(m.temperature.logit_scale.numpy()) for m in (single, mirrored)],
        "replicas": strategy.num_replicas_in_sync,
    }}
    print(json.dumps(results))
    """
)


def test_negatives_are_gathered_from_every_replica():
    script = MIRRORED.format(tests=os.path.dirname(__file__))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("clip_True_7", "siglip_True_7", "triplet_True_7", "clip_True_local_8"):
        result = results[name]
        # Summed over the replicas: the single-device loss and gradients.
        assert result["mirrored"] == pytest.approx(result["single"], abs=1e-5), name
        # float32 sums in another order: relative to the gradient's size.
        assert result["gradient_error"] < 1e-5 * max(1.0, result["gradient_size"]), (
            name,
            result,
        )
        assert result["gradient_size"] > 1e-3
    # Without gathering, each replica's loss sees only its own rows.
    local = results["clip_False_7"]
    assert abs(local["mirrored"] - local["single"]) > 1e-3
    # The local loss with uneven replicas: each replica's mean of its rows.
    uneven = results["clip_True_local_7"]
    assert abs(uneven["mirrored"] - uneven["single"]) > 1e-4
    fit = results["fit"]
    assert fit["replicas"] == 2
    assert fit["loss"][1] == pytest.approx(fit["loss"][0], abs=1e-5)
    assert fit["weight_error"] < 1e-5, fit
    assert fit["scale"][1] == pytest.approx(fit["scale"][0], abs=1e-6)
    assert fit["scale"][0] != pytest.approx(CLIP_LOGIT_SCALE, abs=1e-6)
