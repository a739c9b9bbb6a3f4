"""Text towers trained from scratch (or from GloVe vectors): bow, cnn,
bilstm, transformer. Pretrained encoders live in `mmzoo.towers.pretrained`.
"""

import keras
import numpy as np

from mmzoo import registry
from mmzoo.layers import MaskedPooling
from mmzoo.layers import PaddingMask
from mmzoo.layers import PositionEmbedding
from mmzoo.layers import TransformerEncoder
from mmzoo.layers import ZeroMasked
from mmzoo.towers.glove import glove_embedding_matrix


def build_text_tower(
    name="bow",
    vocab_size=20000,
    max_tokens=64,
    embedding_dim=128,
    units=128,
    num_layers=2,
    num_heads=4,
    dropout=0.1,
    kernel_sizes=(3, 4, 5),
    embeddings=None,
    vocabulary=None,
    trainable_embeddings=True,
    preset=None,
    hub_handle=None,
    trainable=True,
):
    """Build a text tower: token ids in, a sequence and a pooled vector out.

    The tower's builder is the one `mmzoo.registry.TEXT_TOWERS[name]` names;
    it receives the arguments below that it takes (its spec's `arguments`).

    Args:
        name: one of `mmzoo.list_text_towers()`.
        vocab_size: number of token ids, padding (0) and OOV included.
        max_tokens: the longest token sequence (the transformer's positions).
        embedding_dim: size of the token embeddings.
        units: width of the tower's output: filters per kernel size (cnn),
            LSTM units per direction (bilstm), model width (transformer).
        num_layers: transformer encoder blocks.
        num_heads: transformer attention heads.
        dropout: dropout rate inside the tower.
        kernel_sizes: cnn only: n-gram widths of the parallel convolutions.
        embeddings: path of a GloVe-format vector file ("word v1 v2 ..." per
            line) to initialise the token embeddings; needs `vocabulary`.
        vocabulary: the tokens in id order (a list, or a path to a file of
            one token per line), id 0 being padding.
        trainable_embeddings: `False` keeps the (GloVe) embeddings fixed.
        preset: `bert` only: a keras-hub preset (a local directory, or a
            handle when the network is reachable).
        hub_handle: `hub` only: a TF-Hub text-embedding module (handle or
            local path). Such a tower takes strings, not token ids.
        trainable: `False` freezes the whole tower.

    Returns:
        A functional `keras.Model` named `"text_tower"` whose input is
        `tokens` (`text` for `hub`) and whose outputs are the dict
        `{"sequence": (batch, L, D), "pooled": (batch, D)}` (`hub`: only
        `"pooled"`).

    Example:

    >>> tower = build_text_tower("transformer", vocab_size=100, max_tokens=16)
    >>> tower.output["pooled"].shape
    (None, 128)
    """
    spec = registry.text_tower(name)
    given = dict(
        vocab_size=vocab_size,
        max_tokens=max_tokens,
        embedding_dim=embedding_dim,
        units=units,
        num_layers=num_layers,
        num_heads=num_heads,
        dropout=dropout,
        kernel_sizes=kernel_sizes,
        embeddings=embeddings,
        vocabulary=vocabulary,
        trainable_embeddings=trainable_embeddings,
        preset=preset,
        hub_handle=hub_handle,
        trainable=trainable,
    )
    builder = registry.resolve(spec.build)
    return builder(**{key: given[key] for key in spec.arguments})


def bow_tower(
    vocab_size=20000,
    embedding_dim=128,
    embeddings=None,
    vocabulary=None,
    trainable_embeddings=True,
    trainable=True,
):
    """Bag of words: token embeddings and their masked mean."""
    tokens, mask, x = _embedded_tokens(
        vocab_size, embedding_dim, embeddings, vocabulary, trainable_embeddings
    )
    pooled = MaskedPooling("mean", name="pool")(x, mask=mask)
    return _tower(tokens, x, pooled, trainable)


def cnn_tower(
    vocab_size=20000,
    embedding_dim=128,
    units=128,
    kernel_sizes=(3, 4, 5),
    dropout=0.1,
    embeddings=None,
    vocabulary=None,
    trainable_embeddings=True,
    trainable=True,
):
    """Parallel n-gram convolutions with masked max-over-time (Kim, 2014)."""
    _check_positive(units=units)
    tokens, mask, x = _embedded_tokens(
        vocab_size, embedding_dim, embeddings, vocabulary, trainable_embeddings
    )
    sequence, pooled = _kim_cnn(x, mask, units, kernel_sizes, dropout)
    return _tower(tokens, sequence, pooled, trainable)


def bilstm_tower(
    vocab_size=20000,
    embedding_dim=128,
    units=128,
    dropout=0.1,
    embeddings=None,
    vocabulary=None,
    trainable_embeddings=True,
    trainable=True,
):
    """A bidirectional LSTM over the embeddings, masked mean of its steps."""
    _check_positive(units=units)
    tokens, mask, x = _embedded_tokens(
        vocab_size, embedding_dim, embeddings, vocabulary, trainable_embeddings
    )
    sequence = keras.layers.Bidirectional(
        keras.layers.LSTM(units, return_sequences=True, dropout=dropout),
        name="bilstm",
    )(x, mask=mask)
    pooled = MaskedPooling("mean", name="pool")(sequence, mask=mask)
    return _tower(tokens, sequence, pooled, trainable)


def transformer_tower(
    vocab_size=20000,
    max_tokens=64,
    embedding_dim=128,
    units=128,
    num_layers=2,
    num_heads=4,
    dropout=0.1,
    embeddings=None,
    vocabulary=None,
    trainable_embeddings=True,
    trainable=True,
):
    """Position embedding + `num_layers` masked transformer encoder blocks."""
    _check_positive(max_tokens=max_tokens, units=units)
    tokens, mask, x = _embedded_tokens(
        vocab_size, embedding_dim, embeddings, vocabulary, trainable_embeddings
    )
    sequence = x
    if x.shape[-1] != units:
        sequence = keras.layers.Dense(units, name="embedding_projection")(sequence)
    sequence = PositionEmbedding(max_tokens, name="position_embedding")(sequence)
    sequence = keras.layers.Dropout(dropout, name="embedding_dropout")(sequence)
    for index in range(num_layers):
        sequence = TransformerEncoder(
            num_heads,
            intermediate_dim=2 * units,
            dropout=dropout,
            name=f"encoder_{index}",
        )(sequence, mask=mask)
    sequence = keras.layers.LayerNormalization(epsilon=1e-6, name="final_norm")(
        sequence
    )
    pooled = MaskedPooling("mean", name="pool")(sequence, mask=mask)
    return _tower(tokens, sequence, pooled, trainable)


def _embedded_tokens(
    vocab_size, embedding_dim, embeddings, vocabulary, trainable_embeddings
):
    """The `tokens` input, its padding mask and its (GloVe) embeddings."""
    _check_positive(vocab_size=vocab_size)
    matrix = None
    if embeddings is not None:
        matrix = glove_embedding_matrix(embeddings, vocabulary, vocab_size)
        embedding_dim = matrix.shape[1]
    _check_positive(embedding_dim=embedding_dim)
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    mask = PaddingMask(name="padding_mask")(tokens)
    embedding = keras.layers.Embedding(
        vocab_size,
        embedding_dim,
        trainable=trainable_embeddings,
        name="token_embedding",
    )
    x = embedding(tokens)
    if matrix is not None:
        embedding.set_weights([matrix])
    return tokens, mask, x


def _tower(tokens, sequence, pooled, trainable):
    tower = keras.Model(
        tokens, {"sequence": sequence, "pooled": pooled}, name="text_tower"
    )
    tower.trainable = trainable
    return tower


def _kim_cnn(x, mask, units, kernel_sizes, dropout):
    if not kernel_sizes:
        raise ValueError(
            "`text_kernel_sizes` must name at least one n-gram width. "
            f"Received: text_kernel_sizes={kernel_sizes!r}"
        )
    # Zero the padded steps so that a convolution window reaching past the
    # end of the text sees the same zeros however much padding follows.
    x = ZeroMasked(name="zero_padding")(x, mask=mask)
    branches = [
        keras.layers.Conv1D(
            units, width, padding="same", activation="relu", name=f"conv_{width}"
        )(x)
        for width in kernel_sizes
    ]
    sequence = (
        keras.layers.Concatenate(name="ngram_features")(branches)
        if len(branches) > 1
        else branches[0]
    )
    sequence = keras.layers.Dropout(dropout, name="ngram_dropout")(sequence)
    pooled = MaskedPooling("max", name="pool")(sequence, mask=mask)
    return sequence, pooled


def _check_positive(**values):
    for argument, value in values.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(
                f"`{argument}` must be a positive integer. "
                f"Received: {argument}={value!r}"
            )
