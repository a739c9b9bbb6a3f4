"""The model code runs on JAX without TensorFlow, and its `.keras` files
load on TensorFlow with the same outputs."""

import ast
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mmzoo

PACKAGE = pathlib.Path(mmzoo.__file__).parent
# The modules that make up the models: the top-level modules and the towers
# and fusions, but for the ones that read data, export, train or serve and
# the pretrained towers (keras-hub and TF-Hub import TensorFlow).
NOT_MODEL_CODE = {
    "cli.py",
    "runs.py",
    "towers/pretrained.py",
    "captioning/export.py",
    "captioning/inference.py",
    "captioning/tflite.py",
}
MODEL_CODE = sorted(
    path
    for path in (
        *(p.name for p in PACKAGE.glob("*.py")),
        *(
            f"{folder}/{p.name}"
            for folder in ("towers", "fusion", "captioning")
            for p in (PACKAGE / folder).glob("*.py")
        ),
    )
    if path not in NOT_MODEL_CODE
)


@pytest.mark.parametrize("module", MODEL_CODE)
def test_model_code_never_imports_tensorflow(module):
    """At module level, that is: keras_hub (which imports TensorFlow) is
    imported inside the functions that need it."""
    tree = ast.parse((PACKAGE / module).read_text())
    imported = set()
    for node in _module_level(tree.body):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"tensorflow", "tf_keras", "tensorflow_hub", "keras_hub"}


def _module_level(statements):
    """Statements run at import, inside `if` / `try` / `with` blocks too."""
    for node in statements:
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, ()):
                    yield from _module_level(
                        child.body if isinstance(child, ast.ExceptHandler) else [child]
                    )


def test_the_model_code_list_is_not_empty():
    assert {"builder.py", "registry.py", "tasks.py", "fusion/film.py"} <= set(
        MODEL_CODE
    )


# The script runs as on an accelerator machine where TensorFlow is not
# installed: any attempt to import it fails.
JAX_SCRIPT = textwrap.dedent(
    """
    import json, sys

    class NoTensorFlow:
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("tensorflow", "tf_keras", "keras_hub"):
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)")

    sys.meta_path.insert(0, NoTensorFlow())
    import numpy as np
    import keras
    import mmzoo
    sys.path.insert(0, {tests!r})
    from harness import TINY, tiny_batch

    inputs, labels = tiny_batch()
    results = {{}}
    models = {{}}
    for fusion, text_tower in {combos!r}:
        keras.utils.set_random_seed(0)
        model = mmzoo.build_model(fusion=fusion, text_tower=text_tower, **TINY)
        history = model.fit(inputs, labels, epochs=2, verbose=0)
        models[(fusion, text_tower)] = model, history
    tensorflow_imported = "tensorflow" in sys.modules
    for (fusion, text_tower), (model, history) in models.items():
        path = {out!r} + f"/{{fusion}}_{{text_tower}}.keras"
        model.save(path)
        results[path] = {{
            "loss": history.history["loss"],
            "outputs": {{
                k: v.tolist() for k, v in model.predict(inputs, verbose=0).items()
            }},
        }}
    print(json.dumps({{
        "backend": keras.backend.backend(),
        "tensorflow_imported": tensorflow_imported,
        "results": results,
    }}))
    """
)


def test_models_train_on_jax_without_tensorflow_and_load_on_tensorflow(tmp_path):
    combos = [
        ("concat", "bow"),
        ("gated", "cnn"),
        ("cross_attention", "transformer"),
        ("late", "bilstm"),
        ("bilinear", "bow"),
    ]
    script = JAX_SCRIPT.format(
        tests=str(pathlib.Path(__file__).parent), combos=combos, out=str(tmp_path)
    )
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax"
    assert report["tensorflow_imported"] is False

    from harness import tiny_batch

    inputs, _ = tiny_batch()
    for path, result in report["results"].items():
        assert np.all(np.isfinite(result["loss"]))
        assert result["loss"][1] < result["loss"][0]
        restored = mmzoo.load_model(path)
        outputs = restored.predict(inputs, verbose=0)
        for key, value in result["outputs"].items():
            np.testing.assert_allclose(outputs[key], value, atol=1e-4, err_msg=path)
