"""Word tokenization in pure Python: the twin of `mmzoo.data.WordTokenizer`.

This file imports the Python standard library only, so an app can copy it
next to an exported model and turn text into the same token ids the
TensorFlow tokenizer (`mmzoo/data/tokenizers.py`) computes inside a
SavedModel. Both read the rule's data (the tables below) from this file.

The rule
--------
A text becomes tokens in four steps; `split_words` implements them, and
`WordTokenizer.split_words` does the same with TensorFlow ops.

1. Decoding. Bytes are decoded as UTF-8. Each invalid sequence becomes
   U+FFFD, one per maximal ill-formed subpart (Python's
   `bytes.decode("utf-8", errors="replace")`, which TensorFlow's
   `tf.strings.unicode_decode(..., errors="replace")` matches byte for
   byte: lone continuation bytes, truncated sequences, overlong forms,
   surrogates and code points above U+10FFFF were all checked).
2. Lower-casing, one code point at a time, with Unicode 14.0's simple
   lowercase mapping (`_LOWERCASE_DATA`), plus two deliberate changes:
   "İ" (U+0130) becomes "i", not "i̇" (Python's `str.lower()` gives two
   code points), and the final sigma "ς" becomes "σ", so "ΟΔΟΣ", "Οδος"
   and "οδος" all give the token "οδοσ". Nothing depends on context, and
   there is no Unicode normalization: "é" (U+00E9) and "e" + U+0301 are
   different tokens, and a fullwidth "Ａ" becomes a fullwidth "ａ".
3. Punctuation. Every code point of Unicode 14.0 general category P (Pc,
   Pd, Pe, Pf, Pi, Po, Ps) or of ASCII `string.punctuation` (which adds
   the symbols $ + < = > ^ ` | ~) is a token by itself: "..." gives three
   "." tokens and "What's" gives "what", "'", "s". Other symbols (€, ©,
   emoji) are not punctuation and stay inside the word they touch.
4. Whitespace. The 25 code points with Unicode's White_Space property
   separate tokens and are dropped: U+0009..U+000D (tab, newline, \v, \f,
   \r), U+0020, U+0085, U+00A0 (no-break space), U+1680, U+2000..U+200A,
   U+2028, U+2029, U+202F, U+205F and U+3000 (ideographic space). Nothing
   else separates tokens: zero-width spaces, control characters and
   U+FFFD belong to the word they touch.

Text without tokens (empty, or whitespace only) encodes to padding only.

Why tables rather than `str.lower()`, `unicodedata` or RE2's `\\pP`:
each depends on the Unicode version of the library that runs it, and so
would the token ids. On Python 3.11 (Unicode 14.0) and TensorFlow 2.21,
`tf.strings.lower(..., encoding="utf-8")` truncates a text at its first
NUL byte and leaves the 41 capital letters added in Unicode 14 (Vithkuqi,
four Latin ones, one Glagolitic) unchanged, and RE2's `\\pP` (Unicode 15)
has 23 more punctuation code points than Python's `unicodedata`. With the
tables written out here, both twins give the same ids on every code point
whatever their versions.

Token ids
---------
A vocabulary is a list of tokens whose index is the token id: id 0 is
"[PAD]", id 1 is "[UNK]" (every token not in the vocabulary). A text
encodes to exactly `max_tokens` ids: its first `max_tokens` tokens, then
zeros.

Files
-----
`save` writes, and `from_directory` reads, a directory holding
`vocabulary.txt` (UTF-8, one token per line, line i is id i, lines end
with "\\n") and `tokenizer.json` (`{"type": "word", "max_tokens": ...,
"vocab_size": ...}`), the same files `WordTokenizer.save` writes.

Example:

>>> vocabulary = build_vocabulary(["What's the colour?", "The colour is red."])
>>> tokenizer = PythonWordTokenizer(vocabulary, max_tokens=8)
>>> split_words("What's the colour?")
['what', "'", 's', 'the', 'colour', '?']
>>> tokenizer.encode_one("What's the colour?")
[10, 4, 9, 3, 2, 6, 0, 0]
"""

import collections
import json
import os
import re

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
PAD_ID = 0
UNK_ID = 1
VOCABULARY_FILE = "vocabulary.txt"
CONFIG_FILE = "tokenizer.json"

# === The rule's data ===
# Generated with Python 3.11 (Unicode 14.0): `unicodedata.category` and
# `string.punctuation` for punctuation, `str.lower` of each code point plus
# the two changes of step 2 for lower-casing. `tests/test_tokenizers.py`
# regenerates them and compares.

# Code points (hex) that are tokens by themselves; "A..B" is a range.
_PUNCTUATION_DATA = (
    "0021..002F 003A..0040 005B..0060 007B..007E 00A1 00A7 00AB 00B6..00B7 00BB "
    "00BF 037E 0387 055A..055F 0589..058A 05BE 05C0 05C3 05C6 05F3..05F4 0609..060A "
    "060C..060D 061B 061D..061F 066A..066D 06D4 0700..070D 07F7..07F9 0830..083E "
    "085E 0964..0965 0970 09FD 0A76 0AF0 0C77 0C84 0DF4 0E4F 0E5A..0E5B 0F04..0F12 "
    "0F14 0F3A..0F3D 0F85 0FD0..0FD4 0FD9..0FDA 104A..104F 10FB 1360..1368 1400 "
    "166E 169B..169C 16EB..16ED 1735..1736 17D4..17D6 17D8..17DA 1800..180A "
    "1944..1945 1A1E..1A1F 1AA0..1AA6 1AA8..1AAD 1B5A..1B60 1B7D..1B7E 1BFC..1BFF "
    "1C3B..1C3F 1C7E..1C7F 1CC0..1CC7 1CD3 2010..2027 2030..2043 2045..2051 "
    "2053..205E 207D..207E 208D..208E 2308..230B 2329..232A 2768..2775 27C5..27C6 "
    "27E6..27EF 2983..2998 29D8..29DB 29FC..29FD 2CF9..2CFC 2CFE..2CFF 2D70 "
    "2E00..2E2E 2E30..2E4F 2E52..2E5D 3001..3003 3008..3011 3014..301F 3030 303D "
    "30A0 30FB A4FE..A4FF A60D..A60F A673 A67E A6F2..A6F7 A874..A877 A8CE..A8CF "
    "A8F8..A8FA A8FC A92E..A92F A95F A9C1..A9CD A9DE..A9DF AA5C..AA5F AADE..AADF "
    "AAF0..AAF1 ABEB FD3E..FD3F FE10..FE19 FE30..FE52 FE54..FE61 FE63 FE68 "
    "FE6A..FE6B FF01..FF03 FF05..FF0A FF0C..FF0F FF1A..FF1B FF1F..FF20 FF3B..FF3D "
    "FF3F FF5B FF5D FF5F..FF65 10100..10102 1039F 103D0 1056F 10857 1091F 1093F "
    "10A50..10A58 10A7F 10AF0..10AF6 10B39..10B3F 10B99..10B9C 10EAD 10F55..10F59 "
    "10F86..10F89 11047..1104D 110BB..110BC 110BE..110C1 11140..11143 11174..11175 "
    "111C5..111C8 111CD 111DB 111DD..111DF 11238..1123D 112A9 1144B..1144F "
    "1145A..1145B 1145D 114C6 115C1..115D7 11641..11643 11660..1166C 116B9 "
    "1173C..1173E 1183B 11944..11946 119E2 11A3F..11A46 11A9A..11A9C 11A9E..11AA2 "
    "11C41..11C45 11C70..11C71 11EF7..11EF8 11FFF 12470..12474 12FF1..12FF2 "
    "16A6E..16A6F 16AF5 16B37..16B3B 16B44 16E97..16E9A 16FE2 1BC9F 1DA87..1DA8B "
    "1E95E..1E95F"
)

# Lower-case mappings (hex): "A..B+D" maps each code point from A to B to
# itself plus D ("-D": minus D); "/2" after a range means every second code
# point (A, A+2, ...), as in alternating capital/small pairs.
_LOWERCASE_DATA = (
    "0041..005A+20 00C0..00D6+20 00D8..00DE+20 0100..012E/2+1 0130-C7 "
    "0132..0136/2+1 0139..0147/2+1 014A..0176/2+1 0178-79 0179..017D/2+1 0181+D2 "
    "0182..0184/2+1 0186+CE 0187+1 0189..018A+CD 018B+1 018E+4F 018F+CA 0190+CB "
    "0191+1 0193+CD 0194+CF 0196+D3 0197+D1 0198+1 019C+D3 019D+D5 019F+D6 "
    "01A0..01A4/2+1 01A6+DA 01A7+1 01A9+DA 01AC+1 01AE+DA 01AF+1 01B1..01B2+D9 "
    "01B3..01B5/2+1 01B7+DB 01B8+1 01BC+1 01C4+2 01C5+1 01C7+2 01C8+1 01CA+2 "
    "01CB..01DB/2+1 01DE..01EE/2+1 01F1+2 01F2..01F4/2+1 01F6-61 01F7-38 "
    "01F8..021E/2+1 0220-82 0222..0232/2+1 023A+2A2B 023B+1 023D-A3 023E+2A28 "
    "0241+1 0243-C3 0244+45 0245+47 0246..024E/2+1 0370..0372/2+1 0376+1 037F+74 "
    "0386+26 0388..038A+25 038C+40 038E..038F+3F 0391..03A1+20 03A3..03AB+20 03C2+1 "
    "03CF+8 03D8..03EE/2+1 03F4-3C 03F7+1 03F9-7 03FA+1 03FD..03FF-82 0400..040F+50 "
    "0410..042F+20 0460..0480/2+1 048A..04BE/2+1 04C0+F 04C1..04CD/2+1 "
    "04D0..052E/2+1 0531..0556+30 10A0..10C5+1C60 10C7+1C60 10CD+1C60 "
    "13A0..13EF+97D0 13F0..13F5+8 1C90..1CBA-BC0 1CBD..1CBF-BC0 1E00..1E94/2+1 "
    "1E9E-1DBF 1EA0..1EFE/2+1 1F08..1F0F-8 1F18..1F1D-8 1F28..1F2F-8 1F38..1F3F-8 "
    "1F48..1F4D-8 1F59..1F5F/2-8 1F68..1F6F-8 1F88..1F8F-8 1F98..1F9F-8 "
    "1FA8..1FAF-8 1FB8..1FB9-8 1FBA..1FBB-4A 1FBC-9 1FC8..1FCB-56 1FCC-9 "
    "1FD8..1FD9-8 1FDA..1FDB-64 1FE8..1FE9-8 1FEA..1FEB-70 1FEC-7 1FF8..1FF9-80 "
    "1FFA..1FFB-7E 1FFC-9 2126-1D5D 212A-20BF 212B-2046 2132+1C 2160..216F+10 "
    "2183+1 24B6..24CF+1A 2C00..2C2F+30 2C60+1 2C62-29F7 2C63-EE6 2C64-29E7 "
    "2C67..2C6B/2+1 2C6D-2A1C 2C6E-29FD 2C6F-2A1F 2C70-2A1E 2C72+1 2C75+1 "
    "2C7E..2C7F-2A3F 2C80..2CE2/2+1 2CEB..2CED/2+1 2CF2+1 A640..A66C/2+1 "
    "A680..A69A/2+1 A722..A72E/2+1 A732..A76E/2+1 A779..A77B/2+1 A77D-8A04 "
    "A77E..A786/2+1 A78B+1 A78D-A528 A790..A792/2+1 A796..A7A8/2+1 A7AA-A544 "
    "A7AB-A54F A7AC-A54B A7AD-A541 A7AE-A544 A7B0-A512 A7B1-A52A A7B2-A515 A7B3+3A0 "
    "A7B4..A7C2/2+1 A7C4-30 A7C5-A543 A7C6-8A38 A7C7..A7C9/2+1 A7D0+1 "
    "A7D6..A7D8/2+1 A7F5+1 FF21..FF3A+20 10400..10427+28 104B0..104D3+28 "
    "10570..1057A+27 1057C..1058A+27 1058C..10592+27 10594..10595+27 "
    "10C80..10CB2+40 118A0..118BF+20 16E40..16E5F+20 1E900..1E921+22"
)

# Code points with Unicode's White_Space property (stable since Unicode 6.3).
WHITESPACE = (
    (0x0009, 0x000D),
    (0x0020, 0x0020),
    (0x0085, 0x0085),
    (0x00A0, 0x00A0),
    (0x1680, 0x1680),
    (0x2000, 0x200A),
    (0x2028, 0x2029),
    (0x202F, 0x202F),
    (0x205F, 0x205F),
    (0x3000, 0x3000),
)


def _parse_ranges(data):
    ranges = []
    for entry in data.split():
        first, _, last = entry.partition("..")
        ranges.append((int(first, 16), int(last or first, 16)))
    return tuple(ranges)


def _parse_lowercase(data):
    mapping = {}
    pattern = re.compile(r"([0-9A-F]+)(?:\.\.([0-9A-F]+)(/2)?)?([+-][0-9A-F]+)")
    for entry in data.split():
        first, last, every_second, delta = pattern.fullmatch(entry).groups()
        first, delta = int(first, 16), int(delta, 16)
        last = int(last, 16) if last else first
        for code_point in range(first, last + 1, 2 if every_second else 1):
            mapping[code_point] = code_point + delta
    return mapping


# (first, last) code point ranges of punctuation, each its own token.
PUNCTUATION = _parse_ranges(_PUNCTUATION_DATA)
# Code point -> lower-case code point, for every code point that changes.
LOWERCASE = _parse_lowercase(_LOWERCASE_DATA)

# One `str.translate` table applies steps 2-4 in one pass: the three sets
# are disjoint, so the order in which the rule lists them does not matter.
_TRANSLATION = {code_point: chr(lower) for code_point, lower in LOWERCASE.items()}
for _first, _last in PUNCTUATION:
    for _code_point in range(_first, _last + 1):
        _TRANSLATION[_code_point] = f" {chr(_code_point)} "
for _first, _last in WHITESPACE:
    for _code_point in range(_first, _last + 1):
        _TRANSLATION[_code_point] = " "


def _as_text(text):
    if isinstance(text, str):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates: undecodable bytes kept by "surrogateescape"
            # (as Python reads a non-UTF-8 file) or escapes such as "\ud800"
            # in JSON. Back to bytes, they get U+FFFD like any invalid UTF-8.
            try:
                raw = text.encode("utf-8", errors="surrogateescape")
            except UnicodeEncodeError:
                raw = text.encode("utf-8", errors="surrogatepass")
            return raw.decode("utf-8", errors="replace")
        return text
    if isinstance(text, (bytes, bytearray)):
        return bytes(text).decode("utf-8", errors="replace")
    raise TypeError(
        f"Each text must be a str or bytes. Received: {text!r} of type "
        f"{type(text).__name__}"
    )


def _check_texts(texts):
    # A single string is iterable too, but over its characters: that is
    # always a mistake here, and a silent one.
    if isinstance(texts, (str, bytes, bytearray)):
        raise TypeError(
            "`texts` must be an iterable of texts (str or bytes), not a single "
            f"text. Received: texts={texts[:40]!r}"
        )


def split_words(text):
    """Splits one text into tokens by the rule in the module docstring.

    Args:
        text: a `str`, or `bytes` decoded as UTF-8 (invalid sequences become
            U+FFFD).

    Returns:
        A list of tokens (`str`), in order; empty for a text without tokens.

    Example:

    >>> split_words("¿Qué\u00a0PASÓ?")
    ['¿', 'qué', 'pasó', '?']
    """
    return [
        token for token in _as_text(text).translate(_TRANSLATION).split(" ") if token
    ]


def build_vocabulary(texts, max_vocab_size=20000, min_count=1):
    """Builds a word vocabulary from texts: the most frequent tokens first.

    Args:
        texts: an iterable of texts (`str`, or UTF-8 `bytes`).
        max_vocab_size: the largest vocabulary size, counting the two
            special tokens "[PAD]" and "[UNK]". At least 2.
        min_count: the least number of times a token must occur to be
            kept. At least 1.

    Returns:
        A list of tokens, the index of each being its id: "[PAD]" (0),
        "[UNK]" (1), then tokens by descending count; tokens with equal
        counts come in code point order, so the result depends on the
        texts alone, not on their order.

    Example:

    >>> build_vocabulary(["The cat.", "the dog."])
    ['[PAD]', '[UNK]', '.', 'the', 'cat', 'dog']
    >>> build_vocabulary(["The cat.", "the dog."], max_vocab_size=4)
    ['[PAD]', '[UNK]', '.', 'the']
    """
    if not _is_int(max_vocab_size) or max_vocab_size < 2:
        raise ValueError(
            "`max_vocab_size` must be an integer of at least 2 (ids 0 and 1 are "
            f"[PAD] and [UNK]). Received: max_vocab_size={max_vocab_size!r}"
        )
    if not _is_int(min_count) or min_count < 1:
        raise ValueError(
            f"`min_count` must be a positive integer. Received: min_count={min_count!r}"
        )
    _check_texts(texts)
    counts = collections.Counter()
    for text in texts:
        counts.update(split_words(text))
    ranked = sorted(
        (token for token, count in counts.items() if count >= min_count),
        key=lambda token: (-counts[token], token),
    )
    return [PAD_TOKEN, UNK_TOKEN, *ranked[: max_vocab_size - 2]]


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_max_tokens(max_tokens, minimum=1):
    """Raises a `ValueError` unless `max_tokens` is an integer >= `minimum`."""
    if not _is_int(max_tokens) or max_tokens < minimum:
        requirement = (
            "a positive integer"
            if minimum == 1
            else f"an integer of at least {minimum}"
        )
        raise ValueError(
            f"`max_tokens` must be {requirement}. Received: max_tokens={max_tokens!r}"
        )


def check_word_vocabulary(vocabulary, source=None):
    """Raises a `ValueError` unless `vocabulary` can be a word vocabulary.

    Args:
        vocabulary: a list of tokens.
        source: where the vocabulary came from (a path), for the message.
    """
    where = f" in {source}" if source else ""
    if list(vocabulary[:2]) != [PAD_TOKEN, UNK_TOKEN]:
        raise ValueError(
            f"A word vocabulary must start with {PAD_TOKEN!r} (id 0) and "
            f"{UNK_TOKEN!r} (id 1). Received: {list(vocabulary[:2])!r} at ids 0 "
            f"and 1{where}"
        )
    seen = set()
    for token_id, token in enumerate(vocabulary):
        if (
            not isinstance(token, str)
            or not token
            or any(_TRANSLATION.get(ord(character)) == " " for character in token)
        ):
            raise ValueError(
                f"Vocabulary token {token_id}{where} is {token!r}: tokens must be "
                "non-empty strings without whitespace."
            )
        if token in seen:
            raise ValueError(
                f"Vocabulary token {token!r} appears twice{where} (second at id "
                f"{token_id}): each token must have one id."
            )
        seen.add(token)


def read_vocabulary(path):
    """Reads a vocabulary file: UTF-8, one token per line, line i is id i.

    Lines are split at "\\n" only (not at the other line breaks
    `str.splitlines` knows), and a final newline is optional.

    Args:
        path: the file's path.

    Returns:
        The list of tokens.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No vocabulary file at {path}")
    with open(path, encoding="utf-8", newline="") as file:
        text = file.read()
    if text.endswith("\n"):
        text = text[:-1]
    return text.split("\n") if text else []


def write_vocabulary(path, vocabulary):
    """Writes `vocabulary` as `read_vocabulary` reads it."""
    with open(path, "w", encoding="utf-8", newline="") as file:
        file.write("".join(f"{token}\n" for token in vocabulary))


def read_json(path):
    """Reads a JSON file, with errors that name it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No tokenizer configuration at {path}")
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def read_config(directory):
    """Reads `tokenizer.json` from a directory written by a tokenizer's `save`.

    Args:
        directory: the directory's path.

    Returns:
        The configuration, a dict with at least the key "type".
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No tokenizer directory at {directory}")
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No {CONFIG_FILE} in {directory}: expected a directory written by a "
            "tokenizer's `save(directory)`."
        )
    config = read_json(path)
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(
            f'{path} is not an mmzoo tokenizer configuration: it has no "type" '
            "key. (For a keras-hub or Hugging Face BERT directory, use "
            "`WordPieceTokenizer.from_preset`.)"
        )
    return config


def read_directory_vocabulary(directory, config, expected_type):
    """Reads the vocabulary of a saved tokenizer, checking it against `config`.

    Args:
        directory: a directory written by a tokenizer's `save`.
        config: its configuration, as `read_config` returns it.
        expected_type: the tokenizer type the caller can load.

    Returns:
        The list of tokens.
    """
    directory = os.fspath(directory)
    config_path = os.path.join(directory, CONFIG_FILE)
    if config["type"] != expected_type:
        raise ValueError(
            f"{config_path} describes a {config['type']!r} tokenizer, not a "
            f"{expected_type!r} one. `mmzoo.data.load_tokenizer` loads any saved "
            "tokenizer."
        )
    vocabulary_path = os.path.join(directory, VOCABULARY_FILE)
    vocabulary = read_vocabulary(vocabulary_path)
    expected_size = config.get("vocab_size")
    if expected_size is not None and expected_size != len(vocabulary):
        raise ValueError(
            f"{vocabulary_path} has {len(vocabulary)} tokens, but {config_path} "
            f"says vocab_size={expected_size}: the files do not belong together, "
            "or one is truncated."
        )
    return vocabulary


def write_directory(directory, config, vocabulary):
    """Writes `vocabulary.txt` and `tokenizer.json` (`config`) into `directory`."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    write_vocabulary(os.path.join(directory, VOCABULARY_FILE), vocabulary)
    with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as file:
        json.dump(config, file, indent=2, ensure_ascii=False)
        file.write("\n")


def read_word_directory(directory):
    """Reads the vocabulary and `max_tokens` of a saved word tokenizer.

    Args:
        directory: a directory written by `PythonWordTokenizer.save` or
            `WordTokenizer.save`.

    Returns:
        A tuple `(vocabulary, max_tokens)`.
    """
    config = read_config(directory)
    vocabulary = read_directory_vocabulary(directory, config, "word")
    check_word_vocabulary(
        vocabulary, os.path.join(os.fspath(directory), VOCABULARY_FILE)
    )
    return vocabulary, config.get("max_tokens", 32)


def write_word_directory(directory, vocabulary, max_tokens):
    """Writes the files `read_word_directory` reads."""
    config = {"type": "word", "max_tokens": max_tokens, "vocab_size": len(vocabulary)}
    write_directory(directory, config, vocabulary)


class PythonWordTokenizer:
    """Turns texts into fixed-length word ids, with the Python standard library.

    It gives the same ids as `mmzoo.data.WordTokenizer` with the same
    vocabulary and `max_tokens` (see the module docstring for the rule),
    without TensorFlow: for apps that feed an exported model.

    Args:
        vocabulary: a list of tokens whose index is the token id, starting
            with "[PAD]" and "[UNK]" (as `build_vocabulary` returns), or the
            path of a vocabulary file (one token per line).
        max_tokens: the number of ids per text: longer texts are truncated,
            shorter ones padded with 0.

    Example:

    >>> tokenizer = PythonWordTokenizer(["[PAD]", "[UNK]", "the", "?"], max_tokens=5)
    >>> tokenizer.encode_one("The colour?")
    [2, 1, 3, 0, 0]
    >>> tokenizer.encode(["the", b"\\xff"])
    [[2, 0, 0, 0, 0], [1, 0, 0, 0, 0]]
    >>> tokenizer.save("tokenizer")
    >>> PythonWordTokenizer.from_directory("tokenizer").encode_one("the?")
    [2, 3, 0, 0, 0]
    """

    def __init__(self, vocabulary, max_tokens=32):
        check_max_tokens(max_tokens)
        source = None
        if isinstance(vocabulary, (str, os.PathLike)):
            source = os.fspath(vocabulary)
            vocabulary = read_vocabulary(source)
        vocabulary = list(vocabulary)
        check_word_vocabulary(vocabulary, source)
        self._vocabulary = vocabulary
        self._ids = {token: token_id for token_id, token in enumerate(vocabulary)}
        self._max_tokens = max_tokens

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

    def encode_one(self, text):
        """Encodes one text.

        Args:
            text: a `str`, or UTF-8 `bytes`.

        Returns:
            A list of exactly `max_tokens` ids.
        """
        ids = [self._ids.get(token, UNK_ID) for token in split_words(text)]
        ids = ids[: self._max_tokens]
        return ids + [PAD_ID] * (self._max_tokens - len(ids))

    def encode(self, texts):
        """Encodes a batch of texts.

        Args:
            texts: an iterable of texts (`str`, or UTF-8 `bytes`).

        Returns:
            A list with one list of exactly `max_tokens` ids per text.
        """
        _check_texts(texts)
        return [self.encode_one(text) for text in texts]

    def save(self, directory):
        """Writes `vocabulary.txt` and `tokenizer.json` into `directory`."""
        write_word_directory(directory, self._vocabulary, self._max_tokens)

    @classmethod
    def from_directory(cls, directory):
        """Loads a tokenizer that `save` (or `WordTokenizer.save`) wrote."""
        vocabulary, max_tokens = read_word_directory(directory)
        return cls(vocabulary, max_tokens)

    def get_config(self):
        return {"vocabulary": self.vocabulary, "max_tokens": self._max_tokens}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
