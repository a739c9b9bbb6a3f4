"""Exporting a dual encoder: a SavedModel that embeds and searches, served
by a process that imports only TensorFlow, and one TFLite file per encoder
in the LiteRT interpreter, each against the Keras model.

One contrastive run, trained through `mmzoo.training.trainer.train` on the
caption fixture, is shared by every test (`shared_runs.contrastive_run`,
trained once per session for test_retrieval.py and
test_contrastive_training.py too). The index the
SavedModel searches is a stand-in with `mmzoo.retrieval.Index`'s
attributes, built from the Keras model's own embeddings of the run's
images.
"""

import dataclasses
import importlib.util
import json
import os
import types

import data_fixtures
import numpy as np
import pytest
import shared_runs
import tensorflow as tf
from harness import probe_signatures

from mmzoo import cli
from mmzoo import retrieval
from mmzoo.data import make_dataset
from mmzoo.data.images import prepare_image
from mmzoo.data.sources import read_manifest
from mmzoo.export import encoder_rest_request
from mmzoo.export import export_saved_model
from mmzoo.export import read_warmup_requests
from mmzoo.export import tflite
from mmzoo.export.saved_model import build_encoder_module
from mmzoo.runs import Run
from mmzoo.runs import load_run

IMAGES = shared_runs.CONTRASTIVE_IMAGES
CAPTIONS = shared_runs.CONTRASTIVE_CAPTIONS
WIDTH = shared_runs.CONTRASTIVE_WIDTH
TEXTS = ["a red picture", "all blue", "", "Ünïcödé yellow image number 3", "green"]


@dataclasses.dataclass
class IndexFields:
    """The attributes of `mmzoo.retrieval.Index` that the export reads, to
    make indexes that `Index` itself would refuse."""

    embeddings: np.ndarray
    ids: list
    modality: str
    fingerprint: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`(run, captions, folder)`: the shared run (read only) and a folder of
    this module's own for what the tests write."""
    run_dir, captions = shared_runs.contrastive_run(tmp_path_factory)
    return load_run(run_dir), captions, tmp_path_factory.mktemp("dual")


@pytest.fixture(scope="module")
def images(trained):
    """The run's image files, once each, and a JPEG of another size."""
    _, captions, folder = trained
    paths = list(dict.fromkeys(read_manifest(captions).images))
    extra = data_fixtures.write_image(str(folder / "extra.jpg"), 45, 31, "jpg", seed=2)
    return [*paths, extra]


def keras_image_embeddings(run, paths):
    pixels = np.concatenate([prepare_image(path, 32, run.resize) for path in paths])
    return np.asarray(run.model.image_encoder(pixels, training=False))


def keras_text_embeddings(run, texts):
    tokens = run.tokenizer(tf.constant(texts))
    return np.asarray(run.model.text_encoder(tokens, training=False))


@pytest.fixture(scope="module")
def index(trained, images):
    run = trained[0]
    paths = images[:IMAGES]
    index = retrieval.Index(WIDTH, "image", fingerprint=retrieval.fingerprint(run))
    return index.add(
        keras_image_embeddings(run, paths), [os.path.basename(p) for p in paths]
    )


@pytest.fixture(scope="module")
def base(trained):
    return trained[2] / "savedmodels"


@pytest.fixture(scope="module")
def exported(trained, index, base):
    return export_saved_model(trained[0], base=base, name="pairs", index=index)


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported)


def unit(rows):
    """`tf.math.l2_normalize`'s formula, in NumPy."""
    rows = np.asarray(rows, np.float32)
    squares = np.sum(rows * rows, axis=1, keepdims=True)
    return rows / np.sqrt(np.maximum(squares, np.float32(1e-12)))


def assert_exact_top_k(served, queries, index, k):
    """`ids` and `scores` are NumPy's exact top k of the Keras queries."""
    scores = unit(queries) @ unit(index.embeddings).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    assert served["ids"].shape == served["scores"].shape == (len(queries), k)
    np.testing.assert_allclose(
        served["scores"], np.take_along_axis(scores, order, 1), atol=1e-5
    )
    # Each id is the row its score belongs to.
    column = {name: position for position, name in enumerate(index.ids)}
    columns = np.vectorize(column.get)(served["ids"])
    np.testing.assert_allclose(
        np.take_along_axis(scores, columns, 1), served["scores"], atol=1e-5
    )
    # The order is NumPy's wherever rounding cannot swap two rows.
    others = np.abs(scores[:, :, None] - scores[:, None, :])
    others[:, np.arange(len(index.ids)), np.arange(len(index.ids))] = np.inf
    clear = np.take_along_axis(others.min(axis=2), order, 1) > 1e-5
    assert clear.mean() > 0.8, clear
    expected = np.asarray(index.ids)[order]
    np.testing.assert_array_equal(served["ids"][clear], expected[clear])


# === SavedModel: a fresh process serves what Keras computes ===


def test_fresh_process_embeds_and_searches_like_keras(
    trained, exported, index, images, tmp_path
):
    run = trained[0]
    calls = {
        "embed_image": ("embed_image", {"image_bytes": images}),
        "embed_text": ("embed_text", {"text": TEXTS}),
        "search_by_text": ("search_by_text", {"text": TEXTS, "k": 3}),
        # k beyond the index size is clipped to it.
        "search_by_image": ("search_by_image", {"image_bytes": images, "k": 50}),
    }
    served, audit = probe_signatures(exported, calls, tmp_path)
    assert audit["importable"] == []
    image = keras_image_embeddings(run, images)
    text = keras_text_embeddings(run, TEXTS)
    assert served["embed_image"]["image_embedding"].shape == (len(images), WIDTH)
    image_difference = np.max(np.abs(served["embed_image"]["image_embedding"] - image))
    text_difference = np.max(np.abs(served["embed_text"]["text_embedding"] - text))
    print(
        f"fresh process vs Keras: image {image_difference:.2g}, "
        f"text {text_difference:.2g}"
    )
    assert image_difference <= 1e-5 and text_difference <= 1e-5
    assert_exact_top_k(served["search_by_text"], text, index, 3)
    assert_exact_top_k(served["search_by_image"], image, index, IMAGES)
    # An image of the index finds itself first.
    np.testing.assert_array_equal(
        served["search_by_image"]["ids"][:IMAGES, 0], index.ids
    )

    # The op audit: core TensorFlow only (a word tokenizer needs no TF Text),
    # no Python; decoding, the guard's assertions, tokenization and the
    # search are in the graph.
    assert audit["unregistered"] == [] and audit["text"] == []
    core = set(audit["core"])
    assert not {"PyFunc", "EagerPyFunc", "PyFuncStateless"} & core
    assert {"DecodeImage", "Assert", "LookupTableFindV2", "TopKV2"} <= core
    assert {"MatMul", "BatchMatMulV2"} & core


def test_signatures_refuse_bad_requests_in_one_message(loaded, images):
    search = loaded.signatures["search_by_text"]
    text = tf.constant(["a red picture"])
    for k, message in (
        (0, r"`k` must be at least 1\. Received: k=0"),
        (-2, r"`k` must be at least 1\. Received: k=-2"),
        ([1, 2], r"`k` must be a scalar: .* Received: shape \[2\]"),
    ):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            search(text=text, k=tf.constant(k))
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"`text` must have shape \[batch\]"
    ):
        loaded.signatures["embed_text"](text=tf.constant([["a", "b"]]))
    good = open(images[0], "rb").read()
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"image_bytes\[1\] could not be decoded"
    ):
        loaded.signatures["search_by_image"](
            image_bytes=tf.constant([good, b"not an image"]), k=tf.constant(2)
        )
    # Empty batches give empty answers of the right widths.
    empty = tf.constant([], tf.string)
    embedded = loaded.signatures["embed_image"](image_bytes=empty)
    assert embedded["image_embedding"].shape == (0, WIDTH)
    found = search(text=empty, k=tf.constant(4))
    assert found["ids"].shape == found["scores"].shape == (0, 4)
    assert found["ids"].dtype == tf.string and found["scores"].dtype == tf.float32


def test_model_card_warmup_and_config(exported, base, index):
    assert os.path.basename(exported) == "1"
    with open(os.path.join(exported, "model_card.json")) as file:
        card = json.load(file)
    with open(os.path.join(exported, "assets.extra", "model_card.json")) as file:
        assert json.load(file) == card
    assert card["task"] == "contrastive"
    assert card["embedding"] == {
        "width": WIDTH,
        "normalized": True,
        "search_score": "cosine similarity",
    }
    assert card["index"] == {
        "size": IMAGES,
        "width": WIDTH,
        "modality": "image",
        "fingerprint": index.fingerprint,
        "dtype": "float32",
    }
    signatures = card["signatures"]
    # Keras names its first endpoint `serving_default` too.
    assert sorted(signatures) == [
        "embed_image",
        "embed_text",
        "search_by_image",
        "search_by_text",
        "serving_default",
    ]
    assert signatures["serving_default"] == signatures["embed_image"]
    assert signatures["search_by_text"] == {
        "inputs": {
            "k": {"dtype": "int32", "shape": []},
            "text": {"dtype": "string", "shape": [None]},
        },
        "outputs": {
            "ids": {"dtype": "string", "shape": [None, None]},
            "scores": {"dtype": "float32", "shape": [None, None]},
        },
    }
    assert signatures["embed_text"]["outputs"] == {
        "text_embedding": {"dtype": "float32", "shape": [None, WIDTH]}
    }
    assert "labels" not in card and card["tokenizer"]["max_tokens"] == 8

    # Warmup: each signature on the PNG, the JPEG, then both.
    requests = read_warmup_requests(exported)
    assert card["warmup_records"] == len(requests) == 4 * 3
    by_signature = {}
    for request in requests:
        assert request.model_spec.name == "pairs"
        inputs = sorted(request.inputs)
        by_signature.setdefault(request.model_spec.signature_name, set()).add(
            tuple(inputs)
        )
    assert by_signature == {
        "embed_image": {("image_bytes",)},
        "embed_text": {("text",)},
        "search_by_image": {("image_bytes", "k")},
        "search_by_text": {("k", "text")},
    }
    config = (base / "models.config").read_text()
    assert 'name: "pairs"' in config and 'base_path: "/models/pairs"' in config


def test_unusable_indexes_are_refused_before_anything_is_written(
    trained, index, tmp_path
):
    run = trained[0]
    index = IndexFields(index.embeddings, index.ids, index.modality, "x")
    cases = [
        (
            dataclasses.replace(index, embeddings=index.embeddings[:, :8]),
            "embeddings of width 8, but the model embeds into 16",
        ),
        (
            dataclasses.replace(index, embeddings=index.embeddings[:0], ids=[]),
            "`index` is empty",
        ),
        (dataclasses.replace(index, ids=index.ids[:-1]), "one str per row"),
        (
            dataclasses.replace(index, modality="images"),
            "`index.modality` must be one of .* Did you mean 'image'",
        ),
        (
            dataclasses.replace(index, embeddings=index.embeddings.astype("float64")),
            "float32 or float16",
        ),
        (types.SimpleNamespace(embeddings=index.embeddings), "without `ids`"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            export_saved_model(run, base=tmp_path, name="pairs", index=bad)
    # A fused run has no search signatures to give an index.
    fused = Run(run.model, run.tokenizer, None, {"task": "multiclass"}, "runs/x")
    with pytest.raises(ValueError, match="is a multiclass run"):
        export_saved_model(fused, base=tmp_path, index=index)
    assert os.listdir(tmp_path) == []


def test_a_text_index_in_float16_is_searched_from_both_modalities(
    trained, images, tmp_path
):
    run = trained[0]
    texts = list(dict.fromkeys(read_manifest(trained[1]).texts))
    rows = keras_text_embeddings(run, texts).astype("float16")
    index = retrieval.Index(WIDTH, "text", dtype="float16").add(rows, texts)
    archive = build_encoder_module(run.model, run.tokenizer, 32, index=index)
    archive.write_out(str(tmp_path / "model"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    queries = [open(path, "rb").read() for path in images[:3]]
    found = loaded.signatures["search_by_image"](
        image_bytes=tf.constant(queries), k=tf.constant(5)
    )
    served = {name: value.numpy() for name, value in found.items()}
    served["ids"] = served["ids"].astype(str)
    # The float16 rows are searched as the float32 values they hold.
    assert_exact_top_k(served, keras_image_embeddings(run, images[:3]), index, 5)


# === TFLite: two files, each against its Keras half ===


@pytest.fixture(scope="module")
def tflite_exports(trained):
    run, _, folder = trained
    return {
        quantize: tflite.export_tflite(
            run, folder / "app" / f"{quantize}.tflite", quantize=quantize
        )
        for quantize in tflite.QUANTIZATIONS
    }


@pytest.fixture(scope="module")
def rows(trained):
    """The representative/validation rows, with their image and text ids."""
    run, captions, _ = trained
    dataset = make_dataset(
        captions, run.tokenizer, 32, 12, training=False, task="contrastive"
    )
    return list(dataset.as_numpy_iterator())


@pytest.mark.parametrize("quantize", tflite.QUANTIZATIONS)
def test_encoder_files_match_keras(trained, tflite_exports, rows, quantize):
    run = trained[0]
    result = tflite.retrieval_parity(run, tflite_exports[quantize], rows)
    assert result["examples"] == IMAGES * CAPTIONS
    cosines = {m: result[m]["cosine_similarity"] for m in ("image", "text")}
    recall = {
        direction: (
            result["keras"][f"{direction}_R@10"],
            result["tflite"][f"{direction}_R@10"],
        )
        for direction in ("image_to_text", "text_to_image")
    }
    print(
        f"{quantize}: cosine {cosines}, max abs diff "
        f"{[result[m]['max_abs_diff'] for m in ('image', 'text')]}, "
        f"R@10 (keras, tflite) {recall}, R@1 differences "
        f"{[result['recall_difference'][f'{d}_R@1'] for d in recall]}"
    )
    for modality in ("image", "text"):
        assert result[modality]["output"] == f"{modality}_embedding"
        assert result[modality]["top1_agreement"] is None
    if quantize == "int8":
        assert min(cosines.values()) >= 0.99, result
        for keras_recall, tflite_recall in recall.values():
            assert abs(tflite_recall - keras_recall) <= 0.01, result
        # R@1 is reported (one query of 24 is 4 points); R@5 holds too.
        for direction in recall:
            assert abs(result["recall_difference"][f"{direction}_R@5"]) <= 0.01
    else:
        assert min(cosines.values()) >= 0.999, result
    if quantize == "none":
        assert max(result[m]["max_abs_diff"] for m in ("image", "text")) <= 1e-5


def test_encoder_files_are_builtin_ops_with_the_app_files(trained, tflite_exports):
    run = trained[0]
    folder = trained[2] / "app"
    for quantize, report in tflite_exports.items():
        assert sorted(report["encoders"]) == ["image", "text"]
        paths = tflite.encoder_paths(folder / f"{quantize}.tflite")
        assert paths == {
            "image": str(folder / f"{quantize}.image.tflite"),
            "text": str(folder / f"{quantize}.text.tflite"),
        }
        for modality, encoder in report["encoders"].items():
            assert encoder["path"] == paths[modality]
            assert encoder["bytes"] == os.path.getsize(encoder["path"])
            assert tflite.check_builtin_ops(encoder["path"]) == encoder["ops"]
        assert report["embedding_width"] == WIDTH
    assert "QUANTIZE" in tflite_exports["int8"]["encoders"]["image"]["ops"]
    assert tflite_exports["int8"]["calibration_examples"] == IMAGES * CAPTIONS
    assert tflite_exports["float16"]["encoders"]["text"]["size_ratio"] < 0.7
    assert not (folder / "none.tflite").exists()
    for name in ("vocabulary.txt", "tokenizer.json", "pure_python_tokenizer.py"):
        assert str(folder / name) in tflite_exports["none"]["files"]

    with open(folder / "int8.json", encoding="utf-8") as file:
        card = json.load(file)
    assert card["encoders"]["image"]["model"] == "int8.image.tflite"
    assert card["encoders"]["image"]["inputs"] == [
        {"name": "image", "shape": [-1, 32, 32, 3], "dtype": "float32"}
    ]
    assert card["encoders"]["text"]["inputs"] == [
        {"name": "tokens", "shape": [-1, 8], "dtype": "int32"}
    ]
    assert card["encoders"]["text"]["outputs"] == [
        {"name": "text_embedding", "shape": [-1, WIDTH], "dtype": "float32"}
    ]
    assert (card["embedding_width"], card["normalized"], card["quantize"]) == (
        WIDTH,
        True,
        "int8",
    )

    # The app's path: the shipped tokenizer beside the text encoder.
    from ai_edge_litert.interpreter import Interpreter

    spec = importlib.util.spec_from_file_location(
        "shipped_tokenizer", folder / "pure_python_tokenizer.py"
    )
    shipped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shipped)
    tokenizer = shipped.PythonWordTokenizer.from_directory(str(folder))
    runner = Interpreter(
        model_path=tflite_exports["none"]["encoders"]["text"]["path"]
    ).get_signature_runner()
    for text in TEXTS:
        app = runner(tokens=np.asarray(tokenizer.encode([text]), "int32"))
        np.testing.assert_allclose(
            app["text_embedding"], keras_text_embeddings(run, [text]), atol=1e-5
        )


# === The command line ===


def test_command_line_exports_a_contrastive_run(
    trained, exported, base, index, monkeypatch, capsys
):
    run_dir = trained[0].directory
    app = trained[2] / "cli_app"
    argv = ["export", str(run_dir), "--saved-model", str(base / "pairs")]
    status = cli.main([*argv, "--tflite", str(app / "pairs.tflite")])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert f"SavedModel written to {base / 'pairs' / '2'}" in printed
    assert f"written to {app / 'pairs.image.tflite'}" in printed
    assert f"written to {app / 'pairs.text.tflite'}" in printed
    # Without an index: the two embedding signatures.
    with open(base / "pairs" / "2" / "model_card.json") as file:
        card = json.load(file)
    assert sorted(card["signatures"]) == [
        "embed_image",
        "embed_text",
        "serving_default",
    ]
    assert card["index"] is None and card["warmup_records"] == 2 * 3

    # --index loads a saved index (`mmzoo index`) and hands it to the
    # export (which the test above runs with an index: stood in for here).
    given = {}
    from mmzoo.export import saved_model

    def recorded(run, **arguments):
        given.update(arguments)
        return "savedmodels/pairs/3"

    monkeypatch.setattr(saved_model, "export_saved_model", recorded)
    index_dir = index.save(trained[2] / "index")
    assert cli.main([*argv, "--index", str(index_dir)]) == 0
    assert given["index"].ids == index.ids
    np.testing.assert_array_equal(given["index"].embeddings, index.embeddings)

    # An index without a SavedModel to search it: one line, status 2.
    assert (
        cli.main(["export", str(run_dir), "--tflite", "x.tflite", "--index", "."]) == 2
    )
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: --index")


def test_rest_request_bodies(images):
    body = encoder_rest_request("search_by_text", texts=["a red picture"], k=5)
    assert body == {
        "signature_name": "search_by_text",
        "inputs": {"text": ["a red picture"], "k": 5},
    }
    body = encoder_rest_request("embed_image", images=images[:2])
    assert sorted(body["inputs"]) == ["image_bytes"]
    assert len(body["inputs"]["image_bytes"]) == 2
    assert json.loads(json.dumps(body)) == body
    with pytest.raises(TypeError, match="`search_by_image` takes `images` and `k`"):
        encoder_rest_request("search_by_image", images=images[:1])
    with pytest.raises(TypeError, match="`embed_text` takes `texts`"):
        encoder_rest_request("embed_text", texts=["a"], images=images[:1])
    with pytest.raises(ValueError, match="`k` must be a positive int"):
        encoder_rest_request("search_by_text", texts=["a"], k=0)
    with pytest.raises(ValueError, match="Did you mean 'embed_text'"):
        encoder_rest_request("embed_txt", texts=["a"])
