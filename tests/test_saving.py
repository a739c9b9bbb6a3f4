"""`mmzoo.load_model`: safe mode on, clear refusals.

The hostile files are real `.keras` archives: a zoo model's, rewritten with
`zipfile`. Each one that Keras' safe mode refuses only with a generic
"could not be deserialized properly" is refused by mmzoo's own scan first,
naming the layer and the cause.
"""

import json
import os
import zipfile

import keras
import numpy as np
import pytest
from harness import TINY
from harness import tiny_batch

import mmzoo
from mmzoo import cli
from mmzoo.saving import ModelFileError


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


# === Hostile archives ===


@pytest.fixture(scope="module")
def zoo_file(tmp_path_factory):
    """A tiny zoo model's `.keras` file, and its members."""
    path = tmp_path_factory.mktemp("zoo") / "model.keras"
    mmzoo.build_model(**TINY).save(path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    return path, members


def _forge(tmp_path, members, edit=None, replace=(), extra=()):
    """An archive of `members`, its config edited, members replaced or added."""
    members = dict(members)
    if edit is not None:
        config = json.loads(members["config.json"])
        edit(config)
        members["config.json"] = json.dumps(config).encode()
    members.update(replace)
    path = tmp_path / "forged.keras"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, data in extra:
            archive.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def _set(layer, key, value):
    def edit(config):
        _find_layer(config, layer)["config"][key] = value

    return edit


def _add_string_lookup(config):
    # A StringLookup as Keras writes it, its vocabulary then made a path.
    lookup = keras.layers.StringLookup(vocabulary=["a", "b"], name="lookup")
    layer = keras.saving.serialize_keras_object(lookup)
    layer["config"]["vocabulary"] = "/etc/hostname"
    config["config"]["layers"].append(layer)


LOGITS = "small_cnn_bow_concat/logits"
HOSTILE = {
    # serialization_lib: "Requested the deserialization of a Python lambda".
    "lambda_activation": (
        _set(
            "logits",
            "activation",
            {"class_name": "__lambda__", "config": {"value": "4wAAAA=="}},
        ),
        f"the `activation` of its layer '{LOGITS}' is a Python lambda",
    ),
    # _retrieve_class_or_fn resolves "builtins" among Keras' built-ins only.
    "builtins_eval": (
        _set(
            "logits",
            "activation",
            {
                "module": "builtins",
                "class_name": "function",
                "config": "eval",
                "registered_name": "function",
            },
        ),
        f"the `activation` of its layer '{LOGITS}' is the function "
        "'builtins.eval', which is not a Keras built-in",
    ),
    # NON_MODELING_APIS.
    "keras_load_model": (
        _set(
            "logits",
            "activation",
            {
                "module": "keras.saving",
                "class_name": "function",
                "config": "load_model",
                "registered_name": "function",
            },
        ),
        "is `keras.saving.load_model`, which is not a modeling function",
    ),
    # Neither an exported Keras name nor a KerasSaveable class.
    "keras_internal_function": (
        _set(
            "logits",
            "activation",
            {
                "module": "keras.src.utils.file_utils",
                "class_name": "function",
                "config": "rmtree",
                "registered_name": "function",
            },
        ),
        "names `keras.src.utils.file_utils.rmtree`, which is neither a public "
        "Keras object nor a Keras layer",
    ),
    "keras_internal_class": (
        _set(
            "logits",
            "kernel_initializer",
            {
                "module": "keras.src.saving.saving_lib",
                "class_name": "DiskIOStore",
                "config": {"root_path": "/etc"},
                "registered_name": None,
            },
        ),
        f"the `kernel_initializer` of its layer '{LOGITS}' names "
        "`keras.src.saving.saving_lib.DiskIOStore`",
    ),
    # IndexLookup.set_vocabulary: a vocabulary file outside the archive.
    "lookup_vocabulary_file": (
        _add_string_lookup,
        "its layer 'small_cnn_bow_concat/lookup' is a StringLookup whose "
        "vocabulary is the file '/etc/hostname', outside the archive",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_what_keras_safe_mode_refuses_is_refused_first(case, zoo_file, tmp_path):
    edit, message = HOSTILE[case]
    forged = _forge(tmp_path, zoo_file[1], edit)
    # Keras refuses it too, but only at the end of a wrapped message.
    with pytest.raises((TypeError, ValueError, KeyError)):
        keras.saving.load_model(forged, safe_mode=True)
    with pytest.raises(ModelFileError) as error:
        mmzoo.load_model(forged)
    text = str(error.value)
    assert text.startswith(f"Refusing to load {str(forged)!r}: "), text
    assert message in text
    assert "could not be deserialized" not in text and "\n" not in text


def test_forged_registered_name_is_refused(zoo_file, tmp_path):
    def forge(config):
        _find_layer(config, "fusion")["registered_name"] = "mmzoo>NoSuchFusion"

    with pytest.raises(ModelFileError, match="'mmzoo>NoSuchFusion', which this mmzoo"):
        mmzoo.load_model(_forge(tmp_path, zoo_file[1], forge))


def test_decompression_bomb_member_is_refused(zoo_file, tmp_path):
    # 20 MiB of zeros deflate to 20 KB; Keras would extract it (its own
    # guard starts at 256 MiB).
    bomb = _forge(tmp_path, zoo_file[1], extra=[("assets/pad.bin", bytes(20 << 20))])
    assert os.path.getsize(bomb) < 200_000
    with pytest.raises(
        ModelFileError,
        match=r"member 'assets/pad.bin' stores [\d,]+ bytes that expand to "
        r"20,971,520, a decompression bomb",
    ):
        mmzoo.load_model(bomb)


def test_size_caps_are_configurable(zoo_file, tmp_path, monkeypatch):
    path, members = zoo_file
    config_size = len(members["config.json"])
    with pytest.raises(
        ModelFileError,
        match=rf"member 'config.json' expands to {config_size:,} bytes, more than "
        r"the 1,000 allowed \(pass a larger `max_config_bytes`",
    ):
        mmzoo.load_model(path, max_config_bytes=1000)
    with pytest.raises(ModelFileError, match="'model.weights.h5' expands to"):
        mmzoo.load_model(path, max_member_bytes=10_000)
    monkeypatch.setenv("MMZOO_MAX_MEMBER_BYTES", "10000")
    with pytest.raises(ModelFileError, match="set MMZOO_MAX_MEMBER_BYTES"):
        mmzoo.load_model(path)
    # An argument wins over the environment.
    assert mmzoo.load_model(path, max_member_bytes=1 << 30, compile=False)
    monkeypatch.setenv("MMZOO_MAX_MEMBER_BYTES", "lots")
    with pytest.raises(ValueError, match="`MMZOO_MAX_MEMBER_BYTES` must be a positive"):
        mmzoo.load_model(path)


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_damaged_weights_member_names_member_and_file(damage, zoo_file, tmp_path):
    weights = zoo_file[1]["model.weights.h5"]
    if damage == "random":
        weights = np.random.default_rng(0).bytes(len(weights))
        match = "its weights member 'model.weights.h5' is not an HDF5 file"
    else:
        weights = weights[: len(weights) // 2]
        match = r"its weights member 'model.weights.h5' is damaged \(.*truncated"
    forged = _forge(tmp_path, zoo_file[1], replace={"model.weights.h5": weights})
    with pytest.raises(ModelFileError, match=match) as error:
        mmzoo.load_model(forged)
    assert str(forged) in str(error.value)


def _foreign_model(path):
    """A plain Keras model: one unnamed input, one output."""
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(path)


def test_foreign_keras_model_in_a_run_folder(tmp_path):
    _foreign_model(tmp_path / "best.keras")
    with pytest.raises(ModelFileError, match="is not an mmzoo model: it takes one"):
        mmzoo.load_run(tmp_path)


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("model", ["refused", "foreign"])
def test_cli_gives_one_line_for_a_refused_or_foreign_model(
    command, model, zoo_file, tmp_path, capsys
):
    run = tmp_path / "run"
    run.mkdir()
    if model == "refused":
        edit = HOSTILE["builtins_eval"][0]
        os.replace(_forge(tmp_path, zoo_file[1], edit), run / "best.keras")
        expected = "'builtins.eval', which is not a Keras built-in"
    else:
        _foreign_model(run / "best.keras")
        expected = "not an mmzoo model"
    (tmp_path / "any.png").write_bytes(b"unused")
    argv = {
        "evaluate": ["evaluate", run, "--data", tmp_path / "any.png"],
        "predict": ["predict", run, "--image", tmp_path / "any.png", "--text", "hi"],
    }[command]
    assert cli.main([str(value) for value in argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    assert expected in error and "Traceback" not in error
