"""Export a trained run as a TensorFlow Lite (LiteRT) model for apps.

`export_tflite(run, "app/model.tflite")` writes the model and the files an
app needs beside it:

    app/
      model.tflite               the model, builtin ops only
      model.json                 inputs, outputs, image size, preprocessing
      labels.txt                 class names in output order
      vocabulary.txt             the tokenizer's vocabulary ...
      tokenizer.json             ... and its configuration
      pure_python_tokenizer.py   text -> token ids, standard library only

The graph holds the model alone: its signature `serving_default` takes
`image` (float32 RGB pixels in [0, 255], shape `(batch, S, S, 3)`) and
`tokens` (int32 ids, `(batch, max_tokens)`) and returns `probabilities`
(`predictions` for regression) and, for fusions that compute them,
`modality_weights` (a model with several heads: an output per head, named
after it, and `labels/<head>.txt` beside the file). Decoding images and
tokenizing text stay outside, in
the app: that keeps every op a TFLite builtin (no Select TF ops, no custom
ops), so the file runs on the stock LiteRT runtime with its default XNNPACK
delegate. The app prepares inputs as `mmzoo.data.images.prepare_image` and
the shipped `pure_python_tokenizer.py` do (see `model.json`):
`prepare_image(path_or_bytes, image_size, resize)` applies the image guard
every entry point applies (`mmzoo.data.images.check_image`: format, a file
cut short, at most 64 Mpx over all of a GIF's frames) before `load_image`,
the training pipeline's decode and resize, and returns the model's float32
`(1, S, S, 3)` input. A Python app calls it; another app follows the same
steps, `IMAGE_PREPROCESSING` in `model.json`.

Quantisations (`quantize=`):

- `"none"`: float32, the reference.
- `"float16"`: float16 weights, float32 compute; about half the size.
- `"dynamic"`: int8 weights, activations quantised on the fly. The
  converter leaves tensors under 1,024 elements in float32, so tiny models
  barely shrink.
- `"int8"`: int8 weights and activations, with activation ranges
  calibrated on a sample of the run's training manifest. The inputs and
  outputs stay float32 (and the tokens int32): the graph quantises on the
  way in and dequantises on the way out, so every variant takes the same
  inputs and an app swaps files without changing code, for the cost of one
  QUANTIZE op per input and one DEQUANTIZE op per output. The op types in
  `FLOAT_ISLAND_OPS` (HARD_SWISH, SOFTMAX, DIV) compute in float32 between
  a DEQUANTIZE and a QUANTIZE: LiteRT's XNNPACK delegate has no int8
  kernel for them, and an int8 one splits the delegated graph (MobileNetV3
  ran 2.5x slower in int8 than in float32 before; now about 1.5-1.8x
  faster, `benchmarks/RESULTS.md`).

A contrastive run (a dual encoder) becomes one file per encoder, named
after `path`'s stem (`encoder_paths`), so that several quantisations share
a folder:

    app/
      pairs.image.tflite         image (float32 pixels) -> image_embedding
      pairs.text.tflite          tokens (int32 ids) -> text_embedding
      pairs.json                 both files' inputs, outputs and ops
      vocabulary.txt, tokenizer.json, pure_python_tokenizer.py

`parity` runs an exported file with the LiteRT interpreter and measures how
far it is from the Keras model on real examples; `retrieval_parity` does it
for both encoder files and compares Recall@K over the examples.
"""

import json
import os
import shutil
import tempfile
import warnings

import numpy as np

from mmzoo.checks import check_choice
from mmzoo.data.manifest import DEFAULT_MAX_PIXELS
from mmzoo.export.encoders import MODALITIES
from mmzoo.export.encoders import embedding_width
from mmzoo.export.encoders import encoder_models

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
# Op types an int8 file computes in float32 (see the module docstring):
# LiteRT's XNNPACK delegate has no int8 kernel for them, so int8 ones ran
# in the builtin kernels, each splitting the delegated graph. MobileNetV3's
# 18-20 HARD_SWISH ops made its int8 file 20 partitions and 2.5x slower
# than float32. SOFTMAX and DIV (the bag-of-words tower's masked mean) are
# one op each, but in float32 the probabilities also come out closer to
# Keras'. GATHER (an embedding lookup) falls out of the delegate too, in
# float32 as well; it stays int8, or its table would stay float32 (4x the
# bytes).
FLOAT_ISLAND_OPS = ("HARD_SWISH", "SOFTMAX", "DIV")
SIGNATURE_KEY = "serving_default"
PYTHON_TOKENIZER = "pure_python_tokenizer.py"
LABELS_FILE = "labels.txt"

# The app-side recipe for pixels, as `mmzoo.data.images.prepare_image` does it.
IMAGE_PREPROCESSING = (
    "Before decoding, refuse a file that is not a complete JPEG, PNG, GIF or "
    f"BMP, or whose header declares more than {DEFAULT_MAX_PIXELS:,} pixels, "
    "counted over every frame of a GIF (frames x canvas): decoders allocate "
    "what a header declares, and decode every frame of a GIF.",
    "Decode the JPEG, PNG, GIF (first frame) or BMP file to RGB; repeat a "
    "grayscale channel three times.",
    "Composite transparency on white: rgb * alpha / 255 + (255 - alpha).",
    "Resize to image_size x image_size with bilinear interpolation and no "
    "antialiasing: resize 'stretch' ignores the aspect ratio; 'pad' scales to "
    "fit inside, keeping the aspect ratio, and centres on black.",
    "Round half to even and clip to [0, 255] (uint8 pixels).",
    "Feed as float32 of shape (1, image_size, image_size, 3), values in "
    "[0, 255]: the model normalises inside.",
)


class ExportError(ValueError):
    """A model that cannot become a builtin-ops TFLite file, and why."""


def convert(model, quantize="none", representative_dataset=None, batch_size=None):
    """Convert a Keras model to TFLite flatbuffer bytes, builtin ops only.

    Args:
        model: a Keras model with named inputs and a dict of outputs (any
            `mmzoo.build_model` model whose text tower takes token ids).
        quantize: one of `QUANTIZATIONS` (see the module docstring).
        representative_dataset: for `"int8"`: a function returning an
            iterable of input dicts (`{"image": (1, S, S, 3) float32,
            "tokens": (1, L) int32}`), the TFLite converter's convention.
        batch_size: `None` keeps the batch dimension dynamic (the
            interpreter resizes it per call); an int fixes it. Recurrent
            text towers (`bilstm`) convert to the builtin WHILE op only with
            a fixed batch size.

    Returns:
        The `.tflite` file's bytes.

    Raises:
        ExportError: the model needs ops outside the TFLite builtins, or
            its signature lost the input or output names.

    Example:

    >>> model = mmzoo.build_model("small_cnn_bow_concat", num_classes=3)
    >>> content = convert(model, quantize="float16")
    >>> list_ops(content)[:3]
    ['ADD', 'CAST', 'CONCATENATION']
    """
    import tensorflow as tf

    check_choice("quantize", quantize, QUANTIZATIONS)
    if quantize == "int8" and representative_dataset is None:
        raise ValueError(
            "`quantize='int8'` calibrates activation ranges on examples: pass "
            "`representative_dataset`, a function returning an iterable of "
            "input dicts."
        )
    if batch_size is not None and (
        not isinstance(batch_size, int)
        or isinstance(batch_size, bool)
        or batch_size < 1
    ):
        raise ValueError(
            "`batch_size` must be None (dynamic) or a positive integer. "
            f"Received: batch_size={batch_size!r}"
        )
    _check_convertible(model)

    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    options = {"target_spec": {"supported_ops": [builtins]}}
    if quantize == "float16":
        options["optimizations"] = [tf.lite.Optimize.DEFAULT]
        options["target_spec"]["supported_types"] = [tf.float16]
    elif quantize == "dynamic":
        options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        options["optimizations"] = [tf.lite.Optimize.DEFAULT]
        options["representative_dataset"] = representative_dataset
        # The converter's own two steps, run apart: calibrate here (the
        # float graph with every tensor's recorded range), then quantise
        # in `_quantize_int8` with `FLOAT_ISLAND_OPS` left in float32. The
        # converter's single call cannot leave an op out.
        options["_experimental_calibrate_only"] = True
    input_signature = None
    if batch_size is not None:
        input_signature = [
            {
                name: tf.TensorSpec([batch_size, *tensor.shape[1:]], tensor.dtype, name)
                for name, tensor in model.input.items()
            }
        ]

    # Keras 3's own LiteRT exporter (ExportArchive -> SavedModel ->
    # TFLiteConverter.from_saved_model) names the signature's inputs and
    # outputs after the model's dicts ("image", "tokens" -> "probabilities",
    # "modality_weights"), and passes `options` to the converter; we replace
    # its default ops set, which adds SELECT_TF_OPS, with the builtins. On
    # TF 2.21 / Keras 3.15 the alternatives were worse:
    # `from_concrete_functions` left the Keras 3 variables as unfrozen
    # VAR_HANDLE/READ_VARIABLE ops (the file returned NaN), and
    # `from_keras_model` feeds the dict-input model a list (Keras warns that
    # the structure does not match).
    with (
        tempfile.TemporaryDirectory(prefix="mmzoo-tflite-") as folder,
        warnings.catch_warnings(),
    ):
        # int8 calibration runs TensorFlow's own (deprecated) interpreter
        # inside the converter, which warns about itself.
        warnings.filterwarnings("ignore", r"(?s).*tf\.lite\.Interpreter is deprecated")
        path = os.path.join(folder, "model.tflite")
        try:
            model.export(
                path,
                format="litert",
                verbose=False,
                input_signature=input_signature,
                **options,
            )
        except Exception as error:  # the converter raises several types
            raise _conversion_error(error, quantize, batch_size) from error
        with open(path, "rb") as file:
            content = file.read()
    if quantize == "int8":
        try:
            content = _quantize_int8(content)
        except Exception as error:  # the quantiser raises several types
            raise _conversion_error(error, quantize, batch_size) from error
    check_builtin_ops(content)
    _check_signature(content, model)
    return content


def _quantize_int8(calibrated):
    """Quantise a calibrated float graph to int8, but `FLOAT_ISLAND_OPS`.

    This is what `tf.lite.experimental.QuantizationDebugger` does for its
    "selective quantisation" (`QuantizationDebugOptions(denylisted_ops=...)`,
    then `get_nondebug_quantized_model()`): the same quantiser with a list
    of op types left in float32, each wrapped in DEQUANTIZE and QUANTIZE.
    The debugger needs the TFLite converter object, which Keras' exporter
    keeps to itself, and converts a second, instrumented model; its call
    to `mlir_quantize` is all we need.
    """
    from tensorflow.lite.python import convert as tflite_convert

    return tflite_convert.mlir_quantize(
        calibrated,
        disable_per_channel=False,  # per-channel weights, the default
        fully_quantize=False,  # float32 inputs and outputs
        denylisted_ops=list(FLOAT_ISLAND_OPS),
    )


def _check_convertible(model):
    inputs = getattr(model, "input", None)
    outputs = getattr(model, "output", None)
    if not isinstance(inputs, dict) or not isinstance(outputs, dict):
        raise ExportError(
            "TFLite export takes a model with named inputs and outputs (dicts), "
            "as `mmzoo.build_model` builds. Received inputs of type "
            f"{type(inputs).__name__} and outputs of type {type(outputs).__name__}."
        )
    strings = [name for name, tensor in inputs.items() if tensor.dtype == "string"]
    if strings:
        raise ExportError(
            f"The model takes raw strings ({strings}): its text tower tokenizes "
            "inside the graph (a TF-Hub tower), which needs TensorFlow ops that "
            "TFLite builtins lack. Export a model whose text tower takes token "
            "ids, or use `mmzoo.export.export_saved_model`."
        )


def _conversion_error(error, quantize, batch_size):
    message = str(error)
    hint = ""
    if "TensorList" in message and batch_size is None:
        hint = (
            " A recurrent layer (the `bilstm` text tower) becomes the builtin "
            "WHILE op only with a fixed batch size: pass `batch_size=1`."
        )
    elif quantize == "int8":
        hint = (
            " quantize='int8' calibrates on `representative_dataset` and "
            "quantises every op but FLOAT_ISLAND_OPS; quantize='dynamic' "
            "keeps activations in float32."
        )
    elif "Select TF" in message or "Flex" in message or "custom op" in message:
        hint = (
            " The graph must hold TFLite builtin ops only: image decoding and "
            "tokenization belong in the app, outside the model."
        )
    last_lines = "\n".join(message.strip().splitlines()[-12:])
    return ExportError(
        f"TFLite conversion (quantize={quantize!r}) failed.{hint}\n"
        f"Converter error (end):\n{last_lines}"
    )


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def list_ops(content):
    """The distinct op types in a TFLite flatbuffer, over all subgraphs.

    Read from the file's operator codes (not from an interpreter, which
    could not even load a model whose custom ops it lacks).

    Args:
        content: the file's bytes, or its path.

    Returns:
        A sorted list of names: builtin ops by their schema name
        (`"CONV_2D"`), custom ops as `"CUSTOM:<code>"` (Select TF ops are
        custom ops whose code starts with "Flex").
    """
    if isinstance(content, (str, os.PathLike)):
        with open(content, "rb") as file:
            content = file.read()
    schema = _schema()
    names = {
        value: name
        for name, value in vars(schema.BuiltinOperator).items()
        if not name.startswith("_")
    }
    model = schema.Model.GetRootAs(content, 0)
    codes = []
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        # Codes above 127 live in `builtin_code`; older files only set
        # `deprecated_builtin_code` (the schema's documented rule).
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            codes.append(
                f"CUSTOM:{custom.decode('utf-8', 'replace') if custom else ''}"
            )
        else:
            codes.append(names.get(builtin, f"UNKNOWN_BUILTIN_{builtin}"))
    used = set()
    for subgraph_index in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(subgraph_index)
        for op_index in range(subgraph.OperatorsLength()):
            used.add(codes[subgraph.Operators(op_index).OpcodeIndex()])
    return sorted(used)


def check_builtin_ops(content):
    """Raise `ExportError` if a TFLite file holds any non-builtin op.

    Args:
        content: the file's bytes, or its path.

    Returns:
        The sorted op names (`list_ops`), all builtin.
    """
    ops = list_ops(content)
    custom = [op for op in ops if op.startswith("CUSTOM:") or op.startswith("UNKNOWN")]
    if custom:
        raise ExportError(
            f"The TFLite graph holds ops that are not TFLite builtins: {custom}. "
            "Select TF ops (Flex...) and custom ops need runtimes the stock "
            "LiteRT interpreter lacks; keep decoding and tokenization outside "
            "the model."
        )
    return ops


def _interpreter(model_path=None, model_content=None):
    from ai_edge_litert.interpreter import Interpreter

    # The default op resolver applies the XNNPACK delegate, as an app's does.
    return Interpreter(model_path=model_path, model_content=model_content)


def ops_outside_delegate(interpreter):
    """`{op type: count}` of the nodes LiteRT's delegate left to the builtin
    kernels: what splits the XNNPACK-delegated graph into partitions.

    The interpreter's node list keeps the nodes a delegate replaced beside
    its DELEGATE nodes, without saying which were replaced. A node runs
    outside the delegate when no DELEGATE node produces its outputs and
    what it produces is needed: read by a DELEGATE node, by another such
    node, or a graph output (walked back from the outputs). Integer and
    boolean ops on `tokens` (the padding mask, the embedding lookup) stay
    outside in every variant; they are cheap.

    Args:
        interpreter: a LiteRT `Interpreter` whose tensors are allocated
            (the delegate applies then).

    Returns:
        A dict sorted by op name, or `None` if the interpreter's private
        node list (`_get_ops_details`) moved.

    Example:

    >>> interpreter = Interpreter(model_path="app/model.tflite", num_threads=1)
    >>> interpreter.allocate_tensors()
    >>> ops_outside_delegate(interpreter)  # a bow text tower's
    {'ADD': 1, 'CAST': 1, 'EXPAND_DIMS': 1, 'GATHER': 1, 'LESS': 1,
     'NOT_EQUAL': 1, 'SELECT_V2': 1}
    """
    try:
        ops = interpreter._get_ops_details()
    except (AttributeError, RuntimeError, ValueError):
        return None
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    produced = {int(tensor) for op in delegates for tensor in op["outputs"]}
    needed = {int(detail["index"]) for detail in interpreter.get_output_details()}
    needed |= {int(tensor) for op in delegates for tensor in op["inputs"]}
    pending = [
        op
        for op in ops
        if op["op_name"] != "DELEGATE"
        and not {int(tensor) for tensor in op["outputs"]} & produced
    ]
    outside = {}
    changed = True
    while changed:
        changed = False
        for op in list(pending):
            if {int(tensor) for tensor in op["outputs"]} & needed:
                outside[op["op_name"]] = outside.get(op["op_name"], 0) + 1
                needed |= {int(tensor) for tensor in op["inputs"]}
                pending.remove(op)
                changed = True
    return dict(sorted(outside.items()))


def signature_details(content):
    """Inputs and outputs of a TFLite file's `serving_default` signature.

    Args:
        content: the file's bytes, or its path.

    Returns:
        `{"inputs": [...], "outputs": [...]}`, each entry a dict with
        `name`, `shape` (-1 for a dynamic dimension) and `dtype`, sorted by
        name.
    """
    if isinstance(content, (str, os.PathLike)):
        runner = _interpreter(model_path=os.fspath(content)).get_signature_runner(
            SIGNATURE_KEY
        )
    else:
        runner = _interpreter(model_content=content).get_signature_runner(SIGNATURE_KEY)

    def describe(details):
        return [
            {
                "name": name,
                "shape": [int(side) for side in detail["shape_signature"]],
                "dtype": np.dtype(detail["dtype"]).name,
            }
            for name, detail in sorted(details.items())
        ]

    return {
        "inputs": describe(runner.get_input_details()),
        "outputs": describe(runner.get_output_details()),
    }


def _check_signature(content, model):
    details = signature_details(content)
    inputs = sorted(entry["name"] for entry in details["inputs"])
    outputs = sorted(entry["name"] for entry in details["outputs"])
    if inputs != sorted(model.input) or outputs != sorted(model.output):
        raise ExportError(
            f"The TFLite signature {SIGNATURE_KEY!r} has inputs {inputs} and "
            f"outputs {outputs}; the model has inputs {sorted(model.input)} and "
            f"outputs {sorted(model.output)}. Name every `keras.Input` and "
            "return a dict of outputs."
        )


def _as_run(run):
    from mmzoo.runs import as_run

    return as_run(run)


def _sample_rows(manifest, count, seed=0):
    """A manifest of `count` rows drawn at random (in manifest order)."""
    if len(manifest) <= count:
        return manifest
    rows = np.sort(np.random.default_rng(seed).choice(len(manifest), count, False))
    return manifest.take(rows)


def _single_examples(batches, names):
    """Input dicts of batch 1 from batches of `(features, label)` or features."""
    for batch in batches:
        features = batch[0] if isinstance(batch, (tuple, list)) else batch
        arrays = {name: np.asarray(features[name]) for name in names}
        for index in range(len(arrays[names[0]])):
            yield {name: array[index : index + 1] for name, array in arrays.items()}


def calibration_examples(run, representative=None, num_calibration=200, seed=0):
    """The examples `quantize='int8'` calibrates on: a generator function.

    Args:
        run: a `Run`.
        representative: `None` for the run's training manifest
            (`run.config["train"]`), a manifest path or `Manifest`, or an
            iterable of batches (`(features, label)` pairs or feature dicts,
            e.g. a `make_dataset` pipeline).
        num_calibration: the most examples to use; a manifest is sampled at
            random (with `seed`) down to this many rows.
        seed: the sampling seed.

    Returns:
        A function returning a generator of input dicts of batch 1, as the
        TFLite converter's `representative_dataset` expects.
    """
    from mmzoo.data.dataset import make_dataset
    from mmzoo.data.manifest import Manifest
    from mmzoo.data.sources import read_manifest

    if (
        not isinstance(num_calibration, int)
        or isinstance(num_calibration, bool)
        or num_calibration < 1
    ):
        raise ValueError(
            "`num_calibration` must be a positive integer. "
            f"Received: num_calibration={num_calibration!r}"
        )
    names = sorted(run.model.input)
    if representative is None:
        representative = run.config.get("train")
        if representative is None:
            raise ValueError(
                "quantize='int8' calibrates on the run's training manifest, but "
                f"{run.directory}'s configuration names none: pass "
                "`representative=`, a manifest path or a dataset."
            )
        if not os.path.exists(representative):
            raise FileNotFoundError(
                f"quantize='int8' calibrates on the run's training manifest, "
                f"{representative!r} (from {run.directory}'s configuration), "
                "which is not there (a path relative to where training ran?): "
                "pass `representative=`, a manifest path or a dataset."
            )
    if isinstance(representative, (str, os.PathLike, Manifest)):
        manifest = representative
        if not isinstance(manifest, Manifest):
            manifest = read_manifest(
                manifest, run.config.get("columns"), run.task.label_columns
            )
        manifest = _sample_rows(manifest, num_calibration, seed)
        batches = make_dataset(
            manifest,
            run.tokenizer,
            run.image_size,
            batch_size=1,
            training=False,
            labels=run.labels,
            task=run.task,
            resize=run.resize,
            # Calibration only needs examples: bad rows are skipped, not fatal.
            max_bad_fraction=1.0,
            unknown_labels="skip",
        )
    else:
        batches = representative

    def examples():
        count = 0
        for example in _single_examples(batches, names):
            if count == num_calibration:
                break
            count += 1
            yield {name: example[name] for name in names}
        if count == 0:
            raise ValueError("The calibration data holds no examples.")

    return examples


def export_tflite(
    run,
    path,
    quantize="none",
    representative=None,
    num_calibration=200,
    batch_size=None,
):
    """Write a run as a `.tflite` file with what an app needs beside it.

    Tokenization stays outside the graph (the shipped
    `pure_python_tokenizer.py` does it for word tokenizers; an end-to-end
    file with TF Text custom ops is not offered), and so does image
    decoding: the file holds TFLite builtin ops only, which is checked.

    A contrastive run writes its two encoders instead, `<stem>.image.tflite`
    and `<stem>.text.tflite` (see the module docstring). An ensemble
    (`mmzoo.ensembles.Ensemble`) writes one file taking every member's
    inputs (`mmzoo.export.ensemble.export_ensemble_tflite`).

    Args:
        run: a `Run` or an `Ensemble` (`mmzoo.runs.load_run`), or a run
            folder.
        path: the `.tflite` file to write; its folder receives
            `labels.txt`, `vocabulary.txt`, `tokenizer.json`,
            `pure_python_tokenizer.py` and `<name>.json`.
        quantize: one of `QUANTIZATIONS` (see the module docstring).
        representative: for `"int8"`, the calibration data (see
            `calibration_examples`); default the run's training manifest.
        num_calibration: the most calibration examples (`"int8"`).
        batch_size: `None` for a dynamic batch; an int fixes it (needed by
            the `bilstm` text tower).

    Returns:
        A report dict: `path`, `bytes`, `float32_bytes` (the float32 file's
        size, converted too when `quantize` is not "none"), `size_ratio`
        (`bytes / float32_bytes`), `quantize`, `ops`, `calibration_examples`
        (int8) and `files` (everything written). For a contrastive run:
        `quantize`, `encoders` (`{"image": ..., "text": ...}`, each with
        `path`, `bytes`, `float32_bytes`, `size_ratio`, `ops`),
        `embedding_width`, `calibration_examples` (int8: per encoder) and
        `files`.

    Example:

    >>> report = export_tflite("runs/gated", "app/model.tflite", quantize="int8")
    >>> sorted(os.listdir("app"))  # doctest: +NORMALIZE_WHITESPACE
    ['labels.txt', 'model.json', 'model.tflite', 'pure_python_tokenizer.py',
     'tokenizer.json', 'vocabulary.txt']
    """
    check_choice("quantize", quantize, QUANTIZATIONS)
    path = os.fspath(path)
    if not path.endswith(".tflite"):
        raise ValueError(f"`path` must end with '.tflite'. Received: path={path!r}")
    run = _as_run(run)
    from mmzoo.ensembles import Ensemble

    if isinstance(run, Ensemble):
        from mmzoo.export.ensemble import export_ensemble_tflite

        return export_ensemble_tflite(
            run, path, quantize, representative, num_calibration, batch_size
        )
    if run.tokenizer is None and "tokens" in run.model.input:
        raise ExportError(f"{run.directory} has no tokenizer for the `tokens` input.")
    if not run.task.fused:
        return _export_encoders(
            run, path, quantize, representative, num_calibration, batch_size
        )
    _check_convertible(run.model)
    examples = None
    if quantize == "int8":
        examples = calibration_examples(run, representative, num_calibration)
    # The file returns the modality weights of fusions that compute them.
    content, report = _converted(
        run.explained_model(), path, quantize, examples, batch_size
    )
    files = [path, *_write_companions(run, path, content, quantize, batch_size)]
    return {**report, "quantize": quantize, "files": files}


def _converted(model, path, quantize, examples, batch_size):
    """Convert `model`, write it to `path`; its bytes and its report.

    `examples` is `calibration_examples`' function (int8), whose input
    dicts are cut down to the model's inputs.
    """
    representative_dataset = None
    calibrated = []
    if examples is not None:
        names = sorted(model.input)

        def representative_dataset():
            for example in examples():
                calibrated.append(1)
                yield {name: example[name] for name in names}

    content = convert(model, quantize, representative_dataset, batch_size)
    if quantize == "none":
        float32_bytes = len(content)
    else:
        float32_bytes = len(convert(model, "none", batch_size=batch_size))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as file:
        file.write(content)
    report = {
        "path": path,
        "bytes": len(content),
        "float32_bytes": float32_bytes,
        "size_ratio": len(content) / float32_bytes,
        "ops": list_ops(content),
    }
    if examples is not None:
        report["calibration_examples"] = len(calibrated)
    return content, report


def encoder_paths(path):
    """Where `export_tflite(contrastive_run, path)` writes the two encoders.

    Example:

    >>> encoder_paths("app/pairs.tflite")
    {'image': 'app/pairs.image.tflite', 'text': 'app/pairs.text.tflite'}
    """
    stem = os.path.splitext(os.fspath(path))[0]
    return {modality: f"{stem}.{modality}.tflite" for modality in MODALITIES}


def _export_encoders(run, path, quantize, representative, num_calibration, batch_size):
    """`export_tflite` for a contrastive run: one file per encoder."""
    halves = encoder_models(run.model)
    for half in halves.values():
        _check_convertible(half)
    examples = None
    if quantize == "int8":
        examples = calibration_examples(run, representative, num_calibration)
    paths = encoder_paths(path)
    contents, reports = {}, {}
    for modality, half in halves.items():
        contents[modality], reports[modality] = _converted(
            half, paths[modality], quantize, examples, batch_size
        )
    files = [
        *paths.values(),
        *_write_encoder_companions(run, path, contents, quantize, batch_size),
    ]
    report = {
        "quantize": quantize,
        "encoders": reports,
        "embedding_width": embedding_width(run.model),
        "files": files,
    }
    if quantize == "int8":
        report["calibration_examples"] = reports["image"]["calibration_examples"]
    return report


def _write_companions(run, path, content, quantize, batch_size):
    """labels.txt, the tokenizer files, the Python tokenizer and the card."""
    folder = os.path.dirname(os.path.abspath(path))
    # labels.txt, or labels/<head>.txt for a model with several heads.
    written = run.task.save_labels(run.labels, folder)
    tokenizer_files, tokenizer_card = _write_tokenizer(run, folder)
    written += tokenizer_files
    signature = signature_details(content)
    card = {
        "format": "tflite",
        "model": os.path.basename(path),
        "signature": SIGNATURE_KEY,
        "inputs": signature["inputs"],
        "outputs": signature["outputs"],
        "task": run.task.name,
        "labels": LABELS_FILE if run.labels is not None else None,
        **_preparation_card(run, quantize, batch_size, tokenizer_card),
        "ops": list_ops(content),
    }
    if run.task.heads:
        files = run.task.label_files()
        card["labels"] = None
        card["heads"] = {
            head.name: {
                "task": head.task.name,
                "weight": head.weight,
                "output": head.name,
                "labels": files.get(head.name),
            }
            for head in run.task.heads
        }
    written.append(_write_card(path, card))
    return written


def _write_encoder_companions(run, path, contents, quantize, batch_size):
    """A dual encoder's tokenizer files, Python tokenizer and card."""
    folder = os.path.dirname(os.path.abspath(path))
    written, tokenizer_card = _write_tokenizer(run, folder)
    encoders = {}
    for modality, content in contents.items():
        signature = signature_details(content)
        encoders[modality] = {
            "model": os.path.basename(encoder_paths(path)[modality]),
            "signature": SIGNATURE_KEY,
            "inputs": signature["inputs"],
            "outputs": signature["outputs"],
            "ops": list_ops(content),
        }
    card = {
        "format": "tflite",
        "task": run.task.name,
        "encoders": encoders,
        "embedding_width": embedding_width(run.model),
        # Deep CCA's canonical coordinates are not unit vectors; rank by
        # cosine similarity either way.
        "normalized": not getattr(run.model, "canonical_projections", ()),
        **_preparation_card(run, quantize, batch_size, tokenizer_card),
    }
    written.append(_write_card(path, card))
    return written


def _write_tokenizer(run, folder):
    """The tokenizer's files (and for word tokenizers its pure-Python twin)
    in `folder`: the paths written, and what the card says of them."""
    from mmzoo.data import pure_python_tokenizer

    if run.tokenizer is None:
        return [], None
    run.tokenizer.save(folder)
    written = [
        os.path.join(folder, pure_python_tokenizer.VOCABULARY_FILE),
        os.path.join(folder, pure_python_tokenizer.CONFIG_FILE),
    ]
    with open(os.path.join(folder, pure_python_tokenizer.CONFIG_FILE)) as file:
        tokenizer_config = json.load(file)
    tokenizer_card = {
        "type": tokenizer_config["type"],
        "max_tokens": tokenizer_config.get("max_tokens"),
        "vocabulary": pure_python_tokenizer.VOCABULARY_FILE,
        "config": pure_python_tokenizer.CONFIG_FILE,
    }
    if tokenizer_config["type"] == "word":
        # The pure-Python twin of the training tokenizer: same ids.
        target = os.path.join(folder, PYTHON_TOKENIZER)
        shutil.copyfile(pure_python_tokenizer.__file__, target)
        written.append(target)
        tokenizer_card["python"] = PYTHON_TOKENIZER
        tokenizer_card["usage"] = (
            "from pure_python_tokenizer import PythonWordTokenizer; "
            "ids = PythonWordTokenizer.from_directory(folder).encode([text]) "
            "-> int32 array of shape (1, max_tokens)"
        )
    else:
        tokenizer_card["python"] = None
        tokenizer_card["usage"] = (
            "BERT WordPiece (lower-case and accents as tokenizer.json says; "
            "[CLS] ... [SEP], padded with [PAD] = 0); mmzoo ships no "
            "pure-Python WordPiece tokenizer."
        )
    return written, tokenizer_card


def _preparation_card(run, quantize, batch_size, tokenizer_card):
    return {
        "image_size": run.image_size,
        "resize": run.resize,
        "quantize": quantize,
        "batch_size": batch_size,
        "preprocessing": {
            "image": list(IMAGE_PREPROCESSING),
            "image_reference": "mmzoo.data.images.prepare_image",
            "text": tokenizer_card,
        },
    }


def _write_card(path, card):
    """`<name>.json` beside the `.tflite` file(s) of `path`."""
    name = os.path.splitext(os.path.basename(path))[0]
    card_path = os.path.join(os.path.dirname(os.path.abspath(path)), f"{name}.json")
    with open(card_path, "w", encoding="utf-8") as file:
        json.dump(card, file, indent=2, ensure_ascii=False)
        file.write("\n")
    return card_path


def _feature_batches(features):
    if isinstance(features, dict):
        return [features]
    return features


def _cosine(a, b):
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    # Two zero vectors agree; one zero vector does not.
    both_zero = norms == 0
    same = np.all(a == b, axis=1)
    return np.where(
        both_zero, same.astype(np.float64), dots / np.where(norms, norms, 1)
    )


def parity(run_or_model, tflite_path, features):
    """Compare a `.tflite` file with its Keras model on the same inputs.

    The file runs in the LiteRT interpreter (`ai_edge_litert`, default
    XNNPACK delegate) through its `serving_default` signature runner, as an
    app runs it. For a dual encoder, the file is one of its encoders (the
    one taking the file's inputs) and compared with that half.

    Args:
        run_or_model: a `Run` or a zoo model (its outputs, with the
            modality weights of fusions that compute them, are compared).
        tflite_path: the `.tflite` file.
        features: an input dict of arrays (one batch), or an iterable of
            batches: `(features, label)` pairs or feature dicts (e.g. a
            `make_dataset` pipeline).

    Returns:
        A dict: `examples`, `output` (the compared output, "probabilities"
        or "predictions", or an encoder's "image_embedding" or
        "text_embedding"), `max_abs_diff` (over that output),
        `cosine_similarity` (mean over examples), `top1_agreement` (the
        fraction of examples answered alike, `Task.agreement`: the same
        arg-max; for one sigmoid unit, the same side of 0.5; for
        multilabel, the same label set at 0.5; `None` for regression and
        embeddings) and `max_abs_diff_by_output` (every output).

    Example:

    >>> dataset = make_dataset("val.csv", run.tokenizer, run.image_size,
    ...                        training=False, labels=run.labels)
    >>> parity(run, "app/model.tflite", dataset)["top1_agreement"]
    1.0
    """
    task, model = _task_and_model(run_or_model)
    runner = _interpreter(model_path=os.fspath(tflite_path)).get_signature_runner(
        SIGNATURE_KEY
    )
    got, want = _both_outputs(task, model, runner, _feature_batches(features))
    main = task.output_name if task.fused else next(iter(want))
    report = _parity_report(task, got, want, main)
    if task.heads:
        report["agreement_by_head"] = {
            head.name: head.task.agreement(got[head.name], want[head.name])
            for head in task.heads
        }
    return report


def _task_and_model(run_or_model):
    from mmzoo.tasks import get_task

    if hasattr(run_or_model, "task") and hasattr(run_or_model, "model"):
        return run_or_model.task, run_or_model.model
    model = run_or_model
    task = getattr(model, "task", None)
    if task is None:
        outputs = getattr(model, "output", None)
        dual = isinstance(outputs, dict) and "image_embedding" in outputs
        task = get_task("contrastive" if dual else "multiclass")
    return task, model


def _both_outputs(task, model, runner, batches):
    """The file's and the Keras model's outputs on every batch, stacked."""
    from mmzoo.builder import explained_model

    input_details = runner.get_input_details()
    if not task.fused:
        halves = encoder_models(model).values()
        model = next(
            (half for half in halves if sorted(half.input) == sorted(input_details)),
            None,
        )
        if model is None:
            raise ValueError(
                f"The TFLite file takes {sorted(input_details)}, which neither of "
                "the dual encoder's halves takes: a file of another model?"
            )
    elif "modality_weights" in runner.get_output_details():
        model = explained_model(model)
    fixed_batch = {
        int(detail["shape_signature"][0]) for detail in input_details.values()
    } - {-1}
    step = fixed_batch.pop() if fixed_batch else None
    got, want = {}, {}
    for batch in batches:
        batch = batch[0] if isinstance(batch, (tuple, list)) else batch
        inputs = {
            name: np.asarray(batch[name]).astype(detail["dtype"], copy=False)
            for name, detail in input_details.items()
        }
        size = len(next(iter(inputs.values())))
        reference = model(inputs, training=False)
        for start in range(0, size, step or size):
            chunk = {
                name: array[start : start + (step or size)]
                for name, array in inputs.items()
            }
            for name, value in runner(**chunk).items():
                got.setdefault(name, []).append(np.array(value))
        for name, value in reference.items():
            want.setdefault(name, []).append(np.asarray(value))
    if not want:
        raise ValueError("`features` holds no examples.")
    got = {name: np.concatenate(values) for name, values in got.items()}
    want = {name: np.concatenate(values) for name, values in want.items()}
    return got, want


def _parity_report(task, got, want, main):
    by_output = {
        name: float(np.max(np.abs(got[name].astype(np.float64) - want[name])))
        for name in want
    }
    tflite, keras_values = got[main], want[main]
    # A model with several heads: answered alike by every head.
    both = (got, want) if task.heads else (tflite, keras_values)
    return {
        "examples": len(keras_values),
        "output": main,
        "max_abs_diff": by_output[main],
        "cosine_similarity": float(np.mean(_cosine(tflite, keras_values))),
        "top1_agreement": task.agreement(*both),
        "max_abs_diff_by_output": by_output,
    }


def retrieval_parity(run, files, features, image_ids=None, text_ids=None):
    """A dual encoder's two `.tflite` files against Keras, and retrieval.

    Each encoder file runs in the LiteRT interpreter on the same rows as
    its Keras half (`parity`), and cross-modal retrieval over the rows
    (`mmzoo.metrics.retrieval_metrics`: Recall@1/5/10 both ways) is scored
    on the files' embeddings and on Keras', so that a quantisation's cost
    is measured in what the embeddings are for.

    Args:
        run: a contrastive `Run` (or its model).
        files: the encoder files: `export_tflite`'s report for a
            contrastive run, or `{"image": path, "text": path}`.
        features: rows as in `parity`, e.g. a `make_dataset(...,
            task="contrastive", training=False)` pipeline, whose targets
            give the ids (rows showing one image, or one text).
        image_ids, text_ids: the rows' ids, when `features` holds none.

    Returns:
        A dict: `examples`; `image` and `text`, each encoder's `parity`
        report (`cosine_similarity`, `max_abs_diff`, ...); `keras` and
        `tflite`, the two retrieval metrics dicts; `recall_difference`,
        tflite minus Keras for every `*_R@K`.

    Example:

    >>> report = export_tflite(run, "app/pairs.tflite", quantize="int8")
    >>> data = make_dataset("val.csv", run.tokenizer, run.image_size,
    ...                     training=False, task="contrastive")
    >>> result = retrieval_parity(run, report, data)
    >>> result["image"]["cosine_similarity"], result["recall_difference"]
    (0.9987, {'image_to_text_R@1': 0.0, ..., 'text_to_image_R@10': 0.0})
    """
    from mmzoo.metrics import retrieval_metrics

    task, model = _task_and_model(run)
    if task.fused:
        raise ValueError(
            f"`retrieval_parity` compares a dual encoder's two files; this is a "
            f"{task.name} model. Use `parity`."
        )
    if "encoders" in files:
        files = {
            modality: report["path"] for modality, report in files["encoders"].items()
        }
    batches = list(_feature_batches(features))
    ids = _batch_ids(batches)
    image_ids = ids.get("image_ids") if image_ids is None else image_ids
    text_ids = ids.get("text_ids") if text_ids is None else text_ids
    embeddings = {"keras": {}, "tflite": {}}
    result = {}
    for modality in MODALITIES:
        runner = _interpreter(model_path=os.fspath(files[modality]))
        runner = runner.get_signature_runner(SIGNATURE_KEY)
        got, want = _both_outputs(task, model, runner, batches)
        name = f"{modality}_embedding"
        result[modality] = _parity_report(task, got, want, name)
        embeddings["tflite"][modality] = got[name]
        embeddings["keras"][modality] = want[name]
    for source, arrays in embeddings.items():
        result[source] = retrieval_metrics(
            arrays["image"], arrays["text"], image_ids, text_ids
        )
    result["examples"] = result["image"]["examples"]
    result["recall_difference"] = {
        name: result["tflite"][name] - result["keras"][name]
        for name in result["keras"]
        if "_R@" in name and not name.startswith("random")
    }
    return result


def _batch_ids(batches):
    """The `image_ids` and `text_ids` in batches' targets, concatenated."""
    targets = [
        batch[1]
        for batch in batches
        if isinstance(batch, (tuple, list)) and isinstance(batch[1], dict)
    ]
    if not targets or len(targets) != len(batches):
        return {}
    return {
        key: np.concatenate([np.asarray(target[key]) for target in targets])
        for key in ("image_ids", "text_ids")
        if all(key in target for target in targets)
    }
