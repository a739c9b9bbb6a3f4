"""Tasks: what a model predicts, and everything that follows from it.

A `Task` owns what used to be decided by testing the task's name all over
mmzoo: the output's name and activation, the loss and metrics to compile
with, how a manifest's labels become training targets, how outputs become
answers (top-k labels, thresholds, values), what an exported model returns
and which evaluation metrics apply. The training loop, evaluation, the
command line and both exports ask the task; none of them knows its name.

The tasks are registered in `TASKS`; a new task is a `Task` subclass and
one entry there, and the generic tests run over it. Most tasks fuse the
image and the text into one prediction (`fused`: `mmzoo.build_model`
builds their models); `contrastive` maps each into a shared space instead
(`mmzoo.build_dual_encoder`), and its "targets" are which rows show the
same image or the same text.

This module imports only NumPy at import time (Keras, TensorFlow and the
metrics are imported inside the methods that need them), so the registry
and `mmzoo list` stay light.
"""

from types import MappingProxyType

import numpy as np

from mmzoo.checks import check_choice
from mmzoo.data.manifest import LABEL_SEPARATOR
from mmzoo.data.manifest import split_labels


class TargetError(ValueError):
    """Labels that cannot become a task's targets; the message says why."""


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

    def output_layer(self, logits):
        """The task's activation, computed in float32 under mixed precision."""
        import keras

        return keras.layers.Activation(
            self.activation, dtype="float32", name=self.output_name
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
        (`mmzoo.layers.recalibrate_batch_norm`). They trail the weights
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

        count = recalibrate_batch_norm(model, data)
        if not count:
            return []
        return [f"{count} BatchNorm layer(s) recalibrated on the training data"]

    # === Data ===

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


class Contrastive(Task):
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

    def num_outputs(self, num_classes):
        return None

    def num_classes(self, labels, target_spec):
        return None

    def compile_arguments(self, learning_rate=1e-3):
        import keras

        # The pair loss is the model's own (`DualEncoder.compute_loss`).
        return {"optimizer": keras.optimizers.Adam(learning_rate)}

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
        )
    }
)


def get_task(task):
    """The registered `Task` for a name (a `Task` passes through)."""
    if isinstance(task, Task):
        return task
    check_choice("task", task, TASKS)
    return TASKS[task]
