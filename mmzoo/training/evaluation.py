"""`evaluate`: a trained model's metrics on a manifest."""

import json
import os

from mmzoo.data.dataset import make_dataset
from mmzoo.training.runs import load_run


def evaluate(model, data, out=None, batch_size=64, unknown_labels="error"):
    """Evaluate a run's model on a manifest and write the metrics.

    Args:
        model: a run folder, a `.keras` file in one, or a loaded `Run`.
        data: the manifest to evaluate on (same columns as training).
        out: where to write the metrics JSON; default
            `RUN_DIR/evaluation_<manifest name>.json`.
        batch_size: examples per batch.
        unknown_labels: a label the model was not trained on: "error",
            or "skip" (counted as a bad row).

    Returns:
        `(metrics, path)`.
    """
    from mmzoo.training.runs import Run
    from mmzoo.training.trainer import evaluate_dataset

    run = model if isinstance(model, Run) else load_run(model)
    dataset, report, _ = make_dataset(
        data,
        run.tokenizer,
        run.image_size,
        batch_size,
        training=False,
        labels=run.labels,
        task=run.task,
        resize=run.config.get("resize", "stretch"),
        columns=run.config.get("columns"),
        unknown_labels=unknown_labels,
        return_report=True,
    )
    metrics = evaluate_dataset(run.model, dataset, run.labels, run.task)
    metrics["data"] = os.path.abspath(os.fspath(data))
    metrics["skipped_rows"] = report.num_bad
    if out is None:
        stem = os.path.splitext(os.path.basename(os.path.normpath(data)))[0]
        out = os.path.join(run.directory, f"evaluation_{stem}.json")
    with open(out, "w", encoding="utf-8") as file:
        json.dump(metrics, file, indent=2)
    return metrics, out
