"""Plots of a training run, written as PNG files: learning curves and the
confusion matrix.

Figures are drawn on a `matplotlib.figure.Figure` with its own Agg canvas and
never through `matplotlib.pyplot`: no global backend switch, no "current
figure" shared between threads, no window, so the functions are safe in
worker threads and processes and on machines without a display.
"""

import csv
import math
import os
from pathlib import Path

import numpy as np

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mmzoo.training.plots needs matplotlib. Install it with "
        "`pip install matplotlib`."
    ) from error

# Up to this many epochs each point gets a marker; a run of one epoch would
# otherwise draw nothing visible.
_MARKER_EPOCHS = 30

# Above this many classes, cell annotations would overlap; the colours remain.
_ANNOTATE_CLASSES = 20


def plot_history(history, path) -> str:
    """Plot training curves, one subplot per metric, train and validation.

    Each metric logged during training (`loss` first, then e.g.
    `sparse_categorical_accuracy`) gets a subplot with its training values and,
    when logged, its `val_` counterpart, against the epoch counted from 1.
    Epochs without a value (`"NA"` in a CSVLogger file, e.g. between
    validation runs with `validation_freq > 1`) are skipped, not drawn as 0.

    Args:
        history: the run's history: a dict of per-epoch lists like
            `keras.callbacks.History.history` (a `History` object also
            works), or the path to a comma-separated file written by
            `keras.callbacks.CSVLogger`, whose `epoch` column (counted from
            0 by Keras) places the points.
        path: where to write the PNG; must end in `.png`. Missing parent
            folders are created.

    Returns:
        `path`, as a string.

    Example:

    >>> history = {
    ...     "loss": [1.0, 0.6, 0.4],
    ...     "val_loss": [1.1, 0.8, 0.7],
    ...     "sparse_categorical_accuracy": [0.5, 0.7, 0.8],
    ...     "val_sparse_categorical_accuracy": [0.4, 0.6, 0.65],
    ... }
    >>> plot_history(history, "/tmp/mmzoo_history.png")
    '/tmp/mmzoo_history.png'
    """
    path = _check_png_path(path)
    epochs, columns = _read_history(history)
    families = _metric_families(columns)

    num_columns = min(len(families), 3)
    num_rows = math.ceil(len(families) / num_columns)
    figure = Figure(figsize=(5 * num_columns, 3.5 * num_rows), layout="constrained")
    marker = "o" if len(epochs) <= _MARKER_EPOCHS else None
    for index, (name, train_key, val_key) in enumerate(families):
        axes = figure.add_subplot(num_rows, num_columns, index + 1)
        for key, label in ((train_key, "train"), (val_key, "validation")):
            if key is None:
                continue
            values = columns[key]
            logged = np.isfinite(values)
            axes.plot(
                epochs[logged], values[logged], marker=marker, markersize=3, label=label
            )
        axes.set_title(name)
        axes.set_xlabel("epoch")
        axes.set_ylabel(name)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
    return _save(figure, path)


def plot_confusion_matrix(matrix, labels, path, normalize=True) -> str:
    """Draw a confusion matrix as a heat map with class names on both axes.

    Rows are true classes and columns predicted ones, as in the
    `"confusion_matrix"` of `classification_metrics`. With up to 20 classes
    each cell is annotated with its count or row-normalised value.

    Args:
        matrix: a square array of counts, shape `(C, C)`; rows are true
            classes, columns predicted.
        labels: the `C` class names, in row order.
        path: where to write the PNG; must end in `.png`. Missing parent
            folders are created.
        normalize: if True, divide each row by its total so a cell is the
            share of a true class predicted as each class (the diagonal is
            per-class recall); a row with no examples stays 0. If False,
            show the counts.

    Returns:
        `path`, as a string.

    Example:

    >>> plot_confusion_matrix(
    ...     [[5, 1, 0], [2, 3, 0], [0, 0, 4]],
    ...     labels=["cat", "dog", "bird"],
    ...     path="/tmp/mmzoo_confusion.png",
    ... )
    '/tmp/mmzoo_confusion.png'
    """
    path = _check_png_path(path)
    counts = _check_matrix(matrix)
    labels = _check_matrix_labels(labels, counts.shape[0])
    num_classes = counts.shape[0]
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        top = 1.0
    else:
        values = counts
        top = max(float(counts.max()), 1.0)

    # Grow the figure with the class count so names and annotations fit.
    side = max(4.0, 0.45 * num_classes + 2.5)
    figure = Figure(figsize=(side + 1.0, side), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="Blues", vmin=0.0, vmax=top)
    figure.colorbar(
        image, ax=axes, label="share of true class" if normalize else "examples"
    )
    ticks = np.arange(num_classes)
    # Anchored rotation puts each name's end under its tick.
    axes.set_xticks(
        ticks, labels=labels, rotation=45, ha="right", rotation_mode="anchor"
    )
    axes.set_yticks(ticks, labels=labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(
        "Confusion matrix (row-normalised)" if normalize else "Confusion matrix"
    )
    if num_classes <= _ANNOTATE_CLASSES:
        whole = np.all(counts == np.round(counts))
        fontsize = 9 if num_classes <= 10 else 7
        for row in range(num_classes):
            for column in range(num_classes):
                value = values[row, column]
                if normalize:
                    text = f"{value:.2f}"
                elif whole:
                    text = str(int(value))
                else:
                    text = f"{value:.3g}"
                # Light text on dark cells keeps every number readable.
                colour = "white" if value > top / 2 else "black"
                axes.text(
                    column,
                    row,
                    text,
                    ha="center",
                    va="center",
                    color=colour,
                    fontsize=fontsize,
                )
    return _save(figure, path)


# === Helpers ===


def _save(figure, path):
    FigureCanvasAgg(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return str(path)


def _check_png_path(path):
    if not isinstance(path, str | os.PathLike):
        raise ValueError(
            f"`path` must be a file path ending in '.png'. Received: path={path!r}"
        )
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(
            "`path` must end in '.png': the plots are written as PNG. "
            f"Received: path='{path}'"
        )
    return path


def _read_history(history):
    """Returns the epoch numbers (from 1) and a dict of per-epoch arrays."""
    if isinstance(history, str | os.PathLike):
        raw = _read_history_csv(Path(history))
    else:
        # A keras.callbacks.History keeps its dict in `.history`.
        raw = getattr(history, "history", history)
        if not isinstance(raw, dict):
            raise ValueError(
                "`history` must be a dict of per-epoch lists (`History.history`),"
                " a `History` or the path to a CSVLogger file. Received: "
                f"{type(history).__name__}"
            )
    columns = {str(key): _per_epoch_values(key, values) for key, values in raw.items()}
    epochs = columns.pop("epoch", None)
    if not columns:
        raise ValueError(
            f"`history` holds no metrics to plot. Received keys: {list(raw)}"
        )
    lengths = {key: len(values) for key, values in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(
            "Every metric in `history` needs one value per epoch; with "
            "`validation_freq > 1` the `val_` lists are shorter, so plot the "
            "CSVLogger file instead, which marks the missing epochs 'NA'. "
            f"Received lengths: {lengths}"
        )
    num_epochs = next(iter(lengths.values()))
    if num_epochs == 0:
        raise ValueError(f"`history` holds no epochs. Received keys: {list(raw)}")
    if epochs is None:
        epochs = np.arange(num_epochs, dtype=np.float64)
    # Keras counts epochs from 0; people count them from 1.
    return epochs + 1, columns


def _per_epoch_values(key, values):
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 1:
        raise ValueError(
            f"`history['{key}']` must be a list of one number per epoch. "
            f"Received: {values!r}"
        )
    return array


def _read_history_csv(path):
    if not path.is_file():
        raise FileNotFoundError(
            f"No history file at '{path}'. Expected a CSV written by "
            "keras.callbacks.CSVLogger."
        )
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        if not reader.fieldnames:
            raise ValueError(
                f"'{path}' is empty. Expected a CSVLogger file whose header "
                "is e.g. 'epoch,loss,val_loss'."
            )
        columns = {name: [] for name in reader.fieldnames}
        for row in reader:
            if None in row or None in row.values():
                raise ValueError(
                    f"'{path}', line {reader.line_num}: expected "
                    f"{len(reader.fieldnames)} comma-separated fields like the "
                    f"header {reader.fieldnames}. Received: {row}"
                )
            for name, text in row.items():
                columns[name].append(_csv_number(path, reader.line_num, name, text))
    return columns


def _csv_number(path, line, column, text):
    # CSVLogger writes "NA" for a metric not logged that epoch.
    if text.strip() in ("", "NA", "nan", "NaN"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"'{path}', line {line}, column '{column}': expected a number or "
            f"'NA'. Received: {text!r}"
        ) from None


def _metric_families(columns):
    """Returns (title, train key, val key) per subplot, loss first."""
    families = []
    for key in columns:
        if key.startswith("val_") and key[len("val_") :] in columns:
            continue
        if key.startswith("val_"):
            # Validation-only metric: no training line to pair with.
            families.append((key, None, key))
            continue
        val_key = f"val_{key}"
        # CSVLogger adds all-"NA" `val_` columns to runs without validation.
        if val_key not in columns or np.isnan(columns[val_key]).all():
            val_key = None
        families.append((key, key, val_key))
    families.sort(key=lambda family: family[0] != "loss")
    return families


def _check_matrix(matrix):
    try:
        counts = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"`matrix` must be a square array of counts. Received: {matrix!r}"
        ) from None
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.size == 0:
        raise ValueError(
            "`matrix` must be a square array of counts, shape "
            f"(num_classes, num_classes). Received: matrix.shape={counts.shape}"
        )
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(
            "`matrix` must hold finite, non-negative counts. Received: "
            f"min={np.nanmin(counts)}, max={np.nanmax(counts)}"
        )
    return counts


def _check_matrix_labels(labels, num_classes):
    if isinstance(labels, str | bytes) or not hasattr(labels, "__iter__"):
        raise ValueError(
            f"`labels` must be a list of class names. Received: labels={labels!r}"
        )
    labels = [str(name) for name in labels]
    if len(labels) != num_classes:
        raise ValueError(
            f"`labels` must name each of the {num_classes} rows of `matrix`. "
            f"Received {len(labels)} labels: {labels}"
        )
    return labels
