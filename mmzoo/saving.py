"""Loading `.keras` files safely, with errors that say what is wrong.

`load_model` reads the archive itself before Keras does: it checks the sizes
of the archive's members, the weights member's format, and every object the
config names. Whatever Keras' safe mode (Keras 3.15) would refuse is refused
here first, with a message naming the layer and the cause; Keras' safe mode
stays on behind it. Each rule below says which Keras behaviour it mirrors
(keras/src/saving/serialization_lib.py, saving_lib.py and the layers'
`from_config`).
"""

import json
import os
import zipfile

import keras

# Class names a `.keras` file may contain: Keras' own (and keras-hub's, for
# pretrained text towers) plus mmzoo's registered layers. Keras' safe mode
# trusts any class registered in the process; mmzoo trusts only its own and
# keras-hub's (and `custom_objects`).
_TRUSTED_REGISTERED_PACKAGES = ("mmzoo>", "keras_hub>")

# Size limits, in bytes (the `load_model` arguments of the same names, or
# the environment variables MMZOO_MAX_CONFIG_BYTES / MMZOO_MAX_MEMBER_BYTES,
# override them). The largest zoo config (ResNet50 + BERT) is well under
# 1 MiB; a ResNet50 + BERT-base archive with its Adam state is about 1.6 GB.
MAX_CONFIG_BYTES = 32 * 2**20
MAX_MEMBER_BYTES = 4 * 2**30
# Keras writes archive members uncompressed (stored, 1:1). A member that
# expands more than this from the bytes it stores is a decompression bomb
# (Keras' `_ZIP_MEMBER_MAX_EXPANSION`, which Keras applies only above
# 256 MiB to 4 GiB; here above 1 MiB).
MAX_EXPANSION = 100
_EXPANSION_FLOOR = 2**20

CONFIG_MEMBER = "config.json"
H5_WEIGHTS = "model.weights.h5"
NPZ_WEIGHTS = "model.weights.npz"
_SIGNATURES = {H5_WEIGHTS: b"\x89HDF\r\n\x1a\n", NPZ_WEIGHTS: b"PK\x03\x04"}

# The markers serialization_lib turns into tensors, arrays and slices.
_VALUE_MARKERS = frozenset(
    {
        "__keras_tensor__",
        "__tensor__",
        "__numpy__",
        "__bytes__",
        "__ellipsis__",
        "__slice__",
    }
)
# `serialization_lib.BUILTIN_MODULES`: where Keras looks up a function
# saved with module "builtins" (e.g. "relu"); nothing else is resolved.
_BUILTIN_MODULES = (
    "activations",
    "constraints",
    "initializers",
    "losses",
    "metrics",
    "optimizers",
    "regularizers",
)
# `serialization_lib._retrieve_class_or_fn`: the packages whose modules
# Keras imports to find a KerasSaveable class.
_KERAS_PACKAGES = ("keras", "keras_hub", "keras_cv", "keras_nlp")
# IndexLookup.set_vocabulary: a string vocabulary is a file path, read
# from outside the archive; refused in safe mode.
_LOOKUP_LAYERS = ("StringLookup", "IntegerLookup", "TextVectorization")

_TRUST_ADVICE = (
    "mmzoo loads models in Keras safe mode; if you wrote this file and trust "
    "it, use keras.saving.load_model(..., safe_mode=False)."
)


class ModelFileError(ValueError):
    """A model file that is refused, damaged, or not an mmzoo model."""


def load_model(
    filepath,
    custom_objects=None,
    compile=True,
    max_config_bytes=None,
    max_member_bytes=None,
):
    """Load a model saved with `model.save("m.keras")`, in Keras safe mode.

    Before Keras deserialises anything, the archive is checked and refused,
    with a message naming the member or layer and the cause, if:

    - a member is larger than `max_member_bytes` (`config.json`: larger
      than `max_config_bytes`), or expands more than `MAX_EXPANSION` times
      from the bytes it stores (a decompression bomb);
    - the weights member is not an HDF5 (or npz) file;
    - the config holds anything Keras' safe mode refuses: a Python lambda,
      a `Lambda` layer, a `TFSMLayer` (an external SavedModel), a pickled
      torch module, a function of `builtins` that is not a Keras built-in,
      a `keras.*` name that is not a modeling object, a lookup layer whose
      vocabulary is a file outside the archive, or a class that neither
      Keras nor mmzoo (nor `custom_objects`) defines.

    Keras' own safe mode stays on as a second line of defence; what it
    refuses still arrives as a `ModelFileError` naming the file.

    Args:
        filepath: path of a `.keras` file.
        custom_objects: extra classes the file may use, by registered name.
        compile: restore the training configuration too.
        max_config_bytes: the largest `config.json`, uncompressed. Default
            `MAX_CONFIG_BYTES` (32 MiB), or MMZOO_MAX_CONFIG_BYTES.
        max_member_bytes: the largest archive member, uncompressed. Default
            `MAX_MEMBER_BYTES` (4 GiB), or MMZOO_MAX_MEMBER_BYTES.

    Returns:
        The `keras.Model`.

    Raises:
        FileNotFoundError: no file at `filepath`.
        ModelFileError: (a `ValueError`) the file is refused or damaged.

    Example:

    >>> model.save("model.keras")
    >>> model = mmzoo.load_model("model.keras")
    """
    filepath = os.fspath(filepath)
    limits = (
        _limit(max_config_bytes, "MMZOO_MAX_CONFIG_BYTES", MAX_CONFIG_BYTES),
        _limit(max_member_bytes, "MMZOO_MAX_MEMBER_BYTES", MAX_MEMBER_BYTES),
    )
    if not os.path.exists(filepath):
        raise FileNotFoundError(f"No model file at {filepath!r}.")
    if os.path.isdir(filepath) or not zipfile.is_zipfile(filepath):
        raise ModelFileError(
            f"{filepath!r} is not a .keras archive (a zip file): it is "
            "truncated, corrupt, or another format such as a SavedModel "
            "directory or an HDF5 file."
        )
    try:
        with zipfile.ZipFile(filepath) as archive:
            weights = _check_members(archive, filepath, *limits)
            config = json.loads(archive.read(CONFIG_MEMBER))
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFileError(
            f"{filepath!r} is not a valid .keras archive: {_one_line(error)}"
        ) from None
    if not isinstance(config, dict):
        raise ModelFileError(
            f"{filepath!r}: its {CONFIG_MEMBER} holds no model configuration."
        )
    if _mentions(config, "keras_hub"):
        import keras_hub  # noqa: F401 (registers keras-hub's classes)
    _check_config(config, filepath, set(custom_objects or ()))
    try:
        return keras.saving.load_model(
            filepath, custom_objects=custom_objects, compile=compile, safe_mode=True
        )
    except OSError as error:
        # h5py's errors for a damaged weights file ("truncated file",
        # "bad object header version number", ...).
        raise ModelFileError(
            f"{filepath!r}: its weights member {weights!r} is damaged "
            f"({_one_line(error)}); the model cannot be restored from it."
        ) from None
    except (TypeError, ValueError, KeyError) as error:
        raise ModelFileError(
            f"Keras refused to load {filepath!r}: {_keras_cause(error)}"
        ) from None


def _limit(value, variable, default):
    if value is None:
        text = os.environ.get(variable)
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            value = text
        name = variable
    else:
        name = "max_config_bytes" if "CONFIG" in variable else "max_member_bytes"
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive number of bytes. Received: {value!r}"
        )
    return value


def _check_members(archive, filepath, max_config_bytes, max_member_bytes):
    """Refuse oversized members and bombs; return the weights member's name."""
    names = set()
    for info in archive.infolist():
        names.add(info.filename)
        if info.filename == CONFIG_MEMBER:
            cap, argument = max_config_bytes, "max_config_bytes"
        else:
            cap, argument = max_member_bytes, "max_member_bytes"
        if info.file_size > cap:
            raise ModelFileError(
                f"Refusing to load {filepath!r}: its member {info.filename!r} "
                f"expands to {info.file_size:,} bytes, more than the {cap:,} "
                f"allowed (pass a larger `{argument}` to mmzoo.load_model, or "
                f"set MMZOO_{argument.upper()}, if you trust the file)."
            )
        # saving_lib._reject_zip_bomb, at a lower floor.
        if (
            info.file_size > _EXPANSION_FLOOR
            and info.file_size > MAX_EXPANSION * info.compress_size
        ):
            raise ModelFileError(
                f"Refusing to load {filepath!r}: its member {info.filename!r} "
                f"stores {info.compress_size:,} bytes that expand to "
                f"{info.file_size:,}, a decompression bomb (Keras writes "
                "members uncompressed)."
            )
    if CONFIG_MEMBER not in names:
        raise ModelFileError(
            f"{filepath!r} is not a valid .keras archive: it has no {CONFIG_MEMBER}."
        )
    # saving_lib._load_model_from_fileobj reads the .h5 member, else the .npz.
    weights = next((name for name in _SIGNATURES if name in names), None)
    if weights is None:
        raise ModelFileError(
            f"{filepath!r} is not a valid .keras archive: it has no weights "
            f"member ({H5_WEIGHTS})."
        )
    signature = _SIGNATURES[weights]
    with archive.open(weights) as member:
        if member.read(len(signature)) != signature:
            kind = "an HDF5" if weights == H5_WEIGHTS else "an npz (zip)"
            raise ModelFileError(
                f"{filepath!r}: its weights member {weights!r} is not {kind} "
                "file (damaged or replaced); the model cannot be restored "
                "from it."
            )
    return weights


def _one_line(error):
    return " ".join(str(error).split())


def _keras_cause(error):
    """The end of Keras' wrapped message, which names the real cause."""
    text = str(error)
    marker = "Exception encountered:"
    if marker in text:
        text = text.rsplit(marker, 1)[1]
    text = _one_line(text)
    return text if len(text) <= 500 else text[:497] + "..."


def _mentions(config, prefix):
    return prefix in json.dumps(config)


def _check_config(node, filepath, custom_names, layer="", key=""):
    """Walk the config as `deserialize_keras_object` would, refusing first.

    `layer` is the path of named objects above `node`; `key` the config
    keys since the last of them (e.g. "activation").
    """
    if isinstance(node, list):
        for item in node:
            _check_config(item, filepath, custom_names, layer, key)
        return
    if not isinstance(node, dict):
        return
    # serialization_lib treats a dict with both keys as an object.
    if "class_name" in node and "config" in node:
        inner = node.get("config")
        # Layers and models (whose configs say `trainable`) name a path;
        # other named objects (dtype policies, optimizers) do not.
        name = None
        if isinstance(inner, dict) and "trainable" in inner:
            name = inner.get("name")
        if isinstance(name, str):
            layer, key = (f"{layer}/{name}" if layer else name), ""
        problem = _refusal(node, custom_names)
        if problem is not None:
            raise ModelFileError(
                f"Refusing to load {filepath!r}: {_subject(layer, key, name)} {problem}"
            )
    for child_key, value in node.items():
        if child_key in ("class_name", "module", "registered_name"):
            continue
        if child_key != "config":
            child_key = f"{key}.{child_key}" if key else child_key
        else:
            child_key = key
        _check_config(value, filepath, custom_names, layer, child_key)


def _subject(layer, key, name):
    if isinstance(name, str) and not key:
        return f"its layer {layer!r}"
    where = f"its layer {layer!r}" if layer else "the model"
    return f"the `{key or '?'}` of {where}"


def _refusal(node, custom_names):
    """Why this object is refused (the rest of a sentence), or None."""
    class_name = node["class_name"]
    module = node.get("module")
    registered = node.get("registered_name")
    inner = node.get("config")
    if not isinstance(class_name, str):
        return f"has a class name that is not a string: {class_name!r}."
    # deserialize_keras_object: "Requested the deserialization of a Python
    # lambda".
    if class_name == "__lambda__":
        return (
            "is a Python lambda (`__lambda__`), which would run code from the "
            f"file. {_TRUST_ADVICE}"
        )
    if class_name in _VALUE_MARKERS:
        return None
    if class_name in custom_names or registered in custom_names:
        return None
    # Lambda.from_config refuses a lambda's code; mmzoo refuses every
    # Lambda layer (a named function would be looked up in the process).
    # TFSMLayer.from_config and TorchModuleWrapper.from_config refuse in
    # safe mode too.
    unsafe_layers = {
        "Lambda": "a Lambda, which would run Python code (a Lambda layer)",
        "TFSMLayer": "a TFSMLayer, which would run an external SavedModel "
        "(a TFSMLayer)",
        "TorchModuleWrapper": "a TorchModuleWrapper, which would unpickle a "
        "torch module",
    }
    if class_name in unsafe_layers:
        return f"is {unsafe_layers[class_name]} from the file. {_TRUST_ADVICE}"
    if class_name in _LOOKUP_LAYERS and isinstance(inner, dict):
        vocabulary = inner.get("vocabulary")
        if isinstance(vocabulary, str):
            return (
                f"is a {class_name} whose vocabulary is the file "
                f"{vocabulary!r}, outside the archive; Keras safe mode refuses "
                f"to read files a model names. {_TRUST_ADVICE}"
            )
    if class_name == "function":
        return _function_refusal(module, inner, registered)
    if class_name == "__typespec__":
        class_name = node.get("spec_name")
    return _class_refusal(class_name, module, registered)


def _function_refusal(module, name, registered):
    if not isinstance(name, str):
        return f"is a function whose name is not a string: {name!r}."
    if keras.saving.get_registered_object(name) is not None and name.startswith(
        _TRUSTED_REGISTERED_PACKAGES
    ):
        return None
    if module == "builtins":
        # _retrieve_class_or_fn looks "builtins" functions up among Keras'
        # built-in modules only.
        if any(_keras_symbol(f"keras.{kind}.{name}") for kind in _BUILTIN_MODULES):
            return None
        return (
            f"is the function 'builtins.{name}', which is not a Keras built-in "
            "(Keras resolves 'builtins' names among its activations, losses, "
            f"metrics, initializers, ... only). {_TRUST_ADVICE}"
        )
    return _keras_name_refusal(module, name, "function")


def _class_refusal(class_name, module, registered):
    if isinstance(registered, str) and registered.startswith(
        _TRUSTED_REGISTERED_PACKAGES
    ):
        if keras.saving.get_registered_object(registered) is not None:
            return None
        return (
            f"is of class {registered!r}, which this mmzoo (or keras-hub) does "
            "not define: the file was written by another version, or forged."
        )
    if module is None:
        # _retrieve_class_or_fn: without a module only registered objects
        # resolve.
        return (
            f"is of class {class_name!r} without a module, which neither Keras "
            "nor mmzoo defines. Pass the class in `custom_objects` if you "
            "trust it."
        )
    if not isinstance(module, str) or module.split(".")[0] not in _KERAS_PACKAGES:
        return (
            f"is of class {registered or class_name!r} from module {module!r}, "
            "which neither Keras nor mmzoo defines. Pass the class in "
            "`custom_objects` if you trust it."
        )
    # _assert_no_registered_name_for_builtin.
    if registered not in (None, class_name) and _keras_symbol(f"{module}.{class_name}"):
        return (
            f"is Keras' {module}.{class_name} under another registered name, "
            f"{registered!r}, which Keras refuses."
        )
    return _keras_name_refusal(module, class_name, "class")


def _keras_name_refusal(module, name, kind):
    """_retrieve_class_or_fn for a `keras*` module: a modeling API or a
    KerasSaveable class, nothing else."""
    if not isinstance(module, str) or module.split(".")[0] not in _KERAS_PACKAGES:
        return (
            f"is the {kind} {name!r} from module {module!r}, which neither Keras "
            "nor mmzoo defines. Pass it in `custom_objects` if you trust it."
        )
    api_name = f"{module}.{name}"
    if api_name in _non_modeling_apis():
        return (
            f"is `{api_name}`, which is not a modeling {kind}: Keras refuses to "
            "deserialise it (it reads or writes files, or changes Keras' "
            "settings)."
        )
    if _keras_symbol(api_name) is not None or _keras_saveable(module, name):
        return None
    return (
        f"names `{api_name}`, which is neither a public Keras object nor a "
        "Keras layer, model or other saveable class: Keras safe mode refuses it."
    )


def _keras_symbol(api_name):
    """What Keras' exported-name table holds for `api_name` (or None)."""
    try:
        from keras.src.api_export import get_symbol_from_name
    except ImportError:  # pragma: no cover (another Keras layout)
        return None
    return get_symbol_from_name(api_name)


def _non_modeling_apis():
    try:
        from keras.src.saving.serialization_lib import NON_MODELING_APIS
    except ImportError:  # pragma: no cover (another Keras layout)
        return frozenset()
    return NON_MODELING_APIS


def _keras_saveable(module, name):
    import importlib

    from keras.src.saving.keras_saveable import KerasSaveable

    try:
        found = vars(importlib.import_module(module)).get(name)
    except ImportError:
        return False
    return isinstance(found, type) and issubclass(found, KerasSaveable)
