"""Unit tests for the building-block layers in `mmzoo.layers`, on tiny shapes."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from harness import run_layer_config_test
from keras import ops
from keras.applications import densenet
from keras.applications import resnet_v2
from keras.applications import vgg16

from mmzoo.layers import BatchNormalization
from mmzoo.layers import ImagePreprocessing
from mmzoo.layers import MaskedPooling
from mmzoo.layers import ModalityDropout
from mmzoo.layers import PaddingMask
from mmzoo.layers import PositionEmbedding
from mmzoo.layers import TransformerEncoder
from mmzoo.layers import ZeroMasked

RNG_SEED = 0


def numpy_of(value):
    return keras.tree.map_structure(
        lambda t: np.asarray(ops.convert_to_numpy(t)), value
    )


def lengths_mask(lengths, steps):
    return np.arange(steps)[None, :] < np.asarray(lengths)[:, None]


def with_garbage(sequence, mask, seed=1, low=-500.0, high=500.0):
    """The same sequence with random non-zero garbage in its masked steps."""
    rng = np.random.default_rng(seed)
    noisy = sequence.copy()
    hidden = ~mask
    noisy[hidden] = rng.uniform(low, high, size=(hidden.sum(), sequence.shape[-1]))
    return noisy


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(RNG_SEED)


# === ImagePreprocessing ===


@pytest.mark.parametrize(
    ("mode", "reference"),
    [
        ("caffe", vgg16.preprocess_input),
        ("tf", resnet_v2.preprocess_input),
        ("torch", densenet.preprocess_input),
    ],
)
def test_image_preprocessing_matches_keras_applications(mode, reference):
    rng = np.random.default_rng(RNG_SEED)
    images = rng.uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    # keras.applications may preprocess a numpy array in place: give it a copy.
    expected = reference(images.copy())
    output = numpy_of(ImagePreprocessing(mode)(images))
    assert output.shape == images.shape
    np.testing.assert_allclose(output, expected, atol=1e-4)
    # Raw uint8 pixels (as decoded) give the same result.
    as_uint8 = np.round(images).astype("uint8")
    np.testing.assert_allclose(
        numpy_of(ImagePreprocessing(mode)(as_uint8)),
        reference(as_uint8.astype("float32")),
        atol=1e-4,
    )


def test_image_preprocessing_caffe_flips_to_bgr():
    # A pure-red image becomes (B, G, R) - mean: only the last channel is lifted.
    red = np.zeros((1, 1, 1, 3), "float32")
    red[..., 0] = 255.0
    output = numpy_of(ImagePreprocessing("caffe")(red))[0, 0, 0]
    np.testing.assert_allclose(output, [-103.939, -116.779, 255.0 - 123.68], atol=1e-3)


def test_image_preprocessing_rejects_an_unknown_mode():
    with pytest.raises(
        ValueError,
        match=r"`mode` must be one of \['caffe', 'tf', 'torch'\]\. "
        r"Received: mode='caffee'",
    ):
        ImagePreprocessing("caffee")


# === PaddingMask ===


def test_padding_mask():
    tokens = np.array([[5, 3, 0, 0], [0, 0, 0, 0], [7, 0, 2, 1]], "int32")
    mask = PaddingMask()(tokens)
    assert keras.backend.standardize_dtype(mask.dtype) == "bool"
    np.testing.assert_array_equal(numpy_of(mask), tokens != 0)
    symbolic = PaddingMask()(keras.Input((4,), dtype="int32"))
    assert symbolic.dtype == "bool"
    assert tuple(symbolic.shape) == (None, 4)


# === MaskedPooling ===


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_masked_pooling_ignores_masked_garbage(mode):
    rng = np.random.default_rng(RNG_SEED)
    sequence = rng.normal(size=(4, 6, 3)).astype("float32")
    # Row 3 holds only negative values, so a masked step pooled as 0 would show.
    sequence[3] = -np.abs(sequence[3]) - 1.0
    lengths = [6, 2, 1, 3]
    mask = lengths_mask(lengths, 6)
    noisy = with_garbage(sequence, mask)
    pooled = numpy_of(MaskedPooling(mode)(noisy, mask=mask))
    reduce = np.mean if mode == "mean" else np.max
    expected = np.stack(
        [reduce(sequence[i, :n], axis=0) for i, n in enumerate(lengths)]
    )
    np.testing.assert_allclose(pooled, expected, atol=1e-5)
    # No mask pools every step.
    np.testing.assert_allclose(
        numpy_of(MaskedPooling(mode)(noisy)), reduce(noisy, axis=1), rtol=1e-5
    )


def test_masked_max_pooling_ignores_garbage_below_any_sentinel():
    """Real steps far below zero still win over masked ones (float32)."""
    sequence = np.full((1, 3, 2), -1e5, "float32")
    sequence[0, 1] = -2e5
    sequence[0, 2] = 7.0  # masked
    mask = np.array([[True, True, False]])
    pooled = numpy_of(MaskedPooling("max")(sequence, mask=mask))
    np.testing.assert_allclose(pooled, [[-1e5, -1e5]])


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_masked_pooling_all_masked_rows_give_zeros(mode):
    rng = np.random.default_rng(RNG_SEED)
    sequence = rng.uniform(-50.0, 50.0, (2, 4, 3)).astype("float32")
    mask = np.array([[False] * 4, [True, True, False, False]])
    pooled = numpy_of(MaskedPooling(mode)(sequence, mask=mask))
    assert np.isfinite(pooled).all()
    np.testing.assert_array_equal(pooled[0], 0.0)
    assert np.abs(pooled[1]).max() > 0


def test_masked_pooling_rejects_an_unknown_mode():
    with pytest.raises(
        ValueError,
        match=r"`mode` must be one of \['max', 'mean'\]\. Received: mode='avg'",
    ):
        MaskedPooling("avg")


# === ZeroMasked ===


def test_zero_masked():
    rng = np.random.default_rng(RNG_SEED)
    sequence = rng.uniform(1.0, 9.0, (2, 4, 3)).astype("float32")
    mask = lengths_mask([3, 1], 4)
    output = numpy_of(ZeroMasked()(sequence, mask=mask))
    np.testing.assert_array_equal(output[mask], sequence[mask])
    np.testing.assert_array_equal(output[~mask], 0.0)


# === PositionEmbedding ===


def test_position_embedding_adds_the_first_rows():
    layer = PositionEmbedding(max_length=6)
    inputs = np.random.default_rng(RNG_SEED).normal(size=(2, 4, 3)).astype("float32")
    output = numpy_of(layer(inputs))
    table = np.asarray(layer.embeddings)
    assert table.shape == (6, 3)
    np.testing.assert_allclose(output, inputs + table[None, :4], atol=1e-6)


def test_position_embedding_rejects_a_too_long_sequence():
    with pytest.raises(
        ValueError, match=r"Sequences of length 6 exceed `max_length=4`"
    ):
        PositionEmbedding(max_length=4)(np.zeros((2, 6, 3), "float32"))


def test_position_embedding_rejects_a_too_long_sequence_after_a_dynamic_build():
    """Built for any length (as in a `keras.Input((None, D))` model), then fed a
    longer sequence: the error should still say what is wrong."""
    layer = PositionEmbedding(max_length=4)
    layer.build((None, None, 3))
    layer(np.zeros((2, 3, 3), "float32"))
    with pytest.raises(
        ValueError, match=r"Sequences of length 6 exceed `max_length=4`"
    ):
        layer(np.zeros((2, 6, 3), "float32"))


# === TransformerEncoder ===


def test_transformer_encoder_padding_invariance():
    rng = np.random.default_rng(RNG_SEED)
    layer = TransformerEncoder(num_heads=2, intermediate_dim=8)
    sequence = rng.normal(size=(3, 5, 4)).astype("float32")
    lengths = [5, 3, 1]
    mask = lengths_mask(lengths, 5)
    reference = numpy_of(layer(sequence, mask=mask))
    assert reference.shape == sequence.shape

    # Garbage in the masked steps, then 3 more masked garbage steps.
    padded = np.concatenate(
        [with_garbage(sequence, mask), rng.uniform(-30, 30, (3, 3, 4))], axis=1
    ).astype("float32")
    padded_mask = np.concatenate([mask, np.zeros((3, 3), bool)], axis=1)
    output = numpy_of(layer(padded, mask=padded_mask))
    assert output.shape == padded.shape
    np.testing.assert_allclose(output[padded_mask], reference[mask], atol=1e-5)
    # Each row equals that row alone, unpadded.
    for row, n in enumerate(lengths):
        alone = numpy_of(layer(sequence[row : row + 1, :n]))
        np.testing.assert_allclose(output[row, :n], alone[0], atol=1e-5)
    # Without the mask the garbage leaks in, so the check above means something.
    leaked = numpy_of(layer(padded))
    assert np.abs(leaked[padded_mask] - reference[mask]).max() > 1e-3


def test_transformer_encoder_width_not_divisible_by_heads():
    with pytest.raises(
        ValueError, match=r"feature size 5 must be divisible by `num_heads=2`"
    ):
        TransformerEncoder(num_heads=2, intermediate_dim=8)(
            np.zeros((1, 3, 5), "float32")
        )


# === ModalityDropout ===


def dropout_batch(batch):
    rng = np.random.default_rng(RNG_SEED)
    # Strictly positive pixels and ids, so a zero can only come from the layer.
    images = rng.uniform(1.0, 255.0, (batch, 2, 2, 3)).astype("float32")
    tokens = rng.integers(1, 20, (batch, 3)).astype("int32")
    return images, tokens


def test_modality_dropout_is_identity_at_inference():
    images, tokens = dropout_batch(64)
    layer = ModalityDropout(0.9)
    for training in (None, False):
        out_images, out_tokens = numpy_of(layer([images, tokens], training=training))
        np.testing.assert_array_equal(out_images, images)
        np.testing.assert_array_equal(out_tokens, tokens)


def test_modality_dropout_in_training():
    batch, rate = 2000, 0.5
    images, tokens = dropout_batch(batch)
    layer = ModalityDropout(rate, seed=3)
    out_images, out_tokens = layer([images, tokens], training=True)
    assert keras.backend.standardize_dtype(out_images.dtype) == "float32"
    assert keras.backend.standardize_dtype(out_tokens.dtype) == "int32"
    out_images, out_tokens = numpy_of((out_images, out_tokens))

    image_kept = (out_images == images).all(axis=(1, 2, 3))
    image_blank = (out_images == 0).all(axis=(1, 2, 3))
    text_kept = (out_tokens == tokens).all(axis=1)
    text_blank = (out_tokens == 0).all(axis=1)
    # Each modality is either untouched or blanked whole...
    assert (image_kept | image_blank).all()
    assert (text_kept | text_blank).all()
    # ... and no example loses both.
    assert not (image_blank & text_blank).any()

    # Binomial(2000, p): 5 standard deviations of tolerance.
    def near(count, p):
        return abs(count - batch * p) <= 5 * np.sqrt(batch * p * (1 - p))

    assert near((image_blank | text_blank).sum(), rate)
    assert near(image_blank.sum(), rate / 2)
    assert near(text_blank.sum(), rate / 2)


def test_modality_dropout_rate_zero_is_identity_in_training():
    images, tokens = dropout_batch(32)
    out_images, out_tokens = numpy_of(
        ModalityDropout(0.0)([images, tokens], training=True)
    )
    np.testing.assert_array_equal(out_images, images)
    np.testing.assert_array_equal(out_tokens, tokens)


def test_modality_dropout_seed_is_reproducible():
    images, tokens = dropout_batch(200)
    first = numpy_of(ModalityDropout(0.5, seed=11)([images, tokens], training=True))
    second = numpy_of(ModalityDropout(0.5, seed=11)([images, tokens], training=True))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    # It did blank rows, and another seed blanks others.
    blanked = np.all(first[0] == 0, axis=(1, 2, 3)) | np.all(first[1] == 0, axis=1)
    assert 50 < blanked.sum() < 150
    other = numpy_of(ModalityDropout(0.5, seed=12)([images, tokens], training=True))
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_modality_dropout_rate_out_of_range(rate):
    with pytest.raises(
        ValueError, match=rf"`rate` must be in \[0, 1\)\. Received: rate={rate}"
    ):
        ModalityDropout(rate)


def test_modality_dropout_symbolic_keeps_dtypes():
    images = keras.Input((2, 2, 3), name="image")
    tokens = keras.Input((3,), dtype="int32", name="tokens")
    out_images, out_tokens = ModalityDropout(0.5)([images, tokens])
    assert out_images.dtype == "float32" and out_tokens.dtype == "int32"
    assert tuple(out_images.shape) == (None, 2, 2, 3)
    assert tuple(out_tokens.shape) == (None, 3)


# === Configuration ===


def _sequence_and_mask():
    rng = np.random.default_rng(RNG_SEED)
    sequence = rng.normal(size=(2, 4, 4)).astype("float32")
    return sequence, lengths_mask([4, 2], 4)


def _config_cases():
    sequence, mask = _sequence_and_mask()
    images, tokens = dropout_batch(3)
    pixels = np.random.default_rng(RNG_SEED).uniform(0, 255, (2, 3, 3, 3))
    pixels = pixels.astype("float32")
    return {
        "image_preprocessing": (lambda: ImagePreprocessing("torch"), pixels, {}),
        "padding_mask": (lambda: PaddingMask(), tokens, {}),
        "masked_pooling_mean": (
            lambda: MaskedPooling("mean"),
            sequence,
            {"mask": mask},
        ),
        "masked_pooling_max": (lambda: MaskedPooling("max"), sequence, {"mask": mask}),
        "zero_masked": (lambda: ZeroMasked(), sequence, {"mask": mask}),
        "position_embedding": (lambda: PositionEmbedding(6), sequence, {}),
        "transformer_encoder": (
            lambda: TransformerEncoder(2, 8, dropout=0.1),
            sequence,
            {"mask": mask},
        ),
        "modality_dropout": (
            lambda: ModalityDropout(0.25, seed=5),
            [images, tokens],
            {},
        ),
    }


CONFIG_CASES = _config_cases()


@pytest.mark.parametrize("key", list(CONFIG_CASES))
def test_get_config_round_trip(key):
    factory, inputs, kwargs = CONFIG_CASES[key]
    layer = factory()
    run_layer_config_test(layer, inputs, **kwargs)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"mmzoo>{type(layer).__name__}"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(layer)
    assert restored.get_config() == config


def test_config_keeps_the_constructor_arguments():
    assert ImagePreprocessing("tf").get_config()["mode"] == "tf"
    assert MaskedPooling("max").get_config()["mode"] == "max"
    assert PositionEmbedding(7).get_config()["max_length"] == 7
    config = TransformerEncoder(2, 8, dropout=0.3).get_config()
    assert (config["num_heads"], config["intermediate_dim"], config["dropout"]) == (
        2,
        8,
        0.3,
    )
    config = ModalityDropout(0.25, seed=5).get_config()
    assert (config["rate"], config["seed"]) == (0.25, 5)
    # The clone keeps raw pixels and token ids uncast.
    assert ModalityDropout.from_config(config).autocast is False


# === recalibrate_batch_norm ===


def test_recalibrate_batch_norm_averages_the_batches():
    from mmzoo.layers import recalibrate_batch_norm

    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, (40, 4)).astype("float32") * [1, 2, 3, 4]
    inner = keras.Sequential([keras.layers.BatchNormalization()], name="tower")
    frozen = keras.layers.BatchNormalization(name="frozen")
    inputs = keras.Input((4,), name="x")
    model = keras.Model({"x": inputs}, frozen(inner(inputs)))
    frozen.trainable = False
    (norm,) = inner.layers
    assert recalibrate_batch_norm(model, {"x": data}, batch_size=10) == 1
    batches = data.reshape(4, 10, 4)
    np.testing.assert_allclose(
        norm.moving_mean.numpy(), batches.mean(1).mean(0), rtol=1e-5
    )
    np.testing.assert_allclose(
        norm.moving_variance.numpy(), batches.var(1).mean(0), rtol=1e-5
    )
    assert norm.momentum == 0.99  # restored
    # A dataset of (features, targets) batches, the last one short.
    dataset = tf.data.Dataset.from_tensor_slices(({"x": data[:35]}, data[:35, 0]))
    assert recalibrate_batch_norm(model, dataset.batch(10)) == 1
    short = [data[start : min(start + 10, 35)] for start in range(0, 35, 10)]
    np.testing.assert_allclose(
        norm.moving_mean.numpy(), np.mean([b.mean(0) for b in short], 0), rtol=1e-5
    )
    np.testing.assert_allclose(
        norm.moving_variance.numpy(), np.mean([b.var(0) for b in short], 0), rtol=1e-5
    )
    # The frozen layer kept its initial statistics.
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), np.zeros(4))
    np.testing.assert_array_equal(frozen.moving_variance.numpy(), np.ones(4))
    # `max_rows`: the batches up to the one that reaches it.
    assert recalibrate_batch_norm(model, {"x": data}, batch_size=10, max_rows=15)
    np.testing.assert_allclose(
        norm.moving_mean.numpy(), batches[:2].mean(1).mean(0), rtol=1e-5
    )
    # A model without trainable BatchNorm: nothing to do.
    assert recalibrate_batch_norm(keras.Sequential([keras.layers.Dense(2)]), data) == 0
    with pytest.raises(ValueError, match="no rows"):
        recalibrate_batch_norm(model, {"x": data[:0]})


def test_fused_batch_norm_trains_as_keras_batch_norm_does():
    # One fused kernel on TensorFlow; the same outputs, gradients and
    # moving statistics as Keras' own layer, whose weights it loads.
    x = tf.random.stateless_normal((8, 5, 5, 6), (RNG_SEED, 1)) * 3.0 + 1.0
    reference = keras.layers.BatchNormalization(momentum=0.9)
    fused = BatchNormalization(momentum=0.9)
    reference.build(x.shape)
    fused.build(x.shape)
    reference.gamma.assign(tf.random.stateless_normal((6,), (RNG_SEED, 2)))
    reference.beta.assign(tf.random.stateless_normal((6,), (RNG_SEED, 3)))
    fused.set_weights(reference.get_weights())
    weights = tf.range(6, dtype=tf.float32)
    outputs, gradients = [], []
    for layer in (reference, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.square(y) * weights)
        outputs.append(y.numpy())
        gradients.append(
            [g.numpy() for g in tape.gradient(loss, [x, layer.gamma, layer.beta])]
        )
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5)
    for mine, theirs in zip(gradients[1], gradients[0], strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4)
    for mine, theirs in zip(fused.weights, reference.weights, strict=True):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), atol=1e-5)
    np.testing.assert_allclose(
        fused(x, training=False).numpy(),
        reference(x, training=False).numpy(),
        atol=1e-5,
    )


def test_fused_batch_norm_falls_back_where_the_kernel_does_not_apply():
    layer = BatchNormalization(momentum=0.0)
    assert isinstance(layer, keras.layers.BatchNormalization)
    # 3-D inputs (a sequence) are Keras' path; its statistics all the same.
    x = tf.random.stateless_normal((4, 7, 3), (RNG_SEED, 4))
    layer(x, training=True)
    mean, variance = tf.nn.moments(x, axes=[0, 1])
    np.testing.assert_allclose(layer.moving_mean.numpy(), mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(
        layer.moving_variance.numpy(), variance.numpy(), atol=1e-5
    )
    restored = BatchNormalization.from_config(layer.get_config())
    assert restored.get_config() == layer.get_config()
