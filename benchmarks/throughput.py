"""Training and inference throughput of fused models and bare image towers.

Every configuration is built from scratch, compiled with Adam and a
sparse cross-entropy on `probabilities`, and fed one synthetic batch that
is already on the device (random pixels 0-255, random token ids with
padding, random labels), so the figures are the model's alone: the input
pipeline is measured separately (`benchmarks/pipeline.py`).

A figure is `batch_size * steps / seconds`, the median over `repeats`
timed runs of `steps` steps, after `warmup` untimed steps (tracing and
compilation). Each step waits for its result (`train_on_batch` and
`predict_on_batch` return host values), so asynchronous dispatch cannot
flatter it.

The bare tower is the keras.applications network itself
(`include_top=False, pooling="avg"`, for `small_cnn` mmzoo's own) under a
softmax `Dense`: what a user would train without mmzoo. A fused model's
figure over the bare tower's, same batch, precision and XLA setting, is
its fusion overhead ratio.
"""

import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import keras
import numpy as np

import mmzoo
from mmzoo.towers import build_image_tower
from mmzoo.towers.image import APPLICATIONS

BARE = "bare"  # the `fusion` of a bare image tower: no text, no fusion

NUM_CLASSES = 10
VOCAB_SIZE = 20000
MAX_TOKENS = 32


@dataclasses.dataclass(frozen=True)
class Config:
    """One point of the sweep."""

    image_tower: str
    text_tower: str | None  # None for a bare tower
    fusion: str  # a fusion name, or BARE
    image_size: int
    batch_size: int
    precision: str = "float32"
    xla: bool = False

    @property
    def model_key(self):
        """What fixes the network (and so its FLOPs per image)."""
        return (self.image_tower, self.text_tower, self.fusion, self.image_size)

    @property
    def bare(self):
        return dataclasses.replace(self, text_tower=None, fusion=BARE)

    def label(self):
        text = "" if self.fusion == BARE else f" + {self.text_tower} + {self.fusion}"
        xla = " XLA" if self.xla else ""
        return (
            f"{self.image_tower}{text} @{self.image_size}px "
            f"b{self.batch_size} {self.precision}{xla}"
        )


def build(config):
    """The uncompiled model of `config` (see the module docstring)."""
    if config.fusion == BARE:
        return bare_tower(config.image_tower, config.image_size)
    return mmzoo.build_model(
        image_tower=config.image_tower,
        text_tower=config.text_tower,
        fusion=config.fusion,
        num_classes=NUM_CLASSES,
        image_size=config.image_size,
        vocab_size=VOCAB_SIZE,
        max_tokens=MAX_TOKENS,
        compile=False,
    )


def bare_tower(name, image_size):
    """The image tower alone under a softmax layer, inputs `{"image"}`."""
    image = keras.Input((image_size, image_size, 3), name="image")
    if name == "small_cnn":
        backbone = build_image_tower("small_cnn", image_size, pooling="avg")
    else:
        constructor, _ = APPLICATIONS[name]
        backbone = getattr(keras.applications, constructor)(
            include_top=False,
            weights=None,
            input_shape=(image_size, image_size, 3),
            pooling="avg",
        )
    probabilities = keras.layers.Dense(
        NUM_CLASSES, activation="softmax", dtype="float32", name="probabilities"
    )(backbone(image))
    return keras.Model({"image": image}, {"probabilities": probabilities})


def synthetic_batch(model, batch_size, seed=0):
    """Device-resident inputs and labels for `model`, one batch."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, tensor in model.input.items():
        shape = (batch_size, *tensor.shape[1:])
        if name == "image":
            inputs[name] = rng.uniform(0, 255, shape).astype("float32")
        else:
            tokens = rng.integers(2, VOCAB_SIZE, shape).astype("int32")
            lengths = rng.integers(4, shape[1] + 1, batch_size)
            tokens[np.arange(shape[1]) >= lengths[:, None]] = 0  # padding
            inputs[name] = tokens
    labels = rng.integers(0, NUM_CLASSES, batch_size).astype("int32")
    convert = keras.ops.convert_to_tensor
    return {k: convert(v) for k, v in inputs.items()}, {
        "probabilities": convert(labels)
    }


def timed_rate(step, batch_size, steps, repeats, warmup):
    """Median images/s of `step` and the per-repeat rates."""
    for _ in range(warmup):
        step()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(batch_size * steps / (time.perf_counter() - start))
    return statistics.median(rates), rates


def measure_isolated(config, steps, repeats, warmup, count_flops, timeout=900):
    """`measure` in a fresh Python process on the same Keras backend.

    A fresh process per configuration makes the peak memory that of this
    configuration alone (allocators keep what earlier ones freed), and
    keeps a crash or a GPU out-of-memory from ending the sweep. Costs the
    interpreter's start-up (about 5 s with TensorFlow) per configuration.
    """
    request = {
        "config": dataclasses.asdict(config),
        "steps": steps,
        "repeats": repeats,
        "warmup": warmup,
        "count_flops": count_flops,
    }
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        **os.environ,
        "KERAS_BACKEND": keras.backend.backend(),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [root, os.environ.get("PYTHONPATH")])
        ),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    try:
        process = subprocess.run(
            [sys.executable, "-m", "benchmarks.throughput", json.dumps(request)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return _failed(config, f"Timeout: no result within {timeout} s")
    lines = process.stdout.strip().splitlines()
    if process.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = process.stderr.strip().splitlines()[-3:]
    return _failed(config, f"exit status {process.returncode}: " + " | ".join(tail))


def _failed(config, error):
    return {**dataclasses.asdict(config), "label": config.label(), "error": error}


def measure(config, steps, repeats, warmup, count_flops=True):
    """Train and predict rates, peak memory and FLOP/s of one `config`.

    Runs in this process; `measure_isolated` runs it in a fresh one.
    Returns a JSON-ready dict; a configuration that fails (out of memory,
    an op XLA cannot compile...) returns its error instead of raising, so a
    long sweep keeps going.
    """
    result = {**dataclasses.asdict(config), "label": config.label()}
    previous_policy = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy(config.precision)
        keras.utils.set_random_seed(0)
        model = build(config)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-4),
            loss={"probabilities": "sparse_categorical_crossentropy"},
            jit_compile=config.xla,
        )
        inputs, labels = synthetic_batch(model, config.batch_size)
        result["parameters"] = int(model.count_params())
        with PeakMemory() as memory:
            train, train_rates = timed_rate(
                lambda: model.train_on_batch(inputs, labels),
                config.batch_size,
                steps,
                repeats,
                warmup,
            )
        infer, infer_rates = timed_rate(
            lambda: model.predict_on_batch(inputs),
            config.batch_size,
            steps,
            repeats,
            warmup,
        )
        result.update(
            train_images_per_s=train,
            infer_images_per_s=infer,
            train_rates=train_rates,
            infer_rates=infer_rates,
            train_peak_memory_mb=memory.peak_mb,
            memory_measure=memory.kind,
        )
        if count_flops:
            flops = forward_flops(model)
            result["forward_gflops_per_image"] = flops / 1e9 if flops else None
    except Exception as error:  # noqa: BLE001 - recorded, and the sweep goes on
        message = str(error).strip().splitlines()
        result["error"] = f"{type(error).__name__}: {message[0] if message else ''}"
    finally:
        keras.config.set_dtype_policy(previous_policy)
        model = None
        keras.backend.clear_session()
        gc.collect()
    return result


# === FLOPs ===


def forward_flops(model):
    """FLOPs of one image's forward pass, by the backend's own cost model.

    TensorFlow: the graph profiler over a traced batch-1 call; JAX: XLA's
    cost analysis of the jitted call. Both count multiply-adds as two
    FLOPs. `None` where the backend offers no count.
    """
    example = {
        name: np.zeros((1, *tensor.shape[1:]), tensor.dtype)
        for name, tensor in model.input.items()
    }
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            return _tensorflow_flops(model, example)
        if backend == "jax":
            return _jax_flops(model, example)
        if backend == "torch":
            return _torch_flops(model, example)
    except Exception:  # noqa: BLE001 - a missing count is reported as None
        return None
    return None


def _tensorflow_flops(model, example):
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer
    from tensorflow.python.profiler import option_builder

    specs = {k: tf.TensorSpec(v.shape, v.dtype, k) for k, v in example.items()}
    graph = (
        tf.function(lambda inputs: model(inputs, training=False))
        .get_concrete_function(specs)
        .graph
    )
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return model_analyzer.profile(graph=graph, options=options).total_float_ops


def _jax_flops(model, example):
    import jax

    def forward(trainable, non_trainable, inputs):
        return model.stateless_call(trainable, non_trainable, inputs, training=False)[0]

    lowered = jax.jit(forward).lower(
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        example,
    )
    cost = lowered.compile().cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    return cost.get("flops")


def _torch_flops(model, example):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model({k: keras.ops.convert_to_tensor(v) for k, v in example.items()})
    return counter.get_total_flops()


# === Memory ===


class PeakMemory:
    """The peak memory a block adds, on the device the backend computes on.

    On a GPU: the allocator's own peak (TensorFlow, PyTorch) or the largest
    `bytes_in_use` sampled every 5 ms (JAX, whose peak cannot be reset). On
    a CPU: the largest rise in the process's resident memory, sampled every
    5 ms; allocators keep memory between configurations, so this is a lower
    bound of what a fresh process would need.
    """

    def __init__(self, interval=0.005):
        self.interval = interval
        self.peak_mb = None
        self.kind = None

    def __enter__(self):
        self._read, self.kind = _memory_reader()
        self._base = self._read()
        self._peak = self._base
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(self.interval):
            self._peak = max(self._peak, self._read())

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self._peak = max(self._peak, self._read())
        peak = self._peak - (0 if self.kind.endswith("peak") else self._base)
        self.peak_mb = peak / 2**20
        return False


def _rss():
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_reader():
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            tf.config.experimental.reset_memory_stats("GPU:0")
            return (
                lambda: tf.config.experimental.get_memory_info("GPU:0")["peak"],
                "GPU allocator peak",
            )
    elif backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "gpu":
            return (
                lambda: device.memory_stats()["bytes_in_use"],
                "GPU bytes in use, sampled rise",
            )
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.max_memory_allocated, "GPU allocator peak"
    return _rss, "host resident memory, sampled rise"


# === Fusion overhead ===


def overhead(results):
    """Each fused result over its bare tower's (same batch, precision, XLA).

    Returns rows with `train_ratio` and `infer_ratio` (fused / bare images
    per second: 1.0 means fusion is free) and, for the fusions the issue
    sets a target for, `target` and `meets_target`.
    """
    keys = ("image_tower", "image_size", "batch_size", "precision", "xla")
    bare = {
        tuple(row[k] for k in keys): row
        for row in results
        if row["fusion"] == BARE and "error" not in row
    }
    rows = []
    for row in results:
        if row["fusion"] == BARE or "error" in row:
            continue
        base = bare.get(tuple(row[k] for k in keys))
        if base is None:
            continue
        ratio = {
            "label": row["label"],
            **{k: row[k] for k in (*keys, "text_tower", "fusion")},
            "train_ratio": row["train_images_per_s"] / base["train_images_per_s"],
            "infer_ratio": row["infer_images_per_s"] / base["infer_images_per_s"],
        }
        target = fusion_target(row["fusion"], row["text_tower"])
        if target is not None and row["image_tower"] in APPLICATIONS:
            ratio["target"] = target
            ratio["meets_target"] = ratio["train_ratio"] >= target
        rows.append(ratio)
    return rows


def fusion_target(fusion, text_tower):
    """The issue's floor for fused / bare training throughput, or None.

    The targets are set against the keras.applications towers (a bare
    `small_cnn` costs so little that any text tower is a large share).
    """
    if text_tower not in ("bow", "cnn"):
        return None
    if fusion in ("concat", "weighted_sum", "gated"):
        return 0.90
    if fusion == "cross_attention":
        return 0.80
    return None


def add_flops(result, forward_gflops):
    """Achieved TFLOP/s from the forward FLOPs per image.

    Training is counted as three forward passes (the backward pass costs
    about two): the usual estimate, not a count.
    """
    if not forward_gflops or "error" in result:
        return result
    result["forward_gflops_per_image"] = forward_gflops
    result["train_tflops"] = 3 * forward_gflops * result["train_images_per_s"] / 1e3
    result["infer_tflops"] = forward_gflops * result["infer_images_per_s"] / 1e3
    return result


def _main(argv):
    """Child entry of `measure_isolated`: a JSON request in, one JSON line out."""
    request = json.loads(argv[0])
    config = Config(**request.pop("config"))
    print(json.dumps(measure(config, **request)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
