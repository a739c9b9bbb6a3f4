"""The lazy packages `mmzoo.data`, `mmzoo.training` and `mmzoo.export`."""

import importlib
import os
import re
import subprocess
import sys

import pytest

PACKAGES = ("mmzoo", "mmzoo.data", "mmzoo.training", "mmzoo.export", "mmzoo.fusion")
HEAVY_MODULES = ("tensorflow", "tensorflow_text", "ai_edge_litert")


def test_importing_packages_does_not_import_tensorflow():
    # A fresh process: this one has imported TensorFlow already.
    code = (
        "import sys\n"
        f"import mmzoo, {', '.join(PACKAGES)}\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": "jax"},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "package, name",
    [
        (package, name)
        for package in PACKAGES
        for name in importlib.import_module(package).__all__
    ],
)
def test_every_exported_name_resolves(package, name):
    module = importlib.import_module(package)
    value = getattr(module, name)
    # Defined in mmzoo (a constant has no module; it is mmzoo's by import).
    assert getattr(value, "__module__", "mmzoo").startswith("mmzoo")


@pytest.mark.parametrize("package", PACKAGES)
def test_unknown_name_raises_attribute_error(package):
    module = importlib.import_module(package)
    message = f"module '{package}' has no attribute 'nope'"
    with pytest.raises(AttributeError, match=f"^{re.escape(message)}$"):
        _ = module.nope


# Data flows one way: data -> models -> training -> the run -> export and
# serving, with the command line and the demo on top. Function-level imports
# count: they are dependencies too.
FORBIDDEN = {
    "mmzoo/data": ("builder", "fusion", "towers", "training", "export", "runs", "apps"),
    "mmzoo/runs.py": ("training", "export", "apps", "cli"),
    "mmzoo/ensembles.py": ("training", "export", "apps", "cli"),
    "mmzoo/export": ("training", "apps", "cli"),
    "mmzoo/training": ("export", "apps", "cli"),
    "mmzoo/builder.py": ("data", "training", "export", "runs", "apps"),
}


@pytest.mark.parametrize("where", sorted(FORBIDDEN))
def test_imports_flow_one_way(where):
    import ast
    import pathlib

    root = pathlib.Path(__file__).parent.parent
    path = root / where
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    assert files
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "mmzoo" and len(parts) > 1:
                    assert parts[1] not in FORBIDDEN[where], (str(file), name)
