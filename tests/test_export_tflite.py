"""TFLite export: parity with Keras per quantisation, sizes, builtin ops only,
the files an app needs, and the app's own path from raw inputs.

One trained run is exported four ways (module fixture). It is trained, not
freshly initialised: an untrained model's probabilities are nearly uniform,
so int8 rounding flips its arg-max on a coin toss and "99% top-1 agreement"
would measure luck. Eight epochs on 100 rows separate the classes (each text
names its label) with a wide margin; three left the probabilities near 1/3
once BatchNorm was recalibrated, and int8 flipped 9 in 100. Its head is wide
enough that weights dominate the file, so the size ratios say what
quantisation saves rather than the flatbuffer's fixed overhead.
"""

import dataclasses
import importlib.util
import json
import os

import data_fixtures
import keras
import numpy as np
import pytest
import tensorflow as tf
from harness import TINY

import mmzoo
from mmzoo.data import make_dataset
from mmzoo.data.images import prepare_image
from mmzoo.data.sources import read_manifest
from mmzoo.export import tflite
from mmzoo.runs import load_run
from mmzoo.training import train

ROWS = 100  # 99% top-1 agreement then tolerates one flip in 100
# Upper bounds on max |tflite - keras| over the probabilities.
MAX_DIFF = {"none": 1e-5, "float16": 1e-3, "dynamic": 1e-2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tflite")
    manifest = data_fixtures.clean_manifest(folder / "data", rows=ROWS)
    train(
        train=manifest,
        epochs=8,
        out=folder / "run",
        image_size=32,
        max_tokens=8,
        batch_size=4,
        model={"image_filters": [8, 16], "head_units": [128], "embedding_dim": 64},
        verbose=0,
    )
    return load_run(folder / "run"), manifest, folder


@pytest.fixture(scope="module")
def exports(trained):
    run, _, folder = trained
    return {
        quantize: tflite.export_tflite(
            run, folder / "app" / f"{quantize}.tflite", quantize=quantize
        )
        for quantize in tflite.QUANTIZATIONS
    }


@pytest.fixture(scope="module")
def samples(trained):
    """Every manifest row as prepared inputs, in batches of 50."""
    run, manifest, _ = trained
    dataset = make_dataset(
        manifest, run.tokenizer, run.image_size, 50, training=False, labels=run.labels
    )
    return [(features, labels) for features, labels in dataset.as_numpy_iterator()]


@pytest.mark.parametrize("quantize", tflite.QUANTIZATIONS)
def test_parity_with_keras_per_quantisation(trained, exports, samples, quantize):
    run = trained[0]
    result = tflite.parity(run, exports[quantize]["path"], samples)
    assert result["examples"] == ROWS
    if quantize == "int8":
        assert result["top1_agreement"] >= 0.99, result
        assert result["cosine_similarity"] >= 0.99, result
    else:
        assert result["max_abs_diff"] <= MAX_DIFF[quantize], result
        assert result["top1_agreement"] == 1.0, result
    if quantize == "dynamic":
        assert result["cosine_similarity"] >= 0.999, result


def test_quantised_files_are_smaller(exports):
    ratios = {q: report["size_ratio"] for q, report in exports.items()}
    assert exports["none"]["bytes"] == exports["none"]["float32_bytes"]
    assert ratios["none"] == 1.0
    for report in exports.values():
        assert report["bytes"] == os.path.getsize(report["path"])
        assert report["float32_bytes"] == exports["none"]["bytes"]
    assert ratios["float16"] < 0.6, ratios
    assert ratios["dynamic"] < 0.4, ratios
    assert ratios["int8"] < 0.4, ratios
    assert exports["int8"]["calibration_examples"] == ROWS


def test_graphs_hold_builtin_ops_only(exports):
    for report in exports.values():
        ops = tflite.check_builtin_ops(report["path"])
        assert ops == report["ops"]
        assert not [op for op in ops if op.startswith("CUSTOM")]
    assert "QUANTIZE" in exports["int8"]["ops"]
    assert "DEQUANTIZE" in exports["float16"]["ops"]


def test_int8_computes_in_int8_behind_float_inputs(exports):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=exports["int8"]["path"])
    dtypes = [detail["dtype"] for detail in interpreter.get_tensor_details()]
    assert dtypes.count(np.int8) > len(dtypes) / 2
    runner = interpreter.get_signature_runner()
    inputs = runner.get_input_details()
    assert (inputs["image"]["dtype"], inputs["tokens"]["dtype"]) == (
        np.float32,
        np.int32,
    )
    assert runner.get_output_details()["probabilities"]["dtype"] == np.float32


def test_int8_runs_whole_in_xnnpack(exports):
    """The ops XNNPACK has no int8 kernel for compute in float32, so int8
    leaves no more to the builtin kernels than float32 does (the text
    tower's integer ops); the probabilities come from a float softmax."""
    from ai_edge_litert.interpreter import Interpreter

    outside, float_inputs = {}, {}
    for quantize in ("none", "int8"):
        interpreter = Interpreter(model_path=exports[quantize]["path"], num_threads=1)
        interpreter.allocate_tensors()
        outside[quantize] = tflite.ops_outside_delegate(interpreter)
        tensors = interpreter.get_tensor_details()
        for op in interpreter._get_ops_details():
            if op["op_name"] in tflite.FLOAT_ISLAND_OPS:
                float_inputs[op["op_name"]] = tensors[op["inputs"][0]]["dtype"]
    # The bag-of-words tower's integer ops (padding mask, embedding lookup)
    # stay outside in both; int8 adds only the masked mean's count clamp.
    assert "GATHER" in outside["none"], outside
    assert set(outside["int8"]) <= {*outside["none"], "MAXIMUM"}, outside
    assert float_inputs == {"SOFTMAX": np.float32, "DIV": np.float32}


def test_hard_swish_stays_in_float32_for_xnnpack():
    """MobileNetV3's activation: int8 HARD_SWISH fell out of XNNPACK (20
    partitions); in float32 between DEQUANTIZE and QUANTIZE it stays in."""
    from ai_edge_litert.interpreter import Interpreter

    image = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, activation="hard_swish")(image)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    probabilities = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model({"image": image}, {"probabilities": probabilities})
    rng = np.random.default_rng(0)
    examples = [
        {"image": rng.uniform(0, 1, (1, 8, 8, 3)).astype("float32")} for _ in range(4)
    ]
    content = tflite.convert(model, "int8", lambda: iter(examples))
    interpreter = Interpreter(model_content=content, num_threads=1)
    interpreter.allocate_tensors()
    assert "HARD_SWISH" in tflite.list_ops(content)
    assert tflite.ops_outside_delegate(interpreter) == {}
    ops = interpreter._get_ops_details()
    assert sum(op["op_name"] == "DELEGATE" for op in ops) == 1


def test_a_select_tf_op_is_refused(tmp_path):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def lengths(texts):
        return tf.strings.length(texts)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [lengths.get_concrete_function()]
    )
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS,
        tf.lite.OpsSet.SELECT_TF_OPS,
    ]
    content = converter.convert()
    assert "CUSTOM:FlexStringLength" in tflite.list_ops(content)
    with pytest.raises(tflite.ExportError, match="FlexStringLength"):
        tflite.check_builtin_ops(content)


def test_files_beside_the_model(trained, exports):
    run = trained[0]
    folder = os.path.dirname(exports["int8"]["path"])
    for name in ("labels.txt", "vocabulary.txt", "tokenizer.json"):
        assert os.path.join(folder, name) in exports["int8"]["files"]
    with open(os.path.join(folder, "labels.txt"), encoding="utf-8") as file:
        assert file.read().split() == run.labels.names
    with open(os.path.join(folder, "int8.json"), encoding="utf-8") as file:
        card = json.load(file)
    assert card["inputs"] == [
        {"name": "image", "shape": [-1, 32, 32, 3], "dtype": "float32"},
        {"name": "tokens", "shape": [-1, 8], "dtype": "int32"},
    ]
    assert [output["name"] for output in card["outputs"]] == ["probabilities"]
    assert card["outputs"][0]["dtype"] == "float32"
    assert (card["image_size"], card["resize"], card["quantize"]) == (
        32,
        "stretch",
        "int8",
    )
    assert card["preprocessing"]["text"]["python"] == "pure_python_tokenizer.py"
    assert any("white" in step for step in card["preprocessing"]["image"])


def test_app_path_from_raw_image_and_text(trained, exports):
    """What an app does: the shipped Python tokenizer, pixels, the interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    run, manifest, _ = trained
    folder = os.path.dirname(exports["none"]["path"])
    spec = importlib.util.spec_from_file_location(
        "shipped_tokenizer", os.path.join(folder, "pure_python_tokenizer.py")
    )
    shipped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shipped)
    tokenizer = shipped.PythonWordTokenizer.from_directory(folder)
    runner = Interpreter(model_path=exports["none"]["path"]).get_signature_runner()
    rows = read_manifest(manifest)
    texts = [rows.texts[0], "IS this a SQUARE?", "an unseen question"]
    for path, text in zip(rows.images[:3], texts, strict=True):
        # The app's one call for pixels: the guard, then the pipeline's decode.
        image = prepare_image(path, 32)
        app = runner(image=image, tokens=np.asarray(tokenizer.encode([text]), "int32"))
        tokens = run.tokenizer(tf.constant([text])).numpy()
        keras = run.model({"image": image, "tokens": tokens}, training=False)
        np.testing.assert_allclose(
            app["probabilities"], keras["probabilities"], rtol=0, atol=1e-5
        )


# Every fusion, task and several towers on the float32 path, against Keras:
# test_export_coverage.py.


def test_recurrent_tower_asks_for_a_fixed_batch():
    model = mmzoo.build_model(text_tower="bilstm", **TINY)
    with pytest.raises(tflite.ExportError, match="pass `batch_size=1`"):
        tflite.convert(model)


def test_invalid_choices_are_refused():
    model = mmzoo.build_model(**TINY)
    with pytest.raises(ValueError, match=r"`quantize` must be one of .*'flaot16'"):
        tflite.convert(model, "flaot16")
    with pytest.raises(ValueError, match="Did you mean 'float16'"):
        tflite.export_tflite("no-such-run", "model.tflite", quantize="flaot16")
    with pytest.raises(ValueError, match="representative_dataset"):
        tflite.convert(model, "int8")
    with pytest.raises(ValueError, match="must end with '.tflite'"):
        tflite.export_tflite("no-such-run", "model.lite")


def test_int8_calibration_data_must_exist(trained, tmp_path):
    run = trained[0]
    without = dataclasses.replace(run, config={**run.config, "train": None})
    with pytest.raises(ValueError, match="pass `representative=`"):
        tflite.calibration_examples(without)
    moved = dataclasses.replace(run, config={**run.config, "train": "gone.csv"})
    with pytest.raises(FileNotFoundError, match="'gone.csv'"):
        tflite.export_tflite(moved, tmp_path / "model.tflite", quantize="int8")
