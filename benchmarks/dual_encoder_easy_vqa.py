"""Dual encoders on easy-VQA captions: Recall@K against a random ranking.

easy-VQA (the `easy-vqa` package, no network) asks questions about 4,000
training and 1,000 test images, each one shape of one colour. Each image's
answers give it a caption, "a blue circle": the colour from "what color is
the shape?", the shape from "what shape ...?" or "what is the <colour>
shape?". The images and their captions are written as manifests without
labels (10% of the training images held out for validation), and a dual
encoder (small_cnn at 64 px, bag of words) is trained on them per loss
through `mmzoo train --task contrastive`'s code path
(`mmzoo.training.trainer.train`): many images share a caption, which the
run finds (equal texts) and counts as right for each of them. The figures
are the run's test metrics: every test image queries the test captions and
every caption the images, against what a random ranking scores.

    python -m benchmarks.dual_encoder_easy_vqa --out DIR [--loss clip ...]
"""

import argparse
import json
import os
import platform
import time

from benchmarks import write_csv_manifests


def write_manifests(folder, val_fraction=0.1, seed=0):
    """`{split: path}` of (image, caption) CSVs, no labels: train, val, test.

    Images without both a colour and a shape in their answers get no
    caption and are left out (counted in `skipped`); `val` is a random
    `val_fraction` of the training images.
    """

    import easy_vqa
    import numpy as np

    from mmzoo.data.builtin import image_captions

    sources = {
        "train": (easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths()),
        "test": (easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths()),
    }
    rows, skipped = {}, {}
    for split, (questions, paths) in sources.items():
        text = image_captions(*questions)
        rows[split] = [(paths[image], text[image]) for image in sorted(text)]
        skipped[split] = len(paths) - len(text)
    order = np.random.default_rng(seed).permutation(len(rows["train"]))
    held = set(order[: int(len(order) * val_fraction)].tolist())
    training = rows.pop("train")
    rows["train"] = [row for i, row in enumerate(training) if i not in held]
    rows["val"] = [row for i, row in enumerate(training) if i in held]
    manifests = write_csv_manifests(folder, rows)
    return manifests, {split: len(entries) for split, entries in rows.items()}, skipped


def run(out, losses=("clip",), epochs=10, image_size=64, seed=0):
    """Train a dual encoder per loss through `mmzoo train`'s code path."""
    import keras

    from mmzoo.training import trainer

    manifests, sizes, skipped = write_manifests(os.path.join(out, "data"), seed=seed)
    results = []
    for loss in losses:
        started = time.perf_counter()
        result = trainer.train(
            train=manifests["train"],
            val=manifests["val"],
            test=manifests["test"],
            task="contrastive",
            loss=loss,
            image_size=image_size,
            max_tokens=4,
            batch_size=64,
            lr=2e-3,
            epochs=epochs,
            seed=seed,
            model={"image_filters": [16, 32, 64], "embedding_dim": 32, "embed_dim": 64},
            out=os.path.join(out, "runs", loss),
            verbose=0,
        )
        results.append(
            {
                "loss": loss,
                "metrics": result["metrics"]["test"],
                "train_seconds": result["train_seconds"],
                "wall_seconds": time.perf_counter() - started,
            }
        )
    return {
        "epochs": epochs,
        "image_size": image_size,
        "seed": seed,
        "images": sizes,
        "images_without_caption": skipped,
        "runs": results,
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; Python {platform.python_version()}, "
        f"Keras {keras.__version__}",
    }


def markdown(result):
    first = result["runs"][0]["metrics"]
    lines = [
        "## Dual encoders on easy-VQA captions "
        "(`python -m benchmarks.dual_encoder_easy_vqa`)",
        "",
        f"`mmzoo train --task contrastive --loss L`: small_cnn "
        f"({result['image_size']} px) + bag of words, {result['epochs']} epochs on "
        f"{result['images']['train']:,} training images and their captions "
        f"(best of validation loss on {result['images']['val']:,} more); "
        f"retrieval over the {first['examples']:,} test images and their "
        "captions, both ways (a caption shared by several images is right for "
        "each of them).",
        "",
        "| loss | image→text R@1 | R@5 | R@10 | text→image R@1 | R@5 | R@10 "
        "| median rank i→t / t→i | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        m = run["metrics"]
        lines.append(
            f"| `{run['loss']}` | {m['image_to_text_R@1']:.3f} | "
            f"{m['image_to_text_R@5']:.3f} | {m['image_to_text_R@10']:.3f} | "
            f"{m['text_to_image_R@1']:.3f} | {m['text_to_image_R@5']:.3f} | "
            f"{m['text_to_image_R@10']:.3f} | {m['image_to_text_median_rank']:.0f}"
            f" / {m['text_to_image_median_rank']:.0f} | {run['train_seconds']:.0f} |"
        )
    lines.append(
        f"| random ranking | {first['random_R@1']:.3f} | {first['random_R@5']:.3f} | "
        f"{first['random_R@10']:.3f} | {first['random_R@1']:.3f} | "
        f"{first['random_R@5']:.3f} | {first['random_R@10']:.3f} | | |"
    )
    lines += ["", f"{result['machine']}."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--loss", action="append", help="repeat for several (default: every loss)"
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from mmzoo.losses import LOSSES

    losses = args.loss or list(LOSSES)
    result = run(args.out, losses, args.epochs, args.image_size, args.seed)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as file:
        json.dump(result, file, indent=2)
    with open(os.path.join(args.out, "results.md"), "w") as file:
        file.write(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
