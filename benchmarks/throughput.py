"""Training and inference throughput of fused models and bare image towers.

Every configuration is built from scratch, compiled with Adam and a
sparse cross-entropy on `probabilities`, and fed one synthetic batch that
is already on the device (random pixels 0-255, random token ids with
padding, random labels), so the figures are the model's alone: the input
pipeline is measured separately (`benchmarks/pipeline.py`).

A figure is `batch_size * steps / seconds`, the median over `repeats`
timed runs of at least `steps` steps (and `min_seconds`), after `warmup`
untimed steps (tracing and compilation). Each step waits for its result
(`train_on_batch` and `predict_on_batch` return host values), so
asynchronous dispatch cannot flatter it. The models of a group (a bare
tower and the fusions over it) take turns repeat by repeat
(`measure_group`), so their ratios are measured under the same conditions.

A dual encoder (`fusion="dual:<loss>"`, `mmzoo.build_dual_encoder`)
trains on the same batch without labels: its loss compares every image of
the batch with every text.

The bare tower is the keras.applications network itself
(`include_top=False, pooling="avg"`, for `small_cnn` mmzoo's own) under a
softmax `Dense`: what a user would train without mmzoo. A fused model's
figure over the bare tower's, same batch, precision and XLA setting, is
its fusion overhead ratio.
"""

import dataclasses
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time

import keras
import numpy as np

import mmzoo
from benchmarks import child_environment
from mmzoo import registry
from mmzoo.towers import build_image_tower

BARE = "bare"  # the `fusion` of a bare image tower: no text, no fusion
# The `fusion` of a dual encoder (`mmzoo.build_dual_encoder`): "dual:<loss>".
DUAL = "dual:"

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
    if config.fusion.startswith(DUAL):
        return mmzoo.build_dual_encoder(
            image_tower=config.image_tower,
            text_tower=config.text_tower,
            image_size=config.image_size,
            vocab_size=VOCAB_SIZE,
            max_tokens=MAX_TOKENS,
            loss=config.fusion.removeprefix(DUAL),
            compile=False,
        )
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
    application = registry.image_tower(name).application
    if application is None:
        backbone = build_image_tower(name, image_size, pooling="avg")
    else:
        backbone = getattr(keras.applications, application)(
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


def _warm_up(step, warmup, steps, min_seconds):
    """Run `warmup` untimed steps; return the steps a timed repeat takes.

    A repeat runs at least `steps` steps and at least `min_seconds` (judged
    from the last warm-up step), so fast steps are timed over enough of
    them to rise above the clock's and the machine's noise.
    """
    for _ in range(max(warmup - 1, 0)):
        step()
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    return max(steps, math.ceil(min_seconds / max(seconds, 1e-6)))


def _images_per_second(step, steps, batch_size):
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - start)


def _describe(error):
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def measure_group(configs, steps, repeats, warmup, count_flops=(), min_seconds=0.0):
    """Train and predict rates, peak memory and FLOPs of `configs`, side by side.

    Every model is built and warmed up first; then each timed repeat runs
    once per model in turn (training, then inference), so a slow spell of
    a shared machine lands on every model of the group alike, and ratios
    taken repeat by repeat (see `overhead`) cancel it. Give a group one
    bare tower and the fusions over it.

    Args:
        configs: the `Config`s, sharing a precision.
        steps, repeats, warmup, min_seconds: see `_warm_up`; each figure is
            the median of `repeats` timed repeats.
        count_flops: the `model_key`s whose forward FLOPs to count.

    Returns:
        A JSON-ready dict per config, in order. A configuration that fails
        (out of memory, an op XLA cannot compile...) carries its `error`
        instead, and the others go on.
    """
    results = [{**dataclasses.asdict(c), "label": c.label()} for c in configs]
    count_flops = {tuple(key) for key in count_flops}
    steppers = {}
    previous_policy = keras.config.dtype_policy()
    try:
        for index, config in enumerate(configs):
            try:
                keras.config.set_dtype_policy(config.precision)
                keras.utils.set_random_seed(0)
                model = build(config)
                dual = config.fusion.startswith(DUAL)
                model.compile(
                    optimizer=keras.optimizers.Adam(1e-4),
                    # A dual encoder computes its own loss over the batch.
                    loss=None
                    if dual
                    else {"probabilities": "sparse_categorical_crossentropy"},
                    jit_compile=config.xla,
                )
                inputs, labels = synthetic_batch(model, config.batch_size)
                labels = None if dual else labels

                def train(model=model, inputs=inputs, labels=labels):
                    model.train_on_batch(inputs, labels)

                def infer(model=model, inputs=inputs):
                    model.predict_on_batch(inputs)

                # Peak memory: from before the first training step (so the
                # optimizer's state and the step's tracing count) to the end
                # of the warm-up.
                with PeakMemory() as memory:
                    train_steps = _warm_up(train, warmup, steps, min_seconds)
                infer_steps = _warm_up(infer, warmup, steps, min_seconds)
                weights_mb = (
                    sum(
                        int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
                        for v in model.weights
                    )
                    / 2**20
                )
                results[index].update(
                    parameters=int(model.count_params()),
                    weights_mb=weights_mb,
                    # The weights exist before the first step; the rise
                    # adds the optimizer's state, gradients and activations.
                    train_peak_memory_mb=weights_mb + memory.peak_mb,
                    memory_measure=memory.kind,
                    train_steps_per_repeat=train_steps,
                    infer_steps_per_repeat=infer_steps,
                )
                if config.model_key in count_flops:
                    flops = forward_flops(model)
                    results[index]["forward_gflops_per_image"] = (
                        flops / 1e9 if flops else None
                    )
                steppers[index] = {
                    "train": (train, train_steps),
                    "infer": (infer, infer_steps),
                }
            except Exception as error:  # noqa: BLE001 - recorded; the rest go on
                results[index]["error"] = _describe(error)
        rates = {index: {"train": [], "infer": []} for index in steppers}
        # One untimed turn first: a model's first turn after the others
        # were built and warmed up runs several times slower (seen on CPU:
        # caches and memory the others took), and would skew the median.
        for timed in [False] + [True] * repeats:
            for kind in ("train", "infer"):
                for index in list(steppers):
                    step, count = steppers[index][kind]
                    try:
                        rate = _images_per_second(
                            step, count, configs[index].batch_size
                        )
                    except Exception as error:  # noqa: BLE001
                        results[index]["error"] = _describe(error)
                        del steppers[index]
                        continue
                    if timed:
                        rates[index][kind].append(rate)
        for index in steppers if repeats else ():
            results[index].update(
                train_images_per_s=statistics.median(rates[index]["train"]),
                infer_images_per_s=statistics.median(rates[index]["infer"]),
                train_rates=rates[index]["train"],
                infer_rates=rates[index]["infer"],
            )
    finally:
        keras.config.set_dtype_policy(previous_policy)
        steppers = None
        keras.backend.clear_session()
        gc.collect()
    return results


def measure_isolated(
    configs, steps, repeats, warmup, count_flops=(), min_seconds=0.0, timeout=1800
):
    """`measure_group` in a fresh Python process on the same Keras backend.

    A fresh process per group keeps the memory that earlier groups' models
    freed (and allocators kept) out of this group's peaks, and keeps a
    crash or a GPU out-of-memory from ending the sweep. Costs the
    interpreter's start-up (about 5 s with TensorFlow) per group.
    """
    request = {
        "configs": [dataclasses.asdict(config) for config in configs],
        "steps": steps,
        "repeats": repeats,
        "warmup": warmup,
        "count_flops": [list(key) for key in count_flops],
        "min_seconds": min_seconds,
    }
    env = {
        **child_environment(keras.backend.backend()),
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
        return [_failed(c, f"Timeout: no result within {timeout} s") for c in configs]
    lines = process.stdout.strip().splitlines()
    if process.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = " | ".join(process.stderr.strip().splitlines()[-3:])
    return [_failed(c, f"exit status {process.returncode}: {tail}") for c in configs]


def _failed(config, error):
    return {**dataclasses.asdict(config), "label": config.label(), "error": error}


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
    """How much memory a block adds at its peak, on the backend's device.

    On a GPU: the allocator's own peak since the block began (TensorFlow,
    PyTorch) or the largest `bytes_in_use` sampled every 5 ms (JAX, whose
    peak cannot be reset), less what was in use when it began. On a CPU:
    the largest rise of the process's resident memory, sampled every 5 ms.
    Allocators keep memory that earlier work freed and reuse it, so on a
    CPU the rise is only comparable between blocks that each ran first in
    a fresh process (`measure_memory`).
    """

    def __init__(self, interval=0.005):
        self.interval = interval
        self.peak_mb = None
        self.kind = None

    def __enter__(self):
        self._current, self._allocator_peak, self.kind = _memory_reader()
        self._base = self._current()
        self._peak = self._base
        self._done = threading.Event()
        self._thread = None
        if self._allocator_peak is None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(self.interval):
            self._peak = max(self._peak, self._current())

    def __exit__(self, *exc):
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._peak = max(self._peak, self._current())
        else:
            self._peak = self._allocator_peak()
        self.peak_mb = (self._peak - self._base) / 2**20
        return False


def _rss():
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_reader():
    """(current bytes, allocator peak bytes or None, description)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            info = tf.config.experimental.get_memory_info
            tf.config.experimental.reset_memory_stats("GPU:0")
            return (
                lambda: info("GPU:0")["current"],
                lambda: info("GPU:0")["peak"],
                "GPU allocator peak",
            )
    elif backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "gpu":
            return (
                lambda: device.memory_stats()["bytes_in_use"],
                None,
                "GPU bytes in use, sampled",
            )
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            return (
                torch.cuda.memory_allocated,
                torch.cuda.max_memory_allocated,
                "GPU allocator peak",
            )
    return _rss, None, "host resident memory, sampled"


def measure_memory(config, warmup=2, timeout=1800):
    """Training memory of `config` alone, in a fresh process.

    The group runs of `measure_group` share a process, where (on a CPU)
    memory freed by one model is reused by the next; this runs the model's
    warm-up steps alone, first, so its figure compares with any other's.
    """
    [row] = measure_isolated([config], 1, 0, warmup, timeout=timeout)
    return row


# === Fusion overhead ===


def overhead(results):
    """Each fused result over its bare tower's (same batch, precision, XLA).

    Returns rows with `train_ratio` and `infer_ratio` (fused / bare images
    per second: 1.0 means fusion is free). When both were measured in one
    group (the same `group` number and as many repeats), the ratio is the
    median of the repeat-by-repeat ratios, which cancels the machine's
    drift; otherwise the ratio of the medians. For the fusions the issue
    sets a target for, rows carry `target` and `meets_target`.
    """
    keys = ("image_tower", "image_size", "batch_size", "precision", "xla")
    bare = {
        (row.get("group"), *(row[k] for k in keys)): row
        for row in results
        if row["fusion"] == BARE and "error" not in row
    }
    rows = []
    for row in results:
        if row["fusion"] == BARE or "error" in row:
            continue
        base = bare.get((row.get("group"), *(row[k] for k in keys)))
        if base is None:
            continue
        ratio = {
            "label": row["label"],
            **{k: row[k] for k in (*keys, "text_tower", "fusion")},
        }
        for kind in ("train", "infer"):
            ratio[f"{kind}_ratio"], ratio["paired"] = _ratio(row, base, kind)
        target = fusion_target(row["fusion"], row["text_tower"])
        tower = registry.IMAGE_TOWERS.get(row["image_tower"])
        if target is not None and tower is not None and tower.application:
            ratio["target"] = target
            ratio["meets_target"] = ratio["train_ratio"] >= target
        rows.append(ratio)
    return rows


def _ratio(row, base, kind):
    fused, bare = row.get(f"{kind}_rates"), base.get(f"{kind}_rates")
    if row.get("group") is not None and fused and bare and len(fused) == len(bare):
        return statistics.median(f / b for f, b in zip(fused, bare, strict=True)), True
    return row[f"{kind}_images_per_s"] / base[f"{kind}_images_per_s"], False


# The floors for fused / bare training throughput, set against the
# keras.applications towers (a bare `small_cnn` costs so little that any
# text tower is a large share), with the light text towers.
THROUGHPUT_TARGETS = {
    "concat": 0.90,
    "weighted_sum": 0.90,
    "gated": 0.90,
    "cross_attention": 0.80,
}
TARGET_TEXT_TOWERS = ("bow", "cnn")


def fusion_target(fusion, text_tower):
    """The floor for fused / bare training throughput, or None."""
    if text_tower not in TARGET_TEXT_TOWERS:
        return None
    return THROUGHPUT_TARGETS.get(fusion)


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
    configs = [Config(**config) for config in request.pop("configs")]
    print(json.dumps(measure_group(configs, **request)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
