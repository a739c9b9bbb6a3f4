"""Serving and on-device latency: SavedModel, Keras and TFLite (LiteRT).

`serving_latency` exports a model the way `mmzoo export` does (the
`ExportArchive` of `mmzoo.export.build_serving_module`), loads it back with
`tf.saved_model.load` and times, per batch size:

- Keras `model.predict` (what most code calls) and `predict_on_batch`;
- the SavedModel's `predict_tensors` signature (the same tensors in);
- its `serving_default` signature (JPEG bytes and raw text in: decoding,
  resizing and tokenizing happen in the graph, as in TF Serving).

`tflite_latency` converts the same model with each quantisation
(`mmzoo.export.tflite.convert`) and times batch-1 calls in the LiteRT
interpreter with its default XNNPACK delegate on one thread and on every
core, and with the reference kernels (no delegate) on one thread; it
records each file's size against float32's.

Latencies are milliseconds, median (and 90th percentile) of `calls` calls
after `warmup` calls. Both need TensorFlow (the export path's backend).
"""

import statistics
import tempfile
import time

import numpy as np

from benchmarks.machine import cpu_cores
from benchmarks.throughput import synthetic_batch

TEXTS = (
    "what colour is the shape",
    "is there a red circle in the image",
    "a blue triangle on the left",
    "does this image not contain a green rectangle",
)


def timings(call, calls, warmup):
    """Median and 90th-percentile milliseconds of `call()`."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
    }


def _jpegs(image_size, count, seed=0):
    """`count` JPEG photos of 4:3 at about twice the model's input size."""
    from benchmarks.pipeline import jpeg_photo

    rng = np.random.default_rng(seed)
    height, width = image_size * 3 // 2, image_size * 2
    return [jpeg_photo(height, width, 17 * index, rng) for index in range(count)]


def serving_latency(model, image_size, batch_sizes, calls, warmup):
    """Keras predict against the exported SavedModel's signatures."""
    import tensorflow as tf

    from mmzoo.data.tokenizers import WordTokenizer
    from mmzoo.export import build_serving_module

    max_tokens = model.input["tokens"].shape[1]
    tokenizer = WordTokenizer.fit(list(TEXTS), max_tokens=max_tokens)
    labels = [
        f"class_{index}" for index in range(model.output["probabilities"].shape[-1])
    ]
    archive = build_serving_module(model, tokenizer, labels, image_size)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        archive.write_out(folder, verbose=False)
        loaded = tf.saved_model.load(folder)
        serving = loaded.signatures["serving_default"]
        tensors = loaded.signatures["predict_tensors"]
        for batch_size in batch_sizes:
            inputs, _ = synthetic_batch(model, batch_size)
            arrays = {name: np.asarray(value) for name, value in inputs.items()}
            jpegs = tf.constant((_jpegs(image_size, 4) * batch_size)[:batch_size])
            texts = tf.constant([TEXTS[i % len(TEXTS)] for i in range(batch_size)])
            image = tf.constant(arrays["image"])
            tokens = tf.constant(arrays["tokens"])
            keras_out = model.predict_on_batch(arrays)["probabilities"]
            saved_out = tensors(image=image, tokens=tokens)["probabilities"]
            results[str(batch_size)] = {
                "keras_predict": timings(
                    lambda a=arrays: model.predict(a, verbose=0), calls, warmup
                ),
                "keras_predict_on_batch": timings(
                    lambda a=arrays: model.predict_on_batch(a), calls, warmup
                ),
                "saved_model_predict_tensors": timings(
                    lambda i=image, t=tokens: tensors(image=i, tokens=t),
                    calls,
                    warmup,
                ),
                "saved_model_serving_default": timings(
                    lambda j=jpegs, t=texts: serving(image_bytes=j, text=t),
                    calls,
                    warmup,
                ),
                "max_abs_diff_saved_model_vs_keras": float(
                    np.max(np.abs(np.asarray(saved_out) - keras_out))
                ),
            }
    return results


def tflite_latency(model, calls, warmup, quantizations=None):
    """Size and batch-1 latency of each quantisation in the LiteRT interpreter."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.interpreter import OpResolverType

    from mmzoo.export.tflite import QUANTIZATIONS
    from mmzoo.export.tflite import convert
    from mmzoo.export.tflite import ops_outside_delegate

    calibration = [
        {k: np.asarray(v) for k, v in synthetic_batch(model, 1, seed=seed)[0].items()}
        for seed in range(32)
    ]
    example = calibration[0]
    reference = model.predict_on_batch(example)["probabilities"]
    cores = cpu_cores()
    settings = {
        "xnnpack_1_thread": (1, OpResolverType.AUTO),
        f"xnnpack_{cores}_threads": (cores, OpResolverType.AUTO),
        "reference_kernels_1_thread": (
            1,
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        ),
    }
    results = {"threads_all_cores": cores}
    float32_bytes = None
    for quantize in quantizations or QUANTIZATIONS:
        content = convert(
            model,
            quantize,
            representative_dataset=(lambda: iter(calibration))
            if quantize == "int8"
            else None,
        )
        if quantize == "none":
            float32_bytes = len(content)
        row = {"bytes": len(content)}
        if float32_bytes:
            row["size_vs_float32"] = len(content) / float32_bytes
        for name, (threads, resolver) in settings.items():
            interpreter = Interpreter(
                model_content=content,
                num_threads=threads,
                experimental_op_resolver_type=resolver,
            )
            runner = interpreter.get_signature_runner("serving_default")
            row[name] = timings(lambda r=runner: r(**example), calls, warmup)
            if name == "xnnpack_1_thread":
                row["xnnpack_partitions"] = _delegate_partitions(interpreter)
                row["xnnpack_ops_outside"] = ops_outside_delegate(interpreter)
                output = runner(**example)["probabilities"]
                row["max_abs_diff_vs_keras"] = float(np.max(np.abs(output - reference)))
        results[quantize] = row
    if "int8" in results and "none" in results:
        int8, none = results["int8"], results["none"]
        results["int8_speedup_1_thread"] = (
            none["xnnpack_1_thread"]["median_ms"]
            / int8["xnnpack_1_thread"]["median_ms"]
        )
        results["int8_size_vs_float32"] = int8["size_vs_float32"]
    return results


def _delegate_partitions(interpreter):
    """How many pieces the XNNPACK delegate took over (1: the whole graph).

    More than one means some ops stayed outside XNNPACK, each boundary a
    hand-over between kernels: the usual reason a variant is slow. Read
    from the interpreter's node list (a private API: `None` if it moves).
    """
    try:
        ops = interpreter._get_ops_details()
    except (AttributeError, RuntimeError, ValueError):
        return None
    return sum(op["op_name"] == "DELEGATE" for op in ops)
