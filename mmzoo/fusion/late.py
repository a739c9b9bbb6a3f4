"""Late fusion: a prediction head per modality, combined at the end."""

import keras
from keras import ops

from mmzoo.checks import check_choice
from mmzoo.fusion.base import Fusion

COMBINES = ("average", "learned", "stacking")


@keras.saving.register_keras_serializable(package="mmzoo")
class LateFusion(Fusion):
    """A head per modality, its logits combined by average, learned weights
    or a stacking layer.

    The output is logits; the model's final activation turns them into
    probabilities. Averaging logits makes a softmax model's prediction the
    normalised geometric mean of the per-modality predictions.

    Args:
        num_outputs: logits per head (the number of classes).
        combine: `"average"`, `"learned"` (softmax weights over modalities,
            returned as modality weights) or `"stacking"` (a Dense layer over
            the concatenated per-modality logits).
        units: width of each head's hidden layer; `None` for none.
            Default 256.
        dropout: dropout before each head's output layer. Default 0.1.
    """

    def __init__(
        self, num_outputs, combine="average", units=256, dropout=0.1, **kwargs
    ):
        super().__init__(**kwargs)
        check_choice("combine", combine, COMBINES)
        self.num_outputs = num_outputs
        self.combine = combine
        self.units = units
        self.dropout = dropout

    @property
    def returns_weights(self):
        return self.combine == "learned"

    def build_fusion(self, input_shapes):
        policy = self.dtype_policy
        count = len(input_shapes)
        self.hidden = []
        self.heads = []
        for index, shape in enumerate(input_shapes):
            width = shape[-1]
            hidden = None
            if self.units:
                hidden = keras.layers.Dense(
                    self.units, activation="relu", dtype=policy, name=f"hidden_{index}"
                )
                hidden.build(shape)
                width = self.units
            head = keras.layers.Dense(
                self.num_outputs, dtype=policy, name=f"logits_{index}"
            )
            head.build((None, width))
            self.hidden.append(hidden)
            self.heads.append(head)
        self.dropout_layer = keras.layers.Dropout(self.dropout)
        if self.combine == "learned":
            self.logits = self.add_weight(
                name="modality_logits", shape=(count,), initializer="zeros"
            )
        elif self.combine == "stacking":
            self.stack = keras.layers.Dense(
                self.num_outputs, dtype=policy, name="stacking"
            )
            self.stack.build((None, count * self.num_outputs))

    def call(self, inputs, masks=None, training=None):
        logits = []
        for hidden, head, x in zip(self.hidden, self.heads, inputs, strict=True):
            if hidden is not None:
                x = hidden(x)
            logits.append(head(self.dropout_layer(x, training=training)))
        if self.combine == "stacking":
            return self.stack(ops.concatenate(logits, axis=-1))
        stacked = ops.stack(logits, axis=1)
        if self.combine == "average":
            return ops.mean(stacked, axis=1)
        weights = ops.cast(ops.softmax(self.logits), stacked.dtype)
        combined = ops.sum(stacked * weights[None, :, None], axis=1)
        batch = ops.shape(combined)[0]
        return combined, ops.broadcast_to(weights[None, :], (batch, len(inputs)))

    def compute_output_shape(self, input_shape):
        batch = input_shape[0][0]
        if self.returns_weights:
            return (batch, self.num_outputs), (batch, len(input_shape))
        return (batch, self.num_outputs)

    def get_config(self):
        return {
            **super().get_config(),
            "num_outputs": self.num_outputs,
            "combine": self.combine,
            "units": self.units,
            "dropout": self.dropout,
        }
