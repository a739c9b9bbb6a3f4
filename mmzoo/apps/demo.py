"""`mmzoo demo`: fusion against unimodal baselines on easy-VQA.

The main job. It trains, on the built-in easy-VQA dataset, an image-only
and a text-only baseline and three fusions, evaluates each on the test
split, and prints a results table. A question such as "what color is the
shape?" cannot be answered from the question alone (a text-only model
learns the most frequent answer per question, about 0.67) nor from the
image alone (which question?), so a model that fuses both should beat both
baselines by a wide margin. Each model's run folder holds its curves,
confusion matrix and metrics.

Validation data is 10% of the training images (all their questions), held
out so that the test split is only used for the final figures.
"""

import concurrent.futures
import json
import logging
import multiprocessing
import os
import shutil
import time

from mmzoo.data.builtin import easy_vqa
from mmzoo.training import trainer

logger = logging.getLogger("mmzoo.demo")

# name -> (text tower, fusion). Every model uses the small_cnn image tower.
MODELS = {
    "image_only": ("bow", "image_only"),
    "text_only": ("bow", "text_only"),
    "concat": ("bow", "concat"),
    "gated": ("bow", "gated"),
    "bilinear": ("bow", "bilinear"),
    "cross_attention": ("bow", "cross_attention"),
}
BASELINES = ("image_only", "text_only")

# Chosen to train every model in about a minute on 2 CPU cores; see
# benchmarks/RESULTS.md for the measurements.
SETTINGS = {
    # 32 px keeps every shape and colour recognisable and costs a quarter
    # of 64 px (easy-VQA's size).
    "image_size": 32,
    "max_tokens": 12,
    "batch_size": 64,
    "lr": 1e-3,
    "lr_schedule": "cosine",
    "epochs": 3,
    "cache": "memory",
    "model": {
        "image_filters": [16, 32, 64],
        "embedding_dim": 64,
        "text_units": 64,
        "fusion_units": 128,
        "head_units": [128],
    },
}
QUICK = {"epochs": 1, "model": {"image_filters": [8, 16], "head_units": [32]}}

# One small model trains on about 1.2 of 2 cores (its ops are too small to
# split well), so two at a time, each on one core, finish the demo sooner;
# see benchmarks/RESULTS.md.
WORKERS = 2

# The margin over the better baseline that counts as "wide", and the test
# accuracy the best fusion should reach (FACTS: the public Keras reference
# scored 0.67-0.86 here).
MARGIN = 0.10
TARGET = 0.95


def split_validation(train_manifest, folder, every=10):
    """Hold out the questions of every `every`-th training image."""
    train_path = os.path.join(folder, "train_split.jsonl")
    val_path = os.path.join(folder, "val.jsonl")
    images = {}
    with open(train_manifest, encoding="utf-8") as source:
        rows = [json.loads(line) for line in source if line.strip()]
    for row in rows:
        images.setdefault(row["image"], len(images))
    with (
        open(train_path, "w", encoding="utf-8") as train,
        open(val_path, "w", encoding="utf-8") as val,
    ):
        for row in rows:
            target = val if images[row["image"]] % every == every - 1 else train
            target.write(json.dumps(row) + "\n")
    return train_path, val_path


def export_best(run_dir, test_manifest, savedmodels="savedmodels", samples=512):
    """Export a run for TF Serving and TFLite (float32, int8) with parity.

    Returns a dict of figures: the SavedModel's path and its max abs
    difference from Keras on raw test files, and per TFLite variant its
    size, size ratio to float32 and parity with Keras.
    """
    import numpy as np
    import tensorflow as tf

    from mmzoo.data.dataset import make_dataset
    from mmzoo.data.sources import read_manifest
    from mmzoo.export.saved_model import export_saved_model
    from mmzoo.export.tflite import export_tflite
    from mmzoo.export.tflite import parity
    from mmzoo.runs import load_run

    run = load_run(run_dir)
    figures = {}
    path = export_saved_model(run, base=savedmodels, name="easy_vqa")
    # Serving parity on raw files: the signature decodes and tokenizes
    # in the graph; Keras gets the pipeline's tensors for the same rows.
    manifest = read_manifest(test_manifest)
    rows = range(min(64, len(manifest)))
    served = tf.saved_model.load(path).signatures["serving_default"]
    images = [tf.io.read_file(manifest.images[i]) for i in rows]
    outputs = served(
        image_bytes=tf.stack(images),
        text=tf.constant([manifest.texts[i] for i in rows]),
    )
    from mmzoo.data.images import load_image

    pixels = tf.cast(
        tf.stack([load_image(data, run.image_size, run.resize) for data in images]),
        tf.float32,
    )
    tokens = run.tokenizer(tf.constant([manifest.texts[i] for i in rows]))
    expected = run.model({"image": pixels, "tokens": tokens}, training=False)
    output = run.output_name
    figures["saved_model"] = {
        "path": path,
        "max_abs_diff": float(np.max(np.abs(outputs[output] - expected[output]))),
    }
    sample = make_dataset(
        test_manifest,
        run.tokenizer,
        run.image_size,
        batch_size=64,
        training=False,
        labels=run.labels,
    ).take(max(1, samples // 64))
    folder = os.path.join(run_dir, "tflite")
    for quantize in ("none", "int8"):
        name = "float32" if quantize == "none" else quantize
        report = export_tflite(
            run, os.path.join(folder, f"easy_vqa_{name}.tflite"), quantize=quantize
        )
        check = parity(run, report["path"], sample)
        figures[f"tflite_{name}"] = {
            "path": report["path"],
            "bytes": report["bytes"],
            "size_ratio": report["size_ratio"],
            "max_abs_diff": check["max_abs_diff"],
            "top1_agreement": check["top1_agreement"],
        }
    return figures


def export_table(figures):
    lines = [
        f"SavedModel {figures['saved_model']['path']}: max abs diff from Keras "
        f"{figures['saved_model']['max_abs_diff']:.2e} on raw test files.",
        "",
        "| TFLite | bytes | size vs float32 | max abs diff | top-1 agreement |",
        "|---|---|---|---|---|",
    ]
    for key, row in figures.items():
        if key.startswith("tflite_"):
            lines.append(
                f"| {key[7:]} | {row['bytes']:,} | {row['size_ratio']:.2f} "
                f"| {row['max_abs_diff']:.2e} | {row['top1_agreement']:.4f} |"
            )
    return "\n".join(lines)


def run_demo(
    out="runs/demo",
    quick=False,
    seed=0,
    models=None,
    savedmodels="savedmodels",
    workers=None,
):
    """Train and compare the demo's models; print and write the results.

    Args:
        out: the demo folder (replaced): one run folder per model, plus
            `results.json` and `results.md`.
        quick: a one-epoch run with a smaller model and a slice of the
            data, to check the wiring (the targets are not expected).
        seed: the seed of every run.
        models: names from `MODELS` (default all).
        savedmodels: TF Serving's model base folder: the best fusion is
            exported there as `easy_vqa/<next version>` and to TFLite
            (float32 and int8) in its run folder, with parity figures.
            `None` skips the export.
        workers: processes that train models side by side, each on its
            share of the cores. Default `WORKERS`; 1 trains them one after
            the other in this process.

    Returns:
        The process exit status: 0 when the best fusion beats both
        baselines by `MARGIN` and reaches `TARGET` (always 0 with `quick`).
    """
    start = time.perf_counter()
    paths = easy_vqa()
    if os.path.isdir(out):
        shutil.rmtree(out)
    data = os.path.join(out, "data")
    os.makedirs(data)
    train_path, val_path = split_validation(paths["train"], data)
    test_path = paths["test"]
    if quick:
        train_path, val_path, test_path = (
            head_manifest(path, data, rows)
            for path, rows in ((train_path, 640), (val_path, 128), (test_path, 256))
        )
    settings = {**SETTINGS, **(QUICK if quick else {})}
    settings["model"] = {**SETTINGS["model"], **(QUICK["model"] if quick else {})}

    names = list(models or MODELS)
    arguments = {
        "paths": (train_path, val_path, test_path),
        "seed": seed,
        "out": out,
        "verbose": 0 if quick else "auto",
        "settings": settings,
    }
    workers = min(len(names), WORKERS if workers is None else workers)
    if workers > 1:
        results = _train_side_by_side(names, workers, arguments)
    else:
        results = {name: _train_model(name, **arguments) for name in names}
    summary = _summarize(results, quick)
    if summary.get("best_fusion") and savedmodels:
        logger.info("Exporting %s", summary["best_fusion"])
        summary["export"] = export_best(
            os.path.join(out, summary["best_fusion"]), test_path, savedmodels
        )
    summary["total_seconds"] = round(time.perf_counter() - start, 1)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as file:
        json.dump(summary, file, indent=2)
    table = results_table(summary)
    if "export" in summary:
        table += "\n\n" + export_table(summary["export"])
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as file:
        file.write(table + "\n")
    print(table)
    return 0 if quick or summary["target_met"] else 1


def _train_model(name, paths, seed, out, verbose, settings):
    """Train one of `MODELS`; its row of the results."""
    text_tower, fusion = MODELS[name]
    logger.info("Training %s (small_cnn + %s, %s)", name, text_tower, fusion)
    train_path, val_path, test_path = paths
    result = trainer.train(
        train=train_path,
        val=val_path,
        test=test_path,
        image_tower="small_cnn",
        text_tower=text_tower,
        fusion=fusion,
        seed=seed,
        out=os.path.join(out, name),
        verbose=verbose,
        **settings,
    )
    test = result["metrics"]["test"]
    return {
        "text_tower": text_tower,
        "fusion": fusion,
        "accuracy": test["accuracy"],
        "macro_f1": test["macro_f1"],
        "parameters": result["parameters"],
        "train_seconds": round(result["train_seconds"], 1),
    }


def _train_side_by_side(names, workers, arguments):
    """`_train_model` for each name in `workers` fresh processes; the
    results in the order of `names`."""
    cores = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # TensorFlow is not fork-safe
    with concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_start_worker,
        initargs=(cores, logging.getLogger().getEffectiveLevel()),
    ) as pool:
        # The slowest first, so that no worker is left with it at the end.
        order = sorted(names, key=lambda name: -_COST.get(MODELS[name][1], 1))
        futures = {name: pool.submit(_train_model, name, **arguments) for name in order}
        return {name: futures[name].result() for name in names}


# Training time relative to concat (benchmarks/RESULTS.md): the order in
# which the workers take the models.
_COST = {"cross_attention": 2.5, "gated": 1.1, "text_only": 0.2}


def _start_worker(cores, level):
    import tensorflow as tf

    from mmzoo.cli import LOG_FORMAT

    logging.basicConfig(level=level, format=LOG_FORMAT)

    tf.config.threading.set_intra_op_parallelism_threads(cores)
    tf.config.threading.set_inter_op_parallelism_threads(cores)


def head_manifest(path, folder, rows):
    """The first `rows` lines of a manifest, as a new manifest."""
    name = os.path.join(folder, "quick_" + os.path.basename(path))
    with open(path, encoding="utf-8") as source, open(name, "w") as target:
        for index, line in enumerate(source):
            if index >= rows:
                break
            target.write(line)
    return name


def _summarize(results, quick):
    fused = {k: v for k, v in results.items() if k not in BASELINES}
    baselines = {k: v for k, v in results.items() if k in BASELINES}
    summary = {"models": results, "quick": quick}
    if fused and baselines:
        best = max(fused, key=lambda k: fused[k]["accuracy"])
        best_baseline = max(v["accuracy"] for v in baselines.values())
        accuracy = fused[best]["accuracy"]
        summary.update(
            best_fusion=best,
            best_accuracy=accuracy,
            best_baseline_accuracy=best_baseline,
            margin=round(accuracy - best_baseline, 4),
            target_met=bool(accuracy >= best_baseline + MARGIN and accuracy >= TARGET),
        )
    else:
        summary["target_met"] = False
    return summary


def results_table(summary):
    """The results as a markdown table, with the verdict below it."""
    lines = [
        "| model | text tower | fusion | test accuracy | macro-F1 | parameters "
        "| training time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["models"].items():
        lines.append(
            f"| {name} | {row['text_tower']} | {row['fusion']} "
            f"| {row['accuracy']:.4f} | {row['macro_f1']:.4f} "
            f"| {row['parameters']:,} | {row['train_seconds']:.1f} |"
        )
    if "best_fusion" in summary:
        verdict = "met" if summary["target_met"] else "NOT met"
        lines += [
            "",
            f"Best fusion: {summary['best_fusion']} at "
            f"{summary['best_accuracy']:.4f}, {summary['margin']:+.4f} over the "
            f"better baseline ({summary['best_baseline_accuracy']:.4f}). Target "
            f"(>= {TARGET} and >= baseline + {MARGIN}): {verdict}.",
        ]
    return "\n".join(lines)
