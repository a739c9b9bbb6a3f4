"""The test harness: registering a component or a task is enough to test it.

What keras-hub's TestCase is for its models, for mmzoo's:

- `run_layer_test(layer, inputs)`: symbolic and eager shapes agree, the
  config and Keras serialization round-trip to the same outputs, padding
  under a mask changes nothing, gradients reach every input, and the layer
  computes in float16 under `mixed_float16`.
- `run_model_test(**build_arguments)`: a zoo model builds with its task's
  output, learns (a gradient step lowers the loss), is used every way a
  plain Keras user uses a model (`run_plain_keras_test`), and survives a
  `.keras` round trip.
- `run_export_test(run, images, texts)`: the model as a SavedModel served
  by a process that imports only TensorFlow, and as a TFLite file in the
  LiteRT interpreter, both matching Keras. `probe_signatures` calls any
  signatures in such a process (a dual encoder's embeddings and searches).

The generic tests (test_zoo.py, test_fusion_layers.py, test_export_coverage.py)
call these over `mmzoo.registry`'s tables, so a new tower, fusion or task is
tested the moment it is registered.

Training steps here run eagerly (`run_eagerly=True`, or a `GradientTape`):
tracing a `fit` step for every zoo combination would cost seconds each;
test_training.py covers traced `fit` itself.
"""

import atexit
import json
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np

import mmzoo
from mmzoo.data.manifest import LabelVocabulary
from mmzoo.tasks import get_task

# The tasks whose models fuse both modalities (`build_model`); the others
# (contrastive: a dual encoder) have tests of their own.
FUSED_TASKS = sorted(name for name, task in mmzoo.registry.TASKS.items() if task.fused)

# Sizes small enough to build and step every zoo combination quickly.
TINY = {
    "num_classes": 3,
    "image_size": 32,
    "max_tokens": 8,
    "vocab_size": 20,
    "embedding_dim": 8,
    "text_units": 8,
    "text_heads": 2,
    "text_layers": 1,
    "fusion_units": 8,
    "fusion_heads": 2,
    "head_units": (8,),
    "image_filters": (4, 8),
    "dropout": 0.0,
    "fusion_dropout": 0.0,
    "text_dropout": 0.0,
}
LABEL_NAMES = ("circle", "square", "triangle")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


# === Data ===


def tiny_batch(batch=4, image_size=32, max_tokens=8, vocab_size=20, seed=0):
    """A fixed batch of raw pixels, right-padded token ids and class indices."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, image_size, image_size, 3)).astype("float32")
    tokens = np.zeros((batch, max_tokens), "int32")
    for row in range(batch):
        length = 1 + row % max_tokens
        tokens[row, :length] = rng.integers(1, vocab_size, length)
    labels = np.arange(batch) % 3
    return {"image": images, "tokens": tokens}, labels


def task_batch(task, batch=8, seed=0, **sizes):
    """Inputs, targets and labels for a task, with a learnable signal.

    The targets come from the task itself (`Task.example_labels`, then
    `Task.targets`, as a manifest's labels would), and each example's
    tokens and brightness depend on its target, so that a model can learn
    them in a few steps.

    Returns:
        `(inputs, targets, labels, num_classes)`: `labels` is the
        `LabelVocabulary` (`None` for tasks without classes).
    """
    task = get_task(task)
    inputs, _ = tiny_batch(batch, seed=seed, **sizes)
    raw = task.example_labels(batch, LABEL_NAMES, seed)
    labels = LabelVocabulary.fit(raw, task.multilabel) if task.classes else None
    targets = task.targets(raw, labels)
    num_classes = task.num_classes(labels, targets)
    # Examples with the same target share a signal value: their tokens and
    # their brightness.
    _, signal = np.unique(targets.reshape(batch, -1), axis=0, return_inverse=True)
    signal = signal.reshape(-1) % 6
    tokens = inputs["tokens"]
    inputs["tokens"] = np.where(tokens > 0, 2 + signal[:, None], 0).astype("int32")
    noise = inputs["image"] * 0.2
    inputs["image"] = (noise + 40.0 * signal[:, None, None, None]).astype("float32")
    return inputs, targets, labels, num_classes


# === Steps ===


def main_output(model):
    return getattr(model, "task", get_task("multiclass")).output_name


def loss_of(model, inputs, targets, training=False, task=None):
    task = get_task(task or getattr(model, "task", "multiclass"))
    output = model(inputs, training=training)[task.output_name]
    return keras.ops.mean(keras.losses.get(task.loss)(targets, output))


def gradients(model, inputs, targets, training=False):
    """`(variable, gradient)` pairs of the task's loss on a batch."""
    import tensorflow as tf  # harness is also imported by JAX-backend runs

    with tf.GradientTape() as tape:
        loss = loss_of(model, inputs, targets, training=training)
    variables = model.trainable_variables
    return list(zip(variables, tape.gradient(loss, variables), strict=True))


def gradient_step(model, inputs, targets, learning_rate=0.01):
    """One SGD step on the fixed batch.

    The loss is taken in inference mode, the mode `assert_step_lowers_loss`
    measures it in (batch-norm statistics differ in training mode).
    """
    pairs = gradients(model, inputs, targets)
    keras.optimizers.SGD(learning_rate).apply_gradients(
        [(g, v) for v, g in pairs if g is not None]
    )


def assert_step_lowers_loss(model, inputs, targets):
    """A gradient step lowers the loss on a fixed batch.

    Backtracks over step sizes, as a line search would: the negative gradient
    is a descent direction whenever the gradients are right, but steep layers
    (a bilinear pooling's square root) need a small step to show it.
    """
    before = float(loss_of(model, inputs, targets))
    weights = model.get_weights()
    losses = []
    for learning_rate in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        gradient_step(model, inputs, targets, learning_rate)
        losses.append(float(loss_of(model, inputs, targets)))
        if losses[-1] < before:
            return
        model.set_weights(weights)
    raise AssertionError(f"no gradient step lowered the loss {before}: {losses}")


# === Comparisons ===


def assert_outputs_close(first, second, atol=1e-6):
    assert sorted(first) == sorted(second)
    for key in first:
        np.testing.assert_allclose(
            np.asarray(first[key]), np.asarray(second[key]), atol=atol, err_msg=key
        )


def assert_saving_round_trip(model, inputs, tmp_path):
    """`model.save` then `mmzoo.load_model` gives the same model and outputs.

    The outputs are eager inference calls: `predict` would trace a function
    for each of the two models (seconds for a deep tower), and `predict` on
    a reloaded model is tested once, bit for bit, in test_saving.py.
    """
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    restored = mmzoo.load_model(path)
    assert type(restored) is type(model)
    assert getattr(restored, "build_arguments", None) == getattr(
        model, "build_arguments", None
    )
    assert_outputs_close(
        model(inputs, training=False), restored(inputs, training=False)
    )
    return restored


# === Layers ===


def run_layer_test(
    layer_factory,
    inputs,
    masks=None,
    padded_inputs=None,
    padded_masks=None,
    mixed_precision=True,
):
    """The contract every mmzoo layer keeps, on a tiny batch.

    Args:
        layer_factory: a function returning a new, unbuilt layer.
        inputs: the layer's positional input (a list of arrays for fusions).
        masks: optional `masks=` call argument (fusions over sequences).
        padded_inputs, padded_masks: the same inputs with extra masked
            steps holding garbage; the output must not change.
        mixed_precision: also check it under `mixed_float16`.

    Returns:
        The layer's eager output on `inputs`.
    """
    import tensorflow as tf

    kwargs = {} if masks is None else {"masks": masks}
    layer = layer_factory()
    output = layer(inputs, **kwargs)
    # Symbolic and eager shapes agree (compute_output_shape / spec).
    symbolic = layer_factory()(
        keras.tree.map_structure(
            lambda x: keras.Input(x.shape[1:], dtype=x.dtype), inputs
        ),
        **(
            {}
            if masks is None
            else {
                "masks": keras.tree.map_structure(
                    lambda m: (
                        None if m is None else keras.Input(m.shape[1:], dtype="bool")
                    ),
                    masks,
                )
            }
        ),
    )
    assert [tuple(t.shape)[1:] for t in keras.tree.flatten(symbolic)] == [
        tuple(t.shape)[1:] for t in keras.tree.flatten(output)
    ]

    # Config and serialization round trips, weights copied: same outputs.
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(layer)
    restored(inputs, **kwargs)
    restored.set_weights(layer.get_weights())
    for a, b in zip(
        keras.tree.flatten(output),
        keras.tree.flatten(restored(inputs, **kwargs)),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)

    # Masked padding changes nothing.
    if padded_inputs is not None:
        padded = layer(padded_inputs, masks=padded_masks)
        for a, b in zip(
            keras.tree.flatten(output), keras.tree.flatten(padded), strict=True
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)

    # Gradients reach every input. A random weighted sum of the outputs: a
    # plain sum is identically zero after a LayerNorm.
    tensors = [tf.constant(x) for x in keras.tree.flatten(inputs)]
    with tf.GradientTape() as tape:
        for tensor in tensors:
            tape.watch(tensor)
        first = keras.tree.flatten(
            layer(keras.tree.pack_sequence_as(inputs, tensors), **kwargs)
        )[0]
        direction = np.random.default_rng(1).normal(size=first.shape)
        objective = tf.reduce_sum(first * tf.constant(direction, first.dtype))
    for index, gradient in enumerate(tape.gradient(objective, tensors)):
        assert gradient is not None, f"no gradient reaches input {index}"
        values = np.asarray(gradient)
        assert np.isfinite(values).all(), f"non-finite gradient for input {index}"
        assert np.abs(values).max() > 1e-7, f"zero gradient for input {index}"

    if mixed_precision:
        policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_float16")
        try:
            low = layer_factory()
            assert low.compute_dtype == "float16"
            result = low(inputs, **kwargs)
            assert all(v.dtype == "float32" for v in low.weights)
            for tensor in keras.tree.flatten(result):
                assert keras.backend.standardize_dtype(tensor.dtype) == "float16"
                assert np.isfinite(np.asarray(tensor, "float32")).all()
        finally:
            keras.config.set_dtype_policy(policy)
    return output


def run_layer_config_test(layer, inputs, **call_kwargs):
    """`get_config` / `from_config` rebuilds a layer giving the same output."""
    first = layer(inputs, **call_kwargs)
    clone = type(layer).from_config(layer.get_config())
    clone(inputs, **call_kwargs)
    clone.set_weights(layer.get_weights())
    second = clone(inputs, **call_kwargs)
    for a, b in zip(keras.tree.flatten(first), keras.tree.flatten(second), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    return first


# === Models ===


def run_model_test(tmp_path, plain_keras=True, **build_arguments):
    """The contract every zoo model keeps; returns the model.

    Builds `mmzoo.build_model(**TINY, **build_arguments)` for its task's
    targets, checks its output, the plain-Keras ways of training it
    (`run_plain_keras_test`, whose custom loop lowers the loss) or else that
    a gradient step lowers the loss, and the `.keras` round trip (with its
    build arguments).
    """
    task = get_task(build_arguments.get("task", "multiclass"))
    # The plain-Keras ways need a few examples to learn from; a tower test
    # needs the fewest (large towers are slow on a CPU).
    inputs, targets, _, num_classes = task_batch(task, batch=8 if plain_keras else 4)
    arguments = {**TINY, "num_classes": num_classes, **build_arguments}
    model = mmzoo.build_model(**arguments)
    assert isinstance(model, mmzoo.MultimodalModel)
    outputs = model(inputs)
    assert sorted(outputs) == [task.output_name]
    output = np.asarray(outputs[task.output_name])
    assert output.shape == (len(targets), task.num_outputs(num_classes))
    assert np.isfinite(output).all()
    assert model.build_arguments["task"] == task.name
    if plain_keras:
        # Its custom loop checks that the loss goes down.
        run_plain_keras_test(model, inputs, targets)
    else:
        assert_step_lowers_loss(model, inputs, targets)
    assert_saving_round_trip(model, inputs, tmp_path)
    return model


# The short names users write for the tasks' metrics.
_ALIASES = {"sparse_categorical_accuracy": "accuracy", "mean_absolute_error": "mae"}


def _metric_by_hand(task, targets, output):
    """The compiled metric recomputed from `predict`'s output."""
    name = task.metrics[0]
    return float(np.mean(np.asarray(keras.metrics.get(name)(targets, output))))


class _StopWhenChanged(keras.callbacks.Callback):
    """Ends `fit` once the metric has changed (at most `epochs` epochs)."""

    def __init__(self, metric):
        super().__init__()
        self.metric = metric
        self.values = []

    def on_epoch_end(self, epoch, logs=None):
        self.values.append((logs or {}).get(self.metric))
        if len(set(self.values)) > 1:
            self.model.stop_training = True


def run_plain_keras_test(model, inputs, targets, epochs=12):
    """Every way a plain Keras user trains a model works and reports metrics.

    Compile with the output-named dicts and with a bare loss and metric
    list; fit on `(x, y)` and on `(x, {output: y})`, from NumPy and from
    tf.data; a custom loop calling `model(x, training=True)`; `evaluate`
    and `predict`. Each way starts from the same weights and trains on one
    full batch per epoch, so the metric can be checked exactly: it must
    appear in the history for every epoch, its first value must be the
    metric of the training-mode output before the first update, it must
    change (training stops once it has, within `epochs`), and `evaluate`
    must report the metric of `predict`'s output.
    """
    import tensorflow as tf

    task = model.task
    out, name = task.output_name, task.metrics[0]
    alias = _ALIASES.get(name, name)
    named = ({"loss": {out: task.loss}, "metrics": {out: [name]}}, name)
    bare = ({"loss": task.loss, "metrics": [alias]}, alias)
    batch = len(targets)
    dataset = tf.data.Dataset.from_tensor_slices((inputs, targets)).batch(batch)
    named_dataset = tf.data.Dataset.from_tensor_slices((inputs, {out: targets})).batch(
        batch
    )
    # Each factor (named or bare compile; y or {output: y}; NumPy or
    # tf.data) meets each other one.
    ways = {
        "named dicts, fit(x, y)": (named, (inputs, targets)),
        "named dicts, tf.data of (x, {output: y})": (named, (named_dataset,)),
        "bare loss, tf.data of (x, y)": (bare, (dataset,)),
        "bare loss, fit(x, {output: y})": (bare, (inputs, {out: targets})),
    }
    initial = model.get_weights()
    for way, ((arguments, metric), data) in ways.items():
        model.set_weights(initial)
        model.compile(
            optimizer=keras.optimizers.Adam(2e-2), run_eagerly=True, **arguments
        )
        first = _metric_by_hand(task, targets, model(inputs, training=True)[out])
        model.set_weights(initial)  # the call above moved batch-norm statistics
        fit_kwargs = {} if len(data) == 1 else {"batch_size": batch}
        history = model.fit(
            *data,
            epochs=epochs,
            verbose=0,
            callbacks=[_StopWhenChanged(metric)],
            **fit_kwargs,
        ).history
        epochs_run = len(history["loss"])
        assert len(history.get(metric, ())) == epochs_run, (way, history)
        assert np.isfinite(history["loss"]).all(), (way, history)
        assert history[metric][0] == np_approx(first), (way, history, first)
        after = model.evaluate(inputs, targets, verbose=0, return_dict=True)
        predicted = model.predict(inputs, verbose=0)
        assert sorted(predicted) == [out], way
        assert after[metric] == np_approx(
            _metric_by_hand(task, targets, predicted[out])
        ), (way, after)
        assert len(set(history[metric])) > 1, (way, "the metric never changed", history)

    # A custom loop over `model(x, training=True)`.
    model.set_weights(initial)
    optimizer = keras.optimizers.Adam(1e-2)
    loss_function = keras.losses.get(task.loss)
    losses = []
    for _ in range(3):
        with tf.GradientTape() as tape:
            output = model(inputs, training=True)[out]
            loss = tf.reduce_mean(loss_function(targets, output))
        variables = model.trainable_variables
        optimizer.apply_gradients(
            zip(tape.gradient(loss, variables), variables, strict=True)
        )
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses


def np_approx(value):
    import pytest

    return pytest.approx(value, rel=1e-5, abs=1e-6)


# === Export ===

# Runs in a fresh interpreter: loads a SavedModel with Keras and mmzoo made
# unimportable, calls its signatures on image files and texts, and lists the
# graph's op types by where they are registered. With `--serve` it answers requests
# (one JSON line each on stdin) until stdin closes, so that a test process
# pays for importing TensorFlow once; it then never loads TF Text, so every
# op outside core TensorFlow counts as unregistered.
PROBE = r"""
import glob, importlib.util, json, os, sys, traceback

# `None` in sys.modules makes `import keras` fail; TensorFlow's __init__
# tolerates that (it imports Keras only if it can).
for name in ("keras", "tf_keras", "mmzoo"):
    sys.modules[name] = None
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry


def load_text_ops():
    # TF Text's kernels without its Python package, which imports Keras.
    spec = importlib.util.find_spec("tensorflow_text")
    folder = os.path.join(spec.submodule_search_locations[0], "python", "ops")
    for library in sorted(glob.glob(os.path.join(folder, "*.so"))):
        tf.load_op_library(library)


def probe(folder, request_file, out, text_ops, audit_text):
    with open(os.path.join(folder, "saved_model.pb"), "rb") as file:
        saved = saved_model_pb2.SavedModel.FromString(file.read())
    ops, functions = set(), set()
    for meta_graph in saved.meta_graphs:
        library = meta_graph.graph_def.library
        functions.update(function.signature.name for function in library.function)
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in library.function:
            ops.update(node.op for node in function.node_def)
    ops -= functions  # calls of the graph's own functions
    core = {op for op in ops if op_def_registry.get(op) is not None}
    if text_ops:
        load_text_ops()
    loaded = tf.saved_model.load(folder)
    with open(request_file) as file:
        calls = json.load(file)
    for call, (signature, inputs) in calls.items():
        tensors = {}
        for name, value in inputs.items():
            if isinstance(value, int):
                tensors[name] = tf.constant(value, tf.int32)
            elif name == "image_bytes":
                images = [open(path, "rb").read() for path in value]
                tensors[name] = tf.constant(images, tf.string)
            else:
                tensors[name] = tf.constant(value, tf.string)
        outputs = loaded.signatures[signature](**tensors)
        arrays = {name: value.numpy() for name, value in outputs.items()}
        for name, array in arrays.items():
            if array.dtype == object:  # labels and ids
                arrays[name] = array.astype(str)
        np.savez(os.path.join(out, f"{call}.npz"), **arrays)
    if audit_text and not text_ops:
        load_text_ops()
    text = {op for op in ops - core if op_def_registry.get(op) is not None}
    report = {
        "core": sorted(core),
        "text": sorted(text),
        "unregistered": sorted(ops - core - text),
        "functions": len(functions),
        "importable": [
            n for n in ("keras", "tf_keras", "mmzoo") if sys.modules.get(n)
        ],
    }
    with open(os.path.join(out, "audit.json"), "w") as file:
        json.dump(report, file)


if sys.argv[1] == "--serve":
    for line in sys.stdin:
        try:
            probe(*json.loads(line), text_ops=False, audit_text=False)
            print(json.dumps({"ok": True}), flush=True)
        except Exception:
            answer = {"ok": False, "error": traceback.format_exc()}
            print(json.dumps(answer), flush=True)
else:
    folder, request_file, out, text_ops = sys.argv[1:5]
    probe(folder, request_file, out, text_ops == "1", audit_text=True)
"""

_probe_server = None


def _server():
    """This test process's probe server (started on first use)."""
    global _probe_server
    if _probe_server is None or _probe_server.poll() is not None:
        log = tempfile.NamedTemporaryFile("w+", prefix="mmzoo-probe-", suffix=".log")
        _probe_server = subprocess.Popen(
            [sys.executable, "-c", PROBE, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=ENV,
        )
        _probe_server.log = log
        atexit.register(_probe_server.kill)
    return _probe_server


def probe_saved_model(folder, images, texts, out, text_ops=False):
    """`serving_default` of a SavedModel on image files, in a process that
    cannot import Keras or mmzoo (as on a TF Serving host).

    Returns:
        `(outputs, audit)`: the signature's outputs as arrays, and the op
        audit of `probe_signatures`.
    """
    calls = {
        "serving_default": ("serving_default", {"image_bytes": images, "text": texts})
    }
    outputs, audit = probe_signatures(folder, calls, out, text_ops)
    return outputs["serving_default"], audit


def probe_signatures(folder, calls, out, text_ops=False):
    """Signatures of a SavedModel called in a process that cannot import
    Keras or mmzoo (as on a TF Serving host).

    A model tokenizing with word ops goes to this test process's probe
    server (TensorFlow imported once); one needing TF Text ops
    (`text_ops=True`) to a fresh process of its own.

    Args:
        folder: the SavedModel.
        calls: `{call name: (signature name, inputs)}`; inputs by name:
            `image_bytes` a list of image files (read there), another
            string input a list of str, an int a scalar int32 (`k`).
        out: a folder for the request and the answers.

    Returns:
        `(outputs, audit)`: `{call name: {output name: array}}` (string
        outputs as str arrays), and the graph's op types by where they are
        registered (`core` TensorFlow, TF `text`, `unregistered`) with the
        modules the process could import (`importable`, which must be
        empty).
    """
    os.makedirs(out, exist_ok=True)
    request = os.path.join(out, "request.json")
    with open(request, "w") as file:
        json.dump(
            {
                call: (
                    signature,
                    {
                        name: [str(p) for p in value]
                        if name == "image_bytes"
                        else value
                        for name, value in inputs.items()
                    },
                )
                for call, (signature, inputs) in calls.items()
            },
            file,
        )
    if text_ops:
        result = subprocess.run(
            [sys.executable, "-c", PROBE, str(folder), request, str(out), "1"],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        server = _server()
        server.stdin.write(json.dumps([str(folder), request, str(out)]) + "\n")
        server.stdin.flush()
        line = server.stdout.readline()
        if not line:
            server.log.seek(0)
            raise AssertionError(f"the probe server died: {server.log.read()[-3000:]}")
        answer = json.loads(line)
        assert answer["ok"], answer["error"][-3000:]
    outputs = {}
    for call in calls:
        with np.load(os.path.join(out, f"{call}.npz")) as saved:
            outputs[call] = {name: saved[name] for name in saved.files}
    with open(os.path.join(out, "audit.json")) as file:
        return outputs, json.load(file)


def run_export_test(run, images, texts, tmp_path, batch_size=None, atol=1e-5):
    """Both exports of a run match its Keras model on real image files.

    The SavedModel is served by a fresh process that imports only
    TensorFlow, from the encoded files and raw texts; the TFLite file (float32,
    builtin ops) runs in the LiteRT interpreter on the same examples'
    pixels and token ids. Every output, modality weights included, is
    compared.
    """
    import tensorflow as tf

    from mmzoo.data.images import prepare_image
    from mmzoo.export import export_saved_model
    from mmzoo.export import tflite

    features = {
        # What an app feeds the TFLite file: `prepare_image` of each file.
        "image": np.concatenate(
            [prepare_image(path, run.image_size, run.resize) for path in images]
        ),
        "tokens": run.tokenizer(tf.constant(texts)).numpy(),
    }
    expected = run.explained_model()(features, training=False)

    folder = export_saved_model(run, base=tmp_path / "models", name="model")
    served, audit = probe_saved_model(folder, images, texts, tmp_path / "serve")
    assert audit["unregistered"] == [] and audit["importable"] == []
    for name, value in expected.items():
        difference = np.max(np.abs(served[name] - np.asarray(value)))
        assert difference <= atol, ("SavedModel", name, difference)
    if run.task.classes:
        assert served["top_k_labels"].shape[0] == len(images)
        assert set(served["top_k_labels"].ravel()) <= set(run.labels.names)

    report = tflite.export_tflite(
        run, tmp_path / "app" / "model.tflite", batch_size=batch_size
    )
    result = tflite.parity(run, report["path"], features)
    assert sorted(result["max_abs_diff_by_output"]) == sorted(expected)
    for name, difference in result["max_abs_diff_by_output"].items():
        assert difference <= atol, ("TFLite", name, result)
    return served, result
