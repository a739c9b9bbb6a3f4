"""Bidirectional co-attention between image grid cells and text tokens."""

import keras
from keras import ops

from mmzoo.fusion.base import Fusion
from mmzoo.layers import MaskedPooling


@keras.saving.register_keras_serializable(package="mmzoo")
class CrossAttentionFusion(Fusion):
    """Bidirectional multi-head co-attention (ViLBERT-style co-TRM blocks).

    Both sequences are projected to `units`. In every layer the image cells
    attend to the tokens and the tokens attend to the image cells, each
    stream with a residual connection, layer norm and a feed-forward block.
    Padded tokens are never attended to and are left out of the final
    pooling, so padding cannot change the output. The result is the masked
    mean of each stream, concatenated: `(batch, 2 * units)`.

    Args:
        units: width of both streams (128: its cost grows with the
            square, see `benchmarks/RESULTS.md`).
        num_heads: attention heads.
        num_layers: co-attention layers.
        dropout: dropout rate in attention and feed-forward blocks.

    Call arguments:
        inputs: `[image_cells, tokens]`, `(batch, cells, Di)` and
            `(batch, steps, Dt)`.
        masks: `[image_mask, text_mask]`, each `(batch, steps)` boolean or
            `None` (no padding).

    Reference: Lu et al., "ViLBERT: Pretraining Task-Agnostic Visiolinguistic
    Representations for Vision-and-Language Tasks", NeurIPS 2019.
    """

    input_rank = 3
    max_modalities = 2

    def __init__(self, units=128, num_heads=4, num_layers=1, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        if units % num_heads:
            raise ValueError(
                f"`units` must be divisible by `num_heads`. Received: "
                f"units={units}, num_heads={num_heads}"
            )
        self.units = units
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.dropout = dropout

    def build_fusion(self, input_shapes):
        self.projections = []
        for index, shape in enumerate(input_shapes):
            projection = keras.layers.Dense(
                self.units, dtype=self.dtype_policy, name=f"projection_{index}"
            )
            projection.build(shape)
            self.projections.append(projection)
        self.image_blocks = [
            self._block(f"image_block_{i}") for i in range(self.num_layers)
        ]
        self.text_blocks = [
            self._block(f"text_block_{i}") for i in range(self.num_layers)
        ]
        self.pool = MaskedPooling("mean", dtype=self.dtype_policy)

    def _block(self, name):
        block = CrossAttentionBlock(
            self.num_heads,
            2 * self.units,
            dropout=self.dropout,
            dtype=self.dtype_policy,
            name=name,
        )
        block.build((None, None, self.units))
        return block

    def call(self, inputs, masks=None, training=None):
        image_mask, text_mask = masks if masks is not None else (None, None)
        image, text = (
            layer(x) for layer, x in zip(self.projections, inputs, strict=True)
        )
        for image_block, text_block in zip(
            self.image_blocks, self.text_blocks, strict=True
        ):
            image, text = (
                image_block(image, text, key_mask=text_mask, training=training),
                text_block(text, image, key_mask=image_mask, training=training),
            )
        return ops.concatenate(
            [self.pool(image, mask=image_mask), self.pool(text, mask=text_mask)],
            axis=-1,
        )

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 2 * self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "dropout": self.dropout,
        }


@keras.saving.register_keras_serializable(package="mmzoo")
class CrossAttentionBlock(keras.layers.Layer):
    """Queries attend to keys, then a feed-forward block (post-norm).

    Args:
        num_heads: attention heads.
        intermediate_dim: width of the feed-forward layer.
        dropout: dropout rate after attention and feed-forward.

    Call arguments:
        query: `(batch, queries, D)`.
        keys: `(batch, keys, D)`.
        key_mask: optional `(batch, keys)` boolean; masked keys are never
            attended to.
    """

    def __init__(self, num_heads, intermediate_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout

    def build(self, query_shape, keys_shape=None):
        width = query_shape[-1]
        policy = self.dtype_policy
        self.attention = keras.layers.MultiHeadAttention(
            self.num_heads,
            width // self.num_heads,
            dropout=self.dropout,
            dtype=policy,
            name="attention",
        )
        self.attention.build(query_shape, keys_shape or query_shape)
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=1e-6, dtype=policy, name="attention_norm"
        )
        self.ffn_inner = keras.layers.Dense(
            self.intermediate_dim, activation="gelu", dtype=policy, name="ffn_inner"
        )
        self.ffn_outer = keras.layers.Dense(width, dtype=policy, name="ffn_outer")
        self.ffn_norm = keras.layers.LayerNormalization(
            epsilon=1e-6, dtype=policy, name="ffn_norm"
        )
        self.attention_norm.build(query_shape)
        self.ffn_inner.build(query_shape)
        self.ffn_outer.build((*query_shape[:-1], self.intermediate_dim))
        self.ffn_norm.build(query_shape)
        self.dropout_layer = keras.layers.Dropout(self.dropout)

    def call(self, query, keys, key_mask=None, training=None):
        attention_mask = None
        if key_mask is not None:
            attention_mask = ops.expand_dims(key_mask, 1)
        attended = self.attention(
            query, keys, attention_mask=attention_mask, training=training
        )
        x = self.attention_norm(query + self.dropout_layer(attended, training=training))
        inner = self.ffn_outer(self.ffn_inner(x))
        return self.ffn_norm(x + self.dropout_layer(inner, training=training))

    def compute_output_shape(self, query_shape, keys_shape=None):
        return query_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "dropout": self.dropout,
        }
