"""Tasks: what a model predicts, and everything that follows from it.

A `Task` owns what used to be decided by testing the task's name all over
mmzoo: the output's name and activation, the loss and metrics to compile
with, how a manifest's labels become training targets, how outputs become
answers (top-k labels, thresholds, values), what an exported model returns
and which evaluation metrics apply. The training loop, evaluation, the
command line and both exports ask the task; none of them knows its name.

The tasks are registered in `TASKS`; a new task is a `Task` subclass and
one entry there, and the generic tests run over it. `MultiTask` is the one
task not registered: it is built from a heads spec (`build_model(heads=
...)`, a run's `heads`), several registered tasks in one model, and
`task_of(arguments)` gives the task of build arguments or a run config.
Most tasks fuse the image and the text into one prediction (`fused`:
`mmzoo.build_model` builds their models); `contrastive` maps each into a
shared space instead (`mmzoo.build_dual_encoder`), and its "targets" are
which rows show the same image or the same text.

This module imports only NumPy at import time (Keras, TensorFlow and the
metrics are imported inside the methods that need them), so the registry
and `mmzoo list` stay light.
"""

import collections
import difflib
import os
import re
from types import MappingProxyType

import numpy as np

from mmzoo.checks import check_choice
from mmzoo.data.manifest import LABEL_SEPARATOR
from mmzoo.data.manifest import LABELS_FILE
from mmzoo.data.manifest import LabelVocabulary
from mmzoo.data.manifest import ManifestError
from mmzoo.data.manifest import Problem
from mmzoo.data.manifest import label_value_problems
from mmzoo.data.manifest import split_labels

# BatchNorm statistics after training are averaged over this many training
# rows at most: a few thousand estimate them as well as all would, and a
# pass over all of easy-VQA's 31,000 rows cost a fifth of an epoch per model.
RECALIBRATION_ROWS = 8192


class TargetError(ValueError):
    """Labels that cannot become a task's targets; the message says why."""


# One output of a model, as `mmzoo.build_model` builds it: its name (a key
# of the outputs dict), the task it predicts, its width, and the prefix of
# its head's layer names ("" for a single-task model's `head_dense_0`,
# `logits`; "answer_" for head `answer`'s `answer_head_dense_0`, ...).
OutputSpec = collections.namedtuple("OutputSpec", "name task width prefix")


class Task:
    """What a model predicts; subclasses fill in the details.

    Attributes:
        name: the `task=` name.
        description: one line for `mmzoo list`.
        output_name: the model's output (a dict key), e.g. `"probabilities"`.
        activation: the output layer's activation.
        loss: the Keras loss `build_model` compiles with.
        metrics: the Keras metrics `build_model` compiles with.
        classes: the labels are class names, kept in a `LabelVocabulary`
            (`False`: the labels are numbers).
        multilabel: a row's label holds several classes, `|`-separated.
        fused: the model fuses both modalities into one prediction, the
            output `output_name` (`mmzoo.build_model`'s models).
        needs_labels: rows need a label (a row without one is bad).
        distinct_images: training batches are built without repeating an
            image where the data allows (see `mmzoo.data.make_dataset`).
        losses: the names `loss=` may choose from (empty: the task's
            `loss` only).
        headline: the `evaluate` metric that ranks models of the task
            (`mmzoo train --baselines`), and `higher_is_better` its sense.
        label_columns: manifest columns read besides `label` (a
            `MultiTask`'s heads' columns).
        heads: the model's heads (empty: one output, `output_name`; see
            `MultiTask`).

    Example:

    >>> task = mmzoo.get_task("multilabel")
    >>> task.output_name, task.loss
    ('probabilities', 'binary_crossentropy')
    >>> task.targets(["cat|dog", "dog"], LabelVocabulary(["cat", "dog"]))
    array([[1., 1.],
           [0., 1.]], dtype=float32)
    """

    name = None
    description = ""
    output_name = "probabilities"
    activation = None
    loss = None
    metrics = ()
    classes = True
    multilabel = False
    fused = True
    needs_labels = True
    distinct_images = False
    losses = ()
    headline = "accuracy"
    higher_is_better = True
    label_columns = ()
    heads = ()

    def __repr__(self):
        return f"<Task {self.name}>"

    # === Model ===

    @property
    def output_names(self):
        """The model outputs the task reads."""
        return (self.output_name,)

    def build(self, **arguments):
        """Build the task's model: `mmzoo.build_model(task=name, ...)`."""
        from mmzoo.builder import build_model

        return build_model(task=self.name, **arguments)

    def model_arguments(self, config, num_classes):
        """The task's own `build` arguments in a training run.

        Args:
            config: the run's configuration (`mmzoo.training.config`).
            num_classes: from the training data (`num_classes`).
        """
        balance = config.get("balance", "none")
        return {
            "fusion": config["fusion"],
            "num_classes": num_classes,
            "seed": config["seed"],
            "unimodal_heads": config.get("unimodal_heads", 0.0),
            "balance": None if balance == "none" else balance,
            "balance_alpha": config.get("balance_alpha", 0.5),
        }

    def num_outputs(self, num_classes):
        """The output layer's width for `num_classes` (validated)."""
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"A {self.name} task needs `num_classes`, a positive integer (the "
                f"number of classes). Received: num_classes={num_classes!r}"
            )
        return num_classes

    def num_labels(self, width):
        """How many class names an output of `width` units needs."""
        return width

    def output_specs(self, num_classes):
        """The model's outputs (`OutputSpec`s) for `num_classes`: one here,
        `output_name`, with the layer names of a single-task head."""
        return [OutputSpec(self.output_name, self, self.num_outputs(num_classes), "")]

    def num_classes(self, labels, target_spec):
        """`num_classes` for `build_model`, from the training data.

        Args:
            labels: the training data's `LabelVocabulary` (`None` when
                `classes` is false).
            target_spec: a batch of targets, or its `tf.TensorSpec`
                (anything with a `shape`; a dict of them for tasks whose
                targets are several arrays).
        """
        return len(labels)

    def output_layer(self, logits, name=None):
        """The task's activation, computed in float32 under mixed precision,
        in a layer named `name` (default `output_name`)."""
        import keras

        return keras.layers.Activation(
            self.activation, dtype="float32", name=name or self.output_name
        )(logits)

    def compile_arguments(self, learning_rate=1e-3):
        """`model.compile` arguments that fit the task: Adam, loss, metrics."""
        import keras

        return {
            "optimizer": keras.optimizers.Adam(learning_rate),
            "loss": {self.output_name: self.loss},
            "metrics": {self.output_name: list(self.metrics)},
        }

    # === Training ===

    def epoch_callbacks(self, validation):
        """Keras callbacks a training run adds for the task.

        Args:
            validation: the validation dataset (batches of `(features,
                targets)`).
        """
        return []

    def after_training(self, model, data):
        """Finish a trained model on its training data (batches of
        `(features, targets)`).

        Default: BatchNorm's moving statistics recalibrated on the data
        (`mmzoo.layers.recalibrate_batch_norm`), over at most
        `RECALIBRATION_ROWS` rows. They trail the weights
        they were taken under, and on small data that costs much: on
        OpenMoji (benchmarks/RESULTS.md, "Modality balance") the small_cnn
        image-only run went from 0.38 to 0.53 test accuracy and concat
        fusion from 0.52 to 0.74, turning fusions that lost to the text
        alone into ones that beat it.

        Returns:
            What was done, one line each, for the log (empty: nothing,
            the model is unchanged).
        """
        from mmzoo.layers import recalibrate_batch_norm

        count = recalibrate_batch_norm(model, data, max_rows=RECALIBRATION_ROWS)
        if not count:
            return []
        return [f"{count} BatchNorm layer(s) recalibrated on the training data"]

    # === Data ===

    def fit_word_tokenizer(self, texts, max_vocab_size, max_tokens):
        """The word tokenizer a training run fits on its texts (default:
        `WordTokenizer.fit`; a captioning run adds `[START]` and `[END]`)."""
        from mmzoo.data.tokenizers import WordTokenizer

        return WordTokenizer.fit(
            texts, max_vocab_size=max_vocab_size, max_tokens=max_tokens
        )

    def tokenizer_arguments(self, tokenizer):
        """`build` arguments a training run takes from its word tokenizer
        besides `vocab_size` (default none)."""
        return {}

    def fit_labels(self, manifest, rows):
        """The label vocabulary of training data: `manifest`'s `rows`
        (indices of good rows); `None` when `classes` is false."""
        if not self.classes:
            return None
        return LabelVocabulary.fit(
            (manifest.labels[i] for i in rows), multilabel=self.multilabel
        )

    def save_labels(self, labels, folder):
        """Write `labels` (from `fit_labels`) into `folder`: `labels.txt`.

        Returns:
            The paths written (none when `labels` is `None`).
        """
        if labels is None:
            return []
        os.makedirs(folder, exist_ok=True)
        return [labels.save(os.path.join(folder, LABELS_FILE))]

    def load_labels(self, path):
        """The labels `save_labels` wrote into folder `path` (or the
        `labels.txt` file itself); `None` when there are none."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, LABELS_FILE)
        if not os.path.isfile(path):
            return None
        return LabelVocabulary.load(path)

    def label_names(self, labels, model):
        """The class names of each output, checked against the model's
        output widths: a list (`None` for a task without classes)."""
        width = model.output[self.output_name].shape[-1]
        return _names_for(self, labels, width)

    def row_checks(self, labels):
        """Checks of a row's labels beyond `check_manifest`'s own (which
        reads the `label` column): `None`, or a function `(manifest, index)
        -> [Problem]` (a `MultiTask`'s heads' columns).

        Args:
            labels: the training labels to check against (`None`: no
                vocabulary check, e.g. training data itself).
        """
        return None

    def manifest_targets(self, manifest, rows, labels):
        """The targets of a manifest's `rows` (indices), for `make_dataset`.

        Default: `targets` of the rows' labels.
        """
        return self.targets([manifest.labels[i] for i in rows], labels, manifest.source)

    def targets(self, raw_labels, labels, source=""):
        """The target array for raw manifest labels (strings).

        Args:
            raw_labels: one label string per row.
            labels: the `LabelVocabulary` (`None` when `classes` is false).
            source: the manifest, for error messages.

        Raises:
            TargetError: a label that cannot become a target.
        """
        raise NotImplementedError

    def example_labels(self, count, names, seed=0):
        """`count` raw labels as a manifest of this task holds them.

        For documentation and tests: `names` are the class names to draw
        from (the number of regression targets is `len(names)`).
        """
        rng = np.random.default_rng(seed)
        return [names[i % len(names)] for i in rng.permutation(count)]

    # === Answers ===

    def dataset_outputs(self, model, dataset):
        """`(targets, outputs)` of `model` on an evaluation dataset, what
        `evaluate` scores (default: `mmzoo.runs.dataset_outputs`, the
        model's `predict`; a captioner decodes captions instead)."""
        from mmzoo.runs import dataset_outputs

        return dataset_outputs(model, dataset)

    def output_tensors(self, outputs):
        """The task's output(s) in a model's outputs dict, as they are (in
        a serving graph: tensors)."""
        return outputs[self.output_name]

    def output_of(self, outputs):
        """What `answer`, `evaluate` and `agreement` read of a model's
        outputs dict: the task's output, as an array."""
        return np.asarray(outputs[self.output_name])

    def class_scores(self, output):
        """One score per class, `(batch, classes)`, from the model's output."""
        return output

    def answer(self, output, labels, top_k=5):
        """What `mmzoo predict` says for one example's output (a 1-D array)."""
        scores = np.asarray(self.class_scores(np.asarray(output)[None]))[0]
        order = np.argsort(-scores, kind="stable")[:top_k]
        return {
            "labels": [labels.names[i] for i in order],
            "scores": [float(scores[i]) for i in order],
        }

    def serving_outputs(self, output, label_names, top_k):
        """The outputs of an exported `serving_default`, in TensorFlow ops."""
        import tensorflow as tf

        scores = tf.convert_to_tensor(self.class_scores(output))
        k = min(top_k, len(label_names))
        top_scores, top_indices = tf.math.top_k(scores, k=k)
        return {
            self.output_name: output,
            "top_k_labels": tf.gather(tf.constant(label_names), top_indices),
            "top_k_scores": top_scores,
        }

    def agreement(self, first, second):
        """The fraction of examples two models answer alike (`None`: n/a).

        Used to compare an exported file with its Keras model.
        """
        return float(np.mean(first.argmax(-1) == second.argmax(-1)))

    # === Evaluation ===

    def evaluation_files(self, run, data, path):
        """Files `mmzoo evaluate` writes beside its metrics JSON `path`
        (default none; a captioning run draws example captions).

        Returns:
            The paths written.
        """
        return []

    def evaluate(self, targets, output, labels):
        """The task's evaluation metrics, a JSON-ready dict."""
        from mmzoo.metrics import classification_metrics

        return classification_metrics(targets, output, labels.names, task=self.name)


class Multiclass(Task):
    """One class per example: softmax over the classes."""

    name = "multiclass"
    description = "one class per example (softmax)"
    activation = "softmax"
    loss = "sparse_categorical_crossentropy"
    metrics = ("sparse_categorical_accuracy",)

    def num_outputs(self, num_classes):
        num_classes = super().num_outputs(num_classes)
        if num_classes < 2:
            raise ValueError(
                "A multiclass task needs at least 2 classes; use task='binary' "
                f"for one. Received: num_classes={num_classes}"
            )
        return num_classes

    def targets(self, raw_labels, labels, source=""):
        return np.asarray(
            [_index(labels, label, source) for label in raw_labels], np.int32
        )


class Multilabel(Task):
    """Any number of classes per example: a sigmoid per class."""

    name = "multilabel"
    description = "any set of classes per example ('a|b'; a sigmoid each)"
    activation = "sigmoid"
    loss = "binary_crossentropy"
    metrics = ("binary_accuracy",)
    multilabel = True
    headline = "micro_f1"

    def targets(self, raw_labels, labels, source=""):
        targets = np.zeros((len(raw_labels), len(labels)), np.float32)
        for row, label in enumerate(raw_labels):
            columns = [_index(labels, name, source) for name in split_labels(label)]
            targets[row, columns] = 1.0
        return targets

    def example_labels(self, count, names, seed=0):
        rng = np.random.default_rng(seed)
        rows = []
        for _ in range(count):
            chosen = rng.random(len(names)) < 0.5
            chosen[rng.integers(len(names))] = True
            rows.append(
                LABEL_SEPARATOR.join(n for n, c in zip(names, chosen, strict=True) if c)
            )
        return rows

    def agreement(self, first, second):
        # The same set of labels at the 0.5 threshold.
        return float(np.mean(np.all((first >= 0.5) == (second >= 0.5), axis=-1)))


class Binary(Task):
    """Two classes, one sigmoid: the probability of the second class."""

    name = "binary"
    description = "two classes, one sigmoid (the second label's probability)"
    activation = "sigmoid"
    loss = "binary_crossentropy"
    metrics = ("binary_accuracy",)

    def num_outputs(self, num_classes):
        if num_classes not in (None, 1, 2):
            raise ValueError(
                "A binary task has one sigmoid output; `num_classes` must be "
                f"None, 1 or 2. Received: num_classes={num_classes!r}"
            )
        return 1

    def num_labels(self, width):
        return 2

    def targets(self, raw_labels, labels, source=""):
        if len(labels) != 2:
            raise TargetError(
                f"{source}: a binary task needs exactly 2 labels; found "
                f"{len(labels)}: {labels.names[:10]}"
            )
        return np.asarray(
            [[_index(labels, label, source)] for label in raw_labels], np.float32
        )

    def example_labels(self, count, names, seed=0):
        return super().example_labels(count, names[:2], seed)

    def output_of(self, outputs):
        """What `answer`, `evaluate` and `agreement` read of a model's
        outputs dict: the task's output, as an array."""
        return np.asarray(outputs[self.output_name])

    def class_scores(self, output):
        from keras import ops

        # One sigmoid unit: the probability of the second label.
        return ops.concatenate([1.0 - output, output], axis=-1)

    def agreement(self, first, second):
        return float(np.mean((first[:, 0] > 0.5) == (second[:, 0] > 0.5)))


class Regression(Task):
    """One or more numbers per example: a linear output each."""

    name = "regression"
    description = "numbers per example ('0.5' or '0.5|2.0'; linear)"
    output_name = "predictions"
    activation = "linear"
    loss = "mean_squared_error"
    metrics = ("mean_absolute_error",)
    classes = False
    headline = "rmse"
    higher_is_better = False

    def num_outputs(self, num_classes):
        if num_classes is None:
            return 1
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                "A regression task needs `num_classes`, a positive integer (the "
                f"number of targets). Received: num_classes={num_classes!r}"
            )
        return num_classes

    def num_labels(self, width):
        """How many class names an output of `width` units needs."""
        return width

    def num_classes(self, labels, target_spec):
        return int(target_spec.shape[-1])

    def targets(self, raw_labels, labels, source=""):
        try:
            values = [
                [float(value) for value in label.split(LABEL_SEPARATOR)]
                for label in raw_labels
            ]
        except ValueError as error:
            raise TargetError(
                f"{source}: a regression label is not a number ({error})."
            ) from None
        widths = {len(v) for v in values}
        if len(widths) > 1:
            raise TargetError(
                f"{source}: regression rows have {sorted(widths)} targets; "
                "every row needs the same number."
            )
        return np.asarray(values, np.float32)

    def example_labels(self, count, names, seed=0):
        rng = np.random.default_rng(seed)
        return [
            LABEL_SEPARATOR.join(f"{v:.3f}" for v in rng.normal(size=len(names)))
            for _ in range(count)
        ]

    def answer(self, output, labels, top_k=5):
        return {"predictions": np.asarray(output, float).tolist()}

    def serving_outputs(self, output, label_names, top_k):
        return {self.output_name: output}

    def agreement(self, first, second):
        return None

    def evaluate(self, targets, output, labels):
        from mmzoo.metrics import regression_metrics

        return regression_metrics(targets, output)


class _OwnLoss(Task):
    """A task whose model computes its own loss (`DualEncoder.compute_loss`,
    `Captioner.compute_loss`): no classes, no output width, and `compile`
    gets the optimizer alone."""

    def num_outputs(self, num_classes):
        return None

    def num_classes(self, labels, target_spec):
        return None

    def compile_arguments(self, learning_rate=1e-3):
        import keras

        return {"optimizer": keras.optimizers.Adam(learning_rate)}


class Contrastive(_OwnLoss):
    """An image and its text mapped close together in a shared space.

    The model is a dual encoder (`mmzoo.build_dual_encoder`) trained with
    one of `losses` on (image, text) pairs; labels are optional and unused.
    A batch's other rows are the negatives, so the targets say which rows
    show the same image (the same file: several captions of one picture)
    or the same text, and the losses do not push those apart
    (`{"image_ids", "text_ids"}`, see `mmzoo.losses`). Evaluation is
    retrieval over the whole set (`mmzoo.metrics.retrieval_metrics`).
    """

    name = "contrastive"
    description = "image and text into one shared space (dual encoder; no labels)"
    output_name = "image_embedding"
    loss = "clip"
    classes = False
    fused = False
    needs_labels = False
    distinct_images = True
    headline = "image_to_text_R@1"

    @property
    def losses(self):
        from mmzoo.losses import LOSSES

        return tuple(LOSSES)

    @property
    def output_names(self):
        return ("image_embedding", "text_embedding")

    def build(self, **arguments):
        from mmzoo.dual_encoder import build_dual_encoder

        return build_dual_encoder(**arguments)

    def model_arguments(self, config, num_classes):
        return {"loss": config.get("loss") or self.loss}

    def epoch_callbacks(self, validation):
        from mmzoo.dual_encoder import RetrievalMetrics

        # Recall@K and ranks over the whole validation set, each epoch.
        return [RetrievalMetrics(validation)]

    def after_training(self, model, data):
        # BatchNorm's moving averages, taken while the towers changed, skew
        # inference-mode embeddings; their average over the data does not.
        done = super().after_training(model, data)
        if model.canonical_projections:
            correlations = model.fit_canonical_projection(data)
            done.append(
                f"canonical projections fitted (linear CCA on the outputs: "
                f"total correlation {correlations.sum():.3f})"
            )
        return done

    def manifest_targets(self, manifest, rows, labels):
        # Rows naming the same image file (or, in TFRecords, the same
        # record) share an image id; rows with equal texts share a text id.
        _, image_ids = manifest.reader.image_keys(manifest)
        texts = {}
        text_ids = [texts.setdefault(manifest.texts[i], len(texts)) for i in rows]
        return {
            "image_ids": np.asarray([image_ids[i] for i in rows], np.int64),
            "text_ids": np.asarray(text_ids, np.int64),
        }

    def targets(self, raw_labels, labels, source=""):
        raise TypeError(
            "A contrastive task's targets come from the images and texts of "
            "the rows, not from labels: use `manifest_targets`."
        )

    def output_of(self, outputs):
        return {name: np.asarray(outputs[name]) for name in self.output_names}

    def answer(self, output, labels, top_k=5):
        image, text = output["image_embedding"], output["text_embedding"]
        return {
            # The cosine similarity of the embeddings (unit vectors, except
            # Deep CCA's, which are normalised here).
            "similarity": float(
                np.dot(image, text)
                / max(np.linalg.norm(image) * np.linalg.norm(text), 1e-12)
            ),
        }

    def serving_outputs(self, output, label_names, top_k):
        raise ValueError(
            "A contrastive run's model is two encoders; the classification "
            "export (one prediction per image and text) does not apply to it."
        )

    def agreement(self, first, second):
        return None

    def evaluate(self, targets, output, labels):
        from mmzoo.metrics import matching_metrics
        from mmzoo.metrics import retrieval_metrics

        pair = (
            output["image_embedding"],
            output["text_embedding"],
            targets["image_ids"],
            targets["text_ids"],
        )
        metrics = {"examples": int(len(pair[0]))}
        metrics.update(retrieval_metrics(*pair))
        try:
            metrics.update(matching_metrics(*pair))
        except ValueError:
            pass  # one image or one text only: no mismatched pairs
        return metrics


# === Several heads ===

# What a head spec holds, with its defaults (`column`: the head's name).
HEAD_DEFAULTS = {
    "task": "multiclass",
    "num_classes": None,
    "weight": 1.0,
    "column": None,
}

# A head's name is an output name, and a prefix of the exported outputs
# (`answer_top_k_labels`): a Python identifier keeps it valid everywhere
# (Keras layer names, SavedModel signature keys, TFLite tensor names).
_HEAD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

# Names the model or its exports use already: its inputs, the modality
# weights (`mmzoo.with_modality_weights`), the unimodal heads
# (`mmzoo.balance`) and single-task outputs.
_TAKEN_NAMES = (
    "image",
    "tokens",
    "text",
    "modality_weights",
    "image_only",
    "text_only",
    "top_k_labels",
    "top_k_scores",
)
_SERVING_SUFFIXES = ("_top_k_labels", "_top_k_scores")

Head = collections.namedtuple("Head", "name task num_classes weight column")


def check_heads(heads, argument="heads"):
    """Validated heads: a tuple of `Head`s, in the order given.

    Args:
        heads: `{name: {"task": ..., "num_classes": ..., "weight": ...,
            "column": ...}}` (every key optional: `HEAD_DEFAULTS`).
        argument: how the message names `heads` (e.g. a config key).

    Raises:
        ValueError: naming the head and the key at fault.
    """
    example = (
        "{'answer': {'task': 'multiclass'}, 'kind': {'task': 'binary', 'weight': 0.5}}"
    )
    if not isinstance(heads, dict) or not heads:
        raise ValueError(
            f"`{argument}` must be a non-empty mapping of head names to head "
            f"specs, e.g. {example}. Received: {argument}={heads!r}"
        )
    checked = []
    fused = sorted(name for name, task in TASKS.items() if task.fused)
    for name, spec in heads.items():
        where = f"{argument}[{name!r}]"
        if not isinstance(name, str) or not _HEAD_NAME.fullmatch(name):
            raise ValueError(
                f"Each key of `{argument}` names a head, and so a model output: "
                "a letter, then letters, digits or '_'. Received: "
                f"{argument} key {name!r}"
            )
        if name in _TAKEN_NAMES or name.endswith(_SERVING_SUFFIXES):
            raise ValueError(
                f"Head name {name!r} is taken: the model and its exports use "
                f"{list(_TAKEN_NAMES)} and the suffixes "
                f"{list(_SERVING_SUFFIXES)}. Choose another name in `{argument}`."
            )
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise ValueError(
                f"`{where}` must be a mapping of {sorted(HEAD_DEFAULTS)}. "
                f"Received: {where}={spec!r}"
            )
        for key in spec:
            if key not in HEAD_DEFAULTS:
                close = difflib.get_close_matches(str(key), HEAD_DEFAULTS, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(
                    f"`{where}` has an unknown key {key!r}.{hint} Valid keys: "
                    f"{sorted(HEAD_DEFAULTS)}"
                )
        spec = {**HEAD_DEFAULTS, **spec}
        check_choice(f"{where}['task']", spec["task"], fused)
        task = TASKS[spec["task"]]
        weight = spec["weight"]
        if (
            not isinstance(weight, (int, float))
            or isinstance(weight, bool)
            or not np.isfinite(weight)
            or weight < 0
        ):
            raise ValueError(
                f"`{where}['weight']` is the head's loss weight, a finite number "
                f">= 0. Received: weight={weight!r}"
            )
        if spec["num_classes"] is not None:
            try:
                task.num_outputs(spec["num_classes"])
            except ValueError as error:
                raise ValueError(f"`{where}`: {error}") from None
        column = name if spec["column"] is None else spec["column"]
        if not isinstance(column, str) or not column.strip():
            raise ValueError(
                f"`{where}['column']` is the manifest column holding the head's "
                f"labels, a non-empty string. Received: column={column!r}"
            )
        checked.append(Head(name, task, spec["num_classes"], float(weight), column))
    if not any(head.weight > 0 for head in checked):
        raise ValueError(
            f"At least one head of `{argument}` needs a weight above 0, or "
            "nothing trains. Received weights: "
            f"{ {head.name: head.weight for head in checked} }"
        )
    return tuple(checked)


class MultiTask(Task):
    """Several heads over one model's fused features, each a task of its own.

    `mmzoo.build_model(heads=...)` builds one: every head is an output of
    its own (named after the head), with its own hidden layers, loss,
    metrics, targets and answers, read from the head's task (`multiclass`,
    `multilabel`, `binary` or `regression`); the compiled loss is the sum
    of the heads' losses times their `weight`. Each head's labels come from
    a manifest column of its own (`column`, default the head's name), with
    a label vocabulary of its own. Everything a task does, this one does by
    asking each head's task: the targets, answers, exported outputs,
    agreement and evaluation are dicts by head.

    The first head is the primary one: `output_name` (what reads a single
    output, such as `mmzoo.export.tflite.parity`'s headline difference) and
    `headline` are its.

    Args:
        heads: `{name: {"task": ..., "num_classes": ..., "weight": ...,
            "column": ...}}`, every key optional (`HEAD_DEFAULTS`).

    Example:

    >>> task = MultiTask({"answer": {"num_classes": 13},
    ...                   "kind": {"task": "binary", "weight": 0.5}})
    >>> task.output_names
    ('answer', 'kind')
    >>> task.compile_arguments()["loss_weights"]
    {'answer': 1.0, 'kind': 0.5}
    """

    name = "multitask"
    description = "several heads over the same fused features (build_model(heads=...))"
    # The `label` column is not read: each head reads its own column.
    needs_labels = False

    def __init__(self, heads):
        self.heads = check_heads(heads)

    def __repr__(self):
        heads = ", ".join(f"{head.name}: {head.task.name}" for head in self.heads)
        return f"<Task multitask ({heads})>"

    def __eq__(self, other):
        return isinstance(other, MultiTask) and self.spec == other.spec

    def __hash__(self):
        return hash(repr(sorted(self.spec.items())))

    @property
    def spec(self):
        """The heads as plain data: `build_model`'s `heads`, complete."""
        return {
            head.name: {
                "task": head.task.name,
                "num_classes": head.num_classes,
                "weight": head.weight,
                "column": head.column,
            }
            for head in self.heads
        }

    @property
    def output_name(self):
        return self.heads[0].name

    @property
    def output_names(self):
        return tuple(head.name for head in self.heads)

    @property
    def classes(self):
        return any(head.task.classes for head in self.heads)

    @property
    def headline(self):
        return self.heads[0].task.headline

    @property
    def higher_is_better(self):
        return self.heads[0].task.higher_is_better

    @property
    def label_columns(self):
        return tuple(dict.fromkeys(head.column for head in self.heads))

    # === Model ===

    def build(self, **arguments):
        from mmzoo.builder import build_model

        return build_model(**{"heads": self.spec, **arguments})

    def model_arguments(self, config, num_classes):
        spec = self.spec
        for name, count in num_classes.items():
            spec[name]["num_classes"] = count
        return {"fusion": config["fusion"], "seed": config["seed"], "heads": spec}

    def num_outputs(self, num_classes):
        if num_classes is not None:
            raise ValueError(
                "A model with `heads` takes each head's `num_classes` in its "
                f"spec, not `num_classes`. Received: num_classes={num_classes!r}"
            )
        return None

    def output_specs(self, num_classes=None):
        self.num_outputs(num_classes)
        specs = []
        for head in self.heads:
            try:
                width = head.task.num_outputs(head.num_classes)
            except ValueError as error:
                raise ValueError(f"`heads[{head.name!r}]`: {error}") from None
            specs.append(OutputSpec(head.name, head.task, width, f"{head.name}_"))
        return specs

    def num_classes(self, labels, target_spec):
        return {
            head.name: head.task.num_classes(labels[head.name], target_spec[head.name])
            for head in self.heads
        }

    def compile_arguments(self, learning_rate=1e-3):
        import keras

        return {
            "optimizer": keras.optimizers.Adam(learning_rate),
            "loss": {head.name: head.task.loss for head in self.heads},
            "loss_weights": {head.name: head.weight for head in self.heads},
            "metrics": {head.name: list(head.task.metrics) for head in self.heads},
        }

    # === Data ===

    def fit_labels(self, manifest, rows):
        values = self._columns(manifest)
        return {
            head.name: LabelVocabulary.fit(
                (values[head.column][i] for i in rows), multilabel=head.task.multilabel
            )
            if head.task.classes
            else None
            for head in self.heads
        }

    def save_labels(self, labels, folder):
        """Write each head's vocabulary to `folder/labels/<head>.txt`."""
        folder = os.path.join(folder, "labels")
        written = []
        for head in self.heads:
            if labels.get(head.name) is not None:
                os.makedirs(folder, exist_ok=True)
                path = os.path.join(folder, f"{head.name}.txt")
                written.append(labels[head.name].save(path))
        return written

    def load_labels(self, path):
        """`{head: LabelVocabulary or None}` from `path/labels/<head>.txt`.

        Raises:
            FileNotFoundError: a head with classes has no file there.
        """
        labels = {}
        for head in self.heads:
            if not head.task.classes:
                labels[head.name] = None
                continue
            file = os.path.join(os.fspath(path), "labels", f"{head.name}.txt")
            if not os.path.isfile(file):
                raise FileNotFoundError(
                    f"Label vocabulary of head {head.name!r} not found: {file!r}"
                )
            labels[head.name] = LabelVocabulary.load(file)
        return labels

    def label_files(self):
        """Where `save_labels` writes, relative to its folder, by head."""
        return {
            head.name: f"labels/{head.name}.txt"
            for head in self.heads
            if head.task.classes
        }

    def label_names(self, labels, model):
        return {
            head.name: _names_for(
                head.task,
                (labels or {}).get(head.name),
                model.output[head.name].shape[-1],
            )
            for head in self.heads
        }

    def row_checks(self, labels):
        def check(manifest, index):
            values = self._columns(manifest)
            line, source = manifest.lines[index], manifest.source
            problems = []
            for head in self.heads:
                value = values[head.column][index]
                found = label_value_problems(line, head.column, value, source)
                if found or value is None:
                    problems += found
                    continue
                problem = _value_problem(head, value, (labels or {}).get(head.name))
                if problem is not None:
                    problems.append(Problem(line, *problem, source))
            return problems

        return check

    def manifest_targets(self, manifest, rows, labels):
        values = self._columns(manifest)
        return self.targets(
            {head.name: [values[head.column][i] for i in rows] for head in self.heads},
            labels,
            manifest.source,
        )

    def targets(self, raw_labels, labels, source=""):
        """`{head: target array}` from `{head: raw label strings}`."""
        targets = {}
        for head in self.heads:
            where = f"{source} (head {head.name!r}, column {head.column!r})"
            targets[head.name] = head.task.targets(
                raw_labels[head.name], labels.get(head.name), where
            )
        return targets

    def example_labels(self, count, names, seed=0):
        return {
            head.name: head.task.example_labels(count, names, seed + index)
            for index, head in enumerate(self.heads)
        }

    def _columns(self, manifest):
        """The manifest's values of every head's column."""
        missing = [c for c in self.label_columns if c not in manifest.label_columns]
        if missing:
            raise ManifestError(
                f"{manifest.source} was read without the column(s) {missing} that "
                "the heads read: read it with read_manifest(path, "
                f"label_columns={list(self.label_columns)})."
            )
        return manifest.label_columns

    # === Answers ===

    def output_tensors(self, outputs):
        return {head.name: outputs[head.name] for head in self.heads}

    def output_of(self, outputs):
        return {
            head.name: head.task.output_of({head.task.output_name: outputs[head.name]})
            for head in self.heads
        }

    def answer(self, output, labels, top_k=5):
        return {
            "heads": {
                head.name: head.task.answer(
                    output[head.name], labels.get(head.name), top_k
                )
                for head in self.heads
            }
        }

    def serving_outputs(self, output, label_names, top_k):
        """Each head's exported outputs: its own under the head's name
        (e.g. `answer`), the others prefixed (`answer_top_k_labels`)."""
        results = {}
        for head in self.heads:
            names = (label_names or {}).get(head.name)
            for key, value in head.task.serving_outputs(
                output[head.name], names, top_k
            ).items():
                name = (
                    head.name if key == head.task.output_name else f"{head.name}_{key}"
                )
                results[name] = value
        return results

    def agreement(self, first, second):
        """The fraction of examples answered alike by every head that has
        an answer to agree on (`None` if none has: all regression)."""
        alike = None
        for head in self.heads:
            a, b = first[head.name], second[head.name]
            if head.task.agreement(a, b) is None:
                continue
            same = np.asarray(
                [head.task.agreement(a[i : i + 1], b[i : i + 1]) for i in range(len(a))]
            )
            alike = same == 1.0 if alike is None else alike & (same == 1.0)
        return None if alike is None else float(np.mean(alike))

    # === Evaluation ===

    def evaluate(self, targets, output, labels):
        """`{"examples", "heads": {head: its task's metrics}}`."""
        heads = {
            head.name: head.task.evaluate(
                targets[head.name], output[head.name], labels.get(head.name)
            )
            for head in self.heads
        }
        examples = next(iter(heads.values()))["examples"]
        return {"examples": examples, "heads": heads}


class Captioning(_OwnLoss):
    """A sentence about the image: `mmzoo.captioning.build_captioner`.

    The manifest's text column holds the caption; an image with several
    captions has one row per caption (every caption is an example of each
    epoch). The model teacher-forces itself from the caption's tokens
    (`Captioner.compute_loss`), so the targets are only what evaluation
    needs: which rows show the same image, and the raw captions, its
    references. Evaluation decodes (greedy) and scores BLEU-1..4 and
    CIDEr-D against all references of each image
    (`mmzoo.captioning.metrics`).
    """

    name = "captioning"
    description = "a sentence about the image (image grid -> transformer decoder)"
    output_name = "logits"
    classes = False
    fused = False
    needs_labels = False
    headline = "CIDEr-D"

    def build(self, **arguments):
        from mmzoo.captioning.model import build_captioner

        return build_captioner(**arguments)

    def model_arguments(self, config, num_classes):
        return {"seed": config["seed"]}

    def fit_word_tokenizer(self, texts, max_vocab_size, max_tokens):
        from mmzoo.captioning.vocabulary import build_caption_vocabulary
        from mmzoo.data.tokenizers import WordTokenizer

        texts = list(texts)
        return WordTokenizer(
            build_caption_vocabulary(texts, max_vocab_size), max_tokens
        )

    def tokenizer_arguments(self, tokenizer):
        # The captioner keeps its words: it decodes to text without the run.
        return {"vocabulary": tokenizer.vocabulary}

    def manifest_targets(self, manifest, rows, labels):
        _, image_ids = manifest.reader.image_keys(manifest)
        return {
            "image_ids": np.asarray([image_ids[i] for i in rows], np.int64),
            "captions": np.asarray([manifest.texts[i] for i in rows], dtype=object),
        }

    def targets(self, raw_labels, labels, source=""):
        raise TypeError(
            "A captioning task's targets are the rows' captions and images, "
            "not labels: use `manifest_targets`."
        )

    def dataset_outputs(self, model, dataset, beam_width=1):
        from mmzoo.captioning.inference import dataset_captions

        return dataset_captions(model, dataset, beam_width=beam_width)

    def output_of(self, outputs):
        return dict(outputs)

    def answer(self, output, labels, top_k=5):
        raise ValueError(
            "A captioning run writes a caption of an image, without a text to "
            "answer about: use `mmzoo caption RUN --image PATH` "
            "(mmzoo.captioning.inference.caption_files)."
        )

    def saved_model_plan(self, run, name, warmup=None):
        """The SavedModel export: `mmzoo.captioning.export`."""
        from mmzoo.captioning.export import saved_model_plan

        return saved_model_plan(run, name, warmup)

    def serving_outputs(self, output, label_names, top_k):
        raise ValueError(
            "A captioning run exports its own `caption` signature "
            "(mmzoo.captioning.export), not the classification one."
        )

    def agreement(self, first, second):
        return None

    def evaluation_files(self, run, data, path):
        from mmzoo.captioning.inference import plot_examples

        out = os.path.splitext(path)[0] + "_examples.png"
        return [plot_examples(run, data, out)]

    def evaluate(self, targets, output, labels):
        from mmzoo.captioning.metrics import caption_metrics
        from mmzoo.captioning.metrics import group_references

        rows, references = group_references(targets["image_ids"], targets["captions"])
        captions = [output["captions"][row] for row in rows]
        metrics = {"examples": int(len(targets["image_ids"]))}
        metrics.update(caption_metrics(captions, references))
        metrics["examples_shown"] = [
            {"caption": captions[i], "references": references[i]}
            for i in range(min(5, len(rows)))
        ]
        return metrics


def _value_problem(head, value, labels):
    """`(reason, detail)` for a head value its task cannot use, or None."""
    if head.task.classes:
        unknown = labels.unknown(value, head.task.multilabel) if labels else []
        if unknown:
            return (
                "unknown_label",
                f"{', '.join(map(repr, unknown))} in column `{head.column}` (not "
                f"in the {len(labels)} training labels of head {head.name!r})",
            )
        if head.task.multilabel and not split_labels(value):
            return "missing_column", f"no label in `{head.column}` value {value!r}"
        return None
    try:
        [float(part) for part in value.split(LABEL_SEPARATOR)]
    except ValueError:
        return (
            "invalid_label",
            f"`{head.column}` value {value[:60]!r} is not a number (head "
            f"{head.name!r} is a {head.task.name} head)",
        )
    return None


def task_of(arguments):
    """The task that `build_model` arguments or a run configuration name:
    a `MultiTask` of their `heads`, else the registered `task`.

    Example:

    >>> task_of({"task": "binary"})
    <Task binary>
    >>> task_of({"heads": {"answer": {}, "kind": {"task": "binary"}}})
    <Task multitask (answer: multiclass, kind: binary)>
    """
    heads = arguments.get("heads")
    if heads:
        return MultiTask(heads)
    return get_task(arguments.get("task") or "multiclass")


def _names_for(task, labels, width):
    """`labels`' names for an output of `width` units of `task`, checked."""
    if not task.classes:
        return None
    if labels is None:
        raise ValueError(f"A {task.name} model needs `labels`, its class names.")
    names = list(labels.names if isinstance(labels, LabelVocabulary) else labels)
    expected = task.num_labels(width)
    if len(names) != expected:
        raise ValueError(
            f"The model has {width} output units, so a {task.name} task needs "
            f"{expected} labels. Received: {len(names)} labels"
        )
    return names


def _index(labels, name, source):
    if name in labels:
        return labels.index(name)
    if labels.has_unknown:
        return labels.index(labels.UNKNOWN)
    raise TargetError(
        f"{source}: labels outside the vocabulary (e.g. {name!r}) and no [UNK] "
        "class to map them to; build the vocabulary with "
        "LabelVocabulary.fit(..., add_unknown=True)."
    )


TASKS = MappingProxyType(
    {
        task.name: task
        for task in (
            Multiclass(),
            Multilabel(),
            Binary(),
            Regression(),
            Contrastive(),
            Captioning(),
        )
    }
)


def get_task(task):
    """The registered `Task` for a name (a `Task` passes through)."""
    if isinstance(task, Task):
        return task
    check_choice("task", task, TASKS)
    return TASKS[task]
