"""The trained artefact: a run folder, and loading it back as a `Run`.

A `Run` (model + tokenizer + labels + configuration) is what training
writes and what evaluation, prediction, both exports and the command line
read, so it lives here, outside all of them: data flows one way, data ->
models -> training -> run -> export / serving.

RUN_DIR/
  config.yaml         the resolved configuration
  labels.txt          class names in output order (a model with several
                      heads: labels/<head>.txt, one per head with classes)
  tokenizer/          vocabulary.txt + tokenizer.json (word or WordPiece)
  model.keras         the model after the last epoch
  best.keras          the best epoch by validation loss
  history.csv         one row per epoch (Keras CSVLogger)
  metrics.json        validation and test metrics of best.keras
  curves.png, confusion_matrix.png
  logs/               TensorBoard
  backup/             the last two epochs' state while a run is unfinished

An ensemble folder (`mmzoo.ensemble`, config.yaml `kind: ensemble`) loads as
an `mmzoo.ensembles.Ensemble`, which answers the same questions (`task`,
`labels`, `config`, `directory`, `predict`, `manifest_outputs`), so
evaluation, prediction and the command line take either.
"""

import dataclasses
import os

import keras
import numpy as np
import yaml

from mmzoo.builder import explained_model
from mmzoo.data.manifest import DEFAULT_MAX_BAD_FRACTION
from mmzoo.data.manifest import LabelVocabulary
from mmzoo.saving import ModelFileError
from mmzoo.saving import load_model
from mmzoo.tasks import task_of

CONFIG = "config.yaml"
LABELS = "labels.txt"
TOKENIZER = "tokenizer"
MODEL = "model.keras"
BEST = "best.keras"
HISTORY = "history.csv"
METRICS = "metrics.json"
BACKUP = "backup"


@dataclasses.dataclass
class Run:
    """A trained model with what it needs to read raw inputs.

    Attributes:
        model: the Keras model.
        tokenizer: its tokenizer (`None` for a TF-Hub text tower).
        labels: its `LabelVocabulary` (`None` for regression); for a model
            with several heads, `{head: LabelVocabulary or None}`.
        config: the run's configuration dict.
        directory: the run folder.
    """

    model: keras.Model
    tokenizer: object
    labels: LabelVocabulary
    config: dict
    directory: str

    @property
    def image_size(self):
        return int(self.model.get_layer("image").output.shape[1])

    @property
    def task(self):
        """The run's `mmzoo.tasks.Task` (a `MultiTask` for `heads`)."""
        return task_of(self.config)

    @property
    def output_name(self):
        return self.task.output_name

    @property
    def metrics(self):
        """The run's metrics.json (`{}` when it has none)."""
        import json

        path = os.path.join(self.directory, METRICS)
        if not os.path.isfile(path):
            return {}
        with open(path, encoding="utf-8") as file:
            try:
                return json.load(file)
            except ValueError:
                return {}

    @property
    def resize(self):
        return self.config.get("resize", "stretch")

    def explained_model(self):
        """The model, with `modality_weights` as a second output if its
        fusion computes them (see `mmzoo.with_modality_weights`)."""
        return explained_model(self.model)

    def dataset(
        self,
        data,
        batch_size=64,
        unknown_labels="error",
        max_bad_fraction=DEFAULT_MAX_BAD_FRACTION,
    ):
        """A manifest read with this run's pipeline, for evaluation (rows in
        manifest order): `(dataset, report)`, see `mmzoo.data.make_dataset`."""
        from mmzoo.data.dataset import make_dataset

        dataset, report, _ = make_dataset(
            data,
            self.tokenizer,
            self.image_size,
            batch_size,
            training=False,
            labels=self.labels,
            task=self.task,
            resize=self.resize,
            columns=self.config.get("columns"),
            unknown_labels=unknown_labels,
            max_bad_fraction=max_bad_fraction,
            return_report=True,
        )
        return dataset, report

    def manifest_outputs(
        self,
        data,
        batch_size=64,
        unknown_labels="error",
        max_bad_fraction=DEFAULT_MAX_BAD_FRACTION,
    ):
        """The model's outputs on a manifest's good rows.

        What `mmzoo.training.evaluate` scores, for a run and an ensemble
        alike (`mmzoo.ensembles.Ensemble.manifest_outputs`).

        Returns:
            `(targets, outputs, report)`: the rows' targets, the model's
            outputs dict (arrays, rows in manifest order) and the
            `DataReport` naming the rows skipped.
        """
        dataset, report = self.dataset(
            data, batch_size, unknown_labels, max_bad_fraction
        )
        targets, outputs = self.task.dataset_outputs(self.model, dataset)
        return targets, outputs, report

    def predict(self, image, text, top_k=5, max_pixels=None):
        """Top-k labels (or values, or a similarity) for one image and one
        text; see `predict`."""
        return _predict_run(self, image, text, top_k, max_pixels)


def as_run(run):
    """A loaded run (a `Run` or an `mmzoo.ensembles.Ensemble`) as it is, or
    `load_run` of a path."""
    if isinstance(run, (str, os.PathLike)):
        return load_run(run)
    return run


def dataset_outputs(model, dataset):
    """`(targets, outputs)`: a dataset's targets and `model.predict`'s
    outputs on its features, rows in order.

    Args:
        model: a Keras model.
        dataset: batches of `(features, targets)`, e.g. `make_dataset(...,
            training=False)`.
    """
    import tensorflow as tf

    batches = [y for _, y in dataset]
    # Targets may be a dict (a contrastive task's image and text ids).
    targets = tf.nest.map_structure(
        lambda *parts: np.concatenate([np.asarray(part) for part in parts]), *batches
    )
    outputs = model.predict(dataset.map(lambda x, y: x), verbose=0)
    return targets, outputs


def load_run(path):
    """Load a run folder (its best model) or a `.keras` file inside one.

    Args:
        path: a run folder written by `mmzoo train`, or a `.keras` file
            whose folder holds `labels.txt` and `tokenizer/`.

    Returns:
        A `Run`, or for a folder `mmzoo.ensemble` wrote, an
        `mmzoo.ensembles.Ensemble`.
    """
    from mmzoo.data.tokenizers import load_tokenizer

    path = os.fspath(path)
    if os.path.isdir(path):
        if _read_config(os.path.join(path, CONFIG)).get("kind") == "ensemble":
            from mmzoo.ensembles import load_ensemble

            return load_ensemble(path)
        directory = path
        candidates = [os.path.join(path, BEST), os.path.join(path, MODEL)]
        model_path = next((p for p in candidates if os.path.isfile(p)), None)
        if model_path is None:
            raise FileNotFoundError(
                f"{path!r} holds neither {BEST} nor {MODEL}: not a finished "
                "mmzoo run folder."
            )
    elif os.path.isfile(path):
        directory, model_path = os.path.dirname(os.path.abspath(path)), path
    else:
        raise FileNotFoundError(f"No run folder or model file at {path!r}")
    config = _read_config(os.path.join(directory, CONFIG))
    task = task_of(config)
    labels = task.load_labels(directory)
    tokenizer = None
    if os.path.isdir(os.path.join(directory, TOKENIZER)):
        tokenizer = load_tokenizer(os.path.join(directory, TOKENIZER))
    model = load_model(model_path)
    _check_run_model(model, model_path, task)
    if "tokens" in model.input and tokenizer is None:
        raise FileNotFoundError(
            f"{model_path} takes token ids, but {directory} has no "
            f"{TOKENIZER}/ folder to make them."
        )
    if task.classes and labels is None:
        raise FileNotFoundError(f"{directory} has no {LABELS} for the model's classes.")
    return Run(model, tokenizer, labels, config, directory)


def _check_run_model(model, path, task):
    """Refuse a Keras model that a run cannot feed (not an mmzoo model).

    A run gives the model a dict of named inputs, `image` and `tokens` (or
    `text`), and reads the task's output by name from a dict of outputs.
    """
    try:
        inputs, outputs = model.input, model.output
    except (AttributeError, ValueError):
        inputs = outputs = None
    names = set(inputs) if isinstance(inputs, dict) else set()
    if "image" not in names or not names & {"tokens", "text"}:
        raise ModelFileError(
            f"{path!r} holds a Keras model that is not an mmzoo model: it takes "
            f"{_describe(inputs)}, not a dict of 'image' and 'tokens' (or "
            "'text'). Load it with keras.saving.load_model, or train an mmzoo "
            "model with `mmzoo train`."
        )
    returned = set(outputs) if isinstance(outputs, dict) else set()
    missing = [name for name in task.output_names if name not in returned]
    if missing:
        raise ModelFileError(
            f"{path!r} holds a Keras model without the "
            f"{' and '.join(map(repr, missing))} output(s) that a {task.name} "
            f"run reads: it returns {_describe(outputs)}."
        )


def _describe(tensors):
    if tensors is None:
        return "no defined inputs or outputs (a subclassed model)"
    if isinstance(tensors, dict):
        return "a dict of " + ", ".join(repr(name) for name in sorted(tensors))
    if isinstance(tensors, (list, tuple)):
        return f"a list of {len(tensors)} unnamed tensors"
    return f"one unnamed tensor of shape {tuple(tensors.shape)}"


def _read_config(path):
    """A run's config.yaml (written by `mmzoo train`), or {} without one."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as file:
        try:
            config = yaml.safe_load(file)
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a run config is a mapping of keys to values.")
    return config


def predict(run, image, text, top_k=5, max_pixels=None):
    """Top-k labels for one image file and one text.

    For an ensemble (`mmzoo.ensembles.Ensemble`), its combined answer, with
    each member's in `"members"`.

    The image passes the guard every image entry point applies
    (`mmzoo.data.images.prepare_image`): a file over `max_pixels`, cut
    short or of no supported format is refused from its header, before
    anything is decoded.

    Args:
        run: a `Run` or an `Ensemble` (or a path for `load_run`).
        image: an image file path (JPEG, PNG, GIF, BMP) or its bytes.
        text: the text.
        top_k: how many labels.
        max_pixels: the most pixels the image may decode to, over all its
            frames; `None` is the data check's and the serving graph's
            limit, `mmzoo.data.manifest.DEFAULT_MAX_PIXELS`.

    Returns:
        `{"labels": [...], "scores": [...], "modality_weights": {"image":
        w, "text": w}}` (the weights only for fusions that compute them;
        for a model with several heads, `{"heads": {head: its answer},
        "modality_weights": ...}`;
        `"predictions"` instead of labels for regression; for a
        contrastive run, `{"similarity": s}`, the cosine similarity of the
        image's and the text's embeddings, with `"match"` and
        `"match_threshold"` when the run chose a threshold on validation
        data).

    Raises:
        FileNotFoundError: no image file at the path.
        ValueError: an image the guard refuses or the decoder fails on.
    """
    return as_run(run).predict(image, text, top_k, max_pixels)


def _predict_run(run, image, text, top_k, max_pixels):
    import tensorflow as tf

    from mmzoo.data.images import prepare_image
    from mmzoo.data.manifest import DEFAULT_MAX_PIXELS

    if max_pixels is None:
        max_pixels = DEFAULT_MAX_PIXELS
    pixels = prepare_image(image, run.image_size, run.resize, max_pixels)
    features = {"image": pixels}
    if "tokens" in run.model.input:
        features["tokens"] = run.tokenizer(tf.constant([text]))
    else:
        features["text"] = tf.constant([text])
    outputs = run.explained_model().predict_on_batch(features)
    output = {name: np.asarray(value)[0] for name, value in outputs.items()}
    result = run.task.answer(run.task.output_of(output), run.labels, top_k)
    threshold = run.metrics.get("val", {}).get("match_threshold")
    if "similarity" in result and threshold is not None:
        # The threshold of best accuracy on the validation set.
        result["match"] = result["similarity"] >= threshold
        result["match_threshold"] = threshold
    if "modality_weights" in outputs:
        image_weight, text_weight = np.asarray(outputs["modality_weights"])[0]
        result["modality_weights"] = {
            "image": float(image_weight),
            "text": float(text_weight),
        }
    return result
