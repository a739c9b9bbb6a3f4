"""Fusions of pooled features, one (batch, D) vector per modality."""

import keras
from keras import ops

from mmzoo.fusion.base import Fusion


def _dense(units, name, layer, activation=None, use_bias=True):
    return keras.layers.Dense(
        units,
        activation=activation,
        use_bias=use_bias,
        dtype=layer.dtype_policy,
        name=name,
    )


def _build_each(layers, shapes):
    for layer, shape in zip(layers, shapes, strict=True):
        layer.build(shape)


@keras.saving.register_keras_serializable(package="mmzoo")
class ConcatFusion(Fusion):
    """Early fusion: concatenate the modalities, optionally project.

    Args:
        units: width of a Dense projection of the concatenation; `None`
            for the concatenation itself. Default 256.
        activation: the projection's activation.

    Example:

    >>> fused = ConcatFusion(units=32)([keras.ops.ones((2, 8)),
    ...                                 keras.ops.ones((2, 4))])
    >>> fused.shape
    (2, 32)
    """

    def __init__(self, units=256, activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = activation

    def build_fusion(self, input_shapes):
        self.projection = None
        if self.units:
            self.projection = _dense(
                self.units, "projection", self, activation=self.activation
            )
            width = sum(shape[-1] for shape in input_shapes)
            self.projection.build((None, width))

    def call(self, inputs, masks=None, training=None):
        fused = ops.concatenate(list(inputs), axis=-1)
        if self.projection is not None:
            fused = self.projection(fused)
        return fused

    def compute_output_shape(self, input_shape):
        width = self.units or sum(shape[-1] for shape in input_shape)
        return (input_shape[0][0], width)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": self.activation,
        }


@keras.saving.register_keras_serializable(package="mmzoo")
class WeightedSumFusion(Fusion):
    """Project every modality to `units` and sum them with weights λ.

    Args:
        units: width of the projections and of the fused vector.
        modality_weights: fixed λ per modality (a list, e.g. `[0.7, 0.3]`),
            or `None` to learn them as a softmax over one logit per modality.

    Returns `(fused, modality_weights)`.
    """

    def __init__(self, units=256, modality_weights=None, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.modality_weights = (
            None if modality_weights is None else [float(w) for w in modality_weights]
        )

    @property
    def returns_weights(self):
        return True

    def build_fusion(self, input_shapes):
        count = len(input_shapes)
        fixed = self.modality_weights
        if fixed is not None and len(fixed) != count:
            raise ValueError(
                f"`modality_weights` needs one λ per modality ({count}). "
                f"Received: modality_weights={fixed}"
            )
        self.projections = [
            _dense(self.units, f"projection_{i}", self) for i in range(count)
        ]
        _build_each(self.projections, input_shapes)
        if self.modality_weights is None:
            self.logits = self.add_weight(
                name="modality_logits", shape=(count,), initializer="zeros"
            )

    def _lambdas(self):
        if self.modality_weights is None:
            return ops.softmax(self.logits)
        return ops.convert_to_tensor(self.modality_weights, dtype=self.compute_dtype)

    def call(self, inputs, masks=None, training=None):
        projected = ops.stack(
            [layer(x) for layer, x in zip(self.projections, inputs, strict=True)],
            axis=1,
        )
        lambdas = ops.cast(self._lambdas(), projected.dtype)
        fused = ops.sum(projected * lambdas[None, :, None], axis=1)
        batch = ops.shape(fused)[0]
        weights = ops.broadcast_to(lambdas[None, :], (batch, len(inputs)))
        return fused, weights

    def compute_output_shape(self, input_shape):
        batch = input_shape[0][0]
        return (batch, self.units), (batch, len(input_shape))

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "modality_weights": self.modality_weights,
        }


@keras.saving.register_keras_serializable(package="mmzoo")
class GatedFusion(Fusion):
    """The Gated Multimodal Unit (Arevalo et al., 2017).

    Each modality becomes `h_m = tanh(W_m x_m)`; a gate computed from all the
    inputs together, `z = softmax_m(W_z [x_1, ..., x_M])` per unit, mixes
    them: `h = sum_m z_m * h_m`. With two modalities this is the paper's
    `z * h_v + (1 - z) * h_t` with `z = sigmoid(.)`, since
    `softmax([a, b])[0] = sigmoid(a - b)`.

    Args:
        units: width of the fused vector.

    Returns `(fused, modality_weights)`, the weights being each modality's
    gate averaged over the units.

    Reference: Arevalo et al., "Gated Multimodal Units for Information
    Fusion", ICLR workshop 2017.
    """

    def __init__(self, units=256, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    @property
    def returns_weights(self):
        return True

    def build_fusion(self, input_shapes):
        count = len(input_shapes)
        self.projections = [
            _dense(self.units, f"hidden_{i}", self, activation="tanh")
            for i in range(count)
        ]
        _build_each(self.projections, input_shapes)
        self.gate = _dense(self.units * count, "gate", self)
        self.gate.build((None, sum(shape[-1] for shape in input_shapes)))

    def call(self, inputs, masks=None, training=None):
        count = len(inputs)
        hidden = ops.stack(
            [layer(x) for layer, x in zip(self.projections, inputs, strict=True)],
            axis=1,
        )
        logits = self.gate(ops.concatenate(list(inputs), axis=-1))
        gates = ops.softmax(ops.reshape(logits, (-1, count, self.units)), axis=1)
        fused = ops.sum(gates * hidden, axis=1)
        return fused, ops.mean(gates, axis=-1)

    def compute_output_shape(self, input_shape):
        batch = input_shape[0][0]
        return (batch, self.units), (batch, len(input_shape))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="mmzoo")
class ModalityAttentionFusion(Fusion):
    """Softmax attention over modalities.

    Each modality is projected, `h_m = tanh(W_m x_m)`, and scored,
    `s_m = v . tanh(U h_m)`; the fused vector is `sum_m softmax(s)_m h_m`.
    The attention weights tell, per example, how much each modality counted.

    Args:
        units: width of the projections and of the fused vector.

    Returns `(fused, modality_weights)`.
    """

    def __init__(self, units=256, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    @property
    def returns_weights(self):
        return True

    def build_fusion(self, input_shapes):
        self.projections = [
            _dense(self.units, f"projection_{i}", self, activation="tanh")
            for i in range(len(input_shapes))
        ]
        _build_each(self.projections, input_shapes)
        self.score_hidden = _dense(self.units, "score_hidden", self, "tanh")
        self.score_hidden.build((None, None, self.units))
        self.score = _dense(1, "score", self, use_bias=False)
        self.score.build((None, None, self.units))

    def call(self, inputs, masks=None, training=None):
        hidden = ops.stack(
            [layer(x) for layer, x in zip(self.projections, inputs, strict=True)],
            axis=1,
        )
        scores = ops.squeeze(self.score(self.score_hidden(hidden)), axis=-1)
        weights = ops.softmax(scores, axis=-1)
        fused = ops.sum(hidden * weights[:, :, None], axis=1)
        return fused, weights

    def compute_output_shape(self, input_shape):
        batch = input_shape[0][0]
        return (batch, self.units), (batch, len(input_shape))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="mmzoo")
class BilinearFusion(Fusion):
    """Low-rank bilinear pooling (MFB, Yu et al. 2017; LMF-style for M > 2).

    Every modality is projected to `units * rank`; the projections are
    multiplied elementwise, summed over each group of `rank`, then
    power-normalised (signed square root) and L2-normalised.

    Args:
        units: width of the fused vector.
        rank: factors per output unit (MFB's k).
        dropout: dropout on the elementwise product.

    Reference: Yu et al., "Multi-modal Factorized Bilinear Pooling with
    Co-Attention Learning for Visual Question Answering", ICCV 2017.
    """

    def __init__(self, units=256, rank=4, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.rank = rank
        self.dropout = dropout

    def build_fusion(self, input_shapes):
        self.projections = [
            _dense(self.units * self.rank, f"factor_{i}", self)
            for i in range(len(input_shapes))
        ]
        _build_each(self.projections, input_shapes)
        self.dropout_layer = keras.layers.Dropout(self.dropout)

    def call(self, inputs, masks=None, training=None):
        product = None
        for layer, x in zip(self.projections, inputs, strict=True):
            factor = layer(x)
            product = factor if product is None else product * factor
        product = self.dropout_layer(product, training=training)
        pooled = ops.sum(ops.reshape(product, (-1, self.units, self.rank)), -1)
        # Normalise in float32: the square root's epsilon underflows float16.
        pooled = ops.cast(pooled, "float32")
        pooled = ops.sign(pooled) * ops.sqrt(ops.abs(pooled) + 1e-8)
        pooled = pooled / ops.maximum(ops.norm(pooled, axis=-1, keepdims=True), 1e-6)
        return ops.cast(pooled, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "rank": self.rank,
            "dropout": self.dropout,
        }
