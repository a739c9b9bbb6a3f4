"""The captioner: an image tower's grid read by a transformer decoder.

`build_captioner` takes any registered image tower without its pooling (its
grid of cells, `(batch, h, w, C)`), projects the cells to the decoder's
width and adds a learned position per cell: that is the image `memory`.
A `CaptionDecoder` (token and position embeddings, `layers` pre-norm blocks
of causal self-attention, cross-attention to the image cells and a
feed-forward network, a final norm and an output projection, optionally
tied to the token embedding) predicts the next word at every position.

The model's inputs are `build_model`'s, `{"image", "tokens"}`, where
`tokens` are the caption's word ids as the run's `WordTokenizer` makes them
(`mmzoo.captioning.vocabulary`): the model shifts them right behind
`[START]` itself, and its loss (`Captioner.compute_loss`) reads the targets
from the same tokens, with `[END]` after the last word: teacher forcing
needs no targets in the data, and every row of a manifest (one caption of
one image) is one training example.

Everything is in `keras.ops`, so the JAX backend builds and trains it too.
Decoding lives in `mmzoo.captioning.decoding`; the decoder's `step` with its
key/value cache is what makes decoding cost grow linearly with length.
"""

import math

import keras
from keras import ops

from mmzoo import registry
from mmzoo.captioning.vocabulary import END_ID
from mmzoo.captioning.vocabulary import PAD_ID
from mmzoo.captioning.vocabulary import START_ID
from mmzoo.checks import check_choice
from mmzoo.checks import plain_data
from mmzoo.towers.image import build_image_tower
from mmzoo.towers.image import check_image_size

DECODERS = ("transformer",)

# Every argument `build_captioner` takes, with its default. `text_tower` and
# `max_tokens`, `vocab_size` keep `mmzoo train`'s names: the run's word
# tokenizer makes the tokens, and its vocabulary is the decoder's.
DEFAULTS = {
    "image_tower": "small_cnn",
    "image_size": 224,
    "image_weights": None,
    "freeze_image_tower": False,
    "image_trainable_layers": None,
    "image_filters": (32, 64, 128),
    "text_tower": None,
    "decoder": "transformer",
    "vocab_size": 20000,
    "vocabulary": None,
    "max_tokens": 24,
    "decoder_dim": 128,
    "decoder_layers": 2,
    "decoder_heads": 4,
    "decoder_ffn_dim": None,
    "decoder_dropout": 0.1,
    "tie_embeddings": False,
    "label_smoothing": 0.0,
    "seed": None,
    "compile": True,
    "learning_rate": 1e-3,
    "name": None,
}

# The score of what may not be chosen (masked attention, banned tokens,
# beams not yet open): finite, so that sums of scores and softmaxes over
# masked entries stay numbers (-inf would give inf - inf = NaN).
NEG_INF = -1e9


def _attend(query, key, value, mask=None):
    """Scaled dot-product attention of `(batch, heads, q, d)` on `(batch,
    heads, k, d)`; `mask` broadcasts to `(batch, heads, q, k)`, True keeps."""
    # float32 whatever the policy: the decoding cache is float32.
    query, key, value = (ops.cast(t, "float32") for t in (query, key, value))
    scale = 1.0 / math.sqrt(query.shape[-1])
    scores = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2))) * scale
    if mask is not None:
        scores = ops.where(mask, scores, NEG_INF)
    return ops.matmul(ops.softmax(scores, axis=-1), value)


@keras.saving.register_keras_serializable(package="mmzoo")
class CellPositions(keras.layers.Layer):
    """Adds a learned position vector to each image cell, `(batch, cells,
    dim)` in and out."""

    def build(self, input_shape):
        self.positions = self.add_weight(
            shape=tuple(input_shape[1:]),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="positions",
        )

    def call(self, inputs):
        return inputs + ops.cast(self.positions, inputs.dtype)[None]


@keras.saving.register_keras_serializable(package="mmzoo")
class ShiftRight(keras.layers.Layer):
    """Caption word ids `(batch, T)` to decoder inputs: `[START]` then the
    first `T - 1` ids (teacher forcing)."""

    def call(self, tokens):
        tokens = ops.cast(tokens, "int32")
        start = ops.full_like(tokens[:, :1], START_ID)
        return ops.concatenate([start, tokens[:, :-1]], axis=1)


def caption_targets(tokens):
    """The next-word targets of caption word ids `(batch, T)`: the ids with
    `[END]` after the last word (where it fits), padding 0 after it."""
    tokens = ops.cast(tokens, "int32")
    length = ops.sum(ops.cast(ops.not_equal(tokens, PAD_ID), "int32"), axis=1)
    end = ops.one_hot(length, tokens.shape[1], dtype="int32") * END_ID
    return tokens + end


@keras.saving.register_keras_serializable(package="mmzoo")
class CaptionDecoder(keras.layers.Layer):
    """A transformer decoder over image cells, with a key/value cache.

    Args:
        vocab_size: the number of token ids (the output's width).
        max_length: the longest decoder input (positions).
        dim: the model width (the image memory's width too).
        num_layers: decoder blocks.
        num_heads: attention heads (must divide `dim`).
        ffn_dim: the feed-forward width (default `4 * dim`).
        dropout: after attention and the feed-forward network, training only.
        tie_embeddings: the output projection is the token embedding's
            transpose (plus a bias) instead of a Dense of its own.

    Call arguments:
        tokens: int decoder inputs `(batch, T)`, `T <= max_length`.
        memory: the image cells `(batch, cells, dim)`.

    Returns (of a call):
        float32 next-token logits `(batch, T, vocab_size)`.

    Decoding one token at a time (`mmzoo.captioning.decoding`):
    `cross_cache(memory)` projects the cells to keys and values once,
    `empty_cache(batch)` makes the self-attention cache, and `step(token,
    position, cache, cross)` returns one position's logits and the updated
    cache. The cache has `max_length` slots, filled as decoding proceeds
    (written with a one-hot mask: builtin ops only, so the step converts
    to TFLite), so each step costs the same and decoding grows linearly.
    """

    def __init__(
        self,
        vocab_size,
        max_length,
        dim=128,
        num_layers=2,
        num_heads=4,
        ffn_dim=None,
        dropout=0.1,
        tie_embeddings=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(
                "`decoder_heads` must divide `decoder_dim`. Received: "
                f"decoder_dim={dim}, decoder_heads={num_heads}"
            )
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.dim = dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.dropout = dropout
        self.tie_embeddings = tie_embeddings
        self.head_dim = dim // num_heads
        width = ffn_dim or 4 * dim
        dense = keras.layers.Dense
        norm = keras.layers.LayerNormalization
        self.blocks = []
        for index in range(num_layers):
            block = {
                "self_norm": norm(epsilon=1e-5, name=f"block{index}_self_norm"),
                "self_q": dense(dim, name=f"block{index}_self_query"),
                "self_k": dense(dim, name=f"block{index}_self_key"),
                "self_v": dense(dim, name=f"block{index}_self_value"),
                "self_o": dense(dim, name=f"block{index}_self_output"),
                "cross_norm": norm(epsilon=1e-5, name=f"block{index}_cross_norm"),
                "cross_q": dense(dim, name=f"block{index}_cross_query"),
                "cross_k": dense(dim, name=f"block{index}_cross_key"),
                "cross_v": dense(dim, name=f"block{index}_cross_value"),
                "cross_o": dense(dim, name=f"block{index}_cross_output"),
                "ffn_norm": norm(epsilon=1e-5, name=f"block{index}_ffn_norm"),
                "ffn_in": dense(width, activation="gelu", name=f"block{index}_ffn_in"),
                "ffn_out": dense(dim, name=f"block{index}_ffn_out"),
            }
            self.blocks.append(block)
        self.final_norm = norm(epsilon=1e-5, name="final_norm")
        self.output_projection = (
            None if tie_embeddings else dense(vocab_size, name="output_projection")
        )
        self.drop = keras.layers.Dropout(dropout)

    def build(self, tokens_shape, memory_shape=None):
        self.token_embedding = self.add_weight(
            shape=(self.vocab_size, self.dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="token_embedding",
        )
        self.position_embedding = self.add_weight(
            shape=(self.max_length, self.dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="position_embedding",
        )
        if self.tie_embeddings:
            self.output_bias = self.add_weight(
                shape=(self.vocab_size,), initializer="zeros", name="output_bias"
            )
        sequence = (None, None, self.dim)
        for block in self.blocks:
            for key, layer in block.items():
                if key == "ffn_out":
                    layer.build((None, None, self.ffn_dim or 4 * self.dim))
                else:
                    layer.build(sequence)
        self.final_norm.build(sequence)
        if self.output_projection is not None:
            self.output_projection.build(sequence)

    # === Shapes ===

    def _split(self, x):
        """`(batch, T, dim)` to `(batch, heads, T, head_dim)`."""
        batch = ops.shape(x)[0]
        x = ops.reshape(x, (batch, -1, self.num_heads, self.head_dim))
        return ops.transpose(x, (0, 2, 1, 3))

    def _merge(self, x):
        batch = ops.shape(x)[0]
        return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (batch, -1, self.dim))

    def _logits(self, x):
        x = self.final_norm(x)
        if self.tie_embeddings:
            logits = (
                ops.matmul(x, ops.transpose(self.token_embedding)) + self.output_bias
            )
        else:
            logits = self.output_projection(x)
        return ops.cast(logits, "float32")

    def _feed_forward(self, block, x, training):
        return x + self.drop(
            block["ffn_out"](block["ffn_in"](block["ffn_norm"](x))), training=training
        )

    # === Training: a whole sequence ===

    def call(self, tokens, memory, training=None):
        tokens = ops.cast(tokens, "int32")
        length = tokens.shape[1]
        x = ops.take(self.token_embedding, tokens, axis=0)
        x = x + self.position_embedding[None, :length]
        x = ops.cast(x, self.compute_dtype)
        causal = ops.tril(ops.ones((length, length), dtype="bool"))[None, None]
        for block in self.blocks:
            h = block["self_norm"](x)
            attended = _attend(
                self._split(block["self_q"](h)),
                self._split(block["self_k"](h)),
                self._split(block["self_v"](h)),
                causal,
            )
            x = x + self.drop(block["self_o"](self._merge(attended)), training=training)
            h = block["cross_norm"](x)
            attended = _attend(
                self._split(block["cross_q"](h)),
                self._split(block["cross_k"](memory)),
                self._split(block["cross_v"](memory)),
            )
            x = x + self.drop(
                block["cross_o"](self._merge(attended)), training=training
            )
            x = self._feed_forward(block, x, training)
        return self._logits(x)

    # === Decoding: one position at a time ===

    def cross_cache(self, memory):
        """The image cells' keys and values for every block, computed once:
        `(keys, values)`, each `(layers, batch, heads, cells, head_dim)`."""
        keys = [self._split(block["cross_k"](memory)) for block in self.blocks]
        values = [self._split(block["cross_v"](memory)) for block in self.blocks]
        return (
            ops.cast(ops.stack(keys), "float32"),
            ops.cast(ops.stack(values), "float32"),
        )

    def empty_cache(self, batch):
        """The self-attention cache before the first step: `(keys,
        values)`, zeros of `(layers, batch, heads, max_length, head_dim)`."""
        shape = (self.num_layers, batch, self.num_heads, self.max_length, self.head_dim)
        return ops.zeros(shape, "float32"), ops.zeros(shape, "float32")

    def step(self, token, position, cache, cross):
        """One decoding step for a batch.

        Args:
            token: int `(batch,)`, the input at `position` (`[START]` at 0).
            position: an int scalar.
            cache: `(keys, values)` from `empty_cache` or the last step.
            cross: `(keys, values)` from `cross_cache`.

        Returns:
            `(logits (batch, vocab_size), cache)`.
        """
        position = ops.cast(position, "int32")
        x = ops.take(self.token_embedding, ops.cast(token, "int32"), axis=0)
        x = x + ops.take(self.position_embedding, position, axis=0)[None]
        x = ops.cast(x[:, None], self.compute_dtype)  # (batch, 1, dim)
        # The slot this step writes, and the slots it may read (<= position).
        slot = ops.one_hot(position, self.max_length, dtype="float32")
        slot = ops.reshape(slot, (1, 1, self.max_length, 1))
        visible = ops.arange(self.max_length) <= position
        visible = ops.reshape(visible, (1, 1, 1, self.max_length))
        cache_keys, cache_values = cache
        cross_keys, cross_values = cross
        new_keys, new_values = [], []
        for index, block in enumerate(self.blocks):
            h = block["self_norm"](x)
            key = ops.cast(self._split(block["self_k"](h)), "float32")
            value = ops.cast(self._split(block["self_v"](h)), "float32")
            keys = cache_keys[index] * (1.0 - slot) + key * slot
            values = cache_values[index] * (1.0 - slot) + value * slot
            new_keys.append(keys)
            new_values.append(values)
            attended = _attend(self._split(block["self_q"](h)), keys, values, visible)
            x = x + block["self_o"](self._merge(attended))
            h = block["cross_norm"](x)
            attended = _attend(
                self._split(block["cross_q"](h)), cross_keys[index], cross_values[index]
            )
            x = x + block["cross_o"](self._merge(attended))
            x = self._feed_forward(block, x, False)
        return self._logits(x)[:, 0], (ops.stack(new_keys), ops.stack(new_values))

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "max_length": self.max_length,
            "dim": self.dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "ffn_dim": self.ffn_dim,
            "dropout": self.dropout,
            "tie_embeddings": self.tie_embeddings,
        }


@keras.saving.register_keras_serializable(package="mmzoo")
class Captioner(keras.Model):
    """An image captioner; `build_captioner` returns one.

    Inputs `{"image": (batch, size, size, 3) pixels 0-255, "tokens": (batch,
    max_tokens) caption word ids}`; output `{"logits": (batch, max_tokens,
    vocab_size)}`, float32, the next word at each position (teacher forced).
    `compute_loss` is the cross-entropy of those logits against the tokens
    with `[END]` appended, padding masked, with `label_smoothing`; `fit`
    needs no targets (`y` is ignored).

    `encoder` (image in, `memory` out) and `decoder` (the `CaptionDecoder`)
    are what decoding uses; `generate` decodes a batch of images
    (`mmzoo.captioning.decoding.generate`).
    """

    def __init__(self, inputs, outputs, name=None, **kwargs):
        build_arguments = kwargs.pop("build_arguments", None)
        super().__init__(inputs, outputs, name=name, **kwargs)
        self._build_arguments = dict(build_arguments or {})

    @property
    def build_arguments(self):
        return dict(self._build_arguments)

    @property
    def vocabulary(self):
        """The caption vocabulary (`None` if built without one)."""
        return self._build_arguments.get("vocabulary")

    @property
    def decoder(self):
        return self.get_layer("caption_decoder")

    @property
    def max_length(self):
        """The most tokens a caption has, `[END]` included."""
        return self.decoder.max_length

    @property
    def encoder(self):
        """Image in, its cells `(batch, cells, dim)` out: a model sharing
        these weights."""
        cached = self.__dict__.get("_encoder")
        if cached is None:
            cached = keras.Model(
                self.input["image"],
                self.get_layer("image_memory").output,
                name="caption_encoder",
            )
            object.__setattr__(self, "_encoder", cached)
        return cached

    def generate(self, images, **options):
        """Caption a batch of images: see `mmzoo.captioning.decoding.generate`."""
        from mmzoo.captioning.decoding import generate

        return generate(self, images, **options)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        targets = caption_targets(x["tokens"])
        logits = y_pred["logits"]
        log_probs = ops.log_softmax(logits, axis=-1)
        nll = -ops.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        smoothing = float(self._build_arguments.get("label_smoothing", 0.0))
        if smoothing:
            nll = (1.0 - smoothing) * nll - smoothing * ops.mean(log_probs, axis=-1)
        mask = ops.cast(ops.not_equal(targets, PAD_ID), "float32")
        loss = ops.sum(nll * mask) / ops.maximum(ops.sum(mask), 1.0)
        if self.losses:
            loss = loss + ops.sum(
                ops.stack([ops.cast(v, "float32") for v in self.losses])
            )
        return loss

    def get_config(self):
        return {**super().get_config(), "build_arguments": self.build_arguments}


def build_captioner(**arguments):
    """Build an image captioner: any zoo image tower's grid, then a decoder.

    Args:
        image_tower: one of `mmzoo.list_image_towers()`; its grid of cells
            (no pooling) is what the decoder attends to.
        image_size, image_weights, freeze_image_tower,
        image_trainable_layers, image_filters: the image tower's, as in
            `mmzoo.build_model`.
        text_tower: ignored (accepted because `mmzoo train` passes it): the
            decoder is the text side.
        decoder: `"transformer"`.
        vocab_size: token ids, the run's tokenizer's `vocab_size` (with
            `[START]` and `[END]`, `mmzoo.captioning.vocabulary`).
        vocabulary: the caption vocabulary itself (a list of tokens, ids
            in order), kept in the model's config so that it decodes to
            text alone (`Captioner.vocabulary`); sets `vocab_size`.
        max_tokens: caption length in words (the tokenizer's
            `max_tokens`); the decoder has as many positions.
        decoder_dim, decoder_layers, decoder_heads, decoder_ffn_dim,
        decoder_dropout: the decoder's size (`CaptionDecoder`).
        tie_embeddings: output projection = token embedding transposed.
        label_smoothing: of the training loss, in [0, 1).
        seed: seeds Keras' random state before the weights are made.
        compile: compile with Adam at `learning_rate`.
        name: the model's name. Default `"<image_tower>_captioner"`.

    Returns:
        A `Captioner`.

    Example:

    >>> model = mmzoo.build_captioner(image_tower="small_cnn", image_size=32,
    ...                               vocab_size=50, max_tokens=8)
    >>> model.fit({"image": images, "tokens": tokenizer(captions)}, epochs=2)
    >>> ids, scores = model.generate(images, beam_width=3)
    """
    config = _resolve(arguments)
    if config["seed"] is not None:
        keras.utils.set_random_seed(config["seed"])
    size = config["image_size"]

    # === Inputs ===
    image = keras.Input((size, size, 3), name="image")
    tokens = keras.Input((config["max_tokens"],), dtype="int32", name="tokens")

    # === Image memory ===
    tower = build_image_tower(
        config["image_tower"],
        image_size=size,
        weights=config["image_weights"],
        pooling=None,
        trainable=not config["freeze_image_tower"],
        trainable_layers=config["image_trainable_layers"],
        filters=config["image_filters"],
    )
    grid = tower(image)
    cells = grid.shape[1] * grid.shape[2]
    x = keras.layers.Reshape((cells, grid.shape[3]), name="image_cells")(grid)
    x = keras.layers.Dense(config["decoder_dim"], name="cell_projection")(x)
    memory = CellPositions(name="image_memory")(x)

    # === Decoder ===
    decoder = CaptionDecoder(
        vocab_size=config["vocab_size"],
        max_length=config["max_tokens"],
        dim=config["decoder_dim"],
        num_layers=config["decoder_layers"],
        num_heads=config["decoder_heads"],
        ffn_dim=config["decoder_ffn_dim"],
        dropout=config["decoder_dropout"],
        tie_embeddings=config["tie_embeddings"],
        name="caption_decoder",
    )
    logits = decoder(ShiftRight(name="decoder_inputs")(tokens), memory)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)

    # === Model ===
    model = Captioner(
        {"image": image, "tokens": tokens},
        {"logits": logits},
        name=config["name"] or f"{config['image_tower']}_captioner",
        build_arguments=plain_data(config),
    )
    if config["compile"]:
        model.compile(optimizer=keras.optimizers.Adam(config["learning_rate"]))
    return model


def _positive_int(config, key, minimum=1):
    value = config[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(
            f"`{key}` must be an integer of at least {minimum}. Received: "
            f"{key}={value!r}"
        )


def _resolve(arguments):
    unknown = sorted(set(arguments) - set(DEFAULTS))
    if unknown:
        raise TypeError(
            f"build_captioner() got unexpected keyword argument(s): {unknown}. "
            f"Valid arguments: {sorted(DEFAULTS)}"
        )
    config = {**DEFAULTS, **arguments}
    if config["vocabulary"] is not None:
        from mmzoo.captioning.vocabulary import SPECIAL_TOKENS
        from mmzoo.captioning.vocabulary import is_caption_vocabulary

        config["vocabulary"] = list(config["vocabulary"])
        if not is_caption_vocabulary(config["vocabulary"]):
            raise ValueError(
                f"`vocabulary` must start with {list(SPECIAL_TOKENS)} "
                "(mmzoo.captioning.vocabulary.build_caption_vocabulary). "
                f"Received: {config['vocabulary'][:4]!r}"
            )
        config["vocab_size"] = len(config["vocabulary"])
    registry.image_tower(config["image_tower"])
    check_image_size(config["image_size"])
    check_choice("decoder", config["decoder"], DECODERS)
    _positive_int(config, "vocab_size", 5)
    _positive_int(config, "max_tokens", 2)
    for key in ("decoder_dim", "decoder_layers", "decoder_heads"):
        _positive_int(config, key)
    smoothing = config["label_smoothing"]
    if not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
        raise ValueError(
            "`label_smoothing` must be a number in [0, 1). Received: "
            f"label_smoothing={smoothing!r}"
        )
    return config
