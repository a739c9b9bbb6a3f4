"""A run folder: what `mmzoo train` writes, and loading it back.

RUN_DIR/
  config.yaml         the resolved configuration
  labels.txt          class names in output order
  tokenizer/          vocabulary.txt + tokenizer.json (word or WordPiece)
  model.keras         the model after the last epoch
  best.keras          the best epoch by validation loss
  history.csv         one row per epoch (Keras CSVLogger)
  metrics.json        validation and test metrics of best.keras
  curves.png, confusion_matrix.png
  logs/               TensorBoard
  backup/             BackupAndRestore state while a run is unfinished
"""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from mmzoo.data.manifest import LabelVocabulary
from mmzoo.saving import load_model

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
        labels: its `LabelVocabulary` (`None` for regression).
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
        return self.config.get("task", "multiclass")

    @property
    def output_name(self):
        return "predictions" if self.task == "regression" else "probabilities"


def load_run(path):
    """Load a run folder (its best model) or a `.keras` file inside one.

    Args:
        path: a run folder written by `mmzoo train`, or a `.keras` file
            whose folder holds `labels.txt` and `tokenizer/`.

    Returns:
        A `Run`.
    """
    from mmzoo.data.tokenizers import load_tokenizer
    from mmzoo.training import config as run_config

    path = os.fspath(path)
    if os.path.isdir(path):
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
    config = {}
    if os.path.isfile(os.path.join(directory, CONFIG)):
        config = run_config.load_yaml(os.path.join(directory, CONFIG))
    labels = None
    if os.path.isfile(os.path.join(directory, LABELS)):
        labels = LabelVocabulary.load(os.path.join(directory, LABELS))
    tokenizer = None
    if os.path.isdir(os.path.join(directory, TOKENIZER)):
        tokenizer = load_tokenizer(os.path.join(directory, TOKENIZER))
    model = load_model(model_path)
    if "tokens" in model.input and tokenizer is None:
        raise FileNotFoundError(
            f"{model_path} takes token ids, but {directory} has no "
            f"{TOKENIZER}/ folder to make them."
        )
    if config.get("task", "multiclass") != "regression" and labels is None:
        raise FileNotFoundError(f"{directory} has no {LABELS} for the model's classes.")
    return Run(model, tokenizer, labels, config, directory)


def predict(run, image, text, top_k=5):
    """Top-k labels for one image file and one text.

    Args:
        run: a `Run` (or a path for `load_run`).
        image: an image file path (JPEG, PNG, GIF, BMP) or its bytes.
        text: the text.
        top_k: how many labels.

    Returns:
        `{"labels": [...], "scores": [...], "modality_weights": {"image":
        w, "text": w}}` (the weights only for fusions that compute them;
        `"predictions"` instead of labels for regression).
    """
    from mmzoo.data.images import load_image

    if not isinstance(run, Run):
        run = load_run(run)
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise FileNotFoundError(f"Image not found: {os.fspath(image)!r}")
        with open(image, "rb") as file:
            image = file.read()
    resize = run.config.get("resize", "stretch")
    try:
        pixels = load_image(tf.constant(image), run.image_size, resize)
    except tf.errors.InvalidArgumentError as error:
        raise ValueError(f"Cannot decode the image: {error.message}") from None
    features = {"image": tf.cast(pixels, tf.float32)[tf.newaxis]}
    if "tokens" in run.model.input:
        features["tokens"] = run.tokenizer(tf.constant([text]))
    else:
        features["text"] = tf.constant([text])
    outputs = run.model.predict_on_batch(features)
    result = {}
    if run.task == "regression":
        result["predictions"] = np.asarray(outputs["predictions"])[0].tolist()
    else:
        scores = np.asarray(outputs["probabilities"])[0]
        if run.task == "binary":
            scores = np.asarray([1.0 - scores[0], scores[0]])
        order = np.argsort(-scores, kind="stable")[:top_k]
        result["labels"] = [run.labels.names[i] for i in order]
        result["scores"] = [float(scores[i]) for i in order]
    if "modality_weights" in outputs:
        image_weight, text_weight = np.asarray(outputs["modality_weights"])[0]
        result["modality_weights"] = {
            "image": float(image_weight),
            "text": float(text_weight),
        }
    return result
