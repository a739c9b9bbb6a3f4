"""Lazy package exports: a name's submodule is imported on first use.

`mmzoo.data`, `mmzoo.training` and `mmzoo.export` list their public names
here rather than importing them, because most of those submodules import
TensorFlow: importing a package must not, so the JAX backend and the light
CLI commands (`mmzoo list`) stay fast.
"""

import importlib


def lazy_exports(package_name, exports):
    """Module-level `__getattr__`, `__dir__` and `__all__` for a package.

    Args:
        package_name: the package's `__name__`, e.g. "mmzoo.export".
        exports: a dict of public name -> submodule that defines it,
            relative to the package, or absolute (starting with "mmzoo.").

    Returns:
        `(__getattr__, __dir__, __all__)`, to assign in the package's
        `__init__.py`.

    Example, in a package's `__init__.py`:

        _EXPORTS = {"make_dataset": "dataset"}
        __getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
    """
    names = sorted(exports)

    def __getattr__(name):
        if name not in exports:
            raise AttributeError(f"module {package_name!r} has no attribute {name!r}")
        module = exports[name]
        if not module.startswith("mmzoo."):
            module = f"{package_name}.{module}"
        module = importlib.import_module(module)
        return getattr(module, name)

    def __dir__():
        return names

    return __getattr__, __dir__, names
