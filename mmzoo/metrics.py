"""Evaluation metrics for a model's predictions, as JSON-ready dicts.

The functions take arrays (labels and what `model.predict` returned), so they
work whichever backend produced the scores, and their results can be written
straight to a `metrics.json` next to a training run.

Conventions, shared by every function here:

- A ratio whose denominator is 0 (precision of a class never predicted,
  recall of a class absent from `y_true`) is 0.0, like scikit-learn's
  `zero_division=0`. F1 is computed as `2 * tp / (2 * tp + fp + fn)`, which
  equals the harmonic mean of precision and recall whenever that is defined
  and is 0.0 otherwise.
- Macro averages run over every class in `labels`, also classes absent from
  both `y_true` and the predictions (their F1 is 0.0), as scikit-learn does
  when given `labels=`. This keeps macro-F1 comparable between evaluation
  sets of one label space; a class with `support == 0` in `per_class` is the
  sign that it pulled the average down.
"""

# NumPy only, no scikit-learn: these metrics are a few lines of NumPy each,
# not worth a dependency.
import math

import numpy as np

from mmzoo.checks import check_choice

CLASSIFICATION_TASKS = ("multiclass", "binary", "multilabel")

# Top-k accuracies reported for multiclass tasks with more than k classes.
TOP_K = (3, 5)


def classification_metrics(
    y_true, y_score, labels, task="multiclass", threshold=0.5
) -> dict:
    """Accuracy, F1 scores and per-class precision/recall of a classifier.

    Predicted classes are `argmax(y_score)` for `"multiclass"` (ties go to the
    lowest class index, as `np.argmax` and Keras' accuracy metrics do) and
    `y_score >= threshold` for `"binary"` and `"multilabel"`. Precision,
    recall or F1 with a zero denominator is 0.0, and macro averages include
    every class in `labels`, even one absent from `y_true` and from the
    predictions (see the module docstring).

    Args:
        y_true: the true labels. `"multiclass"`: class indices, shape `(N,)`
            (or `(N, 1)`). `"binary"`: 0 or 1, shape `(N,)` or `(N, 1)`.
            `"multilabel"`: multi-hot, shape `(N, C)`.
        y_score: the model's scores. `"multiclass"`: shape `(N, C)`, e.g.
            softmax probabilities (logits give the same result). `"binary"`:
            sigmoid probabilities, shape `(N,)` or `(N, 1)`. `"multilabel"`:
            sigmoid probabilities, shape `(N, C)`.
        labels: the class names, in column order; they key `per_class` and
            are converted to `str`. A binary task has two: negative then
            positive.
        task: one of `"multiclass"`, `"binary"`, `"multilabel"`.
        threshold: the score from which a binary or multilabel prediction is
            positive. Ignored for `"multiclass"`.

    Returns:
        A JSON-serialisable dict. `"multiclass"` and `"binary"`:
        `{"examples", "accuracy", "macro_f1", "weighted_f1",
        "top_k_accuracy", "per_class", "confusion_matrix", "labels"}`, where
        `top_k_accuracy` maps `"3"` and `"5"` to the share of examples whose
        true class is among the k highest scores (only for k < C; a tie at
        the k-th place counts as a hit, as in Keras' top-k metrics),
        `per_class` maps each name to `{"precision", "recall", "f1",
        "support"}` and `confusion_matrix[i][j]` counts examples of true
        class i predicted as j. Binary results also hold the `"threshold"`.
        `"multilabel"`: `{"examples", "subset_accuracy", "micro_f1",
        "macro_f1", "per_class", "labels", "threshold"}`, where
        `subset_accuracy` is the share of examples whose every label is right.

    Example:

    >>> metrics = classification_metrics(
    ...     y_true=[0, 1, 2, 2],
    ...     y_score=[[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7],
    ...              [0.6, 0.3, 0.1]],
    ...     labels=["cat", "dog", "bird"],
    ... )
    >>> metrics["accuracy"]
    0.75
    >>> metrics["confusion_matrix"]
    [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    >>> metrics["per_class"]["bird"]
    {'precision': 1.0, 'recall': 0.5, 'f1': 0.6666666666666666, 'support': 2}
    >>> classification_metrics([1, 0, 1], [0.9, 0.4, 0.3], ["no", "yes"],
    ...                        task="binary")["accuracy"]
    0.6666666666666666
    """
    check_choice("task", task, CLASSIFICATION_TASKS)
    metrics, thresholded = _CLASSIFICATION[task]
    if not thresholded:
        return metrics(y_true, y_score, labels)
    return metrics(y_true, y_score, labels, _check_threshold(threshold))


def regression_metrics(y_true, y_pred) -> dict:
    """Mean absolute error, mean squared error, its root, and R².

    With several targets (shape `(N, T)`), MAE, MSE and RMSE are taken over
    all N x T values and R² is the mean of the per-target R² (scikit-learn's
    `multioutput="uniform_average"`). A target that is constant in `y_true`
    has R² 1.0 when predicted exactly and 0.0 otherwise, rather than a
    division by zero (scikit-learn's `force_finite=True`).

    Args:
        y_true: the true values, shape `(N,)`, `(N, 1)` or `(N, T)`.
        y_pred: the predictions, the same shape (`(N,)` and `(N, 1)` are
            interchangeable).

    Returns:
        A JSON-serialisable dict `{"examples", "mae", "mse", "rmse", "r2"}`.

    Example:

    >>> regression_metrics([1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.0, 5.0])
    {'examples': 4, 'mae': 0.625, 'mse': 0.5625, 'rmse': 0.75, 'r2': 0.55}
    """
    y_true = _regression_array("y_true", y_true)
    y_pred = _regression_array("y_pred", y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            "`y_true` and `y_pred` must have the same shape (`(N,)` and "
            "`(N, 1)` count as the same). Received: "
            f"y_true.shape={y_true.shape}, y_pred.shape={y_pred.shape}"
        )
    errors = y_pred - y_true
    mse = float(np.mean(errors**2))
    residual = np.sum(errors**2, axis=0)
    total = np.sum((y_true - y_true.mean(axis=0)) ** 2, axis=0)
    constant_target_r2 = np.where(residual == 0, 1.0, 0.0)
    r2 = np.where(total > 0, 1.0 - _safe_divide(residual, total), constant_target_r2)
    return {
        "examples": int(y_true.shape[0]),
        "mae": float(np.mean(np.abs(errors))),
        "mse": mse,
        "rmse": math.sqrt(mse),
        "r2": float(np.mean(r2)),
    }


def format_metrics(metrics) -> str:
    """A short plain-text report of `classification_metrics`,
    `regression_metrics` or `retrieval_metrics` results (with `examples`),
    for logs and terminals.

    Args:
        metrics: a dict returned by `classification_metrics` or
            `regression_metrics` (or read back from its JSON file); or
            `{"examples", "heads": {head: such a dict}}`, the metrics of a
            model with several heads (`mmzoo.tasks.MultiTask.evaluate`),
            reported head by head.

    Returns:
        The headline numbers, one per line, then, for classification, a
        per-class table of precision, recall, F1 and support with aligned
        columns.

    Example:

    >>> metrics = classification_metrics(
    ...     [0, 1, 1], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], ["cat", "dog"]
    ... )
    >>> print(format_metrics(metrics))
    Examples:    3
    Accuracy:    0.6667
    Macro-F1:    0.6667
    Weighted-F1: 0.6667
    <BLANKLINE>
    class  precision  recall      f1  support
    cat       0.5000  1.0000  0.6667        1
    dog       1.0000  0.5000  0.6667        2
    """
    if not isinstance(metrics, dict) or "examples" not in metrics:
        raise ValueError(
            "`metrics` must be a dict returned by `classification_metrics` or "
            f"`regression_metrics`. Received: {_describe(metrics)}"
        )
    if isinstance(metrics.get("heads"), dict):
        # A model with several heads: each head's report under its name.
        sections = [f"Examples: {metrics['examples']}"]
        for head, head_metrics in metrics["heads"].items():
            report = format_metrics(head_metrics).splitlines()[1:]  # no Examples
            sections.append("\n".join([f"Head {head}:", *report]))
        return "\n\n".join(sections)
    if "image_to_text_median_rank" in metrics:
        return _format_retrieval(metrics)
    if "CIDEr-D" in metrics:
        # Captioning (`mmzoo.captioning.metrics.caption_metrics`).
        names = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D"]
        lines = [f"Examples: {metrics['examples']} ({metrics['images']} images)"]
        lines += [f"{name + ':':<9} {metrics[name]:.4f}" for name in names]
        for shown in metrics.get("examples_shown", [])[:3]:
            lines.append(f"  {shown['caption']!r}  (ref: {shown['references'][0]!r})")
        return "\n".join(lines)
    if "mae" in metrics:
        headline = [
            ("MAE", metrics["mae"]),
            ("MSE", metrics["mse"]),
            ("RMSE", metrics["rmse"]),
            ("R2", metrics["r2"]),
        ]
    elif "accuracy" in metrics:
        headline = [
            ("Accuracy", metrics["accuracy"]),
            ("Macro-F1", metrics["macro_f1"]),
            ("Weighted-F1", metrics["weighted_f1"]),
        ]
        headline += [
            (f"Top-{k} accuracy", value)
            for k, value in metrics.get("top_k_accuracy", {}).items()
        ]
    elif "subset_accuracy" in metrics:
        headline = [
            ("Subset accuracy", metrics["subset_accuracy"]),
            ("Micro-F1", metrics["micro_f1"]),
            ("Macro-F1", metrics["macro_f1"]),
        ]
    else:
        raise ValueError(
            "`metrics` must be a dict returned by `classification_metrics` or "
            f"`regression_metrics`. Received: {_describe(metrics)}"
        )
    headline = [("Examples", metrics["examples"])] + headline
    width = max(len(name) for name, _ in headline) + 2
    lines = [
        f"{name + ':':<{width}}{_format_number(value)}" for name, value in headline
    ]
    if "per_class" in metrics:
        lines += [""] + _per_class_table(metrics["per_class"])
    return "\n".join(lines)


def _format_retrieval(metrics):
    """Recall@K and ranks as a table: one row per direction, then random."""
    ks = sorted(
        int(key.rsplit("@", 1)[1]) for key in metrics if key.startswith("random_R@")
    )
    ranking = [
        key[len("image_to_text_") :]
        for key in metrics
        if key.startswith("image_to_text_") and ("mAP@" in key or "nDCG@" in key)
    ]
    header = [f"R@{k}" for k in ks] + ranking + ["median rank", "mean rank"]
    rows = []
    for direction, title in (
        ("image_to_text", "image -> text"),
        ("text_to_image", "text -> image"),
    ):
        values = [metrics[f"{direction}_R@{k}"] for k in ks]
        values += [metrics[f"{direction}_{name}"] for name in ranking]
        ranks = [metrics[f"{direction}_median_rank"], metrics[f"{direction}_mean_rank"]]
        rows.append(
            [title]
            + [_format_number(value) for value in values]
            + [f"{rank:g}" if rank == int(rank) else f"{rank:.1f}" for rank in ranks]
        )
    rows.append(
        ["random ranking"] + [_format_number(metrics[f"random_R@{k}"]) for k in ks]
    )
    widths = [max(len(row[0]) for row in rows)] + [
        max([len(name)] + [len(row[i + 1]) for row in rows if len(row) > i + 1])
        for i, name in enumerate(header)
    ]
    lines = [f"Examples: {metrics['examples']}", ""]
    lines.append(
        " " * widths[0]
        + "".join(f"  {name:>{w}}" for name, w in zip(header, widths[1:], strict=True))
    )
    for row in rows:
        cells = "".join(
            f"  {cell:>{w}}" for cell, w in zip(row[1:], widths[1:], strict=False)
        )
        lines.append(f"{row[0]:<{widths[0]}}{cells}")
    return "\n".join(lines)


# === Classification ===


def _multiclass_metrics(y_true, y_score, labels):
    y_score = _score_array("y_score", y_score)
    if y_score.ndim != 2:
        raise ValueError(
            "A multiclass task needs `y_score` of shape (N, num_classes), one "
            "column of scores per class. For one sigmoid output use "
            f"task='binary'. Received: y_score.shape={y_score.shape}"
        )
    labels = _check_labels(labels, y_score.shape[1], "columns in `y_score`")
    y_true = _class_indices(y_true, len(labels))
    _check_same_length(y_true, y_score)
    y_pred = np.argmax(y_score, axis=1)
    metrics = _single_label_metrics(y_true, y_pred, labels)
    metrics["top_k_accuracy"] = {
        str(k): _top_k_accuracy(y_true, y_score, k) for k in TOP_K if len(labels) > k
    }
    return _ordered(metrics)


def _binary_metrics(y_true, y_score, labels, threshold):
    y_score = _score_array("y_score", y_score)
    if y_score.ndim == 2 and y_score.shape[1] == 1:
        y_score = y_score[:, 0]
    if y_score.ndim != 1:
        raise ValueError(
            "A binary task needs `y_score` of shape (N,) or (N, 1): one "
            "sigmoid score per example. For one softmax column per class use "
            f"task='multiclass'. Received: y_score.shape={y_score.shape}"
        )
    labels = _check_labels(labels, 2, "classes in a binary task")
    y_true = _binary_array("y_true", y_true)
    if y_true.ndim == 2 and y_true.shape[1] == 1:
        y_true = y_true[:, 0]
    if y_true.ndim != 1:
        raise ValueError(
            "A binary task needs `y_true` of shape (N,) or (N, 1). "
            f"Received: y_true.shape={y_true.shape}"
        )
    _check_same_length(y_true, y_score)
    y_pred = (y_score >= threshold).astype(np.int64)
    metrics = _single_label_metrics(y_true.astype(np.int64), y_pred, labels)
    metrics["top_k_accuracy"] = {}
    metrics["threshold"] = threshold
    return _ordered(metrics)


def _multilabel_metrics(y_true, y_score, labels, threshold):
    y_score = _score_array("y_score", y_score)
    y_true = _binary_array("y_true", y_true)
    if y_score.ndim != 2 or y_true.ndim != 2:
        raise ValueError(
            "A multilabel task needs `y_true` (multi-hot) and `y_score` of "
            "shape (N, num_classes). Received: "
            f"y_true.shape={y_true.shape}, y_score.shape={y_score.shape}"
        )
    labels = _check_labels(labels, y_score.shape[1], "columns in `y_score`")
    if y_true.shape != y_score.shape:
        raise ValueError(
            "`y_true` and `y_score` must have the same shape in a multilabel "
            f"task. Received: y_true.shape={y_true.shape}, "
            f"y_score.shape={y_score.shape}"
        )
    truth = y_true.astype(bool)
    predicted = y_score >= threshold
    tp = np.sum(truth & predicted, axis=0)
    fp = np.sum(~truth & predicted, axis=0)
    fn = np.sum(truth & ~predicted, axis=0)
    precision, recall, f1 = _precision_recall_f1(tp, fp, fn)
    micro_f1 = _safe_divide(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())
    return {
        "examples": int(y_true.shape[0]),
        "subset_accuracy": float(np.mean(np.all(truth == predicted, axis=1))),
        "micro_f1": float(micro_f1),
        "macro_f1": float(np.mean(f1)),
        "per_class": _per_class(labels, precision, recall, f1, truth.sum(axis=0)),
        "labels": labels,
        "threshold": threshold,
    }


# task -> (metrics function, whether it takes a threshold)
_CLASSIFICATION = {
    "multiclass": (_multiclass_metrics, False),
    "binary": (_binary_metrics, True),
    "multilabel": (_multilabel_metrics, True),
}


def _single_label_metrics(y_true, y_pred, labels):
    """Metrics shared by multiclass and binary tasks, from class indices."""
    num_classes = len(labels)
    confusion = np.bincount(
        y_true * num_classes + y_pred, minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)
    tp = np.diag(confusion)
    support = confusion.sum(axis=1)
    fp = confusion.sum(axis=0) - tp
    fn = support - tp
    precision, recall, f1 = _precision_recall_f1(tp, fp, fn)
    examples = int(y_true.shape[0])
    return {
        "examples": examples,
        "accuracy": float(tp.sum() / examples),
        "macro_f1": float(np.mean(f1)),
        "weighted_f1": float(np.sum(f1 * support) / examples),
        "per_class": _per_class(labels, precision, recall, f1, support),
        "confusion_matrix": confusion.tolist(),
        "labels": labels,
    }


def _top_k_accuracy(y_true, y_score, k):
    # A hit when fewer than k classes score strictly higher than the true
    # class, so a tie at the k-th place counts: that is `ops.in_top_k`, which
    # Keras' top-k metrics use, and keeps these numbers equal to the logged
    # ones.
    true_scores = y_score[np.arange(len(y_true)), y_true]
    higher = np.sum(y_score > true_scores[:, None], axis=1)
    return float(np.mean(higher < k))


def _precision_recall_f1(tp, fp, fn):
    precision = _safe_divide(tp, tp + fp)
    recall = _safe_divide(tp, tp + fn)
    f1 = _safe_divide(2 * tp, 2 * tp + fp + fn)
    return precision, recall, f1


def _safe_divide(numerator, denominator):
    """Element-wise division where x / 0 is 0.0 (scikit-learn's
    `zero_division=0`)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(
        numerator,
        denominator,
        out=np.zeros_like(numerator),
        where=denominator > 0,
    )


def _per_class(labels, precision, recall, f1, support):
    return {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(labels)
    }


_KEY_ORDER = (
    "examples",
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "top_k_accuracy",
    "per_class",
    "confusion_matrix",
    "labels",
    "threshold",
)


def _ordered(metrics):
    # Headline numbers first, so a dumped metrics.json reads top-down.
    return {key: metrics[key] for key in _KEY_ORDER if key in metrics}


# === Validation ===


def _as_array(argument, value):
    try:
        return np.asarray(value)
    except ValueError as error:
        raise ValueError(
            f"`{argument}` must be an array or a nested list of equal-length "
            f"rows. Received: {_describe(value)} ({error})"
        ) from None


def _score_array(argument, value):
    array = _as_array(argument, value)
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"`{argument}` must hold numbers. Received an array of dtype "
            f"{array.dtype}: {_describe(value)}"
        )
    array = array.astype(np.float64)
    if array.ndim == 0 or array.shape[0] == 0:
        raise ValueError(
            f"`{argument}` holds no examples. Received: {argument}.shape={array.shape}"
        )
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"`{argument}` has {int(bad.sum())} non-finite value(s) (NaN or "
            f"inf), the first at index {first}: {array[first]}. A model whose "
            "loss diverged predicts NaN."
        )
    return array


def _class_indices(y_true, num_classes):
    array = _as_array("y_true", y_true)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(
            "A multiclass task needs `y_true` of class indices, shape (N,) or "
            "(N, 1); for one-hot labels pass `np.argmax(y_true, axis=1)`. "
            f"Received: y_true.shape={array.shape}"
        )
    integral = array.dtype.kind in "iu" or (
        array.dtype.kind == "f"
        and np.all(np.isfinite(array))
        and np.all(array == np.round(array))
    )
    if not integral:
        raise ValueError(
            "`y_true` must hold integer class indices. Received an array of "
            f"dtype {array.dtype}: {_describe(y_true)}"
        )
    array = array.astype(np.int64)
    outside = (array < 0) | (array >= num_classes)
    if outside.any():
        index = int(np.argmax(outside))
        raise ValueError(
            f"`y_true` holds class indices outside [0, {num_classes - 1}] "
            f"(there are {num_classes} labels): {int(outside.sum())} of them, "
            f"the first y_true[{index}]={array[index]}."
        )
    return array


def _binary_array(argument, value):
    array = _as_array(argument, value)
    if array.dtype.kind not in "biuf" or not np.all((array == 0) | (array == 1)):
        raise ValueError(
            f"`{argument}` must hold only 0 and 1 (or booleans). Received: "
            f"{_describe(value)}"
        )
    return array.astype(np.int64)


def _regression_array(argument, value):
    array = _score_array(argument, value)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(
            f"`{argument}` must have shape (N,) or (N, num_targets). "
            f"Received: {argument}.shape={array.shape}"
        )
    return array


def _check_labels(labels, expected, what):
    if isinstance(labels, str | bytes) or not hasattr(labels, "__iter__"):
        raise ValueError(
            f"`labels` must be a list of class names. Received: labels={labels!r}"
        )
    names = [str(name) for name in labels]
    if len(names) != expected:
        raise ValueError(
            f"`labels` must name each class: there are {expected} {what} but "
            f"{len(names)} labels. Received: labels={names}"
        )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            "`labels` must be unique (they key `per_class`). Received "
            f"duplicates {duplicates} in labels={names}"
        )
    return names


def _check_same_length(y_true, y_score):
    if y_true.shape[0] != y_score.shape[0]:
        raise ValueError(
            "`y_true` and `y_score` must hold the same number of examples. "
            f"Received: y_true.shape={y_true.shape}, y_score.shape={y_score.shape}"
        )


def _check_threshold(threshold):
    if isinstance(threshold, bool) or not isinstance(
        threshold, int | float | np.number
    ):
        raise ValueError(
            f"`threshold` must be a number. Received: threshold={threshold!r}"
        )
    if not math.isfinite(threshold):
        raise ValueError(
            f"`threshold` must be finite. Received: threshold={threshold!r}"
        )
    return float(threshold)


def _describe(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# === Text report ===


def _format_number(value):
    if isinstance(value, int | np.integer):
        return str(value)
    return f"{value:.4f}"


def _per_class_table(per_class):
    name_width = max([len("class")] + [len(name) for name in per_class])
    support_width = max(
        [len("support")] + [len(str(row["support"])) for row in per_class.values()]
    )
    lines = [
        f"{'class':<{name_width}}  precision  recall      f1  "
        f"{'support':>{support_width}}"
    ]
    for name, row in per_class.items():
        lines.append(
            f"{name:<{name_width}}  {row['precision']:>9.4f}  {row['recall']:>6.4f}"
            f"  {row['f1']:>6.4f}  {row['support']:>{support_width}}"
        )
    return lines


# === Cross-modal retrieval ===

# Recall@K reported both ways, as open_clip's `get_clip_metrics` does.
RETRIEVAL_K = (1, 5, 10)


def retrieval_metrics(
    image_embeddings,
    text_embeddings,
    image_ids=None,
    text_ids=None,
    ks=RETRIEVAL_K,
    ranking_ks=(10,),
) -> dict:
    """Recall@K and ranks of cross-modal retrieval over a whole set.

    Row `i` of the two arrays is a matching pair. Every image queries all
    the texts by cosine similarity and every text queries all the images. A
    retrieved item is correct when it is the query's own pair, or, with
    ids, any item of the query's id: several captions of one image
    (`image_ids`: rows showing the same image) or one caption written for
    several images (`text_ids`). The rank of a query is the position of its
    first correct item (1 = first); ties count against the query (a
    wrong item as similar as the right one ranks before it).

    The names follow open_clip's `get_clip_metrics`:
    `image_to_text_R@K`, `text_to_image_R@K` (the fraction of queries whose
    rank is at most K), and `*_mean_rank`, `*_median_rank`. The same
    definition with K = 1 and one correct item per query is the in-batch
    accuracy of CLIP's paper. (Ranking metrics of keras-rs score lists of
    graded items per query; this is the whole-set cross-modal form.)

    Args:
        image_embeddings: `(n, d)` array.
        text_embeddings: `(n, d)` array, row `i` paired with image `i`.
        image_ids: optional `(n,)` ids; equal ids are one image.
        text_ids: optional `(n,)` ids; equal ids are one text.
        ks: the K of Recall@K.
        ranking_ks: the K of mAP@K and nDCG@K, which score every right
            item of a query's top K (several captions of one image), not
            only the first: keras-rs' `MeanAveragePrecision` (average
            precision over `min(K, right items)`) and `NDCG` (gain 2^rel -
            1, discount 1/log2(1 + rank)), on the same pessimistic order.

    Returns:
        A dict of floats, with `random_R@K`, what a random ranking scores
        on average (K / n with one correct item per query; more with ids).

    Example:

    >>> image = np.eye(3)
    >>> text = np.eye(3)[[0, 2, 1]]  # texts 1 and 2 swapped
    >>> metrics = retrieval_metrics(image, text)
    >>> metrics["image_to_text_R@1"], metrics["image_to_text_median_rank"]
    (0.3333333333333333, 3.0)
    """
    image = _embedding_array("image_embeddings", image_embeddings)
    text = _embedding_array("text_embeddings", text_embeddings)
    if image.shape != text.shape:
        raise ValueError(
            "`image_embeddings` and `text_embeddings` must have one row per pair "
            f"and the same width. Received: shapes {image.shape} and {text.shape}"
        )
    count = len(image)
    correct = np.eye(count, dtype=bool)
    for name, ids in (("image_ids", image_ids), ("text_ids", text_ids)):
        if ids is not None:
            ids = np.asarray(ids)
            if ids.shape != (count,):
                raise ValueError(
                    f"`{name}` must hold one id per row ({count}). Received: "
                    f"shape {ids.shape}"
                )
            correct |= ids[:, None] == ids[None, :]
    if not all(isinstance(k, int) and k >= 1 for k in ks):
        raise ValueError(f"`ks` must be positive integers. Received: ks={ks!r}")
    # Cosine similarity: a dual encoder's unit vectors are unchanged, and
    # embeddings that are not normalised (Deep CCA's) are ranked alike.
    image = image / np.maximum(np.linalg.norm(image, axis=1, keepdims=True), 1e-12)
    text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    similarity = image @ text.T
    metrics = {}
    for direction, scores, hits in (
        ("image_to_text", similarity, correct),
        ("text_to_image", similarity.T, correct.T),
    ):
        ranks = _first_correct_ranks(scores, hits)
        metrics[f"{direction}_mean_rank"] = float(np.mean(ranks))
        metrics[f"{direction}_median_rank"] = float(np.floor(np.median(ranks)))
        for k in ks:
            metrics[f"{direction}_R@{k}"] = float(np.mean(ranks <= k))
        if ranking_ks:
            metrics.update(_ranking_metrics(direction, scores, hits, ranking_ks))
    # What a random ranking scores: a query with c correct items of n finds
    # one in its top K with probability 1 - C(n - c, K) / C(n, K).
    right = correct.sum(axis=1)
    for k in ks:
        miss = np.ones(count)
        for i in range(min(k, count)):
            miss *= np.clip(count - right - i, 0, None) / (count - i)
        metrics[f"random_R@{k}"] = float(np.mean(1 - miss))
    return metrics


def matching_metrics(
    image_embeddings, text_embeddings, image_ids=None, text_ids=None, seed=0
) -> dict:
    """How well a cosine threshold tells matching pairs from others.

    "Does this caption fit this picture": the set's pairs are the
    positives, and each image with a text drawn at random from the rows
    that show neither its image nor its text is a negative (as many as
    positives). The threshold chosen is the one of best accuracy on these
    pairs (the midpoint between two neighbouring scores), so choose it on
    validation data.

    Returns:
        `{"match_threshold", "match_accuracy", "match_pairs"}` (the
        accuracy over positives and negatives together).
    """
    image = _embedding_array("image_embeddings", image_embeddings)
    text = _embedding_array("text_embeddings", text_embeddings)
    count = len(image)
    image = image / np.maximum(np.linalg.norm(image, axis=1, keepdims=True), 1e-12)
    text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    related = np.eye(count, dtype=bool)
    for ids in (image_ids, text_ids):
        if ids is not None:
            ids = np.asarray(ids)
            related |= ids[:, None] == ids[None, :]
    rng = np.random.default_rng(seed)
    positives = np.sum(image * text, axis=1)
    negatives = []
    for row in range(count):
        others = np.flatnonzero(~related[row])
        if len(others):
            negatives.append(float(image[row] @ text[rng.choice(others)]))
    if not negatives:
        raise ValueError(
            "Every row shows the same image or text: there are no mismatched "
            "pairs to choose a matching threshold on."
        )
    scores = np.concatenate([positives, negatives])
    truth = np.concatenate([np.ones(count, bool), np.zeros(len(negatives), bool)])
    order = np.argsort(scores, kind="stable")
    scores, truth = scores[order], truth[order]
    # Threshold below position i: the i lowest are "no match".
    right_below = np.concatenate([[0], np.cumsum(~truth)])
    right_above = np.concatenate([np.cumsum(truth[::-1])[::-1], [0]])
    correct = right_below + right_above
    # Only between distinct scores (or at the ends).
    cuts = [0, *[i for i in range(1, len(scores)) if scores[i] > scores[i - 1]]]
    cuts.append(len(scores))
    best = max(cuts, key=lambda i: correct[i])
    if best == 0:
        threshold = scores[0] - 1e-6
    elif best == len(scores):
        threshold = scores[-1] + 1e-6
    else:
        threshold = (scores[best - 1] + scores[best]) / 2
    return {
        "match_threshold": float(threshold),
        "match_accuracy": float(correct[best] / len(scores)),
        "match_pairs": int(len(scores)),
    }


def _ranking_metrics(direction, scores, hits, ks):
    """mAP@K and nDCG@K through keras-rs, ties counted against the query."""
    import keras_rs

    # Sort by score, a wrong item before a right one of equal score; give
    # keras-rs the positions, so it sees no ties (it would break them at
    # random, or by position).
    order = np.lexsort((hits, -scores), axis=1)
    positions = np.empty_like(order)
    np.put_along_axis(positions, order, np.arange(order.shape[1])[None], axis=1)
    relevance = hits.astype("float32")
    predictions = -positions.astype("float32")
    metrics = {}
    for k in ks:
        for name, metric in (
            ("mAP", keras_rs.metrics.MeanAveragePrecision(k=k, shuffle_ties=False)),
            ("nDCG", keras_rs.metrics.NDCG(k=k, shuffle_ties=False)),
        ):
            metric.update_state(relevance, predictions)
            metrics[f"{direction}_{name}@{k}"] = float(metric.result())
    return metrics


def _first_correct_ranks(scores, hits):
    """Per query: 1 + how many wrong items score at least its best right one."""
    best = np.where(hits, scores, -np.inf).max(axis=1)
    wrong_before = np.sum((scores >= best[:, None]) & ~hits, axis=1)
    return 1 + wrong_before


def _embedding_array(argument, value):
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(
            f"`{argument}` must be a non-empty (n, d) array. Received: shape "
            f"{array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{argument}` holds NaN or infinite values.")
    return array
