"""Prediction heads: hidden layers, then the task's output activation."""

import keras

from mmzoo.registry import TASKS
from mmzoo.registry import check_choice

# task -> (final activation, output name, Keras loss, metrics)
_TASKS = {
    "multiclass": (
        "softmax",
        "probabilities",
        "sparse_categorical_crossentropy",
        ["sparse_categorical_accuracy"],
    ),
    "multilabel": (
        "sigmoid",
        "probabilities",
        "binary_crossentropy",
        ["binary_accuracy"],
    ),
    "binary": ("sigmoid", "probabilities", "binary_crossentropy", ["binary_accuracy"]),
    "regression": (
        "linear",
        "predictions",
        "mean_squared_error",
        ["mean_absolute_error"],
    ),
}


def output_name(task):
    """The model's main output: `"probabilities"`, or `"predictions"` for
    regression."""
    check_choice("task", task, TASKS)
    return _TASKS[task][1]


def num_outputs(task, num_classes):
    """Width of the output layer for a task."""
    check_choice("task", task, TASKS)
    if task == "binary":
        if num_classes not in (None, 1, 2):
            raise ValueError(
                "A binary task has one sigmoid output; `num_classes` must be "
                f"None, 1 or 2. Received: num_classes={num_classes!r}"
            )
        return 1
    if task == "regression" and num_classes is None:
        return 1
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"A {task} task needs `num_classes`, a positive integer (the "
            f"number of {'targets' if task == 'regression' else 'classes'}). "
            f"Received: num_classes={num_classes!r}"
        )
    if task == "multiclass" and num_classes < 2:
        raise ValueError(
            "A multiclass task needs at least 2 classes; use task='binary' "
            f"for one. Received: num_classes={num_classes}"
        )
    return num_classes


def hidden_layers(x, units, dropout):
    """Dense + ReLU + dropout for each width in `units`."""
    for index, width in enumerate(units):
        x = keras.layers.Dense(width, activation="relu", name=f"head_dense_{index}")(x)
        x = keras.layers.Dropout(dropout, name=f"head_dropout_{index}")(x)
    return x


def output_layer(logits, task):
    """The task's activation, computed in float32 even under mixed precision."""
    activation, name, _, _ = _TASKS[task]
    return keras.layers.Activation(activation, dtype="float32", name=name)(logits)


def default_compile_arguments(task, learning_rate=1e-3):
    """`model.compile` arguments that fit a task: Adam, its loss, a metric."""
    _, name, loss, metrics = _TASKS[task]
    return {
        "optimizer": keras.optimizers.Adam(learning_rate),
        "loss": {name: loss},
        "metrics": {name: list(metrics)},
    }
