"""Token embeddings initialised from a GloVe-format vector file.

Hand-written because the format is one line per word ("word v1 v2 ...") and
no Keras-ecosystem library reads it into an embedding matrix for a given
vocabulary.
"""

import logging
import os

import numpy as np

logger = logging.getLogger(__name__)


def read_vocabulary(vocabulary):
    """A vocabulary as a list of tokens in id order, from a list or a file."""
    if isinstance(vocabulary, (str, os.PathLike)):
        if not os.path.isfile(vocabulary):
            raise FileNotFoundError(
                f"Vocabulary file not found: {os.fspath(vocabulary)!r}"
            )
        with open(vocabulary, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    return list(vocabulary)


def glove_embedding_matrix(path, vocabulary, vocab_size, seed=0):
    """An embedding matrix of shape (vocab_size, dim) for `vocabulary`.

    Rows of tokens found in the file (looked up as written, then
    lower-cased) take their vectors; the padding row 0 is zeros; every other
    row is drawn from a normal distribution with the found vectors' standard
    deviation. The coverage is logged.

    Args:
        path: a GloVe-format text file; a word2vec header line
            ("count dim") is skipped.
        vocabulary: tokens in id order (list or path); id 0 is padding.
        vocab_size: rows of the matrix, at least `len(vocabulary)`.
    """
    if vocabulary is None:
        raise ValueError(
            "`text_embeddings` needs the `vocabulary` (the tokens in id "
            "order) to know which vector goes to which id. Received: "
            "vocabulary=None"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GloVe vector file not found: {os.fspath(path)!r}")
    tokens = read_vocabulary(vocabulary)
    if len(tokens) > vocab_size:
        raise ValueError(
            f"The vocabulary has {len(tokens)} tokens, more than "
            f"`vocab_size={vocab_size}`."
        )
    wanted = {}
    for index, token in enumerate(tokens):
        if index > 0:
            wanted.setdefault(token, index)
            wanted.setdefault(token.lower(), index)

    found = {}
    dim = None
    with open(path, encoding="utf-8", errors="strict") as f:
        for line_number, line in enumerate(f, start=1):
            parts = line.rstrip().split(" ")
            if line_number == 1 and len(parts) == 2 and parts[1].isdigit():
                continue  # word2vec text header
            if len(parts) < 2:
                continue
            if dim is None:
                dim = len(parts) - 1
            elif len(parts) - 1 != dim:
                raise ValueError(
                    f"{os.fspath(path)}, line {line_number}: expected {dim} "
                    f"values after the word, found {len(parts) - 1}."
                )
            index = wanted.get(parts[0])
            if index is None or index in found:
                continue
            try:
                found[index] = np.asarray(parts[1:], dtype="float32")
            except ValueError as error:
                raise ValueError(
                    f"{os.fspath(path)}, line {line_number}: {error}"
                ) from None
    if dim is None:
        raise ValueError(f"No vectors in GloVe file {os.fspath(path)!r}.")

    vectors = np.stack(list(found.values())) if found else np.zeros((1, dim))
    scale = float(vectors.std()) or 0.1
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, scale, (vocab_size, dim)).astype("float32")
    matrix[0] = 0.0
    for index, vector in found.items():
        matrix[index] = vector
    logger.info(
        "GloVe: %d of %d vocabulary tokens found in %s.",
        len(found),
        len(tokens) - 1,
        os.fspath(path),
    )
    return matrix
