"""Training, evaluation and prediction: what `mmzoo train/evaluate/predict`
and `mmzoo demo` run.

Names are imported on first use (they import TensorFlow).
"""

import importlib

_EXPORTS = {
    "train": "trainer",
    "evaluate": "evaluation",
    "load_run": "runs",
    "predict": "runs",
    "Run": "runs",
    "run_demo": "demo",
    "classification_metrics": "metrics",
    "regression_metrics": "metrics",
    "make_strategy": "distributed",
    "custom_fit": "distributed",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mmzoo.training' has no attribute {name!r}")
    module = importlib.import_module(f"mmzoo.training.{_EXPORTS[name]}")
    return getattr(module, name)


def __dir__():
    return __all__
