"""Fusion against its best single modality, with and without balancing.

For each data set and seed, through `mmzoo train`'s code path
(`mmzoo.training.trainer.train`): the unimodal runs (image_only,
text_only), five fusions (concat, gated, bilinear, film, late), the same
five with mmzoo's balancing options (unimodal heads and OGM-GE, see
`mmzoo.balance`), and ensembles of the trained runs (`mmzoo.ensemble`): the
two unimodal runs averaged, and weighted ensembles whose weights are
fitted on the validation split. Each is scored on the test split;
"fusion - best unimodal" subtracts the better of image_only and text_only
on the same split and seed, so a positive number means the fusion beat
both. Mean and spread (sample standard deviation) over the seeds.

Sets:

- `easy_vqa`: the easy-VQA package's questions (10% of the training images
  held out for validation, by image), at the settings of `mmzoo demo`
  (small_cnn at 32 px + bag of words, 3 epochs).
- `openmoji`: benchmarks/openmoji.py's emoji (picture, keywords -> Unicode
  group), small_cnn at 64 px + bag of words, 8 epochs.

    python -m benchmarks.modality_balance --out DIR --openmoji OPENMOJI_DIR \
        [--sets easy_vqa openmoji] [--seeds 0 1 2]
"""

import argparse
import json
import os
import platform
import statistics
import time

from benchmarks import write_csv_manifests

FUSIONS = ("concat", "gated", "bilinear", "film", "late")
BASELINES = ("image_only", "text_only")
# The balancing options measured: both of mmzoo's (see mmzoo.balance).
BALANCED = {"unimodal_heads": 1.0, "balance": "ogm_ge", "balance_alpha": 0.5}

SETTINGS = {
    "easy_vqa": {
        "image_size": 32,
        "max_tokens": 12,
        "batch_size": 64,
        "lr": 1e-3,
        "lr_schedule": "cosine",
        "epochs": 3,
        "model": {
            "image_filters": [16, 32, 64],
            "embedding_dim": 64,
            "text_units": 64,
            "fusion_units": 128,
            "head_units": [128],
        },
    },
    "openmoji": {
        "image_size": 64,
        "max_tokens": 16,
        "batch_size": 32,
        "lr": 1e-3,
        "lr_schedule": "cosine",
        "epochs": 8,
        "model": {
            "image_filters": [16, 32, 64],
            "embedding_dim": 64,
            "text_units": 64,
            "fusion_units": 128,
            "head_units": [128],
        },
    },
}


# name -> (`mmzoo.ensemble` method, members): the unimodal runs averaged,
# and weighted ensembles (weights fitted on the validation split).
ENSEMBLES = {
    "ensemble average(image_only, text_only)": ("average", BASELINES),
    "ensemble weighted(image_only, text_only, bilinear)": (
        "weighted",
        (*BASELINES, "bilinear"),
    ),
    "ensemble weighted(all plain runs)": ("weighted", (*BASELINES, *FUSIONS)),
}


def variants():
    """`{name: train overrides}`: the unimodal runs, then each fusion plain
    and balanced."""
    chosen = {name: {"fusion": name} for name in BASELINES}
    for fusion in FUSIONS:
        chosen[fusion] = {"fusion": fusion}
        chosen[f"{fusion}+balance"] = {"fusion": fusion, **BALANCED}
    return chosen


def easy_vqa_manifests(folder, val_fraction=0.1, seed=0):
    """train/val/test CSVs from the easy-VQA package; val holds whole images."""
    import numpy as np

    from mmzoo.data.builtin import easy_vqa
    from mmzoo.data.sources import read_manifest

    paths = easy_vqa()
    rows = {}
    for split in ("train", "test"):
        manifest = read_manifest(paths[split])
        rows[split] = list(
            zip(manifest.images, manifest.texts, manifest.labels, strict=True)
        )
    images = sorted({row[0] for row in rows["train"]})
    order = np.random.default_rng(seed).permutation(len(images))
    held = {images[i] for i in order[: int(len(images) * val_fraction)]}
    training = rows.pop("train")
    rows["train"] = [row for row in training if row[0] not in held]
    rows["val"] = [row for row in training if row[0] in held]
    manifests = write_csv_manifests(folder, rows, ("image", "text", "label"))
    return manifests


def run_set(name, manifests, out, seeds, quick=False):
    """Train every variant per seed on one set; returns the rows."""
    import keras

    import mmzoo
    from mmzoo.training import trainer

    settings = dict(SETTINGS[name])
    if quick:
        settings.update(epochs=1, model={"image_filters": [8], "head_units": [16]})
    rows = []
    for seed in seeds:
        accuracy = {}
        for variant, overrides in variants().items():
            folder = os.path.join(out, name, f"seed{seed}", variant)
            started = time.perf_counter()
            if not os.path.isfile(os.path.join(folder, "metrics.json")):
                trainer.train(
                    train=manifests["train"],
                    val=manifests["val"],
                    test=manifests["test"],
                    image_tower="small_cnn",
                    text_tower="bow",
                    seed=seed,
                    out=folder,
                    verbose=0,
                    **settings,
                    **overrides,
                )
                keras.backend.clear_session()
            with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as file:
                metrics = json.load(file)
            accuracy[variant] = metrics["test"]["accuracy"]
            rows.append(
                {
                    "set": name,
                    "seed": seed,
                    "variant": variant,
                    "test_accuracy": accuracy[variant],
                    "val_accuracy": metrics["val"]["accuracy"],
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
        # Ensembles of the trained runs (`mmzoo.ensemble`): no training.
        for variant, (method, members) in ENSEMBLES.items():
            folder = os.path.join(out, name, f"seed{seed}", variant)
            if not os.path.isfile(os.path.join(folder, "metrics.json")):
                mmzoo.ensemble(
                    [os.path.join(out, name, f"seed{seed}", m) for m in members],
                    method,
                    val=manifests["val"],
                    test=manifests["test"],
                    out=folder,
                )
            with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as file:
                metrics = json.load(file)
            rows.append(
                {
                    "set": name,
                    "seed": seed,
                    "variant": variant,
                    "test_accuracy": metrics["test"]["accuracy"],
                    # Out of fold for the weighted ensembles.
                    "val_accuracy": metrics["val"]["accuracy"],
                }
            )
        best = max(accuracy[b] for b in BASELINES)
        for row in rows:
            if row["set"] == name and row["seed"] == seed:
                row["gain_over_best_unimodal"] = row["test_accuracy"] - best
    return rows


def summarise(rows):
    """Per set and variant: mean and spread of accuracy and gain."""
    table = {}
    for row in rows:
        entry = table.setdefault((row["set"], row["variant"]), {"acc": [], "gain": []})
        entry["acc"].append(row["test_accuracy"])
        entry["gain"].append(row["gain_over_best_unimodal"])
    summary = []
    for (name, variant), values in table.items():
        summary.append(
            {
                "set": name,
                "variant": variant,
                "seeds": len(values["acc"]),
                "accuracy_mean": statistics.mean(values["acc"]),
                "accuracy_sd": _sd(values["acc"]),
                "gain_mean": statistics.mean(values["gain"]),
                "gain_sd": _sd(values["gain"]),
                "gain_min": min(values["gain"]),
            }
        )
    return summary


def _sd(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def markdown(result):
    lines = [
        f"Machine: {result['machine']}; seeds {result['seeds']}; "
        f"balanced = {result['balanced']}.",
        "",
    ]
    for name in result["sets"]:
        lines += [
            f"**{name}** (test accuracy; gain = fusion − best unimodal, points)",
            "",
            "| model | accuracy (mean ± sd) | gain (mean ± sd) | worst gain |",
            "|---|---|---|---|",
        ]
        for entry in result["summary"]:
            if entry["set"] != name:
                continue
            lines.append(
                f"| {entry['variant']} | {entry['accuracy_mean']:.4f} ± "
                f"{entry['accuracy_sd']:.4f} | {100 * entry['gain_mean']:+.1f} ± "
                f"{100 * entry['gain_sd']:.1f} | {100 * entry['gain_min']:+.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.modality_balance",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--sets", nargs="+", default=["easy_vqa", "openmoji"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--openmoji", help="the folder benchmarks/openmoji.py wrote (its CSVs)"
    )
    parser.add_argument("--quick", action="store_true", help="1 epoch, tiny models")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sets) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown set(s) {unknown}; choose from {sorted(SETTINGS)}")
    if "openmoji" in args.sets and not args.openmoji:
        parser.error("--openmoji DIR is needed (python -m benchmarks.openmoji)")
    rows = []
    for name in args.sets:
        if name == "easy_vqa":
            manifests = easy_vqa_manifests(os.path.join(args.out, "easy_vqa_data"))
        else:
            manifests = {
                split: os.path.join(args.openmoji, f"{split}.csv")
                for split in ("train", "val", "test")
            }
        rows += run_set(name, manifests, args.out, args.seeds, args.quick)
        # Written after each set, so a long run shows its progress.
        result = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "sets": [n for n in args.sets if any(r["set"] == n for r in rows)],
            "seeds": args.seeds,
            "balanced": BALANCED,
            "rows": rows,
            "summary": summarise(rows),
        }
        with open(os.path.join(args.out, "modality_balance.json"), "w") as file:
            json.dump(result, file, indent=2)
        with open(os.path.join(args.out, "modality_balance.md"), "w") as file:
            file.write(markdown(result))
        print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
