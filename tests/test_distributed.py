"""`make_strategy` and `custom_fit` under real strategies, in real processes.

TensorFlow fixes its devices and collective operations when it starts, so
each distributed run is a fresh Python process: two workers talking over
loopback for MultiWorkerMirroredStrategy, and one process with its CPU split
into two logical devices for MirroredStrategy.
"""

import json
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import clean_manifest

import mmzoo
from mmzoo.training.distributed import STRATEGIES
from mmzoo.training.distributed import _aligned
from mmzoo.training.distributed import _per_example
from mmzoo.training.distributed import custom_fit
from mmzoo.training.distributed import make_strategy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240

# The tiny model both kinds of run train: small_cnn + bag of words.
MODEL = """
import mmzoo

def build(tokenizer, **overrides):
    arguments = dict(image_tower="small_cnn", text_tower="bow", fusion="concat",
                     num_classes=3, image_size=32, max_tokens=8,
                     vocab_size=tokenizer.vocab_size, image_filters=(4, 8),
                     head_units=(8,), learning_rate=1e-2)
    return mmzoo.build_model(**{**arguments, **overrides})
"""

WORKER = """
import json
import sys

import numpy as np

from mmzoo.training.distributed import custom_fit
from mmzoo.training.distributed import make_strategy

# First thing: the strategy sets up TensorFlow's collective operations.
strategy = make_strategy("multiworker")

import keras

from mmzoo.data import WordTokenizer, make_dataset, read_manifest
from model import build

manifest, out = sys.argv[1], sys.argv[2]
keras.utils.set_random_seed(7)
tokenizer = WordTokenizer.fit(read_manifest(manifest).texts, max_tokens=8)
with strategy.scope():
    model = build(tokenizer)
np.savez(out + "_initial.npz", *model.get_weights())

def dataset_fn(context):
    # 12 rows, 6 per worker: a batch of 4 then a partial batch of 2.
    return make_dataset(manifest, tokenizer, 32, 8, seed=7, input_context=context)

ends = []
history = custom_fit(model, strategy, dataset_fn, epochs=2, global_batch_size=8,
                     on_epoch_end=lambda epoch, logs: ends.append(epoch))
np.savez(out + "_final.npz", *model.get_weights())
with open(out + ".json", "w") as file:
    json.dump({"history": history, "ends": ends,
               "replicas": strategy.num_replicas_in_sync}, file)
"""

MIRRORED = """
import json
import sys

import tensorflow as tf

# Two logical CPUs, before TensorFlow initialises.
(cpu,) = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import numpy as np

from mmzoo.data import WordTokenizer, make_dataset, read_manifest
from mmzoo.training.distributed import custom_fit, make_strategy
from model import build

manifest = sys.argv[1]
tokenizer = WordTokenizer.fit(read_manifest(manifest).texts, max_tokens=8)
strategy = make_strategy("mirrored")
results = {"replicas": strategy.num_replicas_in_sync}

def dataset_fn(batch_size, shuffle=True):
    def make(context):
        return make_dataset(manifest, tokenizer, 32, batch_size, seed=3,
                            shuffle=shuffle, input_context=context)
    return make

# Mixed precision: Keras wraps Adam in a LossScaleOptimizer.
# 14 rows in global batches of 8: steps of 4 + 4 and 4 + 2 examples.
keras.config.set_dtype_policy("mixed_float16")
keras.utils.set_random_seed(3)
with strategy.scope():
    model = build(tokenizer)
before = model.get_weights()
history = custom_fit(model, strategy, dataset_fn(8), epochs=2,
                     global_batch_size=8, verbose=False)
after = model.get_weights()
results["mixed_float16"] = {
    "history": history,
    "changed": sum(not np.array_equal(a, b) for a, b in zip(before, after)),
    "weights": len(after),
    "finite": all(bool(np.isfinite(w).all()) for w in after),
    "optimizer": type(model.optimizer).__name__,
    "dtypes": sorted({str(w.dtype) for w in after}),
    "scale": float(model.optimizer.dynamic_scale.numpy()),
}

# A loss scale far too large: every step overflows in float16 on both
# replicas, so both skip the update (batch statistics still move) and halve
# the scale together. Resumed at epoch 1, 2 steps an epoch of repeated data.
keras.utils.set_random_seed(3)
with strategy.scope():
    model = build(tokenizer, compile=False)
    model.compile(
        optimizer=keras.optimizers.LossScaleOptimizer(
            keras.optimizers.Adam(1e-2), initial_scale=2.0**40),
        loss={"probabilities": "sparse_categorical_crossentropy"})
before = [w.numpy() for w in model.trainable_weights]
ends = []
history = custom_fit(model, strategy, lambda c: dataset_fn(8)(c).repeat(),
                     epochs=3, initial_epoch=1, steps_per_epoch=2,
                     global_batch_size=8, verbose=False,
                     on_epoch_end=lambda epoch, logs: ends.append(epoch))
results["overflow"] = {
    "epochs": ends,
    "history": len(history["loss"]),
    "scale": float(model.optimizer.dynamic_scale.numpy()),
    "unchanged": all(np.array_equal(a, b.numpy())
                     for a, b in zip(before, model.trainable_weights)),
}
keras.config.set_dtype_policy("float32")

# Keras' own fit works under MirroredStrategy (not under multi-worker).
keras.utils.set_random_seed(3)
with strategy.scope():
    model = build(tokenizer)
before = model.get_weights()
dataset = make_dataset(manifest, tokenizer, 32, 8, seed=3)
fit = model.fit(dataset, epochs=2, verbose=0).history
results["fit"] = {
    "loss": fit["loss"],
    "changed": sum(not np.array_equal(a, b)
                   for a, b in zip(before, model.get_weights())),
}

# Steps of 4 + 4 and 4 + 2 examples on two replicas match batches of 8 and 6
# on one device, the same rows in the same order, when the loss is the mean
# over the examples each step saw. A model without batch normalisation (text
# only) or dropout, whose replicas compute exactly what one device would.
def text_only(run_strategy):
    keras.utils.set_random_seed(5)
    with run_strategy.scope():
        model = build(tokenizer, fusion="text_only", dropout=0.0,
                      fusion_dropout=0.0, text_dropout=0.0)
    before = model.get_weights()
    history = custom_fit(model, run_strategy, dataset_fn(8, shuffle=False),
                         epochs=2, global_batch_size=8, verbose=False)
    after = model.get_weights()
    changed = sum(not np.array_equal(a, b) for a, b in zip(before, after))
    return {"history": history, "changed": changed, "weights": len(after)}, after

two, two_weights = text_only(strategy)
one, one_weights = text_only(tf.distribute.get_strategy())
results["uneven"] = {
    "two": two, "one": one,
    "difference": max(float(np.abs(a - b).max())
                      for a, b in zip(two_weights, one_weights)),
}

# With batch normalisation, a replica left with no batch stops training:
# 7 batches of 2 for two replicas leave one without a batch in step 4.
keras.utils.set_random_seed(3)
with strategy.scope():
    model = build(tokenizer)
try:
    custom_fit(model, strategy, dataset_fn(4), epochs=1, global_batch_size=4)
    results["empty"] = "no error"
except tf.errors.InvalidArgumentError as error:
    results["empty"] = error.message

print("RESULTS " + json.dumps(results))
"""


def _free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _environment(folder, **extra):
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env.update(
        TF_CPP_MIN_LOG_LEVEL="3",
        # Stay on the CPU: two workers sharing one GPU would fight for it.
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=os.pathsep.join(
            [str(folder), ROOT, env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep),
        **extra,
    )
    return env


def _script(folder, name, source):
    (folder / "model.py").write_text(MODEL)
    path = folder / name
    path.write_text(source)
    return str(path)


def _start(folder, name, arguments, env):
    """A Python process whose output goes to files (no pipe to fill up)."""
    with (
        open(folder / f"{name}.out", "w") as out,
        open(folder / f"{name}.err", "w") as err,
    ):
        return subprocess.Popen(
            [sys.executable, *arguments], env=env, cwd=folder, stdout=out, stderr=err
        )


def _wait(folder, processes, timeout=TIMEOUT):
    """`(return code, stdout, stderr)` per name.

    When one process fails or time runs out, the others are killed at once:
    a worker whose peer died would otherwise wait for it until the timeout.
    """
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in processes.values()):
            failed = any(p.poll() not in (None, 0) for p in processes.values())
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return {
        name: (
            process.returncode,
            (folder / f"{name}.out").read_text(),
            (folder / f"{name}.err").read_text(),
        )
        for name, process in processes.items()
    }


def _launch_workers(folder, script, manifest):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    processes = {}
    for index in range(2):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        name = f"worker{index}"
        processes[name] = _start(
            folder,
            name,
            [script, manifest, str(folder / name)],
            _environment(folder, TF_CONFIG=json.dumps(config)),
        )
    outputs = _wait(folder, processes)
    return [outputs["worker0"], outputs["worker1"]]


def _weights(path):
    with np.load(path) as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


def test_two_workers_end_with_identical_trained_weights(tmp_path):
    manifest = clean_manifest(tmp_path / "data", rows=12)
    script = _script(tmp_path, "worker.py", WORKER)
    outputs = _launch_workers(tmp_path, script, manifest)
    if any(code for code, _, err in outputs) and any(
        "address already in use" in err.lower() for _, _, err in outputs
    ):
        # Another process took a port between our probe and the bind.
        outputs = _launch_workers(tmp_path, script, manifest)
    for index, (code, _, err) in enumerate(outputs):
        assert code == 0, f"worker {index} failed ({code}):\n{err[-4000:]}"

    first, second = (_weights(tmp_path / f"worker{i}_final.npz") for i in (0, 1))
    initial = _weights(tmp_path / "worker0_initial.npz")
    assert len(first) == len(second) == len(initial)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    changed = sum(not np.array_equal(a, b) for a, b in zip(first, initial, strict=True))
    assert changed == len(initial)

    for index in (0, 1):
        record = json.loads((tmp_path / f"worker{index}.json").read_text())
        assert record["replicas"] == 2
        assert record["ends"] == [0, 1]
        assert len(record["history"]["loss"]) == 2
        assert np.all(np.isfinite(record["history"]["loss"]))
        assert len(record["history"]["accuracy"]) == 2
    # Every worker reports the same, globally reduced, history; only the
    # chief prints.
    records = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in (0, 1)]
    assert records[0]["history"] == records[1]["history"]
    assert "Epoch 2/2 - 2 steps - loss:" in outputs[0][1]
    assert "Epoch" not in outputs[1][1]


def test_mirrored_on_two_logical_cpus(tmp_path):
    manifest = clean_manifest(tmp_path / "data", rows=14)
    script = _script(tmp_path, "mirrored.py", MIRRORED)
    process = _start(tmp_path, "mirrored", [script, manifest], _environment(tmp_path))
    code, out, err = _wait(tmp_path, {"mirrored": process})["mirrored"]
    assert code == 0, err[-4000:]
    results = json.loads(out.split("RESULTS ", 1)[1])

    assert results["replicas"] == 2
    mixed = results["mixed_float16"]
    assert np.all(np.isfinite(mixed["history"]["loss"]))
    assert mixed["finite"]
    assert mixed["changed"] == mixed["weights"]
    # Under mixed_float16 Keras wraps Adam in a LossScaleOptimizer; the
    # weights stay float32 and the scale moved off its start if a step
    # overflowed, without stopping training.
    assert results["mixed_float16"]["optimizer"] == "LossScaleOptimizer"
    assert results["mixed_float16"]["dtypes"] == ["float32"]
    assert 1 <= results["mixed_float16"]["scale"] <= 2**15
    assert results["overflow"] == {
        "epochs": [1, 2],
        "history": 2,
        "scale": 2.0**36,
        "unchanged": True,
    }
    assert np.all(np.isfinite(results["fit"]["loss"]))
    assert results["fit"]["changed"] > 0

    two, one = results["uneven"]["two"], results["uneven"]["one"]
    assert np.all(np.isfinite(two["history"]["loss"]))
    assert two["changed"] == two["weights"]
    np.testing.assert_allclose(two["history"]["loss"], one["history"]["loss"], 1e-5)
    assert two["history"]["accuracy"] == one["history"]["accuracy"]
    assert results["uneven"]["difference"] < 1e-5
    assert "A replica got an empty batch" in results["empty"]


def test_multiworker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG environment variable, which"):
        make_strategy("multiworker")


@pytest.mark.parametrize(
    "config, problem",
    [
        ("{not json", "not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "`cluster` must map"),
        ('{"cluster": {"worker": ["localhost"]}}', "'host:port' strings"),
        ('{"cluster": {"worker": ["localhost:1"]}}', "`task` must name a `type`"),
        (
            '{"cluster": {"worker": ["localhost:1"]}, '
            '"task": {"type": "worker", "index": 1}}',
            r"`task.index` must be an integer from 0 to 0",
        ),
    ],
)
def test_multiworker_explains_bad_tf_config(monkeypatch, config, problem):
    monkeypatch.setenv("TF_CONFIG", config)
    with pytest.raises(ValueError, match=problem) as info:
        make_strategy("multiworker")
    # Every message shows what TF_CONFIG must look like.
    assert '"task": {"type": "worker", "index": 0}' in str(info.value)


def test_unknown_strategy_name():
    assert STRATEGIES == ("default", "mirrored", "multiworker")
    with pytest.raises(ValueError) as info:
        make_strategy("mirrord")
    assert str(info.value) == (
        "`strategy` must be one of ['default', 'mirrored', 'multiworker']. "
        "Received: strategy='mirrord'. Did you mean 'mirrored'?"
    )


def test_default_strategy_is_the_current_one():
    assert make_strategy("default") is tf.distribute.get_strategy()


def test_custom_fit_refuses_a_model_from_outside_the_scope():
    model = mmzoo.build_model(
        num_classes=3, image_size=32, max_tokens=8, vocab_size=20, head_units=(8,)
    )
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with pytest.raises(ValueError, match=r"inside\s+`strategy.scope\(\)`"):
        custom_fit(model, strategy, lambda context: None, 1, 4)
    with pytest.raises(ValueError, match="Received: epochs=0"):
        custom_fit(model, strategy, lambda context: None, 0, 4)


def test_binary_labels_keep_one_loss_per_example():
    # (batch,) labels against (batch, 1) probabilities: Keras alone would
    # average the whole batch into one number.
    loss_fn, accuracy = _per_example("binary_crossentropy")
    target, prediction = _aligned(
        tf.constant([0.0, 1.0, 1.0]), tf.constant([[0.2], [0.9], [0.4]])
    )
    assert loss_fn(target, prediction).shape == (3,)
    np.testing.assert_array_equal(accuracy(target, prediction), [1, 1, 0])


def test_loss_objects_lose_their_reduction_and_keep_from_logits():
    loss_fn, accuracy = _per_example(
        keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    logits = tf.constant([[2.0, -1.0], [0.0, 3.0]])
    assert loss_fn(tf.constant([0, 0]), logits).shape == (2,)
    np.testing.assert_array_equal(accuracy(tf.constant([0, 0]), logits), [1, 0])
    _, binary = _per_example(keras.losses.BinaryCrossentropy(from_logits=True))
    np.testing.assert_array_equal(
        binary(tf.constant([[1.0], [0.0]]), tf.constant([[0.3], [-0.1]])), [1, 1]
    )
    # Multilabel: an example's accuracy is the mean over its labels.
    _, multilabel = _per_example("binary_crossentropy")
    np.testing.assert_allclose(
        multilabel(tf.constant([[1.0, 0.0, 1.0]]), tf.constant([[0.9, 0.8, 0.7]])),
        [2 / 3],
    )
    assert _per_example("mean_squared_error")[1] is None


# === Dual encoders: negatives from every worker ===

DUAL_WORKER = """
import json
import sys

import numpy as np

from mmzoo.training.distributed import custom_fit
from mmzoo.training.distributed import make_strategy

strategy = make_strategy("multiworker")

import keras
import tensorflow as tf

from dual import ROWS, build, pairs

out = sys.argv[2]
keras.utils.set_random_seed(5)
with strategy.scope():
    model = build()
np.savez(out + "_initial.npz", *model.get_weights())  # the temperature too
inputs = pairs()

def dataset_fn(context):
    # Each worker reads its half of the rows: one step of the global batch.
    data = tf.data.Dataset.from_tensor_slices(inputs)
    data = data.shard(context.num_input_pipelines, context.input_pipeline_id)
    return data.batch(context.get_per_replica_batch_size(ROWS)).map(
        lambda x: (x, tf.zeros([tf.shape(x["image"])[0]])))

history = custom_fit(model, strategy, dataset_fn, epochs=1, global_batch_size=ROWS)
np.savez(out + "_final.npz", *model.get_weights())
with open(out + ".json", "w") as file:
    json.dump({"history": history, "replicas": strategy.num_replicas_in_sync}, file)
"""

DUAL = """
import keras
import numpy as np

import mmzoo

ROWS = 8
arguments = dict(image_tower="small_cnn", text_tower="bow", image_size=32,
                 max_tokens=8, vocab_size=30, embedding_dim=8, image_filters=(4, 8),
                 embed_dim=8, loss="siglip", freeze_image_tower=True, compile=False)

def build():
    model = mmzoo.build_dual_encoder(**arguments)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    return model

def pairs():
    rng = np.random.default_rng(0)
    return {"image": rng.uniform(0, 255, (ROWS, 32, 32, 3)).astype("float32"),
            "tokens": rng.integers(1, 30, (ROWS, 8)).astype("int32")}
"""


def test_two_workers_train_a_dual_encoder_on_the_global_batch(tmp_path):
    (tmp_path / "dual.py").write_text(DUAL)
    script = _script(tmp_path, "dual_worker.py", DUAL_WORKER)
    outputs = _launch_workers(tmp_path, script, "unused")
    for index, (code, _, err) in enumerate(outputs):
        assert code == 0, f"worker {index} failed ({code}):\n{err[-4000:]}"

    # The same step on one device, from the same weights, on all the rows.
    import importlib.util

    spec = importlib.util.spec_from_file_location("dual", tmp_path / "dual.py")
    dual = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dual)
    model = dual.build()
    initial = _weights(tmp_path / "worker0_initial.npz")
    model.set_weights(initial)
    history = model.fit(dual.pairs(), batch_size=dual.ROWS, epochs=1, verbose=0)
    expected = model.get_weights()

    records = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in (0, 1)]
    assert records[0]["replicas"] == 2
    for record in records:
        assert record["history"]["loss"][0] == pytest.approx(
            history.history["loss"][0], abs=1e-5
        )
    for index in (0, 1):
        final = _weights(tmp_path / f"worker{index}_final.npz")
        assert len(final) == len(expected)
        changed = 0
        for got, want, before in zip(final, expected, initial, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-5)
            changed += not np.array_equal(got, before)
        assert changed > 0
