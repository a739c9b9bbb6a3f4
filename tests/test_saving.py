"""`mmzoo.load_model`: safe mode on, clear refusals."""

import json
import zipfile

import keras
import numpy as np
import pytest
from harness import TINY
from harness import tiny_batch

import mmzoo


def _rewrite_config(source, target, edit):
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _find_layer(config, name):
    for layer in config["config"]["layers"]:
        if layer["config"]["name"] == name:
            return layer
    raise KeyError(name)


def test_lambda_layer_file_is_refused(tmp_path):
    inputs = keras.Input((3,), name="x")
    outputs = keras.layers.Lambda(lambda x: x * 2, name="double")(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(
        ValueError,
        match=r"layer '[^']*/double' is a Lambda, which would run Python code",
    ):
        mmzoo.load_model(path)


def _forged_model_file(tmp_path, edit):
    """A zoo model's `.keras` file with its config edited by `edit`."""
    path = tmp_path / "model.keras"
    mmzoo.build_model(**TINY).save(path)
    forged = tmp_path / "forged.keras"
    _rewrite_config(path, forged, edit)
    return forged


def test_unknown_class_is_refused(tmp_path):
    def smuggle(config):
        layer = _find_layer(config, "fusion")
        layer["module"] = "evil.layers"
        layer["class_name"] = "Backdoor"
        layer["registered_name"] = "Backdoor"

    forged = _forged_model_file(tmp_path, smuggle)
    with pytest.raises(
        ValueError,
        match=r"'small_cnn_bow_concat/fusion' is of class 'Backdoor' from module "
        r"'evil.layers', which neither Keras nor mmzoo defines",
    ):
        mmzoo.load_model(forged)


def test_nested_lambda_inside_a_tower_is_refused(tmp_path):
    def smuggle(config):
        tower = _find_layer(config, "text_tower")
        inner = tower["config"]["layers"][-1]
        inner["class_name"] = "Lambda"
        inner["module"] = "keras.layers"

    forged = _forged_model_file(tmp_path, smuggle)
    with pytest.raises(
        ValueError, match=r"'small_cnn_bow_concat/text_tower/pool' is a Lambda"
    ):
        mmzoo.load_model(forged)


def test_truncated_file_gives_a_clear_error(tmp_path):
    model = mmzoo.build_model(**TINY)
    path = tmp_path / "model.keras"
    model.save(path)
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated.keras' is not a .keras archive"):
        mmzoo.load_model(truncated)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="No model file at 'absent.keras'"):
        mmzoo.load_model("absent.keras")


def test_round_trip_keeps_compile_and_weights(tmp_path):
    model = mmzoo.build_model("small_cnn_bow_gated", **TINY)
    inputs, labels = tiny_batch()
    model.fit(inputs, labels, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = mmzoo.load_model(path)
    for key, value in model.predict(inputs, verbose=0).items():
        np.testing.assert_array_equal(value, restored.predict(inputs, verbose=0)[key])
    assert restored.loss == model.loss
    restored.fit(inputs, labels, epochs=1, verbose=0)
