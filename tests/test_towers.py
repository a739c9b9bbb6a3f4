"""Image and text towers: keras.applications fidelity, options, padding."""

import keras
import numpy as np
import pytest

import mmzoo
from mmzoo.towers import build_image_tower
from mmzoo.towers import build_text_tower


@pytest.mark.parametrize(
    "name, expected", [("vgg16", 14_714_688), ("resnet50", 23_587_712)]
)
def test_parameter_counts_match_keras_applications(name, expected):
    tower = build_image_tower(name, image_size=64)
    assert tower.count_params() == expected


@pytest.mark.parametrize(
    "name, application, module",
    [
        ("resnet50", "ResNet50", "resnet50"),
        ("resnet50v2", "ResNet50V2", "resnet_v2"),
        ("vgg16", "VGG16", "vgg16"),
    ],
)
def test_family_preprocessing_lives_inside_the_tower(name, application, module):
    tower = build_image_tower(name, image_size=32, pooling="avg")
    reference = getattr(keras.applications, application)(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    reference.set_weights(tower.get_layer(reference.name).get_weights())
    raw = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    preprocess = getattr(keras.applications, module).preprocess_input
    np.testing.assert_allclose(
        tower(raw), reference(preprocess(raw.copy())), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize(
    "pooling, shape", [("avg", (2, 8)), ("max", (2, 8)), (None, (2, 8, 8, 8))]
)
def test_pooling(pooling, shape):
    tower = build_image_tower(
        "small_cnn", image_size=32, pooling=pooling, filters=(4, 8)
    )
    assert tuple(tower(np.zeros((2, 32, 32, 3), "float32")).shape) == shape


def test_pooling_is_validated():
    with pytest.raises(
        ValueError,
        match=r"`image_pooling` must be one of .*Received: image_pooling='average'",
    ):
        build_image_tower("small_cnn", image_size=32, pooling="average")


@pytest.mark.parametrize("name", ["small_cnn", "mobilenet_v3_small", "resnet50"])
@pytest.mark.parametrize("size", [32, 45])
def test_any_image_size_of_at_least_32(name, size):
    tower = build_image_tower(name, image_size=size)
    features = tower(np.zeros((1, size, size, 3), "float32"))
    assert tuple(features.shape) == (1, tower.output.shape[-1])


def test_image_size_below_32_is_refused():
    with pytest.raises(ValueError, match="at least 32. Received: image_size=31"):
        build_image_tower("resnet50", image_size=31)


@pytest.mark.parametrize("name", ["small_cnn", "mobilenet_v3_small"])
def test_weights_from_a_local_file(name, tmp_path):
    tower = build_image_tower(name, image_size=32)
    backbone = [layer for layer in tower.layers if isinstance(layer, keras.Model)][0]
    path = tmp_path / "backbone.weights.h5"
    backbone.save_weights(path)
    reloaded = build_image_tower(name, image_size=32, weights=str(path))
    images = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(tower(images), reloaded(images), atol=1e-6)


def test_missing_weights_file_is_named():
    with pytest.raises(FileNotFoundError, match="nowhere.weights.h5"):
        build_image_tower("vgg16", image_size=32, weights="nowhere.weights.h5")


def test_small_cnn_has_no_imagenet_weights():
    with pytest.raises(ValueError, match="`small_cnn` has no pretrained weights"):
        build_image_tower("small_cnn", weights="imagenet")


def test_freeze_whole_tower():
    model = mmzoo.build_model(
        image_tower="mobilenet_v3_small",
        freeze_image_tower=True,
        num_classes=2,
        image_size=32,
    )
    assert model.get_layer("image_tower").trainable_weights == []
    assert model.get_layer("text_tower").trainable_weights


def test_fine_tune_only_top_layers():
    tower = build_image_tower("resnet50", image_size=32, trainable_layers=5)
    backbone = tower.get_layer("resnet50")
    flags = [layer.trainable for layer in backbone.layers]
    assert flags[-5:] == [True] * 5
    assert not any(flags[:-5])
    expected = sum(len(layer.trainable_weights) for layer in backbone.layers[-5:])
    assert len(tower.trainable_weights) == expected > 0


def _padded(rows, length):
    tokens = np.zeros((len(rows), length), "int32")
    for index, row in enumerate(rows):
        tokens[index, : len(row)] = row
    return tokens


@pytest.mark.parametrize("name", ["bow", "cnn", "bilstm", "transformer"])
def test_padding_never_changes_a_text_tower(name):
    tower = build_text_tower(
        name,
        vocab_size=50,
        max_tokens=32,
        embedding_dim=8,
        units=8,
        num_heads=2,
        kernel_sizes=(2, 3, 4),
    )
    rows = [[5, 9, 2], [7], [3, 4, 5, 6, 7, 8, 9]]
    short = tower(_padded(rows, 8))
    long = tower(_padded(rows, 24))
    np.testing.assert_allclose(short["pooled"], long["pooled"], atol=1e-5)
    for index, row in enumerate(rows):
        np.testing.assert_allclose(
            short["sequence"][index, : len(row)],
            long["sequence"][index, : len(row)],
            atol=1e-5,
        )


@pytest.mark.parametrize("name", ["bow", "cnn", "bilstm", "transformer"])
def test_text_tower_output_contract(name):
    tower = build_text_tower(
        name, vocab_size=50, max_tokens=16, embedding_dim=8, units=8, num_heads=2
    )
    assert tower.name == "text_tower"
    out = tower(_padded([[1, 2, 3]], 16))
    assert out["sequence"].shape[:2] == (1, 16)
    assert out["pooled"].shape[0] == 1
    assert out["pooled"].shape[-1] == out["sequence"].shape[-1]


def _write_glove(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_glove_initialises_the_embeddings(tmp_path):
    glove = _write_glove(
        tmp_path / "glove.txt",
        [
            "the 0.1 0.2 0.3",
            "cat 1.0 -1.0 0.5",
            "dog 2.0 2.0 2.0",
            "café 0.5 0.5 0.5",
        ],
    )
    vocabulary = ["", "[UNK]", "the", "cat", "Dog", "café", "zebra"]
    tower = build_text_tower(
        "bow",
        vocab_size=10,
        embeddings=glove,
        vocabulary=vocabulary,
        trainable_embeddings=False,
    )
    matrix = tower.get_layer("token_embedding").get_weights()[0]
    assert matrix.shape == (10, 3)
    np.testing.assert_array_equal(matrix[0], 0.0)
    np.testing.assert_allclose(matrix[2], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(matrix[3], [1.0, -1.0, 0.5])
    np.testing.assert_allclose(matrix[4], [2.0, 2.0, 2.0])  # "Dog" found lower-cased
    np.testing.assert_allclose(matrix[5], [0.5, 0.5, 0.5])
    assert not np.allclose(matrix[6], 0.0)  # unseen word: random, not zero
    assert tower.get_layer("token_embedding").trainable_weights == []


def test_glove_vocabulary_file_and_word2vec_header(tmp_path):
    glove = _write_glove(tmp_path / "vectors.txt", ["2 2", "hello 1 2", "world 3 4"])
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n[UNK]\nworld\nhello\n", encoding="utf-8")
    model = mmzoo.build_model(
        text_tower="cnn",
        text_embeddings=glove,
        vocabulary=str(vocab),
        num_classes=2,
        image_size=32,
        vocab_size=4,
        text_units=4,
    )
    matrix = model.get_layer("text_tower").get_layer("token_embedding").get_weights()[0]
    np.testing.assert_allclose(matrix[2:4], [[3, 4], [1, 2]])


def test_glove_errors_name_the_problem(tmp_path):
    bad = _write_glove(tmp_path / "bad.txt", ["a 1 2 3", "b 1 2"])
    with pytest.raises(ValueError, match=r"bad.txt, line 2: expected 3 values"):
        build_text_tower(
            "bow", vocab_size=5, embeddings=bad, vocabulary=["", "?", "a", "b"]
        )
    with pytest.raises(ValueError, match="needs the `vocabulary`"):
        build_text_tower("bow", vocab_size=5, embeddings=bad)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        build_text_tower(
            "bow",
            vocab_size=5,
            embeddings=str(tmp_path / "missing.txt"),
            vocabulary=["", "?"],
        )
    good = _write_glove(tmp_path / "good.txt", ["a 1 2"])
    with pytest.raises(ValueError, match="has 4 tokens, more than `vocab_size=3`"):
        build_text_tower(
            "bow", vocab_size=3, embeddings=good, vocabulary=["", "?", "a", "b"]
        )
