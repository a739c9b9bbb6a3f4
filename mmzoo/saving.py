"""Loading `.keras` files safely, with errors that say what is wrong."""

import json
import os
import zipfile

import keras

# Class names a `.keras` file may contain: Keras' own (and keras-hub's, for
# pretrained text towers) plus mmzoo's registered layers.
_TRUSTED_MODULE_PREFIXES = ("keras.", "keras_hub.")
_TRUSTED_REGISTERED_PACKAGES = ("mmzoo>", "keras_hub>")


def load_model(filepath, custom_objects=None, compile=True):
    """Load a model saved with `model.save("m.keras")`, in Keras safe mode.

    Before Keras deserialises anything, the archive's config is read and
    refused, with a message naming the layer, if it holds a `Lambda` layer
    (arbitrary Python code), a `TFSMLayer` (an external SavedModel) or a
    class that neither Keras nor mmzoo (nor a class in `custom_objects`)
    defines. Keras' own safe mode stays on as a second line of defence.

    Args:
        filepath: path of a `.keras` file.
        custom_objects: extra classes the file may use, by registered name.
        compile: restore the training configuration too.

    Returns:
        The `keras.Model`.

    Example:

    >>> model.save("model.keras")
    >>> model = mmzoo.load_model("model.keras")
    """
    filepath = os.fspath(filepath)
    if not os.path.exists(filepath):
        raise FileNotFoundError(f"No model file at {filepath!r}.")
    if not zipfile.is_zipfile(filepath):
        raise ValueError(
            f"{filepath!r} is not a .keras archive (a zip file): it is "
            "truncated, corrupt, or another format such as a SavedModel "
            "directory or an HDF5 file."
        )
    try:
        with zipfile.ZipFile(filepath) as archive:
            config = json.loads(archive.read("config.json"))
    except (KeyError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        raise ValueError(
            f"{filepath!r} is not a valid .keras archive: {error}"
        ) from None
    _check_config(config, filepath, set(custom_objects or ()))
    if any(_mentions(config, prefix) for prefix in ("keras_hub",)):
        import keras_hub  # noqa: F401 (registers keras-hub's classes)
    return keras.saving.load_model(
        filepath, custom_objects=custom_objects, compile=compile, safe_mode=True
    )


def _mentions(config, prefix):
    return prefix in json.dumps(config)


def _check_config(node, filepath, custom_names, path=""):
    if isinstance(node, list):
        for item in node:
            _check_config(item, filepath, custom_names, path)
        return
    if not isinstance(node, dict):
        return
    class_name = node.get("class_name")
    if isinstance(class_name, str) and "config" in node:
        inner = node.get("config") or {}
        where = inner.get("name", "?") if isinstance(inner, dict) else "?"
        location = f"{path}/{where}" if path else where
        if class_name in ("Lambda", "TFSMLayer"):
            what = (
                "Python code (a Lambda layer)"
                if class_name == "Lambda"
                else "an external SavedModel (a TFSMLayer)"
            )
            raise ValueError(
                f"Refusing to load {filepath!r}: its layer {location!r} is a "
                f"{class_name}, which would run {what} from the file. mmzoo "
                "loads models in Keras safe mode; if you wrote this file and "
                "trust it, use keras.saving.load_model(..., safe_mode=False)."
            )
        if not _is_trusted(node, custom_names):
            registered = node.get("registered_name") or class_name
            raise ValueError(
                f"Refusing to load {filepath!r}: its layer {location!r} is of "
                f"class {registered!r} from module {node.get('module')!r}, "
                "which neither Keras nor mmzoo defines. Pass the class in "
                "`custom_objects` if you trust it."
            )
        path = location
    for key, value in node.items():
        if key != "class_name":
            _check_config(value, filepath, custom_names, path)


def _is_trusted(node, custom_names):
    module = node.get("module")
    registered = node.get("registered_name")
    if module is None:
        # Plain Keras objects (initializers, dtype policies, ...) may be
        # serialised without a module.
        return registered is None or registered in custom_names
    if registered in custom_names or node["class_name"] in custom_names:
        return True
    if module == "builtins" or module.startswith(_TRUSTED_MODULE_PREFIXES):
        return True
    if module == "keras":
        return True
    return isinstance(registered, str) and registered.startswith(
        _TRUSTED_REGISTERED_PACKAGES
    )
