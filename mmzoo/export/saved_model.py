"""Export a trained run as a SavedModel that TF Serving loads as it is.

`export_saved_model(run)` writes one numeric version of a model under a TF
Serving model base folder and keeps the folder's `models.config` up to date:

    savedmodels/
      models.config              one entry per model folder below
      gated/                     a model: its name in TF Serving
        1/                       a version: a SavedModel
          saved_model.pb, variables/
          model_card.json        inputs, outputs, labels, metrics, versions
          assets.extra/
            tf_serving_warmup_requests
            model_card.json, labels.txt, tokenizer/

A classification run's SavedModel has two signatures:

- `serving_default(image_bytes, text)`: a batch of encoded JPEG, PNG, GIF or
  BMP files and one text per image, both `tf.string` of shape `(batch,)`.
  Each image goes through `mmzoo.data.images.load_image`, the function the
  training pipeline uses, and each text through the run's tokenizer, both
  inside the graph. Returns `probabilities`, `top_k_labels` and
  `top_k_scores` (`predictions` for regression), and `modality_weights` for
  fusions that compute them. A model with several heads
  (`mmzoo.tasks.MultiTask`) returns each head's output under the head's
  name, and `<head>_top_k_labels`, `<head>_top_k_scores` for heads with
  classes.
- `predict_tensors(image, tokens)`: the model itself on prepared inputs
  (float32 pixels in [0, 255], int32 token ids).

A contrastive run's model is a dual encoder, two encoders into one space;
its SavedModel has a signature per half, with the same decoding, image
guard, resizing and tokenization in the graph:

- `embed_image(image_bytes)` -> `image_embedding` `(batch, d)` float32.
- `embed_text(text)` -> `text_embedding` `(batch, d)` float32.
- Exported with an index (`index=`, a `mmzoo.retrieval.Index` of the
  model's image or text embeddings, held in the SavedModel's variables):
  `search_by_text(text, k)` and `search_by_image(image_bytes, k)` ->
  `ids` `(batch, k)` string and `scores` `(batch, k)` float32, the exact
  top k index rows by cosine similarity (a matrix product of unit
  vectors), best first. `k` is an int32 scalar of at least 1, clipped to
  the index size. Both search the index's rows, whichever modality they
  embed.

Keras writes the first endpoint, `embed_image`, as `serving_default` too.

Every op in the graph is a core TensorFlow op, or a TensorFlow Text op for a
WordPiece tokenizer (stock TF Serving links both): a process that imports
only TensorFlow (and `tensorflow_text`) loads and runs it, without mmzoo,
Keras or Python code (no `tf.py_function`).

Keras' `ExportArchive` writes the SavedModel (tracking the model's variables,
the tokenizer's lookup tables and the index, and naming the signatures);
what it has no notion of is written here: the TF Serving folder layout and
config, the warmup records, the model card and the files clients need.
"""

import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil
import uuid

import keras
import numpy as np
import tensorflow as tf

import mmzoo
from mmzoo.builder import explained_model
from mmzoo.checks import check_choice
from mmzoo.data import images as image_lib
from mmzoo.data.manifest import DEFAULT_MAX_PIXELS
from mmzoo.ensembles import Ensemble
from mmzoo.export import serving
from mmzoo.export.encoders import check_index
from mmzoo.export.encoders import embedding_width
from mmzoo.export.encoders import encoder_models
from mmzoo.runs import as_run
from mmzoo.tasks import get_task

SERVING_SIGNATURE = serving.SIGNATURE_NAME
TENSORS_SIGNATURE = "predict_tensors"
MODELS_CONFIG = "models.config"
MODEL_CARD = "model_card.json"
ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
LABELS_FILE = "labels.txt"
TOKENIZER_FOLDER = "tokenizer"
# Where `docker run -v "$PWD/savedmodels:/models" tensorflow/serving` mounts
# the base folder. TF Serving's `--model_config_file` refuses relative
# `base_path`s (the server never sets the root they would be relative to),
# so models.config holds absolute paths as the server sees them.
DEFAULT_SERVING_ROOT = "/models"

# TF Serving's model names appear in URLs (/v1/models/<name>:predict).
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# === Serving graph ===


class _ServingFunctions:
    """The signatures' Python functions, traced by `ExportArchive`."""

    def __init__(self, model, tokenizer, label_names, image_size, resize, task, top_k):
        self.model = model
        self.tokenizer = tokenizer
        self.label_names = label_names
        self.image_size = image_size
        self.resize = resize
        self.task = task
        self.top_k = top_k
        self.max_pixels = DEFAULT_MAX_PIXELS
        self.text_input = "tokens" if "tokens" in model.input else "text"

    def serving_default(self, image_bytes, text):
        image_bytes = _batch_vector(image_bytes, serving.IMAGE_INPUT)
        text = _batch_vector(text, serving.TEXT_INPUT)
        same_length = tf.debugging.assert_equal(
            tf.shape(image_bytes)[0],
            tf.shape(text)[0],
            message="`image_bytes` and `text` must hold one text per image",
        )
        with tf.control_dependencies([same_length]):
            pixels = _decode_images(
                image_bytes, self.image_size, self.resize, self.max_pixels
            )
        features = {
            "image": pixels,
            self.text_input: _text_features(self.tokenizer, text),
        }
        outputs = _call_model(self.model, features)
        results = self.task.serving_outputs(
            self.task.output_tensors(outputs), self.label_names, self.top_k
        )
        if "modality_weights" in outputs:
            results["modality_weights"] = outputs["modality_weights"]
        return results

    def predict_tokens(self, image, tokens):
        return _call_model(self.model, {"image": image, "tokens": tokens})

    def predict_texts(self, image, text):
        return _call_model(self.model, {"image": image, "text": text})


def _call_model(model, features):
    """`model(features)` in inference mode, float outputs as float32."""
    # On an empty batch, TensorFlow 2.21's oneDNN Conv2D (the CPU default)
    # returns its input's shape, (0, H, W, C_in), and the next layer fails.
    # The model runs on one padding row instead, which the slice below
    # drops again.
    count = tf.shape(next(iter(features.values())))[0]
    padding = tf.cast(tf.equal(count, 0), tf.int32)
    features = {
        name: tf.pad(value, [[0, padding]] + [[0, 0]] * (value.shape.rank - 1))
        for name, value in features.items()
    }
    outputs = model(features, training=False)
    outputs = {name: value[:count] for name, value in outputs.items()}
    # A mixed-precision model's outputs are float32 already; the cast keeps
    # the signature's contract if a layer ever computes otherwise.
    return {
        name: tf.cast(value, tf.float32) if value.dtype.is_floating else value
        for name, value in outputs.items()
    }


def _decode_images(image_bytes, image_size, resize, max_pixels):
    """Encoded files to the model's float32 pixels, as training read them.

    Headers are checked, then the files decoded; any bad file fails the
    batch with a message naming its index.
    """
    pixels = image_lib.load_images(image_bytes, image_size, resize, max_pixels)
    return tf.cast(pixels, tf.float32)


def _text_features(tokenizer, text):
    """Token ids, or the raw strings for a TF-Hub text tower."""
    return text if tokenizer is None else tokenizer(text)


# The inputs of `serving_default`: one encoded file and one text per example.
SERVING_INPUTS = (
    tf.TensorSpec([None], tf.string, name=serving.IMAGE_INPUT),
    tf.TensorSpec([None], tf.string, name=serving.TEXT_INPUT),
)


def _batch_vector(value, name):
    """`value`, once it is shown to be a vector: one entry per example.

    The signature declares its inputs of any shape: declared `[None]`, a
    `[1, 1]` tensor still reaches the graph (neither TF Serving nor a loaded
    signature checks shapes) and fails deep inside with "Specified a list
    with shape [] from a tensor with shape [1]", while an assertion on the
    rank would be folded away, the rank being known. Any shape in, this
    assertion says which one is expected.
    """
    rank_is_one = tf.debugging.Assert(
        tf.equal(tf.rank(value), 1),
        [
            tf.strings.join(
                [
                    f"`{name}` must have shape [batch] (one string per example). "
                    "Received: shape ",
                    tf.strings.format("{}", tf.shape(value)),
                ]
            )
        ],
    )
    with tf.control_dependencies([rank_is_one]):
        # Restores the static rank. A reshape cannot fail; `tf.ensure_shape`
        # here failed ahead of the assertion, with its own message.
        return tf.reshape(value, [-1])


def _check_arguments(model, tokenizer, labels, image_size, resize, task, top_k):
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive int. Received: top_k={top_k!r}")
    _check_inputs(model, tokenizer, image_size, resize)
    missing = [name for name in task.output_names if name not in model.output]
    if missing:
        raise ValueError(
            f"A {task.name} model has the output(s) {list(task.output_names)}. "
            f"Received: outputs {sorted(model.output)}"
        )
    return task.label_names(labels, model)


def _check_inputs(model, tokenizer, image_size, resize):
    """The checks of what the serving graph feeds a model, for both kinds."""
    check_choice("resize", resize, image_lib.RESIZE_MODES)
    inputs = set(model.input) if isinstance(model.input, dict) else None
    if inputs not in ({"image", "tokens"}, {"image", "text"}):
        raise ValueError(
            "The model must take a dict of inputs {'image', 'tokens'} (or "
            "{'image', 'text'} for a TF-Hub text tower), as mmzoo.build_model "
            f"builds. Received: inputs {sorted(inputs) if inputs else model.input}"
        )
    model_size = tuple(model.input["image"].shape[1:3])
    if model_size != (image_size, image_size):
        raise ValueError(
            f"`image_size` must match the model's image input, {model_size}. "
            f"Received: image_size={image_size!r}"
        )
    if "tokens" in inputs:
        if tokenizer is None:
            raise ValueError("The model takes `tokens`: pass its `tokenizer`.")
        length = model.input["tokens"].shape[1]
        if tokenizer.max_tokens != length:
            raise ValueError(
                f"The tokenizer makes {tokenizer.max_tokens} tokens per text but "
                f"the model's `tokens` input takes {length}."
            )


def build_serving_module(
    model,
    tokenizer,
    labels,
    image_size,
    resize="stretch",
    task="multiclass",
    top_k=5,
):
    """A `keras.export.ExportArchive` holding the serving signatures.

    The lower-level half of `export_saved_model`: it builds the signatures
    (see the module docstring) around a model and its tokenizer, without
    writing anything. Call `write_out(path)` on the result to write the
    SavedModel.

    Args:
        model: an mmzoo model (inputs `image` and `tokens`, or `image` and
            `text` for a TF-Hub text tower).
        tokenizer: the `WordTokenizer` or `WordPieceTokenizer` it was trained
            with (`None` for a TF-Hub text tower).
        labels: a `LabelVocabulary` or a list of class names in output
            order (`None` for regression).
        image_size: the model's input size in pixels.
        resize: `"stretch"` or `"pad"`, as the run was trained with.
        task: a task name (`mmzoo.list_tasks()`) or `mmzoo.tasks.Task`.
        top_k: the number of labels `serving_default` returns (at most the
            number of classes).

    Returns:
        A `keras.export.ExportArchive` with the endpoints `serving_default`
        and `predict_tensors`.

    Example:

    >>> archive = build_serving_module(run.model, run.tokenizer, run.labels,
    ...                                run.image_size, top_k=3)
    >>> archive.write_out("exported/1", verbose=False)
    >>> loaded = tf.saved_model.load("exported/1")
    >>> loaded.signatures["serving_default"](
    ...     image_bytes=tf.constant([jpeg_bytes]), text=tf.constant(["a cat"])
    ... )["top_k_labels"]
    """
    task = get_task(task)
    label_names = _check_arguments(
        model, tokenizer, labels, image_size, resize, task, top_k
    )
    # Both signatures return the modality weights of fusions that compute
    # them, from a model sharing the trained one's layers.
    model = explained_model(model)
    functions = _ServingFunctions(
        model, tokenizer, label_names, image_size, resize, task, top_k
    )
    archive = keras.export.ExportArchive()
    archive.track(model)
    if tokenizer is not None:
        # Its lookup tables are resources the signatures use: tracked, they
        # are saved and initialised when the SavedModel loads.
        archive.track(tokenizer)
    archive.add_endpoint(
        SERVING_SIGNATURE,
        functions.serving_default,
        # Any shape, so that a wrong one meets `_batch_vector`'s message.
        input_signature=[
            tf.TensorSpec(None, spec.dtype, name=spec.name) for spec in SERVING_INPUTS
        ],
    )
    image_spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, "image")
    if functions.text_input == "tokens":
        length = model.input["tokens"].shape[1]
        fn = functions.predict_tokens
        text_spec = tf.TensorSpec([None, length], tf.int32, "tokens")
    else:
        fn = functions.predict_texts
        text_spec = tf.TensorSpec([None], tf.string, "text")
    archive.add_endpoint(TENSORS_SIGNATURE, fn, input_signature=[image_spec, text_spec])
    return archive


# === Dual encoders ===


class _EncoderFunctions:
    """The signatures of a dual encoder's SavedModel, traced by
    `ExportArchive`: each half on raw inputs, and the searches."""

    def __init__(self, model, tokenizer, image_size, resize, index):
        self.encoders = encoder_models(model)
        self.text_input = next(iter(self.encoders["text"].input))
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.resize = resize
        self.max_pixels = DEFAULT_MAX_PIXELS
        self.index = index

    def embed_image(self, image_bytes):
        image_bytes = _batch_vector(image_bytes, serving.IMAGE_INPUT)
        pixels = _decode_images(
            image_bytes, self.image_size, self.resize, self.max_pixels
        )
        return _call_model(self.encoders["image"], {"image": pixels})

    def embed_text(self, text):
        text = _batch_vector(text, serving.TEXT_INPUT)
        features = {self.text_input: _text_features(self.tokenizer, text)}
        return _call_model(self.encoders["text"], features)

    def search_by_image(self, image_bytes, k):
        embedding = self.embed_image(image_bytes)["image_embedding"]
        return self.index.search(embedding, k)

    def search_by_text(self, text, k):
        embedding = self.embed_text(text)["text_embedding"]
        return self.index.search(embedding, k)


class _SearchIndex(tf.Module):
    """An index's rows in the SavedModel, and exact top-k search over them.

    The rows are saved as variables (in `variables/`, not in the graph,
    which TensorFlow caps at 2 GB), L2-normalised once here; each query is
    normalised in the graph, so the scores are cosine similarities, as
    `mmzoo.metrics.retrieval_metrics` ranks (for embeddings that are unit
    vectors already, all but Deep CCA's, the plain matrix product).
    """

    def __init__(self, checked):
        super().__init__(name="search_index")
        rows = checked.embeddings
        # `tf.math.l2_normalize`'s formula, as the queries get.
        squares = np.sum(rows * rows, axis=1, keepdims=True)
        rows = rows / np.sqrt(np.maximum(squares, np.float32(1e-12)))
        self.embeddings = tf.Variable(rows, trainable=False, name="embeddings")
        self.ids = tf.Variable(
            tf.constant(checked.ids, tf.string), trainable=False, name="ids"
        )
        self.size = len(checked.ids)

    def search(self, queries, k):
        k = _result_count(k, self.size)
        queries = tf.math.l2_normalize(queries, axis=-1)
        scores = tf.matmul(queries, self.embeddings, transpose_b=True)
        # Exact; equal scores keep the index's order (lower row first).
        scores, rows = tf.math.top_k(scores, k)
        return {serving.IDS_OUTPUT: tf.gather(self.ids, rows), "scores": scores}


def _result_count(k, size):
    """`k` as a scalar of at least 1, clipped to the index size."""
    is_scalar = tf.debugging.Assert(
        tf.equal(tf.rank(k), 0),
        [
            tf.strings.join(
                [
                    "`k` must be a scalar: one number of results per request. "
                    "Received: shape ",
                    tf.strings.format("{}", tf.shape(k)),
                ]
            )
        ],
    )
    with tf.control_dependencies([is_scalar]):
        k = tf.reshape(k, [])
    positive = tf.debugging.Assert(
        k >= 1,
        [
            tf.strings.join(
                ["`k` must be at least 1. Received: k=", tf.strings.as_string(k)]
            )
        ],
    )
    with tf.control_dependencies([positive]):
        return tf.minimum(k, size)


# The inputs of the dual encoder's signatures, as the model card states
# them (the signatures declare them of any shape, for the assertions'
# messages).
ENCODER_INPUTS = {
    serving.IMAGE_INPUT: tf.TensorSpec([None], tf.string, name=serving.IMAGE_INPUT),
    serving.TEXT_INPUT: tf.TensorSpec([None], tf.string, name=serving.TEXT_INPUT),
    serving.K_INPUT: tf.TensorSpec([], tf.int32, name=serving.K_INPUT),
}


def build_encoder_module(model, tokenizer, image_size, resize="stretch", index=None):
    """A `keras.export.ExportArchive` holding a dual encoder's signatures.

    The lower-level half of `export_saved_model` for a contrastive run
    (see the module docstring for the signatures). Call `write_out(path)`
    on the result to write the SavedModel.

    Args:
        model: a dual encoder (`mmzoo.build_dual_encoder`; inputs `image`
            and `tokens`, or `image` and `text` for a TF-Hub text tower).
        tokenizer: the `WordTokenizer` or `WordPieceTokenizer` it was
            trained with (`None` for a TF-Hub text tower).
        image_size: the model's input size in pixels.
        resize: `"stretch"` or `"pad"`, as the run was trained with.
        index: `None`, or a `mmzoo.retrieval.Index` of the model's
            embeddings (see `mmzoo.export.encoders.check_index`), for the
            signatures `search_by_text` and `search_by_image`.

    Returns:
        A `keras.export.ExportArchive` with the endpoints `embed_image` and
        `embed_text` (and `search_by_text`, `search_by_image` with an
        index). Keras also writes the first, `embed_image`, as
        `serving_default`.

    Example:

    >>> archive = build_encoder_module(run.model, run.tokenizer, 32, index=index)
    >>> archive.write_out("exported/1", verbose=False)
    >>> loaded = tf.saved_model.load("exported/1")
    >>> loaded.signatures["search_by_text"](
    ...     text=tf.constant(["a red picture"]), k=tf.constant(3)
    ... )["ids"]
    """
    _check_inputs(model, tokenizer, image_size, resize)
    encoder_models(model)  # outputs checked before anything is traced
    search = None
    if index is not None:
        checked = check_index(index, embedding_width(model))
        search = _SearchIndex(checked)
    functions = _EncoderFunctions(model, tokenizer, image_size, resize, search)
    archive = keras.export.ExportArchive()
    archive.track(model)
    if tokenizer is not None:
        archive.track(tokenizer)
    if search is not None:
        archive.track(search)
    # Declared of any shape, so that a wrong one meets the graph's messages.
    specs = {
        name: tf.TensorSpec(None, spec.dtype, name=name)
        for name, spec in ENCODER_INPUTS.items()
    }
    for name, inputs in serving.ENCODER_SIGNATURES.items():
        if name.startswith("search") and search is None:
            continue
        archive.add_endpoint(
            name,
            getattr(functions, name),
            input_signature=[specs[input_name] for input_name in inputs],
        )
    return archive


# === Files around the SavedModel ===


def _synthetic_warmup(image_size):
    """A PNG and a JPEG, so warmup runs both decoders; the text "warmup"."""
    ramp = np.linspace(0, 255, image_size).astype(np.uint8)
    red = np.tile(ramp, (image_size, 1))
    pixels = np.stack([red, red.T, np.full_like(red, 128)], axis=-1)
    png = tf.io.encode_png(pixels).numpy()
    jpeg = tf.io.encode_jpeg(pixels).numpy()
    return [(png, "warmup"), (jpeg, "warmup")]


def _check_warmup(examples, signatures=1):
    """`[(image bytes, text)]`, once each image looks complete and decodable.

    A bad warmup record makes TF Serving refuse the whole version, so a bad
    image is refused here, before anything is written. Each signature gets
    a record per example and one of all of them, within TF Serving's 1000.
    """
    examples = list(examples)
    most = 1000 // signatures - 1
    if not examples or len(examples) > most:
        raise ValueError(
            f"`warmup` must hold 1 to {most} (image, text) pairs (TF Serving reads "
            f"at most 1000 records, {len(examples) + 1} per signature here). "
            f"Received: {len(examples)} pairs"
        )
    checked = []
    for index, (image, text) in enumerate(examples):
        data = serving._image_bytes(image)
        # The guard the serving graph applies, so warmup cannot fail there.
        problem = image_lib.check_image(data, DEFAULT_MAX_PIXELS)
        if problem is not None:
            where = (
                f" ({os.fspath(image)})" if isinstance(image, str | os.PathLike) else ""
            )
            raise ValueError(
                f"warmup[{index}]{where} is not a complete JPEG, PNG, GIF or BMP "
                f"image of at most {DEFAULT_MAX_PIXELS:,} pixels ({problem[1]}); "
                "TF Serving would refuse a version whose warmup fails."
            )
        checked.append((data, text))
    return checked


def _batches(examples):
    """One batch per example, then one with all of them.

    Each distinct batch size TF Serving meets first in a real request would
    otherwise pay for its own graph warm-up.
    """
    batches = [[example] for example in examples]
    if len(examples) > 1:
        batches.append(list(examples))
    return batches


def _pair_requests(model_name, examples):
    """`serving_default`'s warmup requests: images with their texts."""
    return [
        serving.grpc_request(*zip(*batch, strict=True), model_name)
        for batch in _batches(examples)
    ]


def _encoder_requests(model_name, examples, signatures):
    """A dual encoder's warmup requests: every signature, every batch."""
    requests = []
    for name in signatures:
        wanted = serving.ENCODER_SIGNATURES[name]
        for batch in _batches(examples):
            images, texts = zip(*batch, strict=True)
            inputs = {
                "images": images if serving.IMAGE_INPUT in wanted else None,
                "texts": texts if serving.TEXT_INPUT in wanted else None,
                "k": 1 if serving.K_INPUT in wanted else None,
            }
            requests.append(serving.encoder_grpc_request(name, model_name, **inputs))
    return requests


def _write_warmup(path, requests):
    """The requests as TF Serving's warmup file of `PredictionLog`s."""
    from tensorflow_serving.apis import prediction_log_pb2

    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog()
            log.predict_log.request.CopyFrom(request)
            writer.write(log.SerializeToString())
    return len(requests)


def _spec_card(spec):
    return {
        "dtype": spec.dtype.name,
        "shape": [None if size is None else int(size) for size in spec.shape],
    }


def _signatures_card(loaded):
    """Input and output names, dtypes and shapes of the saved signatures."""
    # Raw inputs are declared of any shape, to refuse a wrong one clearly;
    # the card states the shape the graph asserts.
    stated = {spec.name: spec for spec in SERVING_INPUTS}
    stated.update(ENCODER_INPUTS)
    card = {}
    for signature in sorted(loaded.signatures):
        function = loaded.signatures[signature]
        _, inputs = function.structured_input_signature
        inputs = {
            key: stated[key] if spec.shape.rank is None else spec
            for key, spec in inputs.items()
        }
        card[signature] = {
            "inputs": {key: _spec_card(spec) for key, spec in sorted(inputs.items())},
            "outputs": {
                key: _spec_card(spec)
                for key, spec in sorted(function.structured_outputs.items())
            },
        }
    return card


def _model_card(run, signatures, name, version, records, outputs):
    """The model card; `outputs` holds what the run's kind adds: labels and
    top_k, or the embedding and the index."""
    tokenizer = run.tokenizer
    card = {
        "name": name,
        "version": version,
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(
            timespec="seconds"
        ),
        "source_run": os.path.abspath(run.directory) if run.directory else None,
        "task": run.task.name,
        "architecture": {
            key: run.config[key]
            for key in ("image_tower", "text_tower", "fusion")
            if key in run.config
        },
        "image_size": run.image_size,
        "resize": run.resize,
        **outputs,
        "signatures": signatures,
        "tokenizer": None,
        "warmup_records": records,
        "metrics": _read_metrics(run.directory),
        "versions": _versions(),
    }
    if tokenizer is not None:
        card["tokenizer"] = _tokenizer_card(
            tokenizer, f"{ASSETS_EXTRA}/{TOKENIZER_FOLDER}", card["versions"]
        )
    return card


def _versions():
    return {
        "mmzoo": mmzoo.__version__,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
    }


def _tokenizer_card(tokenizer, folder, versions):
    """What the card says of a tokenizer saved in `folder`; a WordPiece
    tokenizer adds TF Text's version to `versions`."""
    kind = type(tokenizer).__name__
    card = {
        "type": kind,
        "vocab_size": tokenizer.vocab_size,
        "max_tokens": tokenizer.max_tokens,
        "folder": folder,
        "vocabulary_file": f"{folder}/vocabulary.txt",
    }
    if kind == "WordPieceTokenizer":
        import tensorflow_text

        # Its ops live in TensorFlow Text: a loader must import it.
        card["requires"] = "tensorflow_text"
        versions["tensorflow_text"] = tensorflow_text.__version__
    return card


def _classifier_card(top_k, label_names, task=None):
    card = {
        "top_k": top_k,
        "labels": label_names,
        "labels_file": f"{ASSETS_EXTRA}/{LABELS_FILE}" if label_names else None,
    }
    if task is not None and task.heads:
        # Each head's task, loss weight, labels and exported outputs.
        files = task.label_files()
        card["labels_file"] = None
        card["heads"] = {
            head.name: {
                "task": head.task.name,
                "weight": head.weight,
                "labels": label_names[head.name],
                "labels_file": f"{ASSETS_EXTRA}/{files[head.name]}"
                if head.name in files
                else None,
            }
            for head in task.heads
        }
    return card


def _encoder_card(model, index):
    return {
        "embedding": {
            "width": embedding_width(model),
            # Deep CCA's canonical coordinates are not unit vectors.
            "normalized": not getattr(model, "canonical_projections", ()),
            "search_score": "cosine similarity" if index is not None else None,
        },
        "index": index.card() if index is not None else None,
    }


def _read_metrics(directory):
    path = os.path.join(directory, "metrics.json") if directory else None
    if path is None or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as file:
        return json.load(file)


_CLAIM = ".claim-"


def _next_version(model_folder):
    """One more than the highest version present or claimed."""
    versions = []
    for entry in os.listdir(model_folder) if os.path.isdir(model_folder) else ():
        number = entry[len(_CLAIM) :] if entry.startswith(_CLAIM) else entry
        if number.isdigit():
            versions.append(int(number))
    return max(versions, default=0) + 1


def _claim_version(model_folder, version):
    """Reserve `version` for this export; returns the claim to remove after.

    The claim is a folder `.claim-N` (TF Serving reads only numeric
    folders) made with `os.mkdir`, which exactly one process wins: two
    exports of the same model at the same time get two versions, and
    `_next_version` counts claims, so the loser takes the next number.
    With `version=None` the next free number is claimed.
    """
    os.makedirs(model_folder, exist_ok=True)
    explicit = version is not None
    for _ in range(1000):
        number = version if explicit else _next_version(model_folder)
        target = os.path.join(model_folder, str(number))
        claim = os.path.join(model_folder, f"{_CLAIM}{number}")
        if os.path.exists(target):
            if explicit:
                break
            continue
        try:
            os.mkdir(claim)
        except FileExistsError:
            if explicit:
                raise FileExistsError(
                    f"{target} is being exported by another process (it holds "
                    f"{claim}; if no export is running, a killed one left it: "
                    "remove it). Pass another `version`, or leave it out."
                ) from None
            continue
        if not os.path.exists(target):
            return number, claim
        os.rmdir(claim)
        if explicit:
            break
    raise FileExistsError(
        f"{target} exists: versions are never overwritten. Pass another "
        "`version`, or leave it out for the next free number."
    )


def _check_version(version):
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(
            "`version` must be a positive int (TF Serving's version folders are "
            f"numbers). Received: version={version!r}"
        )


def _default_name(run):
    name = os.path.basename(os.path.normpath(run.directory or "")) or "model"
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip("._-")
    return name or "model"


def write_models_config(base="savedmodels", serving_root=DEFAULT_SERVING_ROOT):
    """(Re)write `<base>/models.config` listing every model folder in `base`.

    A model folder is one holding at least one numeric version folder with a
    `saved_model.pb`. The file is a text-format `ModelServerConfig` with a
    `model_config_list`, for `tensorflow_model_server --model_config_file`.

    Args:
        base: the model base folder.
        serving_root: where the server sees `base`: each `base_path` is
            `<serving_root>/<name>`. The default, `/models`, fits the
            `tensorflow/serving` Docker image with `base` mounted at
            `/models`. `None` writes the absolute path of `base` on this
            machine, for a server run here. TF Serving refuses relative
            base paths.

    Returns:
        The path of `models.config`.

    Example:

    >>> write_models_config("savedmodels")
    'savedmodels/models.config'
    """
    base = os.fspath(base)
    # Listing the models and writing the file under one lock: two exports
    # finishing together each list the other's model, the later one last.
    with _locked(os.path.join(base, ".models.config.lock")):
        return _write_models_config(base, serving_root)


@contextlib.contextmanager
def _locked(path):
    """An exclusive `fcntl` lock on `path` (none where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        yield
        return
    with open(path, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def _write_models_config(base, serving_root):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    root = os.path.abspath(base) if serving_root is None else serving_root
    config = model_server_config_pb2.ModelServerConfig()
    for name in sorted(os.listdir(base)):
        folder = os.path.join(base, name)
        if not os.path.isdir(folder) or not _MODEL_NAME.fullmatch(name):
            continue
        if not any(
            entry.isdigit()
            and os.path.isfile(os.path.join(folder, entry, "saved_model.pb"))
            for entry in os.listdir(folder)
        ):
            continue
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = f"{root.rstrip('/')}/{name}"
        entry.model_platform = "tensorflow"
    path = os.path.join(base, MODELS_CONFIG)
    header = (
        "# Written by mmzoo.export.export_saved_model: rewritten on every export.\n"
        f"# base_path is where the server sees {os.path.abspath(base)}.\n"
    )
    # Written aside and renamed over the old file: a server polling the file
    # (--model_config_file_poll_wait_seconds) never reads half of it.
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(header + text_format.MessageToString(config))
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    return path


def _load_and_warm_up(folder):
    """Loads the written SavedModel and runs its warmup records through it.

    TF Serving refuses to load a version whose warmup fails; better to find
    out here, before the version is published.

    Returns:
        The loaded SavedModel.
    """
    loaded = tf.saved_model.load(folder)
    for index, request in enumerate(serving.read_warmup_requests(folder)):
        signature = loaded.signatures[request.model_spec.signature_name]
        inputs = {key: tf.make_ndarray(value) for key, value in request.inputs.items()}
        try:
            signature(**inputs)
        except tf.errors.InvalidArgumentError as error:
            raise ValueError(
                f"Warmup record {index} fails, so TF Serving would refuse to load "
                f"this version: {error.message}"
            ) from None
    return loaded


@dataclasses.dataclass
class ExportPlan:
    """What one kind of run exports, for `export_saved_model` to write.

    Attributes:
        archive: the `keras.export.ExportArchive` of the signatures.
        requests: the warmup `PredictRequest`s.
        write_assets: a function writing the files clients need into the
            version's `assets.extra/` folder.
        card: a function `(signatures, name, version, records)` returning
            the model card.
    """

    archive: object
    requests: list
    write_assets: object
    card: object


def _run_plan(run, name, warmup, top_k, index):
    """A single run's export: a classifier's or a dual encoder's."""
    examples = _synthetic_warmup(run.image_size) if warmup is None else warmup
    label_names = None
    if run.task.fused:
        examples = _check_warmup(examples)
        archive = build_serving_module(
            run.model,
            run.tokenizer,
            run.labels,
            run.image_size,
            resize=run.resize,
            task=run.task,
            top_k=top_k,
        )
        label_names = run.task.label_names(run.labels, run.model)
        requests = _pair_requests(name, examples)
        outputs_card = _classifier_card(top_k, label_names, run.task)
    else:
        checked = None
        if index is not None:
            checked = check_index(index, embedding_width(run.model))
        endpoints = [
            signature
            for signature in serving.ENCODER_SIGNATURES
            if checked is not None or not signature.startswith("search")
        ]
        examples = _check_warmup(examples, len(endpoints))
        archive = build_encoder_module(
            run.model, run.tokenizer, run.image_size, run.resize, index=index
        )
        requests = _encoder_requests(name, examples, endpoints)
        outputs_card = _encoder_card(run.model, checked)

    def write_assets(extra):
        if label_names is not None:
            # labels.txt, or labels/<head>.txt for a model with several heads.
            run.task.save_labels(run.labels, extra)
        if run.tokenizer is not None:
            run.tokenizer.save(os.path.join(extra, TOKENIZER_FOLDER))

    def card(signatures, name, version, records):
        return _model_card(run, signatures, name, version, records, outputs_card)

    return ExportPlan(archive, requests, write_assets, card)


def export_saved_model(
    run,
    base="savedmodels",
    name=None,
    version=None,
    top_k=5,
    warmup=None,
    serving_root=DEFAULT_SERVING_ROOT,
    index=None,
):
    """Export a run as a new version of a TF Serving model.

    Writes `<base>/<name>/<version>/`: the SavedModel (see the module
    docstring for its signatures), `model_card.json`, and `assets.extra/`
    with the warmup requests (every signature, each example alone and all
    of them as one batch), the model card, `labels.txt` and the tokenizer's
    files. The version is written in a hidden folder, loaded back and
    warmed up, and only then renamed to its number, so a server watching
    the folder never sees a half-written or broken version. Then
    `<base>/models.config` is rewritten to list every model in `base`.

    A classification run gets `serving_default` and `predict_tensors`; a
    contrastive run (a dual encoder) gets `embed_image` and `embed_text`,
    and with an `index` also `search_by_text` and `search_by_image`. An
    ensemble gets `serving_default` (every member preprocessing the raw
    inputs its own way) and `predict_tensors` (each member's tensors), see
    `mmzoo.export.ensemble`.

    Args:
        run: a `mmzoo.runs.Run`, an `mmzoo.ensembles.Ensemble` (exported
            by `mmzoo.export.ensemble`) or the path of a run folder.
        base: the model base folder (TF Serving's `/models`).
        name: the model's name in TF Serving; defaults to the run folder's
            name.
        version: the version number; defaults to one more than the highest
            present. An existing version is never overwritten.
        top_k: how many labels `serving_default` returns (classification).
        warmup: a list of `(image, text)` pairs (image bytes or paths) for
            the warmup records; defaults to a synthetic PNG and JPEG with the
            text "warmup".
        serving_root: where the server sees `base`, for `models.config`
            (see `write_models_config`).
        index: contrastive runs only: a `mmzoo.retrieval.Index` of this
            model's embeddings (`mmzoo.retrieval.load_index`), held in the
            SavedModel and searched by `search_by_text` and
            `search_by_image`.

    Returns:
        The path of the version folder.

    Example:

    >>> export_saved_model("runs/gated")
    'savedmodels/gated/1'
    >>> export_saved_model("runs/gated", top_k=3)
    'savedmodels/gated/2'
    >>> export_saved_model("runs/pairs", index=load_index("indexes/pairs"))
    'savedmodels/pairs/1'
    """
    run = as_run(run)
    name = _default_name(run) if name is None else name
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise ValueError(
            "`name` must be letters, digits, '_', '.' or '-', starting with a "
            f"letter or digit (it appears in TF Serving URLs). Received: name={name!r}"
        )
    if index is not None and run.task.fused:
        raise ValueError(
            f"`index` is searched by a dual encoder's signatures; {run.directory} "
            f"is a {run.task.name} run, whose model makes one prediction per "
            "image and text. Export it without an index."
        )
    base = os.fspath(base)
    model_folder = os.path.join(base, name)
    if version is not None:
        _check_version(version)
        target = os.path.join(model_folder, str(version))
        if os.path.exists(target):
            raise FileExistsError(
                f"{target} exists: versions are never overwritten. Pass another "
                "`version`, or leave it out for the next free number."
            )
    if isinstance(run, Ensemble):
        from mmzoo.export.ensemble import saved_model_plan

        plan = saved_model_plan(run, name, warmup, top_k)
    elif hasattr(run.task, "saved_model_plan"):
        # A task with a SavedModel of its own (captioning's `caption`).
        plan = run.task.saved_model_plan(run, name, warmup)
    else:
        plan = _run_plan(run, name, warmup, top_k, index)
    # The number is claimed before the long work, so a concurrent export of
    # the same model takes another one instead of failing at the end.
    created = not os.path.isdir(model_folder)
    version, claim = _claim_version(model_folder, version)
    target = os.path.join(model_folder, str(version))
    # A dot-folder: TF Serving only loads numeric version folders. (Not
    # `tempfile.mkdtemp`, whose mode 0700 would stay with the version.)
    staging = os.path.join(model_folder, f".export-{uuid.uuid4().hex}")
    try:
        os.makedirs(staging)
        plan.archive.write_out(staging, verbose=False)
        extra = os.path.join(staging, ASSETS_EXTRA)
        os.makedirs(extra, exist_ok=True)
        records = _write_warmup(os.path.join(extra, WARMUP_FILE), plan.requests)
        plan.write_assets(extra)
        signatures = _signatures_card(_load_and_warm_up(staging))
        card = plan.card(signatures, name, version, records)
        for folder in (staging, extra):
            with open(os.path.join(folder, MODEL_CARD), "w", encoding="utf-8") as file:
                json.dump(card, file, indent=2, ensure_ascii=False)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        os.rmdir(claim)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(model_folder)
        raise
    # Removed once the version exists: at every moment one of the two
    # tells `_next_version` the number is taken.
    os.rmdir(claim)
    write_models_config(base, serving_root)
    return target
