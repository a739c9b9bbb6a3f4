"""Export an ensemble (`mmzoo.ensembles`) as one SavedModel or one TFLite file.

`export_saved_model(ensemble)` and `export_tflite(ensemble, path)` hand an
`Ensemble` to this module; what they guarantee for a single run holds here
too (numbered versions, `models.config`, warmup records for every signature,
the model card, core TensorFlow ops only; builtin TFLite ops only).

The SavedModel's signatures:

- `serving_default(image_bytes, text)`: raw encoded images and texts, once.
  Inside the graph each member decodes and resizes the images at its own
  size and resize mode (one decode per distinct pair) and tokenizes the
  texts with its own tokenizer, as its training pipeline did; the members'
  outputs are combined by the ensemble's combiner. Returns the task's usual
  outputs of the combined answer (`probabilities`, `top_k_labels`,
  `top_k_scores`; `predictions` for regression) and the members' outputs
  stacked, `member_probabilities` (`member_predictions`) of shape
  `(batch, members, width)` in member order.
- `predict_tensors(member_0_image, member_0_tokens, member_1_image, ...)`:
  `Ensemble.model` on prepared inputs (float32 pixels in [0, 255] at each
  member's size, int32 token ids of each member's tokenizer).

The TFLite file holds `Ensemble.model`: it takes every member's inputs,
named as in `predict_tensors`, and returns the combined and the members'
outputs. The app prepares each member's inputs as that member was trained:
the card (`<stem>.json`) lists each member's image size and resize mode and
the folder (`member_<i>/`) of its vocabulary, its tokenizer configuration
and the pure-Python tokenizer; `Ensemble.member_features` does it in
Python. Only an ensemble whose every member converts goes to TFLite: a
member with a TF-Hub text tower (raw strings into the graph) is refused,
naming the member; a member with a WordPiece tokenizer (the bert tower)
converts, but mmzoo ships no pure-Python WordPiece tokenizer for its app
(its card says so, as a single run's does).
"""

import datetime
import os

import keras
import numpy as np
import tensorflow as tf

from mmzoo.data.manifest import DEFAULT_MAX_PIXELS
from mmzoo.data.manifest import LabelVocabulary
from mmzoo.ensembles import member_input
from mmzoo.ensembles import member_output
from mmzoo.export import saved_model as sm
from mmzoo.export import serving
from mmzoo.export import tflite

MEMBERS_FOLDER = "members"

# === SavedModel ===


class _EnsembleServingFunctions:
    """The ensemble's signatures, traced by `ExportArchive`."""

    def __init__(self, ensemble, label_names, top_k):
        self.model = ensemble.model
        self.members = ensemble.members
        self.task = ensemble.task
        self.label_names = label_names
        self.top_k = top_k
        self.max_pixels = DEFAULT_MAX_PIXELS
        self.input_names = list(self.model.input)

    def serving_default(self, image_bytes, text):
        image_bytes = sm._batch_vector(image_bytes, serving.IMAGE_INPUT)
        text = sm._batch_vector(text, serving.TEXT_INPUT)
        same_length = tf.debugging.assert_equal(
            tf.shape(image_bytes)[0],
            tf.shape(text)[0],
            message="`image_bytes` and `text` must hold one text per image",
        )
        features, decoded = {}, {}
        for index, member in enumerate(self.members):
            preparation = (member.image_size, member.resize)
            if preparation not in decoded:
                with tf.control_dependencies([same_length]):
                    decoded[preparation] = sm._decode_images(
                        image_bytes, *preparation, self.max_pixels
                    )
            features[member_input(index, "image")] = decoded[preparation]
            text_input = "tokens" if "tokens" in member.model.input else "text"
            features[member_input(index, text_input)] = sm._text_features(
                member.tokenizer, text
            )
        outputs = sm._call_model(self.model, features)
        name = self.task.output_name
        results = self.task.serving_outputs(outputs[name], self.label_names, self.top_k)
        results[member_output(name)] = outputs[member_output(name)]
        return results

    def predict_tensors(self, *tensors):
        features = dict(zip(self.input_names, tensors, strict=True))
        return sm._call_model(self.model, features)


def _member_problem(index, member, error):
    return type(error)(f"Member {index} ({member.directory}): {error}")


def _tensor_specs(model):
    """`predict_tensors`' inputs: the ensemble model's, batch dynamic."""
    return [
        tf.TensorSpec([None, *tensor.shape[1:]], tensor.dtype, name)
        for name, tensor in model.input.items()
    ]


def build_ensemble_module(ensemble, top_k=5):
    """A `keras.export.ExportArchive` of an ensemble's signatures.

    The lower-level half of `export_saved_model` for an ensemble (see the
    module docstring for the signatures). Call `write_out(path)` on the
    result to write the SavedModel.

    Args:
        ensemble: an `mmzoo.ensembles.Ensemble`.
        top_k: the number of labels `serving_default` returns.

    Returns:
        A `keras.export.ExportArchive` with the endpoints `serving_default`
        and `predict_tensors`.

    Example:

    >>> archive = build_ensemble_module(mmzoo.load_run("runs/ensemble"))
    >>> archive.write_out("exported/1", verbose=False)
    """
    task = ensemble.task
    for index, member in enumerate(ensemble.members):
        try:
            sm._check_arguments(
                member.model,
                member.tokenizer,
                ensemble.labels,
                member.image_size,
                member.resize,
                task,
                top_k,
            )
        except ValueError as error:
            raise _member_problem(index, member, error) from None
    label_names = list(ensemble.labels.names) if task.classes else None
    functions = _EnsembleServingFunctions(ensemble, label_names, top_k)
    archive = keras.export.ExportArchive()
    archive.track(ensemble.model)
    for member in ensemble.members:
        if member.tokenizer is not None:
            archive.track(member.tokenizer)
    archive.add_endpoint(
        sm.SERVING_SIGNATURE,
        functions.serving_default,
        input_signature=[
            tf.TensorSpec(None, spec.dtype, name=spec.name)
            for spec in sm.SERVING_INPUTS
        ],
    )
    archive.add_endpoint(
        sm.TENSORS_SIGNATURE,
        functions.predict_tensors,
        input_signature=_tensor_specs(ensemble.model),
    )
    return archive


def _tensor_requests(ensemble, model_name, examples):
    """`predict_tensors`' warmup requests: each member's prepared inputs
    (`Ensemble.member_features`, as an app prepares them)."""
    from tensorflow_serving.apis import predict_pb2

    # Each example prepared once; a batch is its examples' rows.
    prepared = [ensemble.member_features([image], [text]) for image, text in examples]
    requests = []
    for batch in sm._batches(list(range(len(examples)))):
        parts = [prepared[index] for index in batch]
        features = {
            name: np.concatenate([part[name] for part in parts]) for name in parts[0]
        }
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = sm.TENSORS_SIGNATURE
        for name, value in features.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        requests.append(request)
    return requests


def saved_model_plan(ensemble, name, warmup, top_k):
    """`export_saved_model`'s plan for an ensemble (`sm.ExportPlan`)."""
    largest = max(member.image_size for member in ensemble.members)
    examples = sm._synthetic_warmup(largest) if warmup is None else warmup
    # Two signatures, each warmed with every example and all of them.
    examples = sm._check_warmup(examples, 2)
    archive = build_ensemble_module(ensemble, top_k)
    label_names = list(ensemble.labels.names) if ensemble.task.classes else None
    requests = [
        *sm._pair_requests(name, examples),
        *_tensor_requests(ensemble, name, examples),
    ]

    def write_assets(extra):
        if label_names is not None:
            LabelVocabulary(label_names).save(os.path.join(extra, sm.LABELS_FILE))
        for index, member in enumerate(ensemble.members):
            if member.tokenizer is not None:
                member.tokenizer.save(_member_tokenizer_folder(extra, index))

    def card(signatures, name, version, records):
        return _ensemble_card(
            ensemble, signatures, name, version, records, top_k, label_names
        )

    return sm.ExportPlan(archive, requests, write_assets, card)


def _member_tokenizer_folder(root, index):
    return os.path.join(root, MEMBERS_FOLDER, str(index), sm.TOKENIZER_FOLDER)


def _ensemble_card(ensemble, signatures, name, version, records, top_k, labels):
    versions = sm._versions()
    members = []
    for index, member in enumerate(ensemble.members):
        entry = _member_card(index, member)
        if member.tokenizer is not None:
            folder = f"{sm.ASSETS_EXTRA}/{MEMBERS_FOLDER}/{index}/{sm.TOKENIZER_FOLDER}"
            entry["tokenizer"] = sm._tokenizer_card(member.tokenizer, folder, versions)
        members.append(entry)
    output = ensemble.output_name
    return {
        "name": name,
        "version": version,
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(
            timespec="seconds"
        ),
        "source_run": os.path.abspath(ensemble.directory)
        if ensemble.directory
        else None,
        "task": ensemble.task.name,
        "kind": "ensemble",
        "method": ensemble.method,
        "member_weights": ensemble.member_weights,
        "members": members,
        "outputs": {
            output: "the combined answer",
            member_output(output): "every member's output, (batch, members, "
            "width), in member order",
        },
        **sm._classifier_card(top_k, labels),
        "signatures": signatures,
        "warmup_records": records,
        "metrics": sm._read_metrics(ensemble.directory),
        "versions": versions,
    }


def _member_card(index, member):
    return {
        "index": index,
        "architecture": {
            key: member.config[key]
            for key in ("image_tower", "text_tower", "fusion")
            if key in member.config
        },
        "image_size": member.image_size,
        "resize": member.resize,
        "inputs": {name: member_input(index, name) for name in member.model.input},
        "tokenizer": None,
    }


# === TFLite ===


def export_ensemble_tflite(
    ensemble,
    path,
    quantize="none",
    representative=None,
    num_calibration=200,
    batch_size=None,
):
    """`mmzoo.export.export_tflite` for an ensemble: one builtin-ops file.

    Args:
        ensemble: an `mmzoo.ensembles.Ensemble`.
        path: the `.tflite` file; its folder receives `labels.txt`,
            `<stem>.json` and a folder `member_<i>/` per member with its
            tokenizer files and `pure_python_tokenizer.py`.
        quantize: one of `tflite.QUANTIZATIONS`.
        representative: for `"int8"`, a manifest (default: the ensemble's
            validation manifest), read by every member's pipeline, or
            batches of `Ensemble.model` input dicts.
        num_calibration: the most calibration examples.
        batch_size: `None` for a dynamic batch, or a fixed one.

    Returns:
        The report of `export_tflite` (`path`, `bytes`, `float32_bytes`,
        `size_ratio`, `ops`, `quantize`, `files`).

    Raises:
        ExportError: a member cannot go to TFLite (a TF-Hub text tower,
            which takes raw strings); the message names it.
    """
    for index, member in enumerate(ensemble.members):
        if member.tokenizer is None and "tokens" in member.model.input:
            raise tflite.ExportError(
                f"Member {index} ({member.directory}) has no tokenizer for the "
                "`tokens` input."
            )
        try:
            tflite._check_convertible(member.model)
        except tflite.ExportError as error:
            raise tflite.ExportError(
                f"Member {index} ({member.directory}) cannot go to TFLite: {error}"
            ) from None
    examples = None
    if quantize == "int8":
        examples = calibration_examples(ensemble, representative, num_calibration)
    content, report = tflite._converted(
        ensemble.model, path, quantize, examples, batch_size
    )
    files = [path, *_write_companions(ensemble, path, content, quantize, batch_size)]
    return {**report, "quantize": quantize, "files": files}


def calibration_examples(ensemble, representative=None, num_calibration=200, seed=0):
    """The int8 calibration examples of an ensemble: a generator function of
    `Ensemble.model` input dicts of batch 1, from a manifest read by every
    member's own pipeline (rows paired as in `mmzoo.ensembles.member_outputs`).
    """
    from mmzoo.data.manifest import Manifest
    from mmzoo.data.sources import read_manifest

    names = list(ensemble.model.input)
    if representative is None:
        representative = ensemble.config.get("val")
        if representative is None or not os.path.exists(representative):
            raise FileNotFoundError(
                "quantize='int8' calibrates on the ensemble's validation manifest, "
                f"{representative!r}, which is not there: pass `representative=`, "
                "a manifest path or a dataset."
            )
    if isinstance(representative, (str, os.PathLike, Manifest)):
        manifest = representative
        if not isinstance(manifest, Manifest):
            manifest = read_manifest(manifest)
        manifest = tflite._sample_rows(manifest, num_calibration, seed)
        batches = _paired_batches(ensemble, manifest)
    else:
        batches = representative

    def examples():
        count = 0
        for example in tflite._single_examples(batches, names):
            if count == num_calibration:
                break
            count += 1
            yield example
        if count == 0:
            raise ValueError("The calibration data holds no examples.")

    return examples


def _paired_batches(ensemble, manifest):
    """Batches of one row, every member's inputs under its own names."""
    datasets, first = [], None
    for member in ensemble.members:
        # Calibration only needs examples: bad rows are skipped, not fatal.
        dataset, report = member.dataset(
            manifest, 1, unknown_labels="skip", max_bad_fraction=1.0
        )
        if first is not None and list(report.good) != list(first.good):
            raise ValueError(
                f"{report.source}: the members keep different rows to calibrate on."
            )
        first = report
        datasets.append(dataset)
    for rows in zip(*datasets, strict=True):
        features = {}
        for index, (inputs, _) in enumerate(rows):
            for name, value in inputs.items():
                features[member_input(index, name)] = np.asarray(value)
        yield features


def _write_companions(ensemble, path, content, quantize, batch_size):
    """labels.txt, each member's tokenizer folder and the card."""
    folder = os.path.dirname(os.path.abspath(path))
    written = []
    if ensemble.labels is not None:
        written.append(ensemble.labels.save(os.path.join(folder, tflite.LABELS_FILE)))
    members = []
    for index, member in enumerate(ensemble.members):
        subfolder = f"member_{index}"
        files, tokenizer_card = tflite._write_tokenizer(
            member, os.path.join(folder, subfolder)
        )
        written += files
        entry = _member_card(index, member)
        if tokenizer_card is not None:
            tokenizer_card["folder"] = subfolder
        entry["tokenizer"] = tokenizer_card
        members.append(entry)
    signature = tflite.signature_details(content)
    card = {
        "format": "tflite",
        "model": os.path.basename(path),
        "signature": tflite.SIGNATURE_KEY,
        "inputs": signature["inputs"],
        "outputs": signature["outputs"],
        "task": ensemble.task.name,
        "kind": "ensemble",
        "method": ensemble.method,
        "member_weights": ensemble.member_weights,
        "labels": tflite.LABELS_FILE if ensemble.labels is not None else None,
        "quantize": quantize,
        "batch_size": batch_size,
        "members": members,
        "preprocessing": {
            # Every member's image, at its own `image_size` and `resize`.
            "image": list(tflite.IMAGE_PREPROCESSING),
            "image_reference": "mmzoo.data.images.prepare_image",
            "python_reference": "mmzoo.ensembles.Ensemble.member_features",
        },
        "ops": tflite.list_ops(content),
    }
    written.append(tflite._write_card(path, card))
    return written
