"""Building-block layers shared by towers, fusions and the model builder.

Everything here uses `keras.ops` only, so the layers run on the TensorFlow,
JAX and PyTorch backends. keras-hub has a TransformerEncoder and position
embedding of its own, but importing keras_hub imports TensorFlow, which the
JAX-only benchmark machines do not have; hence the small versions below.
"""

import keras
from keras import ops
from keras.applications import imagenet_utils

PREPROCESSING_MODES = ("caffe", "tf", "torch")


@keras.saving.register_keras_serializable(package="mmzoo")
class ImagePreprocessing(keras.layers.Layer):
    """A keras.applications family's `preprocess_input`, as a layer.

    Keeps the family's own preprocessing inside the model, so the model takes
    raw 0-255 RGB pixels.

    Args:
        mode: `"caffe"` (RGB to BGR, ImageNet mean subtracted: VGG, ResNet),
            `"tf"` (scaled to [-1, 1]: ResNetV2) or `"torch"` (scaled to
            [0, 1], ImageNet mean and std).
    """

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"`mode` must be one of {list(PREPROCESSING_MODES)}. "
                f"Received: mode={mode!r}"
            )
        self.mode = mode

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        return imagenet_utils.preprocess_input(
            images, data_format="channels_last", mode=self.mode
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="mmzoo")
class PaddingMask(keras.layers.Layer):
    """`True` where a token is real, `False` where it is padding (id 0)."""

    def call(self, tokens):
        return ops.not_equal(tokens, 0)

    def compute_output_spec(self, tokens):
        return keras.KerasTensor(tokens.shape, dtype="bool")


@keras.saving.register_keras_serializable(package="mmzoo")
class MaskedPooling(keras.layers.Layer):
    """Mean or max over a sequence's steps, ignoring masked steps.

    An all-masked sequence pools to zeros rather than NaN or -inf.

    Args:
        mode: `"mean"` or `"max"`.

    Call arguments:
        sequence: `(batch, steps, features)`.
        mask: optional `(batch, steps)` boolean; `None` pools every step.
    """

    def __init__(self, mode="mean", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("mean", "max"):
            raise ValueError(
                f"`mode` must be one of ['max', 'mean']. Received: mode={mode!r}"
            )
        self.mode = mode
        self.supports_masking = True

    def call(self, sequence, mask=None):
        if mask is None:
            mask = ops.ones(ops.shape(sequence)[:2], dtype="bool")
        weights = ops.cast(ops.expand_dims(mask, -1), sequence.dtype)
        if self.mode == "mean":
            total = ops.sum(sequence * weights, axis=1)
            count = ops.maximum(ops.sum(weights, axis=1), 1.0)
            return total / count
        lowest = ops.cast(float("-inf"), sequence.dtype)
        masked = ops.where(ops.expand_dims(mask, -1), sequence, lowest)
        pooled = ops.max(masked, axis=1)
        has_any = ops.any(mask, axis=1, keepdims=True)
        return ops.where(has_any, pooled, ops.zeros_like(pooled))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="mmzoo")
class ZeroMasked(keras.layers.Layer):
    """Zero a sequence's masked steps; `mask` is `(batch, steps)` boolean."""

    def call(self, sequence, mask):
        return sequence * ops.cast(ops.expand_dims(mask, -1), sequence.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_mask(self, inputs, mask=None):
        return None


@keras.saving.register_keras_serializable(package="mmzoo")
class PositionEmbedding(keras.layers.Layer):
    """Learned position embeddings added to a sequence of token embeddings.

    Args:
        max_length: the longest sequence the layer accepts.
    """

    def __init__(self, max_length, **kwargs):
        super().__init__(**kwargs)
        self.max_length = int(max_length)

    def build(self, input_shape):
        if input_shape[1] is not None and input_shape[1] > self.max_length:
            raise ValueError(
                f"Sequences of length {input_shape[1]} exceed "
                f"`max_length={self.max_length}`. Received: "
                f"input_shape={input_shape}"
            )
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.max_length, input_shape[-1]),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )

    def call(self, inputs):
        length = ops.shape(inputs)[1]
        if isinstance(length, int) and length > self.max_length:
            raise ValueError(
                f"Sequences of length {length} exceed "
                f"`max_length={self.max_length}`. Received: "
                f"inputs.shape={tuple(inputs.shape)}"
            )
        positions = ops.cast(self.embeddings[:length], self.compute_dtype)
        return inputs + ops.expand_dims(positions, 0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "max_length": self.max_length}


@keras.saving.register_keras_serializable(package="mmzoo")
class TransformerEncoder(keras.layers.Layer):
    """A pre-norm transformer encoder block with a padding mask.

    Args:
        num_heads: attention heads.
        intermediate_dim: width of the feed-forward layer.
        dropout: dropout rate after attention and feed-forward.

    Call arguments:
        sequence: `(batch, steps, features)`.
        mask: optional `(batch, steps)` boolean; padded steps are never
            attended to, so padding cannot change the real steps' outputs.
    """

    def __init__(self, num_heads, intermediate_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.supports_masking = True

    def build(self, input_shape):
        width = input_shape[-1]
        if width % self.num_heads:
            raise ValueError(
                f"The feature size {width} must be divisible by "
                f"`num_heads={self.num_heads}`. Received: input_shape={input_shape}"
            )
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=1e-6, dtype=self.dtype_policy, name="attention_norm"
        )
        self.attention = keras.layers.MultiHeadAttention(
            self.num_heads,
            width // self.num_heads,
            dropout=self.dropout,
            dtype=self.dtype_policy,
            name="attention",
        )
        self.ffn_norm = keras.layers.LayerNormalization(
            epsilon=1e-6, dtype=self.dtype_policy, name="ffn_norm"
        )
        self.ffn_inner = keras.layers.Dense(
            self.intermediate_dim,
            activation="gelu",
            dtype=self.dtype_policy,
            name="ffn_inner",
        )
        self.ffn_outer = keras.layers.Dense(
            width, dtype=self.dtype_policy, name="ffn_outer"
        )
        self.dropout_layer = keras.layers.Dropout(self.dropout)
        self.attention_norm.build(input_shape)
        self.attention.build(input_shape, input_shape)
        self.ffn_norm.build(input_shape)
        self.ffn_inner.build(input_shape)
        self.ffn_outer.build((*input_shape[:-1], self.intermediate_dim))

    def call(self, sequence, mask=None, training=None):
        attention_mask = None
        if mask is not None:
            # (batch, 1, steps): every query may look at every real key.
            attention_mask = ops.expand_dims(mask, 1)
        x = self.attention_norm(sequence)
        x = self.attention(x, x, attention_mask=attention_mask, training=training)
        sequence = sequence + self.dropout_layer(x, training=training)
        x = self.ffn_outer(self.ffn_inner(self.ffn_norm(sequence)))
        return sequence + self.dropout_layer(x, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "dropout": self.dropout,
        }


@keras.saving.register_keras_serializable(package="mmzoo")
class ModalityDropout(keras.layers.Layer):
    """While training, blank a whole modality of some examples at random.

    With probability `rate` an example loses exactly one of its modalities,
    chosen uniformly: its image becomes all zeros (a black image) or its
    tokens become all padding (an empty text). At inference the layer passes
    its inputs through, so a model trained with it still answers when an
    image or a text is missing and sent blank in the same way.

    Args:
        rate: probability, in [0, 1), that an example loses a modality.
        seed: optional seed.

    Call arguments:
        inputs: `[images, tokens]`; returned in the same order.
    """

    def __init__(self, rate, seed=None, **kwargs):
        # Raw pixels and token ids pass through in their own dtypes.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"`rate` must be in [0, 1). Received: rate={rate}")
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        images, tokens = inputs
        if not training or self.rate == 0.0:
            return images, tokens
        batch = ops.shape(images)[0]
        draw = keras.random.uniform((batch,), seed=self.seed_generator)
        # draw < rate / 2 drops the image, rate / 2 <= draw < rate the text.
        drop_image = ops.less(draw, self.rate / 2)
        drop_text = ops.logical_and(
            ops.greater_equal(draw, self.rate / 2), ops.less(draw, self.rate)
        )
        images = ops.where(
            ops.reshape(drop_image, (-1, 1, 1, 1)), ops.zeros_like(images), images
        )
        tokens = ops.where(
            ops.reshape(drop_text, (-1, 1)), ops.zeros_like(tokens), tokens
        )
        return images, tokens

    def compute_output_spec(self, inputs, training=None):
        images, tokens = inputs
        return (
            keras.KerasTensor(images.shape, dtype=images.dtype),
            keras.KerasTensor(tokens.shape, dtype=tokens.dtype),
        )

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="mmzoo")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization`, trained with TensorFlow's fused
    kernel where it can be.

    Keras 3 normalises a training batch with separate ops for the mean,
    the variance and the normalisation, each with its own gradient; on CPU
    that made up a third of `small_cnn`'s training step (easy-VQA at 32 px,
    batch 64: 28 ms against 19 ms with `tf.nn.fused_batch_norm`, see
    benchmarks/RESULTS.md). This layer takes the fused kernel for a
    training call on the TensorFlow backend with float32, 4-D,
    channels-last inputs and no mask, renorm or cross-replica
    synchronisation, and is Keras' own layer everywhere else: the same
    arguments, weights and moving-statistics update, the same inference
    (so exports are unchanged), and any backend.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self._fusable(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            self.gamma if self.scale else tf.ones_like(self.moving_mean),
            self.beta if self.center else tf.zeros_like(self.moving_mean),
            epsilon=self.epsilon,
            is_training=True,
        )
        # The kernel returns the unbiased batch variance (for its own
        # moving average) but normalises with the biased one, which is
        # what Keras averages: undo Bessel's correction.
        count = ops.cast(ops.size(inputs) // ops.shape(inputs)[-1], "float32")
        variance = variance * ops.maximum(count - 1.0, 0.0) / count
        self.moving_mean.assign(
            self.moving_mean * self.momentum + mean * (1.0 - self.momentum)
        )
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
        )
        return outputs

    def _fusable(self, inputs, mask):
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and keras.backend.standardize_dtype(inputs.dtype) == "float32"
            # The kernel's smallest epsilon.
            and self.epsilon >= 1.001e-5
        )


def recalibrate_batch_norm(model, inputs, batch_size=256, max_rows=None):
    """Set BatchNorm's moving statistics to the average over `inputs`.

    During training, `BatchNormalization` keeps an exponential moving
    average of its batch statistics (momentum 0.99: about the last hundred
    steps), taken while the weights below it were still changing, so at
    inference it may normalise with statistics no current batch has.
    Classification heads tolerate that; cosine similarities of a dual
    encoder do not: on easy-VQA, inference-mode image embeddings leaned
    towards one direction (mean pairwise cosine 0.76 against 0.39 in
    training mode), and image-to-text Recall@1 fell from 0.51 to 0.26.
    This runs the data through the model once, in training mode (a
    compiled call on TensorFlow), and sets each trainable BatchNorm
    layer's moving mean and variance to the plain average of the batches'
    ("precise BN", as
    in Wu & Johnson, "Rethinking BatchNorm", 2021). Nothing else changes:
    no weight is trained, and frozen BatchNorm layers (which Keras runs in
    inference mode) are left alone.

    Args:
        model: a Keras model, nested models included.
        inputs: the model's inputs as arrays (a dict of them for named
            inputs), e.g. a sample of the training set, or a `tf.data`
            dataset of batches (of inputs, or `(inputs, targets)` pairs).
        batch_size: rows per batch of arrays: large batches estimate each
            batch's statistics well.
        max_rows: stop after the batch that reaches this many rows (`None`:
            all of `inputs`).

    Returns:
        How many BatchNorm layers were recalibrated.

    Example:

    >>> model.fit(train_inputs, epochs=10)
    >>> mmzoo.layers.recalibrate_batch_norm(model, train_inputs)
    3
    """
    layers = [
        layer
        for layer in _all_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    # With momentum 0 a training-mode call leaves each batch's own
    # statistics in the moving ones; the step adds them to running sums,
    # divided at the end. (Changing the momentum per batch instead would
    # retrace a compiled call each batch: it is a Python float.)
    sums = [ops.zeros_like(v) for layer in layers for v in _statistics(layer)]
    seen = 0
    try:
        for layer in layers:
            layer.momentum = 0.0
        step = _statistics_step(model, layers)
        rows = 0
        for batch in _batches(inputs, batch_size):
            sums = step(batch, sums)
            seen += 1
            rows += int(ops.shape(keras.tree.flatten(batch)[0])[0])
            if max_rows is not None and rows >= max_rows:
                break
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    if not seen:
        raise ValueError("`inputs` holds no rows to recalibrate BatchNorm with.")
    for index, layer in enumerate(layers):
        layer.moving_mean.assign(ops.divide(sums[2 * index], seen))
        layer.moving_variance.assign(ops.divide(sums[2 * index + 1], seen))
    return len(layers)


def _statistics(layer):
    return layer.moving_mean, layer.moving_variance


def _statistics_step(model, layers):
    """A call of `model` in training mode that adds the BatchNorm layers'
    moving statistics after it to `sums`; compiled on TensorFlow (an eager
    call per batch took as long as an epoch of training on easy-VQA's
    small_cnn)."""

    def step(batch, sums):
        model(batch, training=True)
        # New tensors, not reads that could share the variables' memory.
        statistics = [v for layer in layers for v in _statistics(layer)]
        return [ops.add(a, b) for a, b in zip(sums, statistics, strict=True)]

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(step, reduce_retracing=True)
    return step


def _batches(inputs, batch_size):
    """The model-input batches of arrays or of a dataset of batches."""
    if _is_dataset(inputs):
        for element in inputs:
            # `(features, targets)` pairs give their features.
            yield element[0] if isinstance(element, tuple) else element
        return
    arrays = inputs if isinstance(inputs, dict) else {None: inputs}
    count = len(next(iter(arrays.values())))
    for start in range(0, count, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in arrays.items()}
        yield batch if None not in batch else batch[None]


def _is_dataset(value):
    return type(value).__module__.startswith("tensorflow") and hasattr(
        value, "element_spec"
    )


def _all_layers(layer):
    """`layer` and every layer inside it, nested models included."""
    yield layer
    for inner in getattr(layer, "layers", ()):
        yield from _all_layers(inner)
