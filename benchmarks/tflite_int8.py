"""int8 against float32 TFLite per image tower, mmzoo's export and the bare tower.

For each tower, three models of one run, converted to float32 and int8:

- `mmzoo`: `<tower> + bow + concat`, through `mmzoo.export.tflite.convert`
  (int8 with `FLOAT_ISLAND_OPS` kept in float32);
- `bare`: the keras.applications tower under a softmax layer
  (`benchmarks.throughput.bare_tower`), through the same `convert`;
- `bare_stock`: the same bare tower, int8 through the converter's single
  call as its guide shows it (`optimizations=[DEFAULT]`,
  `representative_dataset`, `supported_ops=[TFLITE_BUILTINS_INT8]`): the
  number a user gets without mmzoo, and mmzoo's int8 export before.

Each file runs in the LiteRT interpreter with XNNPACK on one thread,
batch 1: the median of `--calls` calls, the files of one tower timed in
turn for `--rounds` rounds (the median of the rounds' medians), so that
float32 and int8 share the machine's load. It records the delegate's
partitions and the ops it left to the builtin kernels.

Top-1 agreement (int8 file against float32 file, on easy-VQA test images)
is measured twice. `--part latency`: on the timed random-weight models,
whose BatchNorm statistics are set on easy-VQA training images
(`mmzoo.layers.recalibrate_batch_norm`) and whose last Dense layer is fitted
to the shape's colour, so that they answer per image; their margins are
small, so this says little. `--part agreement` (`trained_agreement`): on
models trained to name the colour, at a smaller size; this is the figure to
judge int8 by. Run:

    python -m benchmarks.tflite_int8 --out benchmarks/results/tflite-int8

and copy the markdown it prints into benchmarks/RESULTS.md.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

TOWERS = (
    ("small_cnn", 64),
    ("mobilenet_v3_small", 224),
    ("mobilenet_v3_large", 224),
    ("efficientnet_b0", 224),
    ("resnet50", 224),
)
VARIANTS = ("mmzoo", "bare", "bare_stock")


COLOURS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")


def easy_vqa_images(split, count, image_size, offset=0):
    """`count` easy-VQA images as float32 `(count, S, S, 3)` in [0, 255], and
    each one's shape colour (an index into `COLOURS`)."""
    import easy_vqa
    import tensorflow as tf

    if split == "train":
        paths = easy_vqa.get_train_image_paths()
        questions = easy_vqa.get_train_questions()
    else:
        paths = easy_vqa.get_test_image_paths()
        questions = easy_vqa.get_test_questions()
    colours = {
        image_id: COLOURS.index(answer)
        for question, answer, image_id in zip(*questions, strict=True)
        if question == "what color is the shape?"
    }
    ids = sorted(colours)[offset : offset + count]
    images = []
    for image_id in ids:
        pixels = tf.io.decode_png(tf.io.read_file(paths[image_id]), channels=3)
        resized = tf.image.resize(pixels, (image_size, image_size))
        images.append(np.clip(np.round(resized.numpy()), 0, 255))
    labels = np.array([colours[image_id] for image_id in ids])
    return np.stack(images).astype("float32"), labels


def fit_head(model, rows, labels):
    """Set the last Dense layer to a logistic regression of `labels`.

    weights=None towers answer near-uniformly (every image the same class),
    so int8 and float32 would agree by coin toss or not at all; fitted on
    the shape's colour (linear in random features), the head answers
    differently per image and with a margin, as a trained model does.
    """
    import keras
    from sklearn.linear_model import LogisticRegression

    head = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][
        -1
    ]
    features_model = keras.Model(model.input, head.input)
    features = np.concatenate(
        [np.asarray(features_model(row, training=False)) for row in rows]
    )
    fitted = LogisticRegression(C=10.0, max_iter=2000).fit(features, labels)
    kernel, bias = head.get_weights()
    kernel[:] = 0.0
    bias[:] = -10.0  # classes no image has
    kernel[:, fitted.classes_] = fitted.coef_.T
    bias[fitted.classes_] = fitted.intercept_
    head.set_weights([kernel, bias])


def inputs_for(model, images, seed, vary=True):
    """Input dicts of batch 1: `images`, and synthetic tokens if needed
    (one sequence for every image unless `vary`)."""
    from benchmarks.throughput import synthetic_batch

    rows = []
    for index, image in enumerate(images):
        row = {"image": image[None]}
        if "tokens" in model.input:
            batch = synthetic_batch(model, 1, seed=seed + index * vary)[0]
            row["tokens"] = np.asarray(batch["tokens"])
        rows.append(row)
    return rows


def stock_int8(model, calibration):
    """int8 through the converter's single call (TFLITE_BUILTINS_INT8)."""
    import tensorflow as tf

    with (
        tempfile.TemporaryDirectory() as folder,
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", r"(?s).*tf\.lite\.Interpreter is deprecated")
        path = os.path.join(folder, "model.tflite")
        model.export(
            path,
            format="litert",
            verbose=False,
            optimizations=[tf.lite.Optimize.DEFAULT],
            representative_dataset=lambda: iter(calibration),
            target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
        )
        with open(path, "rb") as file:
            return file.read()


def _runner(content, threads):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()  # the delegate applies here
    return interpreter, interpreter.get_signature_runner("serving_default")


def _median_ms(runner, example, calls, warmup):
    for _ in range(warmup):
        runner(**example)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        runner(**example)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure_tower(tower, size, args):
    """Files, partitions, latency and agreement of one tower's variants."""
    from benchmarks.latency import _delegate_partitions
    from benchmarks.throughput import Config
    from benchmarks.throughput import bare_tower
    from benchmarks.throughput import build
    from mmzoo.export.tflite import convert
    from mmzoo.export.tflite import ops_outside_delegate
    from mmzoo.layers import recalibrate_batch_norm

    train, train_labels = easy_vqa_images(
        "train", args.recalibrate + args.calibration, size
    )
    test, _ = easy_vqa_images("test", args.examples, size)
    models = {
        "mmzoo": build(Config(tower, "bow", "concat", size, 1)),
        "bare": bare_tower(tower, size),
    }
    files = {}
    rows = {}
    for name, model in models.items():
        recalibration = inputs_for(model, train[: args.recalibrate], 0)
        recalibrate_batch_norm(
            model,
            {
                key: np.concatenate([row[key] for row in recalibration])
                for key in recalibration[0]
            },
            batch_size=args.recalibrate,
        )
        fit_head(model, recalibration, train_labels[: args.recalibrate])
        calibration = inputs_for(model, train[args.recalibrate :], 10_000)
        rows[name] = inputs_for(model, test, 20_000)
        files[(name, "none")] = convert(model, "none")
        files[(name, "int8")] = convert(
            model, "int8", representative_dataset=lambda c=calibration: iter(c)
        )
        if name == "bare":
            files[("bare_stock", "none")] = files[("bare", "none")]
            files[("bare_stock", "int8")] = stock_int8(model, calibration)
    rows["bare_stock"] = rows["bare"]

    result = {}
    for (variant, quantize), content in files.items():
        interpreter, _ = _runner(content, 1)
        result.setdefault(variant, {})[quantize] = {
            "bytes": len(content),
            "xnnpack_partitions": _delegate_partitions(interpreter),
            "xnnpack_ops_outside": ops_outside_delegate(interpreter),
            "rounds_ms": [],
        }
    runners = {key: _runner(content, 1)[1] for key, content in files.items()}
    for _ in range(args.rounds):
        for (variant, quantize), runner in runners.items():
            result[variant][quantize]["rounds_ms"].append(
                _median_ms(runner, rows[variant][0], args.calls, args.warmup)
            )
    for variant, table in result.items():
        for row in table.values():
            row["median_ms"] = statistics.median(row["rounds_ms"])
        none, int8 = table["none"], table["int8"]
        table["int8_speedup_1_thread"] = none["median_ms"] / int8["median_ms"]
        table["int8_size_vs_float32"] = int8["bytes"] / none["bytes"]
        table.update(_agreement(files, variant, rows[variant]))
    return result


def _agreement(files, variant, rows):
    """int8 against float32 files on `rows`: top-1 agreement and cosine."""
    outputs = {}
    for quantize in ("none", "int8"):
        _, runner = _runner(files[(variant, quantize)], 2)
        outputs[quantize] = np.concatenate(
            [runner(**row)["probabilities"] for row in rows]
        )
    want, got = outputs["none"], outputs["int8"]
    cosine = np.sum(want * got, 1) / (
        np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1)
    )
    return {
        "examples": len(rows),
        "top1_agreement": float(np.mean(want.argmax(1) == got.argmax(1))),
        "cosine_similarity": float(np.mean(cosine)),
        "max_abs_diff": float(np.max(np.abs(want - got))),
        "float32_mean_top1_probability": float(np.mean(want.max(1))),
        "float32_distinct_answers": int(len(np.unique(want.argmax(1)))),
    }


def trained_agreement(tower, args):
    """int8 against float32 on models trained to answer: top-1 agreement.

    weights=None towers answer near-uniformly, so their int8 and float32
    files agree by coin toss (the random-weight models above, even with a
    fitted head, answer with small margins). Here each model is trained
    (every layer, Adam 1e-3) to name the shape's colour of `--train-images`
    easy-VQA training images at `--agreement-size` px (one random token
    sequence, the same for every image, as the fused model's text), its
    BatchNorm statistics recalibrated as mmzoo's training does, then
    converted and compared on easy-VQA test images. Latency does not
    depend on weights; this only sizes the cost of int8 in answers.
    """
    import keras

    from benchmarks.throughput import Config
    from benchmarks.throughput import bare_tower
    from benchmarks.throughput import build
    from mmzoo.export.tflite import convert
    from mmzoo.layers import recalibrate_batch_norm

    size = 64 if tower == "small_cnn" else args.agreement_size
    train, labels = easy_vqa_images("train", args.train_images, size)
    test, test_labels = easy_vqa_images("test", args.examples, size)
    models = {
        "mmzoo": build(Config(tower, "bow", "concat", size, 1)),
        "bare": bare_tower(tower, size),
    }
    result = {"image_size": size}
    for name, model in models.items():
        # One question for every image, as "what color is the shape?" is:
        # tokens that differ per image would let the model memorise them.
        rows = inputs_for(model, train, 0, vary=False)
        inputs = {key: np.concatenate([row[key] for row in rows]) for key in rows[0]}
        keras.utils.set_random_seed(0)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss={"probabilities": "sparse_categorical_crossentropy"},
        )
        start = time.perf_counter()
        model.fit(
            inputs,
            {"probabilities": labels},
            batch_size=32,
            epochs=args.epochs,
            verbose=0,
        )
        seconds = time.perf_counter() - start
        recalibrate_batch_norm(model, inputs, batch_size=64)
        calibration = rows[: args.calibration]
        files = {
            (name, "none"): convert(model, "none"),
            (name, "int8"): convert(
                model, "int8", representative_dataset=lambda c=calibration: iter(c)
            ),
        }
        variants = [name]
        if name == "bare":
            files[("bare_stock", "none")] = files[("bare", "none")]
            files[("bare_stock", "int8")] = stock_int8(model, calibration)
            variants.append("bare_stock")
        test_rows = inputs_for(model, test, 0, vary=False)
        for variant in variants:
            row = _agreement(files, variant, test_rows)
            row["train_seconds"] = seconds
            row["float32_accuracy"] = _accuracy(files, variant, test_rows, test_labels)
            result[variant] = row
    return result


def _accuracy(files, variant, rows, labels):
    _, runner = _runner(files[(variant, "none")], 2)
    answers = [int(np.argmax(runner(**row)["probabilities"])) for row in rows]
    return float(np.mean(np.array(answers) == labels))


def markdown(results, agreement=None):
    agreement = agreement or {}
    lines = [
        "| tower | export | partitions float32 / int8 | ops outside XNNPACK (int8) "
        "| float32 ms | int8 ms | int8 speed-up | int8 size / float32 "
        "| top-1 agreement, random weights | top-1 agreement, trained "
        "(float32 accuracy) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tower, variants in results["towers"].items():
        trained = agreement.get(tower.split(" ")[0], {})
        for variant, table in variants.items():
            none, int8 = table["none"], table["int8"]
            outside = int8["xnnpack_ops_outside"] or {}
            outside = ", ".join(f"{op} {count}" for op, count in outside.items())
            after = trained.get(variant)
            after = (
                f"{after['top1_agreement']:.3f} ({after['float32_accuracy']:.2f}, "
                f"{trained['image_size']} px)"
                if after
                else ""
            )
            lines.append(
                f"| {tower} | {variant} | {none['xnnpack_partitions']} / "
                f"{int8['xnnpack_partitions']} | {outside} | {none['median_ms']:.2f} "
                f"| {int8['median_ms']:.2f} | {table['int8_speedup_1_thread']:.2f}x "
                f"| {table['int8_size_vs_float32']:.2f} | "
                f"{table['top1_agreement']:.3f} | {after} |"
            )
    return "\n".join(lines)


def main(argv=None):
    from benchmarks.machine import describe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/tflite-int8")
    parser.add_argument("--towers", default=",".join(name for name, _ in TOWERS))
    parser.add_argument(
        "--part",
        choices=("latency", "agreement", "both"),
        default="both",
        help="latency: random-weight models at full size (results.json); "
        "agreement: trained models (agreement.json)",
    )
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--recalibrate", type=int, default=64)
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--agreement-size", type=int, default=96)
    parser.add_argument("--train-images", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)
    wanted = args.towers.split(",")
    os.makedirs(args.out, exist_ok=True)
    machine = describe("tensorflow")
    parts = ("latency", "agreement") if args.part == "both" else (args.part,)
    files = {"latency": "results.json", "agreement": "agreement.json"}
    for part in parts:
        results = {"machine": machine, "settings": vars(args), "towers": {}}
        for tower, size in TOWERS:
            if tower not in wanted:
                continue
            print(f"{part}: {tower} ...", file=sys.stderr, flush=True)
            if part == "latency":
                key = f"{tower} @{size}px"
                results["towers"][key] = measure_tower(tower, size, args)
            else:
                results["towers"][tower] = trained_agreement(tower, args)
            with open(os.path.join(args.out, files[part]), "w") as file:
                json.dump(results, file, indent=2)
    if not os.path.exists(os.path.join(args.out, files["latency"])):
        return
    with open(os.path.join(args.out, files["latency"])) as file:
        latency = json.load(file)
    agreement = None
    if os.path.exists(os.path.join(args.out, files["agreement"])):
        with open(os.path.join(args.out, files["agreement"])) as file:
            agreement = json.load(file)["towers"]
    text = markdown(latency, agreement)
    with open(os.path.join(args.out, "results.md"), "w") as file:
        file.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
