"""Training, evaluation and prediction: what `mmzoo train/evaluate/predict`
and `mmzoo demo` run.

Names are imported on first use (they import TensorFlow).
"""

from mmzoo._lazy import lazy_exports

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

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
