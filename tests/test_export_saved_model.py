"""SavedModel export for TF Serving: the signatures, their parity with the
Keras model, what the graph needs to run, and the files around it.

The TF Serving binary is not installable here, so a fresh Python process
stands in for it: one in which Keras and mmzoo cannot be imported at all
(TensorFlow's own `__init__` imports Keras when it can, so "not imported" has
to be enforced rather than observed), loading TF Text's op libraries directly
for WordPiece models as TF Serving links them.
"""

import base64
import json
import os

import data_fixtures
import keras
import numpy as np
import pytest
import shared_runs
import tensorflow as tf
from google.protobuf import text_format
from harness import TINY
from harness import probe_saved_model
from tensorflow_serving.config import model_server_config_pb2

import mmzoo
from mmzoo.data import LabelVocabulary
from mmzoo.data import WordPieceTokenizer
from mmzoo.data import WordTokenizer
from mmzoo.data import load_tokenizer
from mmzoo.data.images import inspect_image
from mmzoo.data.images import load_image
from mmzoo.export import build_serving_module
from mmzoo.export import export_saved_model
from mmzoo.export import grpc_request
from mmzoo.export import read_warmup_requests
from mmzoo.export import rest_request
from mmzoo.export import write_models_config
from mmzoo.runs import Run
from mmzoo.runs import load_run

TEXTS = ["is this a circle", "a square?", "", "Ünïcödé triangle 3"]


def keras_outputs(model, tokenizer, images, texts, image_size, resize="stretch"):
    """The model's outputs on inputs made by mmzoo's own pipeline functions."""
    pixels = [
        load_image(open(path, "rb").read(), image_size, resize).numpy()
        for path in images
    ]
    features = {
        "image": np.stack(pixels).astype("float32"),
        "tokens": tokenizer(tf.constant(texts)).numpy(),
    }
    return {k: np.asarray(v) for k, v in model(features, training=False).items()}


def serve(loaded, images, texts):
    contents = [open(p, "rb").read() if not isinstance(p, bytes) else p for p in images]
    outputs = loaded.signatures["serving_default"](
        image_bytes=tf.constant(contents, tf.string), text=tf.constant(texts, tf.string)
    )
    return {name: value.numpy() for name, value in outputs.items()}


def max_difference(first, second, names):
    return max(float(np.max(np.abs(first[n] - second[n]), initial=0)) for n in names)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Real files of several formats, sizes and channel layouts."""
    folder = tmp_path_factory.mktemp("request_images")
    write = data_fixtures.write_image
    return [
        write(str(folder / "a.png"), 20, 28, "png", seed=1),
        write(str(folder / "b.jpg"), 45, 31, "jpg", seed=2),
        write(str(folder / "c.png"), 33, 17, "png", seed=3, mode="RGBA"),
        write(str(folder / "d.bmp"), 32, 32, "bmp", seed=4),
    ]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real run folder: `mmzoo train` on a tiny manifest, padded resize
    (`shared_runs.gated_run`, trained once per session; read only)."""
    return shared_runs.gated_run(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("savedmodels")


@pytest.fixture(scope="module")
def exported(run_dir, base):
    return export_saved_model(run_dir, base=base)


@pytest.fixture(scope="module")
def probe(exported, images, tmp_path_factory):
    """The exported run served by a fresh process: (outputs, op audit)."""
    return probe_saved_model(exported, images, TEXTS, tmp_path_factory.mktemp("probe"))


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported)


def tiny_run(tmp_path, tokenizer, labels=("circle", "square", "triangle"), **kwargs):
    """A `Run` around a freshly built (untrained) tiny model."""
    arguments = {**TINY, "vocab_size": tokenizer.vocab_size, "num_classes": 3}
    model = mmzoo.build_model(**{**arguments, **kwargs})
    labels = LabelVocabulary(labels) if labels else None
    task = kwargs.get("task", "multiclass")
    return Run(model, tokenizer, labels, {"task": task}, str(tmp_path / "run"))


def word_tokenizer():
    return WordTokenizer.fit(TEXTS, max_tokens=TINY["max_tokens"])


# === A fresh process serves what Keras computes ===


def test_fresh_process_matches_keras_model(probe, run, images):
    outputs, audit = probe
    assert audit["importable"] == []
    expected = keras_outputs(
        run.explained_model(), run.tokenizer, images, TEXTS, 32, "pad"
    )
    assert sorted(outputs) == [
        "modality_weights",
        "probabilities",
        "top_k_labels",
        "top_k_scores",
    ]
    difference = max_difference(
        outputs, expected, ["probabilities", "modality_weights"]
    )
    print(f"fresh process vs Keras: max abs difference {difference:.3g}")
    assert difference <= 1e-5
    names = np.asarray(run.labels.names)
    order = np.argsort(-expected["probabilities"], axis=1, kind="stable")
    np.testing.assert_array_equal(outputs["top_k_labels"][:, 0], names[order[:, 0]])
    np.testing.assert_array_equal(outputs["top_k_labels"], names[order])
    np.testing.assert_allclose(
        outputs["top_k_scores"],
        np.take_along_axis(expected["probabilities"], order, 1),
        atol=1e-5,
    )


def test_graph_holds_only_core_tensorflow_ops(probe):
    _, audit = probe
    # A word tokenizer needs no TensorFlow Text: nothing outside core ops
    # (the probe process has no TF Text kernels to register them).
    assert audit["unregistered"] == [] and audit["text"] == []
    assert not {"PyFunc", "EagerPyFunc", "PyFuncStateless"} & set(audit["core"])
    # The image checks (the header walks, and the tf.data decode that names a
    # file failing to decode), decoding and the tokenizer's lookups are in the
    # graph. The JPEG size is read by the guard's own walk: ExtractJpegShape
    # failed, naming no element, on a JPEG with a corrupt table.
    core = set(audit["core"])
    assert {"DecodeImage", "Assert", "LookupTableFindV2", "StatelessWhile"} <= core
    assert {"IgnoreErrorsDataset", "DatasetToSingleElement"} <= core
    assert "ExtractJpegShape" not in core


# === Signatures ===


def test_signature_contract(loaded, run, images):
    serving = loaded.signatures["serving_default"]
    _, inputs = serving.structured_input_signature
    # Declared of any shape, so that the graph's own assertion can say that
    # the shape must be [batch] (test_wrong_rank_inputs_say_the_shape); the
    # model card states [None].
    assert inputs == {
        "image_bytes": tf.TensorSpec(None, tf.string, "image_bytes"),
        "text": tf.TensorSpec(None, tf.string, "text"),
    }
    outputs = serving.structured_outputs
    assert {name: spec.dtype for name, spec in outputs.items()} == {
        "probabilities": tf.float32,
        "modality_weights": tf.float32,
        "top_k_labels": tf.string,
        "top_k_scores": tf.float32,
    }
    # Three classes: top_k=5 gives the three of them.
    for batch in (1, 3):
        result = serve(loaded, images[:batch], TEXTS[:batch])
        assert result["probabilities"].shape == (batch, 3)
        assert result["top_k_labels"].shape == (batch, 3)
        assert result["top_k_scores"].shape == (batch, 3)
        assert result["modality_weights"].shape == (batch, 2)

    tensors = loaded.signatures["predict_tensors"]
    _, inputs = tensors.structured_input_signature
    assert inputs == {
        "image": tf.TensorSpec([None, 32, 32, 3], tf.float32, "image"),
        "tokens": tf.TensorSpec([None, 8], tf.int32, "tokens"),
    }
    rng = np.random.default_rng(0)
    features = {
        "image": rng.uniform(0, 255, (3, 32, 32, 3)).astype("float32"),
        "tokens": rng.integers(0, run.tokenizer.vocab_size, (3, 8)).astype("int32"),
    }
    result = {k: v.numpy() for k, v in tensors(**features).items()}
    expected = {k: np.asarray(v) for k, v in run.explained_model()(features).items()}
    assert sorted(result) == ["modality_weights", "probabilities"]
    assert sorted(result) == sorted(expected)
    assert max_difference(result, expected, list(expected)) <= 1e-5


def test_empty_batch_gives_empty_outputs(loaded):
    result = serve(loaded, [], [])
    assert result["probabilities"].shape == (0, 3)
    assert result["top_k_labels"].shape == (0, 3)
    assert result["modality_weights"].shape == (0, 2)
    empty = loaded.signatures["predict_tensors"](
        image=tf.zeros([0, 32, 32, 3]), tokens=tf.zeros([0, 8], tf.int32)
    )
    assert empty["probabilities"].shape == (0, 3)


def test_bad_images_fail_the_batch_with_a_clear_message(loaded, images, tmp_path):
    good = open(images[0], "rb").read()
    truncated = data_fixtures.truncate(
        data_fixtures.write_image(str(tmp_path / "t.png"), 40, 40, "png", seed=5)
    )
    bomb = data_fixtures.write_png_header_bomb(str(tmp_path / "bomb.png"))
    cases = [
        (b"this is a text file", "image_bytes[1] could not be decoded"),
        (b"", "image_bytes[1] could not be decoded"),
        (open(truncated, "rb").read(), "image_bytes[1] could not be decoded: the PNG"),
        (open(bomb, "rb").read(), "image_bytes[1] is too large"),
    ]
    for bad, message in cases:
        with pytest.raises(
            tf.errors.InvalidArgumentError, match=message.replace("[", r"\[")
        ):
            serve(loaded, [good, bad], ["a", "b"])
    # Garbage inside an intact file: only the decoder finds it, and the
    # message still names the file.
    corrupt = data_fixtures.write_corrupt_png(str(tmp_path / "corrupt.png"))
    cases = [
        (open(corrupt, "rb").read(), "PNG"),
        (data_fixtures.corrupt_jpeg(decodes=False), "JPEG"),
    ]
    for bad, kind in cases:
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=rf"image_bytes\[1\] could not be decoded: its {kind} data is "
            "corrupt",
        ):
            serve(loaded, [good, bad], ["a", "b"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="one text per image"):
        serve(loaded, [good, good], ["only one text"])


def test_animated_gif_bomb_is_refused_naming_its_index(loaded, images):
    # 300 frames of 1000x1000 in 550 KB: TensorFlow would decode all 300
    # (+100 MB, 1.5 s here). 64 Mpx are counted over all the frames.
    bomb = data_fixtures.animated_gif(300, 1000, 1000)
    good = open(images[0], "rb").read()
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"image_bytes\[2\] is too large to decode: its header declares "
        r"300000000 pixels in 300 frames, more than max_pixels=67108864\.",
    ):
        serve(loaded, [good, good, bomb], ["a", "b", "c"])
    # 60 such frames fit the budget, and serve.
    result = serve(loaded, [data_fixtures.animated_gif(60, 1000, 1000)], ["a"])
    assert result["probabilities"].shape == (1, 3)


def test_wrong_rank_inputs_say_the_expected_shape(loaded, images):
    good = open(images[0], "rb").read()
    signature = loaded.signatures["serving_default"]
    cases = [
        ("image_bytes", [[good]], [["a"]], r"shape \[1 1\]"),
        ("image_bytes", good, "a", r"shape \[\]"),
        ("text", [good], [["a"]], r"shape \[1 1\]"),
    ]
    for name, image_bytes, text, received in cases:
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=rf"`{name}` must have shape \[batch\] \(one string per "
            rf"example\)\. Received: {received}",
        ):
            signature(image_bytes=tf.constant(image_bytes), text=tf.constant(text))


def test_truncation_check_agrees_with_the_training_data_check(loaded, tmp_path):
    write = data_fixtures.write_image
    for kind in ("png", "jpg", "gif"):
        data = open(write(str(tmp_path / f"x.{kind}"), 30, 20, kind), "rb").read()
        # Cut short, or padded after the end marker within / beyond the slack.
        for variant in (data, data[:-3], data + bytes(10), data + bytes(40)):
            truncated = inspect_image(variant).truncated
            try:
                serve(loaded, [variant], ["a"])
                refused = False
            except tf.errors.InvalidArgumentError as error:
                assert "truncated" in error.message
                refused = True
            assert refused == truncated, (kind, len(variant) - len(data))


# === Folder layout, config, warmup, model card ===


def test_versions_config_and_warmup(run, exported, base, images):
    assert os.path.basename(exported) == "1"
    second = export_saved_model(run, base=base, warmup=[(images[1], "custom")])
    assert second == os.path.join(base, "gated", "2")
    with pytest.raises(FileExistsError, match="never overwritten"):
        export_saved_model(run, base=base, version=1)
    assert sorted(os.listdir(base / "gated")) == ["1", "2"]  # no staging left

    # A second model folder (a stand-in) is listed too.
    os.makedirs(base / "other" / "7")
    (base / "other" / "7" / "saved_model.pb").touch()
    write_models_config(base)
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse((base / "models.config").read_text(), config)
    entries = config.model_config_list.config
    assert [(e.name, e.base_path, e.model_platform) for e in entries] == [
        ("gated", "/models/gated", "tensorflow"),
        ("other", "/models/other", "tensorflow"),
    ]
    write_models_config(base, serving_root=None)
    assert (
        f'base_path: "{os.path.abspath(base)}/gated"'
        in (base / "models.config").read_text()
    )

    # Warmup: the default (a PNG, a JPEG, then both) and a custom one.
    for folder, count in ((exported, 3), (second, 1)):
        requests = read_warmup_requests(folder)
        assert len(requests) == count
        loaded = tf.saved_model.load(folder)
        for request in requests:
            assert request.model_spec.name == "gated"
            assert request.model_spec.signature_name == "serving_default"
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            assert sorted(inputs) == ["image_bytes", "text"]
            outputs = loaded.signatures["serving_default"](**inputs)
            assert outputs["probabilities"].shape == (len(inputs["text"]), 3)
    assert (
        tf.make_ndarray(requests[0].inputs["image_bytes"])[0]
        == open(images[1], "rb").read()
    )


def test_model_card_and_client_files(exported, run, run_dir):
    with open(os.path.join(exported, "model_card.json")) as file:
        card = json.load(file)
    extra = os.path.join(exported, "assets.extra")
    with open(os.path.join(extra, "model_card.json")) as file:
        assert json.load(file) == card
    assert card["name"] == "gated" and card["version"] == 1
    assert card["image_size"] == 32 and card["resize"] == "pad"
    assert card["labels"] == run.labels.names
    serving = card["signatures"]["serving_default"]
    assert serving["inputs"] == {
        "image_bytes": {"dtype": "string", "shape": [None]},
        "text": {"dtype": "string", "shape": [None]},
    }
    assert serving["outputs"]["top_k_labels"] == {"dtype": "string", "shape": [None, 3]}
    assert card["signatures"]["predict_tensors"]["inputs"]["tokens"] == {
        "dtype": "int32",
        "shape": [None, 8],
    }
    assert card["tokenizer"]["vocab_size"] == run.tokenizer.vocab_size
    assert os.path.isfile(os.path.join(exported, card["tokenizer"]["vocabulary_file"]))
    with open(run_dir / "metrics.json") as file:
        assert card["metrics"] == json.load(file)
    assert card["versions"] == {
        "mmzoo": mmzoo.__version__,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
    }
    labels = LabelVocabulary.load(os.path.join(exported, card["labels_file"]))
    assert labels.names == run.labels.names
    tokenizer = load_tokenizer(os.path.join(exported, card["tokenizer"]["folder"]))
    np.testing.assert_array_equal(tokenizer(TEXTS), run.tokenizer(TEXTS))


def test_export_validates_its_arguments(run, images, tmp_path):
    with pytest.raises(ValueError, match="`name` must be"):
        export_saved_model(run, base=tmp_path, name="bad/name")
    with pytest.raises(ValueError, match="`version` must be a positive int"):
        export_saved_model(run, base=tmp_path, version=0)
    with pytest.raises(ValueError, match="`top_k` must be"):
        build_serving_module(run.model, run.tokenizer, run.labels, 32, top_k=0)
    with pytest.raises(ValueError, match="`resize` must be one of"):
        build_serving_module(run.model, run.tokenizer, run.labels, 32, resize="pda")
    with pytest.raises(ValueError, match=r"warmup\[1\] is not a complete"):
        export_saved_model(run, base=tmp_path, warmup=[(images[0], "a"), (b"GIF8", "")])
    with pytest.raises(ValueError, match="needs 3 labels"):
        build_serving_module(run.model, run.tokenizer, ["a", "b"], 32)
    assert not os.listdir(tmp_path)


# === Other models ===


def test_cross_attention_transformer_exports(tmp_path, images):
    run = tiny_run(
        tmp_path, word_tokenizer(), fusion="cross_attention", text_tower="transformer"
    )
    loaded = tf.saved_model.load(export_saved_model(run, base=tmp_path / "models"))
    expected = keras_outputs(run.model, run.tokenizer, images, TEXTS, 32)
    result = serve(loaded, images, TEXTS)
    assert max_difference(result, expected, list(expected)) <= 1e-5


def test_mixed_precision_model_exports_float32_outputs(tmp_path, images):
    keras.config.set_dtype_policy("mixed_float16")
    try:
        run = tiny_run(tmp_path, word_tokenizer(), fusion="gated")
    finally:
        keras.config.set_dtype_policy("float32")
    assert run.model.get_layer("fusion").compute_dtype == "float16"
    loaded = tf.saved_model.load(export_saved_model(run, base=tmp_path / "models"))
    for signature in ("serving_default", "predict_tensors"):
        for name, spec in loaded.signatures[signature].structured_outputs.items():
            assert spec.dtype in (tf.float32, tf.string), (signature, name)
    expected = keras_outputs(run.model, run.tokenizer, images, TEXTS, 32)
    result = serve(loaded, images, TEXTS)
    # float16 arithmetic (resolution 1e-3) in both, in kernels that differ
    # by CPU (2.2e-5 on an AVX512-FP16 machine): within a tenth of that.
    assert max_difference(result, expected, list(expected)) <= 1e-4


def test_wordpiece_model_loads_with_tensorflow_text_ops(tmp_path, images):
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "is", "this", "a", "circle"]
    vocabulary += ["square", "tri", "##angle", "?", "3"]
    tokenizer = WordPieceTokenizer(vocabulary, max_tokens=TINY["max_tokens"])
    run = tiny_run(tmp_path, tokenizer, fusion="concat", text_tower="bow")
    folder = export_saved_model(run, base=tmp_path / "models", name="wordpiece")
    card = json.load(open(os.path.join(folder, "model_card.json")))
    assert card["tokenizer"]["type"] == "WordPieceTokenizer"
    assert card["tokenizer"]["requires"] == "tensorflow_text"
    outputs, audit = probe_saved_model(
        folder, images, TEXTS, tmp_path / "probe", text_ops=True
    )
    assert audit["unregistered"] == [] and audit["importable"] == []
    assert audit["text"] == ["FastBertNormalize", "FastWordpieceTokenizeWithOffsets"]
    expected = keras_outputs(run.model, run.tokenizer, images, TEXTS, 32)
    assert max_difference(outputs, expected, ["probabilities"]) <= 1e-5


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_binary_and_regression_outputs(task, tmp_path, images):
    labels = ("no", "yes") if task == "binary" else None
    run = tiny_run(tmp_path, word_tokenizer(), labels, task=task, num_classes=1)
    archive = build_serving_module(
        run.model, run.tokenizer, run.labels, 32, task=task, top_k=5
    )
    archive.write_out(str(tmp_path / "model"), verbose=False)
    result = serve(tf.saved_model.load(str(tmp_path / "model")), images, TEXTS)
    expected = keras_outputs(run.model, run.tokenizer, images, TEXTS, 32)
    if task == "regression":
        assert sorted(result) == ["predictions"]
        assert max_difference(result, expected, ["predictions"]) <= 1e-5
        return
    # One sigmoid unit: both labels, ranked by p and 1 - p.
    p = expected["probabilities"][:, 0]
    assert result["top_k_labels"].shape == (len(images), 2)
    top = np.where(p >= 0.5, b"yes", b"no")
    np.testing.assert_array_equal(result["top_k_labels"][:, 0], top)
    np.testing.assert_allclose(
        result["top_k_scores"][:, 0], np.maximum(p, 1 - p), atol=1e-6
    )


# === Client helpers ===


def test_rest_request_json(images):
    body = rest_request([images[0], open(images[1], "rb").read()], ["a ü", "b"])
    assert json.loads(json.dumps(body)) == body
    assert body["signature_name"] == "serving_default"
    first, second = body["instances"]
    assert sorted(first) == ["image_bytes", "text"]
    assert base64.b64decode(first["image_bytes"]["b64"]) == open(images[0], "rb").read()
    assert (
        base64.b64decode(second["image_bytes"]["b64"]) == open(images[1], "rb").read()
    )
    assert first["text"] == "a ü"
    with pytest.raises(ValueError, match="same length"):
        rest_request([images[0]], ["a", "b"])
    with pytest.raises(TypeError, match="wrap it in a list"):
        rest_request(images[0], "a")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        rest_request(["missing.png"], ["a"])


def test_grpc_request_decodes_back(images):
    request = grpc_request(images[:2], ["a ü", "b"], "gated", version=3)
    assert request.model_spec.name == "gated"
    assert request.model_spec.signature_name == "serving_default"
    assert request.model_spec.version.value == 3
    decoded = tf.make_ndarray(request.inputs["image_bytes"])
    assert list(decoded) == [open(p, "rb").read() for p in images[:2]]
    assert [t.decode() for t in tf.make_ndarray(request.inputs["text"])] == ["a ü", "b"]
    assert not grpc_request([], [], "gated").model_spec.HasField("version")
