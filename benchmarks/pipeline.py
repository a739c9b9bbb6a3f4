"""Input-pipeline throughput: images/s through `mmzoo.data.make_dataset`.

Measures, in one run on one machine:

1. easy-VQA (64 px PNG + question): images/s through decode, resize,
   tokenize and batch, against `num_parallel_calls`, with and without the
   in-memory image cache;
2. JPEG decode + resize to 224 px (photos of 500x375, the ImageNet mean
   size), against `num_parallel_calls`; the 1-call figure is the per-core
   rate;
3. the training step rate of small_cnn + bow + concat on 64 px easy-VQA
   from the real pipeline and from the same batches held in memory: their
   ratio says whether training is input-bound.

Each figure is the median of `--repeats` timed passes after one warm-up
pass. Run:

    python -m benchmarks.pipeline --out benchmarks/results/pipeline.json

and copy the markdown it prints into benchmarks/RESULTS.md. `mmzoo
benchmark` runs it too (`measure`), with fewer passes in the quick suite.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

import mmzoo
from benchmarks.machine import describe
from mmzoo.data import make_dataset
from mmzoo.data import read_manifest
from mmzoo.data.tokenizers import WordTokenizer


def images_per_second(dataset, repeats, limit=None):
    """Median images/s over `repeats` passes (after a warm-up pass)."""
    if limit:
        dataset = dataset.take(limit)
    rates = []
    for attempt in range(repeats + 1):
        count, start = 0, time.perf_counter()
        for features, _ in dataset:
            count += int(features["image"].shape[0])
        if attempt:  # the first pass warms up (threads, caches, tracing)
            rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def jpeg_photo(height, width, index, rng):
    """A JPEG "photo": smooth gradients shifted by `index`, noise, quality 90."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 0.5, y * 0.6, (x + y) * 0.3], -1) + index
    pixels = np.clip(base % 256 + rng.normal(0, 12, base.shape), 0, 255)
    return tf.io.encode_jpeg(pixels.astype(np.uint8), quality=90).numpy()


def write_photos(folder, count, seed=0):
    """JPEG photos of 500x375 (the ImageNet mean size) and their manifest."""
    rng = np.random.default_rng(seed)
    lines = ["image,text,label"]
    for index in range(count):
        data = jpeg_photo(375, 500, index, rng)
        name = f"photo_{index}.jpg"
        with open(os.path.join(folder, name), "wb") as file:
            file.write(data)
        lines.append(f"{name},a photo number {index},{'ab'[index % 2]}")
    path = os.path.join(folder, "photos.csv")
    with open(path, "w") as file:
        file.write("\n".join(lines) + "\n")
    return path


def label(value):
    return "AUTOTUNE" if value == tf.data.AUTOTUNE else str(value)


def jpeg_rates(photos, repeats, calls):
    """JPEG 500x375 decode + resize to 224 px, against num_parallel_calls."""
    with tempfile.TemporaryDirectory() as folder:
        manifest = write_photos(folder, photos)
        photo_tokenizer = WordTokenizer.fit(["a photo number"], max_tokens=8)
        rates = {}
        for parallel in calls:
            dataset = make_dataset(
                manifest,
                photo_tokenizer,
                224,
                32,
                training=False,
                num_parallel_calls=parallel,
            )
            rates[label(parallel)] = images_per_second(dataset, repeats)
        return rates


def training_rates(train, tokenizer, steps, repeats):
    """Steps/s of small_cnn + bow + concat, from the pipeline and memory."""
    model = mmzoo.build_model(
        image_tower="small_cnn",
        text_tower="bow",
        fusion="concat",
        num_classes=13,
        image_size=64,
        max_tokens=tokenizer.max_tokens,
        vocab_size=tokenizer.vocab_size,
    )
    # The same batches from an in-memory cache (filled by the warm-up
    # pass): the step rate when the input costs nothing.
    in_memory = train.take(steps).cache().prefetch(tf.data.AUTOTUNE)
    results = {}
    for name, dataset in (("pipeline", train.take(steps)), ("memory", in_memory)):
        model.fit(dataset, epochs=1, verbose=0)  # warm-up and tracing
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.fit(dataset, epochs=1, verbose=0)
            rates.append(steps / (time.perf_counter() - start))
        results[name] = statistics.median(rates)
    return results


def measure(repeats=3, photos=300, batches=60, calls=None, training=True):
    """The pipeline figures as a JSON-ready dict (see the module docstring).

    Args:
        repeats: timed passes per figure (after one warm-up pass).
        photos: JPEG photos to decode per pass.
        batches: easy-VQA batches (of 64) per pass.
        calls: the `num_parallel_calls` settings; default 1, 2, 4 and
            AUTOTUNE.
        training: also measure the training step rate from the pipeline
            against memory (part 3).
    """
    tf.get_logger().setLevel("ERROR")
    calls = [1, 2, 4, tf.data.AUTOTUNE] if calls is None else calls
    results = {"machine": describe("tensorflow"), "repeats": repeats}
    paths = mmzoo.data.easy_vqa()
    tokenizer = WordTokenizer.fit(read_manifest(paths["train"]).texts, max_tokens=12)
    batch_size = 64
    vqa = {}
    for parallel in calls:
        dataset = make_dataset(
            paths["train"],
            tokenizer,
            64,
            batch_size,
            seed=0,
            num_parallel_calls=parallel,
        )
        vqa[label(parallel)] = images_per_second(dataset, repeats, batches)
    cached = make_dataset(
        paths["train"], tokenizer, 64, batch_size, seed=0, cache="memory"
    )
    vqa["memory cache"] = images_per_second(cached, repeats, batches)
    results["easy_vqa_64px_images_per_s"] = vqa
    results["jpeg_500x375_to_224px_images_per_s"] = jpeg_rates(photos, repeats, calls)
    if not training:
        return results

    train = make_dataset(paths["train"], tokenizer, 64, batch_size, seed=0)
    steps = training_rates(train, tokenizer, batches, repeats)
    fastest = max(rate for key, rate in vqa.items() if key != "memory cache")
    results["small_cnn_training"] = {
        "batch_size": batch_size,
        "steps_per_s_from_pipeline": steps["pipeline"],
        "steps_per_s_from_memory": steps["memory"],
        "images_per_s_from_pipeline": steps["pipeline"] * batch_size,
        "pipeline_over_memory": steps["pipeline"] / steps["memory"],
        "pipeline_alone_over_training": fastest / (steps["memory"] * batch_size),
    }
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/pipeline.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--batches", type=int, default=60)
    args = parser.parse_args(argv)
    results = measure(args.repeats, args.photos, args.batches)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as file:
        json.dump(results, file, indent=2)
    print(markdown(results))
    return 0


def markdown(results):
    machine = results["machine"]
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, Python "
        f"{machine['python']}, TensorFlow {machine['tensorflow']}; median of "
        f"{results['repeats']} passes.",
        "",
        "| num_parallel_calls | easy-VQA 64 px PNG, img/s "
        "| JPEG 500x375 -> 224 px, img/s |",
        "|---|---|---|",
    ]
    vqa, jpeg = (
        results["easy_vqa_64px_images_per_s"],
        results["jpeg_500x375_to_224px_images_per_s"],
    )
    for key in jpeg:
        lines.append(f"| {key} | {vqa[key]:,.0f} | {jpeg[key]:,.0f} |")
    lines.append(f"| memory cache | {vqa['memory cache']:,.0f} | |")
    training = results.get("small_cnn_training")
    if not training:
        return "\n".join(lines)
    lines += [
        "",
        f"small_cnn + bow + concat training, batch {training['batch_size']}: "
        f"{training['steps_per_s_from_pipeline']:.1f} steps/s from the pipeline, "
        f"{training['steps_per_s_from_memory']:.1f} from memory "
        f"(ratio {training['pipeline_over_memory']:.2f}); the pipeline alone "
        f"delivers {training['pipeline_alone_over_training']:.1f}x what "
        "training consumes.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
