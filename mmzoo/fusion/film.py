"""FiLM: the text modulates the image's channels."""

import keras
from keras import ops

from mmzoo.fusion.base import Fusion


@keras.saving.register_keras_serializable(package="mmzoo")
class FiLMFusion(Fusion):
    """Feature-wise linear modulation of the image by the text.

    Every image cell is projected to `units` channels, `h = W x_cell`; the
    text predicts a scale and a shift per channel, `gamma = 1 + W_g t` and
    `beta = W_b t`, applied to every cell before the non-linearity:
    `relu(gamma * h + beta)`, then averaged over the cells. The question
    thus decides which image features count, and where, before they are
    pooled: the multiplicative interaction that yes/no visual questions
    need. The scale is predicted around 1 (the "1 +"), so an untrained
    model starts from the image's own features.

    Args:
        units: channels of the modulated image features (the fused width).
        dropout: dropout on the fused vector.

    Call arguments:
        inputs: `[image_cells, text]`: `(batch, cells, Di)` (a grid with
            its cells flattened) and `(batch, Dt)` pooled text features.

    Example:

    >>> fused = FiLMFusion(units=16)(
    ...     [keras.ops.ones((2, 9, 8)), keras.ops.ones((2, 4))])
    >>> fused.shape
    (2, 16)

    Reference: Perez et al., "FiLM: Visual Reasoning with a General
    Conditioning Layer", AAAI 2018.
    """

    input_rank = (3, 2)
    max_modalities = 2

    def __init__(self, units=256, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dropout = dropout

    def build_fusion(self, input_shapes):
        image_shape, text_shape = input_shapes
        policy = self.dtype_policy
        self.projection = keras.layers.Dense(
            self.units, dtype=policy, name="projection"
        )
        self.projection.build(image_shape)
        self.scale = keras.layers.Dense(self.units, dtype=policy, name="scale")
        self.shift = keras.layers.Dense(self.units, dtype=policy, name="shift")
        self.scale.build(text_shape)
        self.shift.build(text_shape)
        self.dropout_layer = keras.layers.Dropout(self.dropout)

    def call(self, inputs, masks=None, training=None):
        cells, text = inputs
        hidden = self.projection(cells)
        gamma = 1.0 + self.scale(text)
        beta = self.shift(text)
        modulated = ops.relu(gamma[:, None, :] * hidden + beta[:, None, :])
        return self.dropout_layer(ops.mean(modulated, axis=1), training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "dropout": self.dropout}
