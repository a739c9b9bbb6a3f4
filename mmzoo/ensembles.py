"""Ensembles: trained runs combined into one run folder and one servable model.

`ensemble(runs, method, val=..., out=...)` combines the outputs of trained
runs of one task (the same labels, in the same order). The members may
differ in everything else (towers, fusion, image size, resize mode,
vocabulary): each reads its inputs with its own preprocessing, and only
their outputs meet, in an `EnsembleCombiner`:

- `"average"`: the mean of the members' outputs (probabilities, or
  predictions for regression).
- `"vote"`: a hard majority vote (multiclass: each member's arg-max;
  multilabel and binary: each label at 0.5). The output is the vote shares,
  nudged by `TIE_BREAK` times the averaged probabilities, so that it stays
  a probability-like score and a tie goes to the higher average.
- `"weighted"`: `sum_m w_m p_m` with non-negative weights summing to one,
  fitted on the validation manifest by minimising the log-loss (the mean
  squared error for regression), a convex problem solved with SLSQP.
- `"stacking"`: a logistic regression over the members' outputs (scikit-
  learn's, multinomial for multiclass, one per label for multilabel, one
  for binary), carried into a Keras `Dense` layer.

The fitted methods are scored out of fold: the validation rows are split
into folds (stratified where the classes allow), each fold's outputs come
from a combiner fitted on the other folds, and those are the validation
metrics reported; the final combiner is fitted on every validation row and
scored on the test manifest.

The result is a run folder that `mmzoo.load_run` reads back as an
`Ensemble` (`mmzoo evaluate`, `predict` and `export` take it):

    ENSEMBLE_DIR/
      config.yaml         kind: ensemble, task, method, members, weights
      labels.txt          the members' labels, in output order
      combiner.keras      the combiner: (batch, members, width) -> (batch, width)
      members/0/, 1/ ...  each member's run files: config.yaml, labels.txt,
                          tokenizer/, best.keras, metrics.json
      metrics.json        the ensemble's validation (out of fold) and test
                          metrics
      ensemble.json       the report: every member's and the ensemble's
                          metrics, the weights, the folds, the members'
                          pairwise agreement
      report.md           the report as tables

The combiner is a registered Keras layer in `keras.ops` (it runs on every
backend); the members and the combiner together are `Ensemble.model`, one
Keras model whose inputs are each member's, named `member_<i>_image`,
`member_<i>_tokens` (or `member_<i>_text`).

This module imports no TensorFlow at import time (scikit-learn and SciPy
are imported by the fits that need them).
"""

import dataclasses
import functools
import json
import os
import shutil
import tempfile

import keras
import numpy as np
import yaml
from keras import ops

from mmzoo.checks import check_choice
from mmzoo.checks import plain_data
from mmzoo.data.manifest import DEFAULT_MAX_BAD_FRACTION
from mmzoo.data.manifest import LabelVocabulary
from mmzoo.tasks import get_task

METHODS = ("average", "vote", "weighted", "stacking")
# The methods fitted on the validation rows (scored out of fold).
FITTED_METHODS = ("weighted", "stacking")
# A regression's outputs are numbers: they can be averaged, not voted on.
REGRESSION_METHODS = ("average", "weighted")
KIND = "ensemble"
COMBINER = "combiner.keras"
MEMBERS = "members"
REPORT = "ensemble.json"
REPORT_TABLE = "report.md"
# The weight of the averaged probabilities in a vote's output: small enough
# never to change a vote's winner (below 1 / (members + 1)), large enough
# to order tied classes.
TIE_BREAK = 1e-3
# Logistic-regression logit of a class absent from the rows a stacking
# combiner is fitted on: its probability is then about e^-30.
_ABSENT_LOGIT = -30.0
_EPSILON = 1e-7


def member_input(index, name):
    """The `Ensemble.model` input of member `index`'s input `name`.

    >>> member_input(1, "tokens")
    'member_1_tokens'
    """
    return f"member_{index}_{name}"


def member_output(output_name):
    """The ensemble output holding every member's `output_name`.

    >>> member_output("probabilities")
    'member_probabilities'
    """
    return f"member_{output_name}"


# === Combiner ===


@keras.saving.register_keras_serializable(package="mmzoo")
class EnsembleCombiner(keras.layers.Layer):
    """Combines the outputs of an ensemble's members into one output.

    Args:
        method: one of `METHODS` (see the module docstring).
        task: the members' task name: `"multiclass"`, `"multilabel"`,
            `"binary"` or `"regression"` (average and weighted only).
        num_members: the number of members.
        width: the width of each member's output (classes, 1 for binary).
        member_weights: `"weighted"`: one non-negative weight per member,
            summing to one.

    Call arguments:
        inputs: the members' outputs, `(batch, num_members, width)`.

    Returns:
        `(batch, width)`: probabilities (or predictions for regression).

    Example:

    >>> combiner = EnsembleCombiner("vote", "multiclass", num_members=3, width=2)
    >>> outputs = np.array([[[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]]], "float32")
    >>> np.round(np.asarray(combiner(outputs)), 4)  # 2 votes of 3 for class 1
    array([[0.3335, 0.6665]], dtype=float32)
    """

    def __init__(self, method, task, num_members, width, member_weights=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        check_choice("method", method, METHODS)
        task = get_task(task)
        if not task.fused:
            raise ValueError(
                "An ensemble combines predictions; a contrastive run maps "
                "images and texts into a shared space and has none. "
                f"Received: task={task.name!r}"
            )
        if not task.classes and method not in REGRESSION_METHODS:
            raise ValueError(
                f"A regression ensemble averages numbers: `method` must be one "
                f"of {list(REGRESSION_METHODS)}. Received: method={method!r}"
            )
        for name, value in (("num_members", num_members), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"`{name}` must be a positive integer. Received: {name}={value!r}"
                )
        if method == "vote" and TIE_BREAK * (num_members + 1) >= 1:
            raise ValueError(
                f"A vote of {num_members} members would let the tie-break change "
                "its winner; vote with fewer members."
            )
        if method == "weighted":
            member_weights = _check_weights(member_weights, num_members)
        elif member_weights is not None:
            raise ValueError(
                "`member_weights` are the weighted method's. Received: "
                f"method={method!r}, member_weights={member_weights!r}"
            )
        self.method = method
        self.task = task.name
        self.num_members = num_members
        self.width = width
        self.member_weights = member_weights
        if method == "stacking":
            activation = "softmax" if task.name == "multiclass" else "sigmoid"
            self.meta_learner = keras.layers.Dense(
                width, activation=activation, dtype=self.dtype_policy, name="meta"
            )

    def build(self, input_shape):
        expected = (self.num_members, self.width)
        if len(input_shape) != 3 or tuple(input_shape[1:]) != expected:
            raise ValueError(
                "`EnsembleCombiner` takes the members' outputs, of shape (batch, "
                f"{self.num_members}, {self.width}). Received: input_shape="
                f"{tuple(input_shape)}"
            )
        if self.method == "stacking":
            self.meta_learner.build((None, self.num_members * self.width))

    def call(self, inputs):
        outputs = ops.cast(inputs, self.compute_dtype)
        if self.method == "average":
            return ops.mean(outputs, axis=1)
        if self.method == "weighted":
            weights = ops.convert_to_tensor(self.member_weights, self.compute_dtype)
            return ops.sum(outputs * weights[None, :, None], axis=1)
        if self.method == "stacking":
            flat = ops.reshape(outputs, (-1, self.num_members * self.width))
            return self.meta_learner(flat)
        if self.task == "multiclass":
            votes = ops.one_hot(
                ops.argmax(outputs, axis=-1), self.width, dtype=self.compute_dtype
            )
        else:
            # The threshold of the classification metrics (`score >= 0.5`).
            votes = ops.cast(outputs >= 0.5, self.compute_dtype)
        shares = ops.mean(votes, axis=1)
        return (1.0 - TIE_BREAK) * shares + TIE_BREAK * ops.mean(outputs, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.width)

    def get_config(self):
        return {
            **super().get_config(),
            "method": self.method,
            "task": self.task,
            "num_members": self.num_members,
            "width": self.width,
            "member_weights": self.member_weights,
        }


def _check_weights(weights, num_members):
    if weights is None:
        raise ValueError("method='weighted' needs `member_weights`, one per member.")
    values = np.asarray(weights, np.float64).reshape(-1)
    if (
        values.size != num_members
        or not np.isfinite(values).all()
        or (values < 0).any()
        or abs(values.sum() - 1.0) > 1e-5
    ):
        raise ValueError(
            f"`member_weights` must be {num_members} non-negative numbers summing "
            f"to one. Received: member_weights={weights!r}"
        )
    return [float(value) for value in values]


def combiner_model(combiner):
    """The combiner as a Keras model, the form `combiner.keras` holds."""
    inputs = keras.Input(
        (combiner.num_members, combiner.width), name="member_outputs", dtype="float32"
    )
    return keras.Model(inputs, combiner(inputs), name="ensemble_combiner")


# === Fitting ===


def loss(task, output, targets):
    """The loss `"weighted"` minimises: log-loss, or the mean squared error.

    Args:
        task: a task name or `Task`.
        output: `(batch, width)` combined outputs.
        targets: the task's targets (`Task.targets`).

    Returns:
        A float: multiclass the mean negative log-probability of the true
        class; multilabel and binary the binary cross-entropy averaged over
        rows and labels; regression the mean squared error.
    """
    task = get_task(task)
    output = np.asarray(output, np.float64)
    if not task.classes:
        return float(np.mean((output - np.asarray(targets, np.float64)) ** 2))
    clipped = np.clip(output, _EPSILON, 1 - _EPSILON)
    if task.name == "multiclass":
        rows = np.arange(len(clipped))
        return float(-np.mean(np.log(clipped[rows, np.asarray(targets, int)])))
    truth = np.asarray(targets, np.float64).reshape(clipped.shape)
    return float(-np.mean(truth * np.log(clipped) + (1 - truth) * np.log(1 - clipped)))


def fit_weights(outputs, targets, task):
    """Non-negative member weights summing to one that minimise `loss`.

    The loss of `sum_m w_m p_m` is convex in `w` (the negative log of a
    linear function, or a square), so SLSQP on the simplex, started from
    equal weights, finds the optimum; the better of it and equal weights is
    returned, so the fit never does worse than the average on its rows.

    Args:
        outputs: `(rows, members, width)` member outputs.
        targets: the rows' targets.
        task: a task name or `Task`.

    Returns:
        `(weights, {"loss": the fitted loss, "average_loss": equal
        weights' loss})`; weights a list of floats.
    """
    from scipy.optimize import minimize

    task = get_task(task)
    outputs = np.asarray(outputs, np.float64)
    count = outputs.shape[1]

    def combined(weights):
        return np.einsum("bmw,m->bw", outputs, weights)

    def objective(weights):
        return loss(task, combined(weights), targets)

    def gradient(weights):
        mixed = combined(weights)
        if not task.classes:
            residual = 2 * (mixed - np.asarray(targets, np.float64)) / mixed.size
            return np.einsum("bw,bmw->m", residual, outputs)
        clipped = np.clip(mixed, _EPSILON, 1 - _EPSILON)
        if task.name == "multiclass":
            rows = np.arange(len(mixed))
            truth = np.asarray(targets, int)
            chosen = outputs[rows, :, truth]  # (rows, members)
            return -np.mean(chosen / clipped[rows, truth][:, None], axis=0)
        truth = np.asarray(targets, np.float64).reshape(mixed.shape)
        slope = -(truth / clipped - (1 - truth) / (1 - clipped)) / mixed.size
        return np.einsum("bw,bmw->m", slope, outputs)

    start = np.full(count, 1.0 / count)
    result = minimize(
        objective,
        start,
        jac=gradient,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * count,
        constraints=[
            {"type": "eq", "fun": lambda w: np.sum(w) - 1.0, "jac": np.ones_like}
        ],
        options={"ftol": 1e-12, "maxiter": 500},
    )
    weights = np.clip(result.x, 0.0, None)
    weights = weights / weights.sum() if weights.sum() > 0 else start
    fitted, average = objective(weights), objective(start)
    if not fitted <= average:
        weights, fitted = start, average
    return [float(w) for w in weights], {"loss": fitted, "average_loss": average}


def fit_stacking(outputs, targets, task, seed=0):
    """A logistic regression over the members' outputs, as Dense weights.

    Multiclass: one multinomial regression over every member's
    probabilities (`members * width` features). Multilabel and binary: one
    regression per label over the members' probabilities of that label.
    scikit-learn's `LogisticRegression` (L2, C=1) fits them; its
    coefficients become the kernel `(members * width, width)` and bias of
    the combiner's `Dense` layer, whose softmax (or sigmoid) then gives
    `predict_proba`'s values. A class absent from the rows gets a logit of
    -30; a label that is constant over the rows gets no coefficients and the
    logit of its Laplace-smoothed frequency.

    Returns:
        `(kernel, bias)`, float32 arrays.
    """
    from sklearn.linear_model import LogisticRegression

    task = get_task(task)
    outputs = np.asarray(outputs, np.float64)
    rows, count, width = outputs.shape
    kernel = np.zeros((count * width, width))
    bias = np.zeros(width)

    def regression(features, labels):
        model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
        return model.fit(features, labels)

    if task.name == "multiclass":
        labels = np.asarray(targets, int).reshape(-1)
        present = np.unique(labels)
        bias[:] = _ABSENT_LOGIT
        if len(present) == 1:
            bias[present[0]] = 0.0
        else:
            model = regression(outputs.reshape(rows, -1), labels)
            classes = model.classes_
            if len(classes) == 2:
                # One logit, of the second class against the first.
                kernel[:, classes[1]] = model.coef_[0]
                bias[classes[1]] = model.intercept_[0]
                bias[classes[0]] = 0.0
            else:
                kernel[:, classes] = model.coef_.T
                bias[classes] = model.intercept_
        return kernel.astype("float32"), bias.astype("float32")
    truth = np.asarray(targets, np.float64).reshape(rows, width)
    for label in range(width):
        column = truth[:, label]
        # Member m's probability of this label is feature m * width + label.
        features = np.arange(count) * width + label
        if np.all(column == column[0]):
            frequency = (column.sum() + 1) / (rows + 2)
            bias[label] = np.log(frequency / (1 - frequency))
            continue
        model = regression(outputs[:, :, label], column.astype(int))
        kernel[features, label] = model.coef_[0]
        bias[label] = model.intercept_[0]
    return kernel.astype("float32"), bias.astype("float32")


def fit_combiner(method, task, outputs, targets, seed=0):
    """An `EnsembleCombiner` of `method`, fitted on `(outputs, targets)`
    for the fitted methods.

    Returns:
        `(combiner, fit)`: the built combiner and what the fit found (the
        weights' losses for `"weighted"`; `{}` otherwise).
    """
    task = get_task(task)
    outputs = np.asarray(outputs, np.float32)
    _, count, width = outputs.shape
    arguments = {"num_members": count, "width": width}
    fit = {}
    if method == "weighted":
        arguments["member_weights"], fit = fit_weights(outputs, targets, task)
    combiner = EnsembleCombiner(method, task.name, **arguments)
    combiner.build((None, count, width))
    if method == "stacking":
        combiner.meta_learner.set_weights(fit_stacking(outputs, targets, task, seed))
    return combiner, fit


def fold_assignment(targets, task, folds=5, seed=0):
    """Each row's cross-validation fold, and whether the folds are stratified.

    `min(folds, rows)` folds, shuffled with `seed`; stratified by class
    (scikit-learn's `StratifiedKFold`) for multiclass and binary targets
    when every class present has a row in each fold, plain `KFold`
    otherwise (multilabel, regression, rare classes).

    Returns:
        `(fold, stratified)`: an int array, one fold number per row.
    """
    from sklearn.model_selection import KFold
    from sklearn.model_selection import StratifiedKFold

    task = get_task(task)
    rows = len(targets)
    count = min(folds, rows)
    if count < 2:
        raise ValueError(
            "Fitting an ensemble out of fold needs at least 2 validation rows. "
            f"Received: {rows} row(s)"
        )
    classes = None
    if task.name in ("multiclass", "binary"):
        classes = np.asarray(targets).reshape(rows, -1)[:, 0].astype(int)
        counts = np.bincount(classes)
        if counts[counts > 0].min() < count:
            classes = None
    splitter = (
        StratifiedKFold(count, shuffle=True, random_state=seed)
        if classes is not None
        else KFold(count, shuffle=True, random_state=seed)
    )
    fold = np.empty(rows, int)
    for number, (_, held_out) in enumerate(splitter.split(np.zeros(rows), classes)):
        fold[held_out] = number
    return fold, classes is not None


def out_of_fold(method, task, outputs, targets, folds=5, seed=0):
    """The combined outputs of every row from a combiner that never saw it.

    Each fold's rows are combined by a combiner fitted on the other folds
    (`fold_assignment`, `fit_combiner`).

    Returns:
        `(combined, fold, details)`: `(rows, width)` outputs, each row's fold,
        and `{"stratified": bool, "fold_weights": [...]}` (the weights
        fitted per fold, for `"weighted"`).
    """
    outputs = np.asarray(outputs, np.float32)
    fold, stratified = fold_assignment(targets, task, folds, seed)
    combined = np.zeros((len(outputs), outputs.shape[2]), np.float32)
    fold_weights = []
    targets = np.asarray(targets)
    for number in range(fold.max() + 1):
        held_out = fold == number
        combiner, _ = fit_combiner(
            method, task, outputs[~held_out], targets[~held_out], seed
        )
        combined[held_out] = np.asarray(combiner(outputs[held_out]))
        if method == "weighted":
            fold_weights.append(combiner.member_weights)
    details = {"stratified": stratified}
    if fold_weights:
        details["fold_weights"] = fold_weights
    return combined, fold, details


# === Members' outputs on a manifest ===


def member_outputs(
    members,
    data,
    batch_size=64,
    unknown_labels="error",
    max_bad_fraction=DEFAULT_MAX_BAD_FRACTION,
):
    """Every member's outputs on a manifest's rows, aligned row by row.

    Each member reads the manifest with its own pipeline
    (`mmzoo.data.make_dataset` with its image size, resize mode, tokenizer
    and columns). A bad row is bad whatever the pipeline (the checks look
    at the files, the texts and the labels, which the members share), so
    every member skips the same rows; that is checked, and the outputs of
    the rows kept are stacked in manifest order.

    Args:
        members: the member runs (`mmzoo.runs.Run`).
        data: a manifest path or `Manifest`.
        batch_size: examples per batch.
        unknown_labels: as in `make_dataset`.
        max_bad_fraction: as in `make_dataset`.

    Returns:
        `(targets, outputs, report)`: the task's targets of the rows kept,
        `(rows, members, width)` float32 outputs, and the first member's
        `DataReport` (the bad rows, as `mmzoo evaluate` reports them).

    Raises:
        DataError: two members keep different rows, or too many rows are
            bad.
    """
    from mmzoo.data.check import DataError
    from mmzoo.runs import dataset_outputs

    first = None
    stacked = []
    for index, member in enumerate(members):
        dataset, report = member.dataset(
            data,
            batch_size,
            unknown_labels=unknown_labels,
            max_bad_fraction=max_bad_fraction,
        )
        targets, outputs = dataset_outputs(member.model, dataset)
        if first is None:
            first = (targets, report)
        elif list(report.good) != list(first[1].good):
            lines = sorted(
                {report.manifest.lines[i] for i in report.good}
                ^ {first[1].manifest.lines[i] for i in first[1].good}
            )
            raise DataError(
                f"{report.source}: member {index} ({member.directory}) keeps other "
                f"rows than member 0 (lines {lines[:10]} differ); the members' "
                "outputs could not be paired row by row."
            )
        stacked.append(np.asarray(member.task.output_of(outputs), np.float32))
    targets, report = first
    return targets, np.stack(stacked, axis=1), report


# === The ensemble run ===


@dataclasses.dataclass
class Ensemble:
    """Trained runs and the combiner of their outputs: a run folder like any
    other (`mmzoo.load_run` returns one for a folder `ensemble` wrote).

    Attributes:
        members: the member `Run`s, in order.
        combiner: the combiner model (`combiner.keras`): `(batch, members,
            width)` -> `(batch, width)`.
        labels: the members' `LabelVocabulary` (`None` for regression).
        config: the ensemble's configuration (its config.yaml).
        directory: the ensemble folder.

    Example:

    >>> ensemble = mmzoo.load_run("runs/ensemble")
    >>> ensemble.method, len(ensemble.members)
    ('weighted', 3)
    >>> ensemble.predict("shape.png", "what color is it?", top_k=2)
    {'labels': ['blue', 'teal'], 'scores': [0.91, 0.05], 'members': [...]}
    """

    members: list
    combiner: keras.Model
    labels: LabelVocabulary
    config: dict
    directory: str

    @property
    def task(self):
        """The members' `mmzoo.tasks.Task`."""
        return get_task(self.config["task"])

    @property
    def method(self):
        return self.config["method"]

    @property
    def member_weights(self):
        """The weighted method's weights (`None` for the other methods)."""
        return self.combiner.layers[-1].member_weights

    @property
    def output_name(self):
        return self.task.output_name

    @property
    def metrics(self):
        """The ensemble's metrics.json (`{}` when it has none)."""
        return _read_json(os.path.join(self.directory or "", "metrics.json"))

    @property
    def report(self):
        """The ensemble's report (ensemble.json; `{}` when it has none)."""
        return _read_json(os.path.join(self.directory or "", REPORT))

    @functools.cached_property
    def model(self):
        """One Keras model: every member's inputs in (`member_input`), the
        combined output (`output_name`) and the members' outputs stacked
        (`member_output(output_name)`, `(batch, members, width)`) out."""
        name = self.output_name
        inputs, outputs = {}, []
        for index, member in enumerate(self.members):
            own = {}
            for key, tensor in member.model.input.items():
                own[key] = inputs[member_input(index, key)] = keras.Input(
                    tensor.shape[1:], dtype=tensor.dtype, name=member_input(index, key)
                )
            # A model of its own per member: members' models may share a
            # name (two runs of one preset), layer names in a model may not.
            alone = keras.Model(
                member.model.input, member.model.output[name], name=f"member_{index}"
            )
            outputs.append(alone(own))
        stacked = keras.ops.stack(outputs, axis=1)
        combined = self.combiner.layers[-1](stacked)
        return keras.Model(
            inputs, {name: combined, member_output(name): stacked}, name="ensemble"
        )

    def combine(self, outputs):
        """The combined output for members' outputs `(batch, members, width)`."""
        return np.asarray(self.combiner(np.asarray(outputs, np.float32)))

    def member_features(self, images, texts, max_pixels=None):
        """`model`'s inputs for image files (or their bytes) and texts: each
        member's pixels (`mmzoo.data.images.prepare_image` at its size and
        resize mode) and token ids (its tokenizer). What a Python app feeds
        the exported TFLite file too."""
        import tensorflow as tf

        from mmzoo.data.images import prepare_image
        from mmzoo.data.manifest import DEFAULT_MAX_PIXELS

        max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        texts = list(texts)
        features = {}
        for index, member in enumerate(self.members):
            features[member_input(index, "image")] = np.concatenate(
                [
                    prepare_image(image, member.image_size, member.resize, max_pixels)
                    for image in images
                ]
            )
            if "tokens" in member.model.input:
                tokens = member.tokenizer(tf.constant(texts)).numpy()
                features[member_input(index, "tokens")] = tokens
            else:
                features[member_input(index, "text")] = np.asarray(texts, object)
        return features

    def dataset_outputs(self, data, batch_size=64, **kwargs):
        """`member_outputs` of this ensemble's members."""
        return member_outputs(self.members, data, batch_size, **kwargs)

    def manifest_outputs(
        self,
        data,
        batch_size=64,
        unknown_labels="error",
        max_bad_fraction=DEFAULT_MAX_BAD_FRACTION,
    ):
        """The ensemble's outputs on a manifest's good rows (see
        `mmzoo.runs.Run.manifest_outputs`): `(targets, outputs, report)`,
        outputs holding the combined output and the members' (aligned row
        by row, `member_outputs`)."""
        targets, stacked, report = member_outputs(
            self.members, data, batch_size, unknown_labels, max_bad_fraction
        )
        outputs = {
            self.output_name: self.combine(stacked),
            member_output(self.output_name): stacked,
        }
        return targets, outputs, report

    def predict(self, image, text, top_k=5, max_pixels=None):
        """The combined answer for one image and one text, as
        `mmzoo.runs.predict` gives a run's, with `"members"`: each member's
        answer (its top label, or its predictions)."""
        features = self.member_features([image], [text], max_pixels)
        outputs = self.model.predict_on_batch(features)
        combined = np.asarray(outputs[self.output_name])[0]
        each = np.asarray(outputs[member_output(self.output_name)])[0]
        result = self.task.answer(combined, self.labels, top_k)
        result["members"] = [
            self.task.answer(output, self.labels, top_k=1) for output in each
        ]
        return result

    def __repr__(self):
        return (
            f"<Ensemble {self.method} of {len(self.members)} {self.task.name} runs "
            f"at {self.directory!r}>"
        )


def load_ensemble(path):
    """Load an ensemble folder written by `ensemble` (`mmzoo.load_run` calls
    this for one)."""
    from mmzoo.runs import CONFIG
    from mmzoo.runs import LABELS
    from mmzoo.runs import _read_config
    from mmzoo.runs import load_run
    from mmzoo.saving import load_model

    path = os.fspath(path)
    config = _read_config(os.path.join(path, CONFIG))
    if config.get("kind") != KIND:
        raise ValueError(f"{path!r} is not an ensemble folder (its {CONFIG} says so).")
    combiner_path = os.path.join(path, COMBINER)
    if not os.path.isfile(combiner_path):
        raise FileNotFoundError(f"{path!r} is an ensemble folder without {COMBINER}.")
    members = [load_run(os.path.join(path, folder)) for folder in config["members"]]
    combiner = load_model(combiner_path)
    layer = combiner.layers[-1]
    if not isinstance(layer, EnsembleCombiner) or layer.num_members != len(members):
        raise ValueError(
            f"{combiner_path} does not combine the {len(members)} members of {path!r}."
        )
    labels = None
    if os.path.isfile(os.path.join(path, LABELS)):
        labels = LabelVocabulary.load(os.path.join(path, LABELS))
    return Ensemble(members, combiner, labels, config, path)


def ensemble(
    runs,
    method="average",
    val=None,
    out=None,
    test=None,
    *,
    batch_size=64,
    folds=5,
    seed=0,
    max_bad_fraction=DEFAULT_MAX_BAD_FRACTION,
):
    """Combine trained runs into an ensemble run folder.

    Args:
        runs: two or more run folders (or loaded `Run`s) of one task with the
            same labels in the same order.
        method: one of `METHODS`: `"average"`, `"vote"`, `"weighted"`,
            `"stacking"` (regression: `"average"` and `"weighted"`).
        val: the validation manifest: the fitted methods are fitted on it
            (and scored on it out of fold); every method reports on it.
        out: the folder to write (absent or empty).
        test: an optional test manifest, scored with the final combiner.
        batch_size: examples per batch when the members predict.
        folds: cross-validation folds for the fitted methods' validation
            metrics (at most one per validation row).
        seed: the folds' shuffle and the meta-learner's seed.
        max_bad_fraction: bad manifest rows tolerated (skipped).

    Returns:
        The `Ensemble` in `out` (what `mmzoo.load_run(out)` returns); its
        `report` holds the figures.

    Raises:
        ValueError: a choice or a member that cannot be combined (another
            task, other labels, a contrastive run, a regression with
            `"vote"` or `"stacking"`); the message names the member.
        FileExistsError: `out` exists and is not empty.

    Example:

    >>> combined = mmzoo.ensemble(["runs/bilinear", "runs/gated"], "weighted",
    ...                           val="val.csv", test="test.csv",
    ...                           out="runs/ensemble")
    >>> combined.member_weights, combined.metrics["test"]["accuracy"]
    ([0.71, 0.29], 0.99)
    """
    check_choice("method", method, METHODS)
    if val is None:
        raise ValueError(
            "`val` is required: the validation manifest the ensemble is "
            "fitted and scored on."
        )
    if out is None:
        raise ValueError("`out` is required: the ensemble folder to write.")
    for name, value, least in (("batch_size", batch_size, 1), ("folds", folds, 2)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(
                f"`{name}` must be an integer of at least {least}. Received: "
                f"{name}={value!r}"
            )
    out = os.fspath(out)
    _check_out(out)
    members = _load_members(runs, method)
    task = members[0].task
    reading = {"batch_size": batch_size, "max_bad_fraction": max_bad_fraction}
    val_targets, val_outputs, val_report = member_outputs(members, val, **reading)
    combiner, fit = fit_combiner(method, task, val_outputs, val_targets, seed)
    in_sample = np.asarray(combiner(val_outputs))
    validation = {
        "data": os.path.abspath(os.fspath(val)),
        "examples": len(val_outputs),
        "skipped_rows": val_report.num_bad,
        "out_of_fold": method in FITTED_METHODS,
    }
    val_combined = in_sample
    if method in FITTED_METHODS:
        val_combined, fold, details = out_of_fold(
            method, task, val_outputs, val_targets, folds, seed
        )
        validation.update(folds=int(fold.max()) + 1, fold=fold.tolist(), **details)
    splits = {"val": (val_targets, val_outputs, val_combined)}
    if test is not None:
        test_targets, test_outputs, test_report = member_outputs(
            members, test, **reading
        )
        splits["test"] = (
            test_targets,
            test_outputs,
            np.asarray(combiner(test_outputs)),
        )
        testing = {
            "data": os.path.abspath(os.fspath(test)),
            "examples": len(test_outputs),
            "skipped_rows": test_report.num_bad,
        }
    report = _report(members, method, task, combiner, splits)
    report["validation"] = validation
    report["test"] = testing if test is not None else None
    if method in FITTED_METHODS:
        report["ensemble"]["val_in_sample"] = _scores(
            task, val_targets, in_sample, members[0].labels
        )
    if fit:
        report["fit"] = {"objective": _objective(task), **fit}
    config = {
        "kind": KIND,
        "task": task.name,
        "method": method,
        "members": [f"{MEMBERS}/{index}" for index in range(len(members))],
        "sources": [os.path.abspath(member.directory) for member in members],
        "member_weights": combiner.member_weights,
        "val": validation["data"],
        "test": report["test"]["data"] if test is not None else None,
        "folds": folds,
        "seed": seed,
        "batch_size": batch_size,
    }
    model = _write_folder(out, members, combiner, config, report)
    # What `load_ensemble(out)` reads, without reading it: the members' run
    # files and the combiner were written from these very objects.
    copies = [
        dataclasses.replace(member, directory=os.path.join(out, folder))
        for member, folder in zip(members, config["members"], strict=True)
    ]
    return Ensemble(copies, model, members[0].labels, config, out)


def _check_out(out):
    if os.path.exists(out) and not (os.path.isdir(out) and not os.listdir(out)):
        raise FileExistsError(
            f"`out` {out!r} exists and is not an empty folder: an ensemble is "
            "written to a new (or empty) folder."
        )


def _load_members(runs, method):
    """The member runs, once their configurations show they can be combined.

    The task is read from each run's config.yaml before any model is
    loaded, so a contrastive run or an ensemble is refused at once.
    """
    from mmzoo.runs import CONFIG
    from mmzoo.runs import Run
    from mmzoo.runs import _read_config
    from mmzoo.runs import load_run

    if isinstance(runs, (str, os.PathLike, Run)):
        runs = [runs]
    runs = list(runs)
    if len(runs) < 2:
        raise ValueError(
            f"An ensemble combines at least 2 runs. Received: {len(runs)} run(s)"
        )
    configs = []
    for index, run in enumerate(runs):
        if isinstance(run, Run):
            configs.append(run.config)
            continue
        folder = os.fspath(run)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"Member {index}: no run folder at {folder!r}")
        configs.append(_read_config(os.path.join(folder, CONFIG)))
    for index, config in enumerate(configs):
        where = _where(index, runs[index])
        if config.get("kind") == KIND:
            raise ValueError(
                f"{where} is an ensemble; combine its members (and the other "
                "runs) into one ensemble instead."
            )
        if config.get("heads"):
            raise ValueError(
                f"{where} has several heads (`heads`); an ensemble combines "
                "runs of one output each: multiclass, multilabel, binary or "
                "regression."
            )
        task = get_task(config.get("task", "multiclass"))
        if not task.fused:
            raise ValueError(
                f"{where} is a {task.name} run (a dual encoder): it makes no "
                "prediction to combine; ensembles take multiclass, multilabel, "
                "binary and regression runs."
            )
        first = get_task(configs[0].get("task", "multiclass"))
        if task is not first:
            raise ValueError(
                f"{where} is a {task.name} run, member 0 a {first.name} run: every "
                "member must have the same task."
            )
    if not first.classes and method not in REGRESSION_METHODS:
        raise ValueError(
            f"A regression ensemble averages numbers: `method` must be one of "
            f"{list(REGRESSION_METHODS)}. Received: method={method!r}"
        )
    members = [run if isinstance(run, Run) else load_run(run) for run in runs]
    reference = members[0]
    width = reference.model.output[first.output_name].shape[-1]
    for index, member in enumerate(members[1:], start=1):
        where = _where(index, runs[index])
        if first.classes and member.labels.names != reference.labels.names:
            raise ValueError(
                f"{where} has the labels {_differ(member.labels.names)}, member 0 "
                f"{_differ(reference.labels.names)}: every member must have the "
                "same labels in the same order."
            )
        own = member.model.output[first.output_name].shape[-1]
        if own != width:
            raise ValueError(
                f"{where} predicts {own} value(s) per example, member 0 {width}: "
                "every member must predict the same targets."
            )
    return members


def _where(index, run):
    folder = getattr(run, "directory", run)
    return f"Member {index} ({os.fspath(folder)})"


def _differ(names):
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f"[{shown}]"


def _objective(task):
    return "log_loss" if task.classes else "mean_squared_error"


def _scores(task, targets, output, labels):
    """The task's metrics of an output, with the loss `weighted` minimises."""
    metrics = task.evaluate(targets, output, labels)
    metrics[_objective(task)] = loss(task, output, targets)
    return metrics


def _describe_member(index, member):
    config = member.config
    return {
        "index": index,
        "folder": f"{MEMBERS}/{index}",
        "source": os.path.abspath(member.directory) if member.directory else None,
        "architecture": {
            key: config[key]
            for key in ("image_tower", "text_tower", "fusion")
            if key in config
        },
        "image_size": member.image_size,
        "resize": member.resize,
        "tokenizer": type(member.tokenizer).__name__ if member.tokenizer else None,
    }


def _report(members, method, task, combiner, splits):
    labels = members[0].labels
    described = [_describe_member(i, m) for i, m in enumerate(members)]
    result = {"ensemble": {}, "agreement": {}}
    for split, (targets, outputs, combined) in splits.items():
        for index, entry in enumerate(described):
            entry[split] = _scores(task, targets, outputs[:, index], labels)
        result["ensemble"][split] = _scores(task, targets, combined, labels)
        result["agreement"][split] = _agreement(task, outputs)
    return {
        "task": task.name,
        "method": method,
        "labels": list(labels.names) if labels is not None else None,
        "member_weights": combiner.member_weights,
        "members": described,
        **result,
    }


def _agreement(task, outputs):
    """The members' pairwise agreement (`Task.agreement`), a matrix; `None`
    for a task without one (regression)."""
    count = outputs.shape[1]
    if task.agreement(outputs[:, 0], outputs[:, 0]) is None:
        return None
    agreement = [[1.0] * count for _ in range(count)]
    for i in range(count):
        for j in range(i + 1, count):
            agreement[i][j] = agreement[j][i] = task.agreement(
                outputs[:, i], outputs[:, j]
            )
    return agreement


def _write_folder(out, members, combiner, config, report):
    """Writes the ensemble folder aside, then renames it into place, so a
    failure leaves `out` as it was."""
    from mmzoo.runs import CONFIG
    from mmzoo.runs import LABELS
    from mmzoo.runs import METRICS

    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".ensemble-", dir=parent)
    try:
        os.chmod(staging, 0o755)
        for index, member in enumerate(members):
            _copy_member(member, os.path.join(staging, MEMBERS, str(index)))
        model = combiner_model(combiner)
        model.save(os.path.join(staging, COMBINER))
        if members[0].labels is not None:
            members[0].labels.save(os.path.join(staging, LABELS))
        with open(os.path.join(staging, CONFIG), "w", encoding="utf-8") as file:
            yaml.safe_dump(plain_data(config), file, sort_keys=False)
        metrics = {
            split: report["ensemble"][split]
            for split in ("val", "test")
            if split in report["ensemble"]
        }
        _write_json(os.path.join(staging, METRICS), metrics)
        _write_json(os.path.join(staging, REPORT), report)
        with open(os.path.join(staging, REPORT_TABLE), "w", encoding="utf-8") as file:
            file.write(report_table(report))
        if os.path.isdir(out):
            os.rmdir(out)  # empty, as `_check_out` found it
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return model


def _copy_member(member, folder):
    """A member's run files, written from the loaded run itself (the model
    it predicts with, not whichever file its folder holds)."""
    from mmzoo.runs import BEST
    from mmzoo.runs import CONFIG
    from mmzoo.runs import LABELS
    from mmzoo.runs import METRICS
    from mmzoo.runs import TOKENIZER

    os.makedirs(folder)
    with open(os.path.join(folder, CONFIG), "w", encoding="utf-8") as file:
        yaml.safe_dump(plain_data(member.config), file, sort_keys=False)
    if member.labels is not None:
        member.labels.save(os.path.join(folder, LABELS))
    if member.tokenizer is not None:
        member.tokenizer.save(os.path.join(folder, TOKENIZER))
    metrics = os.path.join(member.directory or "", METRICS)
    if os.path.isfile(metrics):
        shutil.copyfile(metrics, os.path.join(folder, METRICS))
    member.model.save(os.path.join(folder, BEST))


def _read_json(path):
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as file:
        try:
            return json.load(file)
        except ValueError:
            return {}


def _write_json(path, value):
    with open(path, "w", encoding="utf-8") as file:
        json.dump(value, file, indent=2, ensure_ascii=False)
        file.write("\n")


# === Report ===

# The figures the table shows, by task kind: (metrics keys, the first one
# present is shown; column title). Multilabel metrics have no accuracy but
# the subset accuracy (every label right).
_CLASSIFICATION_COLUMNS = (
    (("accuracy", "subset_accuracy"), "accuracy"),
    (("macro_f1",), "macro-F1"),
    (("log_loss",), "log-loss"),
)
_REGRESSION_COLUMNS = ((("mae",), "MAE"), (("rmse",), "RMSE"), (("r2",), "R²"))


def report_table(report):
    """The report as Markdown: a metrics table (members, then the ensemble),
    the weights, and the members' pairwise agreement.

    Args:
        report: an ensemble's report (`Ensemble.report`, ensemble.json).
    """
    task = get_task(report["task"])
    columns = _CLASSIFICATION_COLUMNS if task.classes else _REGRESSION_COLUMNS
    splits = [s for s in ("val", "test") if s in report["ensemble"]]
    out_of_fold = (report.get("validation") or {}).get("out_of_fold")
    header = ["model"]
    for split in splits:
        header += [f"{split} {title}" for _, title in columns]
    lines = [
        f"# Ensemble: {report['method']} of {len(report['members'])} {task.name} runs",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]

    def row(name, entry):
        cells = [name]
        for split in splits:
            metrics = entry.get(split) or {}
            for keys, _ in columns:
                values = [metrics[key] for key in keys if key in metrics]
                cells.append(_cell(values[0] if values else None))
        return "| " + " | ".join(cells) + " |"

    for member in report["members"]:
        architecture = member["architecture"]
        parts = [architecture.get("image_tower"), architecture.get("text_tower")]
        name = (
            f"member {member['index']} ({' + '.join(p for p in parts if p)}, "
            f"{architecture.get('fusion', '?')}, {member['image_size']} px "
            f"{member['resize']})"
        )
        lines.append(row(name, member))
    name = f"**ensemble ({report['method']})**"
    lines.append(row(name, report["ensemble"]))
    lines.append("")
    if out_of_fold:
        validation = report["validation"]
        stratified = ", stratified" if validation.get("stratified") else ""
        lines.append(
            "Validation figures of the ensemble are out of fold "
            f"({validation['folds']} folds{stratified}): each row combined by a "
            "combiner fitted without it."
        )
    if report.get("member_weights") is not None:
        weights = ", ".join(
            f"member {i} {w:.4f}" for i, w in enumerate(report["member_weights"])
        )
        lines.append(f"Weights: {weights}.")
    for split in splits:
        agreement = report["agreement"].get(split)
        if agreement is None:
            continue
        count = len(agreement)
        lines += [
            "",
            f"Pairwise agreement on {split} (fraction of rows answered alike):",
            "",
            "| | " + " | ".join(f"member {i}" for i in range(count)) + " |",
            "|" + "---|" * (count + 1),
        ]
        for i, values in enumerate(agreement):
            cells = " | ".join(_cell(v) for v in values)
            lines.append(f"| member {i} | {cells} |")
    return "\n".join(lines) + "\n"


def _cell(value):
    return "n/a" if value is None else f"{value:.4f}"
