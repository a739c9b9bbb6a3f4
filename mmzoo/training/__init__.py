"""Training and evaluation: what `mmzoo train` and `mmzoo evaluate` run.

The trained artefact they write and read, a run folder, is `mmzoo.runs`
(also exported here); the metrics are `mmzoo.metrics`.

Names are imported on first use (they import TensorFlow).
"""

from mmzoo._lazy import lazy_exports

_EXPORTS = {
    "train": "trainer",
    "evaluate": "evaluation",
    "evaluate_dataset": "evaluation",
    "load_run": "mmzoo.runs",
    "predict": "mmzoo.runs",
    "Run": "mmzoo.runs",
    "classification_metrics": "mmzoo.metrics",
    "regression_metrics": "mmzoo.metrics",
    "make_strategy": "distributed",
    "custom_fit": "distributed",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
