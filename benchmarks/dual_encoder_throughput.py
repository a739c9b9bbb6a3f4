"""Training throughput of dual encoders against the bare image tower.

Two measurements, each in one process with paired turns (the models of a
group take turns repeat by repeat, as in `benchmarks.throughput`, and each
ratio is the median of the repeat-by-repeat ratios):

- per image tower: the bare tower, a fused classifier (bow + concat) and
  dual encoders (bow, CLIP and SigLIP losses), training images/s on one
  synthetic batch (`benchmarks.throughput.measure_group`);
- the cost of gathering negatives across replicas: a dual encoder under
  `MirroredStrategy` on two logical CPU devices, Keras `fit` steps with
  `gather_negatives=True` against `False`, in a fresh process (TensorFlow
  fixes its devices when it starts). On one CPU split in two the replicas
  share the cores, so this shows the gather's own cost (an all-gather of
  (batch, embed_dim) floats and a loss over the global batch), not a
  multi-device speed-up.

    python -m benchmarks.dual_encoder_throughput --out DIR
"""

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time

from benchmarks.machine import describe

GROUPS = (("small_cnn", 64, 32), ("mobilenet_v3_small", 96, 16))
FUSIONS = ("bare", "concat", "dual:clip", "dual:siglip")

GATHER = textwrap.dedent(
    """
    import json, statistics, sys, time
    import tensorflow as tf

    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import numpy as np
    import mmzoo

    batch, steps, repeats = {batch}, {steps}, {repeats}
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    x = {{"image": rng.uniform(0, 255, (batch * steps, 64, 64, 3)).astype("float32"),
          "tokens": rng.integers(1, 20000, (batch * steps, 32)).astype("int32")}}
    models = {{}}
    for gather in (True, False):
        with strategy.scope():
            models[gather] = mmzoo.build_dual_encoder(
                image_size=64, vocab_size=20000, max_tokens=32,
                gather_negatives=gather)
        models[gather].fit(x, batch_size=batch, epochs=1, verbose=0)  # warm-up
    rates = {{True: [], False: []}}
    for _ in range(repeats):
        for gather, model in models.items():
            start = time.perf_counter()
            model.fit(x, batch_size=batch, epochs=1, verbose=0)
            rates[gather].append(batch * steps / (time.perf_counter() - start))
    print(json.dumps({{
        "replicas": strategy.num_replicas_in_sync,
        "global_batch": batch,
        "gather_images_per_s": statistics.median(rates[True]),
        "local_images_per_s": statistics.median(rates[False]),
        "ratio": statistics.median(
            g / l for g, l in zip(rates[True], rates[False])),
    }}))
    """
)


def towers(steps, repeats):
    from benchmarks.throughput import Config
    from benchmarks.throughput import measure_group
    from benchmarks.throughput import overhead

    results = []
    for group, (tower, size, batch) in enumerate(GROUPS):
        configs = [
            Config(
                tower,
                None if fusion == "bare" else "bow",
                fusion,
                size,
                batch,
            )
            for fusion in FUSIONS
        ]
        rows = measure_group(configs, steps, repeats, warmup=2, min_seconds=1.0)
        for row in rows:
            row["group"] = group
        results += rows
    return results, overhead(results)


def gather_cost(batch=32, steps=8, repeats=5):
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            GATHER.format(batch=batch, steps=steps, repeats=repeats),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(report):
    lines = [
        "## Dual encoders: training throughput against the bare image tower "
        "(`python -m benchmarks.dual_encoder_throughput`)",
        "",
        "Synthetic batches on the device, float32, Adam; paired turns, each "
        f"ratio the median of {report['repeats']} repeat-by-repeat ratios.",
        "",
        "| image tower | model | train img/s | train vs bare |",
        "|---|---|---|---|",
    ]
    ratios = {row["label"]: row["train_ratio"] for row in report["overhead"]}
    for row in report["results"]:
        model = (
            "bare tower"
            if row["fusion"] == "bare"
            else (f"{row['text_tower']} + {row['fusion']}")
        )
        rate = row.get("train_images_per_s")
        ratio = ratios.get(row["label"])
        lines.append(
            f"| {row['image_tower']} @{row['image_size']}px b{row['batch_size']} | "
            f"{model} | {rate:.1f} | {'' if ratio is None else f'{ratio:.2f}'} |"
            if rate is not None
            else f"| {row['image_tower']} | {model} | error: {row.get('error')} | |"
        )
    gather = report["gather"]
    lines += [
        "",
        f"Negatives gathered across {gather['replicas']} replicas (MirroredStrategy "
        "on two logical CPU devices, small_cnn + bow @64px, global batch "
        f"{gather['global_batch']}, CLIP loss, Keras fit): "
        f"{gather['gather_images_per_s']:.1f} img/s with the gather, "
        f"{gather['local_images_per_s']:.1f} without; ratio "
        f"**{gather['ratio']:.3f}**.",
        "",
        "Machine: {cpu}, {cores} cores, no GPU; Python {python}, TensorFlow "
        "{tensorflow}, Keras {keras}, mmzoo {mmzoo}.".format(**report["machine"])
        + f" Wall time {report['wall_seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results, ratios = towers(args.steps, args.repeats)
    report = {
        "results": results,
        "overhead": ratios,
        "gather": gather_cost(repeats=args.repeats),
        "repeats": args.repeats,
        "machine": describe("tensorflow"),
    }
    report["wall_seconds"] = time.perf_counter() - started
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as file:
        json.dump(report, file, indent=2, default=str)
    with open(os.path.join(args.out, "results.md"), "w") as file:
        file.write(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
