"""Evaluation: a trained model's metrics on a dataset or a manifest.

Which metrics apply is the task's business (`Task.evaluate`): accuracy,
F1 and a confusion matrix for classification, MAE/MSE/R² for regression,
Recall@K and ranks both ways for contrastive runs.
"""

import json
import os

from mmzoo.runs import as_run
from mmzoo.tasks import get_task


def evaluate_dataset(model, dataset, labels, task):
    """The task's metrics of `model` on an evaluation dataset (order kept).

    Args:
        model: a Keras model whose outputs include the task's output.
        dataset: batches of `(features, targets)`, e.g. `make_dataset(...,
            training=False)`.
        labels: the `LabelVocabulary` (`None` for regression; a dict by
            head for a `MultiTask`).
        task: a task name or `mmzoo.tasks.Task`.

    Returns:
        The metrics dict (see `mmzoo.metrics`).
    """
    task = get_task(task)
    targets, outputs = task.dataset_outputs(model, dataset)
    return task.evaluate(targets, task.output_of(outputs), labels)


def evaluate(model, data, out=None, batch_size=64, unknown_labels="error"):
    """Evaluate a run's model on a manifest and write the metrics.

    Args:
        model: a run folder (or an ensemble folder, `mmzoo.ensemble`), a
            `.keras` file in one, or a loaded `Run` or `Ensemble`.
        data: the manifest to evaluate on (same columns as training).
        out: where to write the metrics JSON; default
            `RUN_DIR/evaluation_<manifest name>.json`.
        batch_size: examples per batch.
        unknown_labels: a label the model was not trained on: "error",
            or "skip" (counted as a bad row).

    Returns:
        `(metrics, path)`.
    """
    run = as_run(model)
    # Each member of an ensemble reads the manifest its own way.
    targets, outputs, report = run.manifest_outputs(
        data, batch_size, unknown_labels=unknown_labels
    )
    metrics = run.task.evaluate(targets, run.task.output_of(outputs), run.labels)
    metrics["data"] = os.path.abspath(os.fspath(data))
    metrics["skipped_rows"] = report.num_bad
    if out is None:
        stem = os.path.splitext(os.path.basename(os.path.normpath(data)))[0]
        out = os.path.join(run.directory, f"evaluation_{stem}.json")
    with open(out, "w", encoding="utf-8") as file:
        json.dump(metrics, file, indent=2)
    # E.g. a captioning run's example captions beside their images.
    run.task.evaluation_files(run, data, out)
    return metrics, out
