"""The caption vocabulary: the word tokenizer's, with `[START]` and `[END]`.

A caption vocabulary is a word vocabulary (`mmzoo.data.build_vocabulary`)
with two more special tokens at fixed ids: `[PAD]` 0, `[UNK]` 1, `[START]`
2, `[END]` 3, then the words by count. The run's `WordTokenizer` (and its
standard-library twin `PythonWordTokenizer`) use it unchanged: the rule
splits `[` and `]` off as punctuation, so no text ever tokenizes to
`[START]` or `[END]`; only the decoder makes them. This module is pure
Python (no TensorFlow), so the TFLite caption loop can use it.
"""

from mmzoo.data import pure_python_tokenizer as rule

PAD_ID = rule.PAD_ID
UNK_ID = rule.UNK_ID
START_TOKEN = "[START]"
END_TOKEN = "[END]"
START_ID = 2
END_ID = 3
SPECIAL_TOKENS = (rule.PAD_TOKEN, rule.UNK_TOKEN, START_TOKEN, END_TOKEN)


def build_caption_vocabulary(captions, max_vocab_size=20000, min_count=1):
    """A caption vocabulary: the special tokens, then the captions' words.

    Example:

    >>> build_caption_vocabulary(["A red circle.", "a circle"])
    ['[PAD]', '[UNK]', '[START]', '[END]', 'a', 'circle', '.', 'red']
    """
    words = rule.build_vocabulary(captions, max(max_vocab_size - 2, 2), min_count)
    return [*SPECIAL_TOKENS, *words[2:]]


def is_caption_vocabulary(vocabulary):
    """Whether `vocabulary` has the special tokens at their ids."""
    return tuple(vocabulary[: len(SPECIAL_TOKENS)]) == SPECIAL_TOKENS


def caption_words(ids, vocabulary):
    """The words of one decoded caption: ids up to `[END]` (excluded),
    special tokens dropped, `[UNK]` too (as the SavedModel's
    `export.ids_to_text` and the TFLite loop's `Captioner.words` do)."""
    words = []
    for token_id in ids:
        token_id = int(token_id)
        if token_id == END_ID:
            break
        if token_id >= len(SPECIAL_TOKENS):
            words.append(vocabulary[token_id])
    return words


def caption_text(ids, vocabulary):
    """One decoded caption as text: its words joined by spaces."""
    return " ".join(caption_words(ids, vocabulary))


def reference_words(caption):
    """A reference caption's words as the tokenizer splits them (lower
    case, punctuation apart): what decoded captions are scored against."""
    return rule.split_words(caption)
