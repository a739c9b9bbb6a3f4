"""Captioning easy-VQA images, against two baselines, and decoding speed.

Each easy-VQA image whose answers give its colour and its shape
(`mmzoo.data.builtin.image_captions`) gets three phrasings of that
caption ("a blue circle", "the shape is a blue circle", "a circle that is
blue"), one manifest row each. A captioner (small_cnn grid + a 2-block
transformer decoder) is trained through `mmzoo train --task captioning`'s
code path and scored on the test images (greedy and beam 3) with BLEU-4
and CIDEr-D against all three references, beside:

- nearest neighbour: the first caption of the training image whose image
  embedding (the trained encoder's mean cell) is closest, by cosine;
- most frequent: the most frequent training caption, for every image.

Then captions/s of the trained model at batch 1 and 32, greedy and beam 3,
with and without the key/value cache (`tf.function`-compiled, as served).

    python -m benchmarks.captioning_easy_vqa --out DIR [--epochs 6]
"""

import argparse
import collections
import json
import os
import platform
import statistics
import time

from benchmarks import write_csv_manifests

PHRASINGS = ("a {c} {s}", "the shape is a {c} {s}", "a {s} that is {c}")


def write_manifests(folder, train_images=1500, test_images=300, seed=0):
    import easy_vqa
    import numpy as np

    from mmzoo.data.builtin import image_captions

    sources = {
        "train": (easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths()),
        "test": (easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths()),
    }
    rng = np.random.default_rng(seed)
    rows = {}
    for split, (questions, paths) in sources.items():
        captions = image_captions(*questions)
        images = sorted(captions)
        count = train_images if split == "train" else test_images
        chosen = [images[i] for i in sorted(rng.permutation(len(images))[:count])]
        rows[split] = [
            (
                paths[image],
                phrasing.format(
                    c=captions[image].split()[1], s=captions[image].split()[2]
                ),
            )
            for image in chosen
            for phrasing in PHRASINGS
        ]
    # Validation: a tenth of the training images (all their captions).
    train = rows["train"]
    cut = len(train) // 10 // len(PHRASINGS) * len(PHRASINGS)
    rows["val"], rows["train"] = train[:cut], train[cut:]
    manifests = write_csv_manifests(folder, rows)
    return manifests, {k: len(v) // len(PHRASINGS) for k, v in rows.items()}


def _images_and_references(run, manifest):
    import numpy as np

    from mmzoo.data.images import prepare_image
    from mmzoo.data.sources import read_manifest

    rows = read_manifest(manifest)
    references = collections.OrderedDict()
    for path, text in zip(rows.images, rows.texts, strict=True):
        references.setdefault(path, []).append(text)
    paths = list(references)
    pixels = np.concatenate(
        [prepare_image(p, run.image_size, run.resize) for p in paths]
    )
    return paths, pixels.astype("float32"), [references[p] for p in paths]


def _decode_all(run, pixels, beam_width, batch=64):
    from mmzoo.captioning.inference import decode_batch

    captions = []
    for start in range(0, len(pixels), batch):
        texts, _ = decode_batch(
            run.model,
            pixels[start : start + batch],
            run.tokenizer.vocabulary,
            beam_width,
        )
        captions += texts
    return captions


def _embed(run, pixels, batch=128):
    import numpy as np

    parts = []
    for start in range(0, len(pixels), batch):
        cells = np.asarray(
            run.model.encoder(pixels[start : start + batch], training=False)
        )
        parts.append(cells.mean(axis=1))
    vectors = np.concatenate(parts)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def speed(run, pixels, repeats=5):
    """Median captions/s by (method, batch, cache)."""
    import numpy as np

    from mmzoo.captioning.inference import compiled_generate

    results = []
    for beam_width in (1, 3):
        for batch in (1, 32):
            images = pixels[:batch]
            for use_cache in (True, False):
                function = compiled_generate(
                    run.model, beam_width=beam_width, use_cache=use_cache
                )
                np.asarray(function(images)[0])  # trace and warm up
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    np.asarray(function(images)[0])
                    times.append(time.perf_counter() - start)
                results.append(
                    {
                        "method": "greedy" if beam_width == 1 else "beam 3",
                        "batch": batch,
                        "cache": use_cache,
                        "captions_per_second": batch / statistics.median(times),
                    }
                )
    return results


def run_benchmark(out, epochs=6, image_size=64, seed=0):
    import keras
    import numpy as np

    import mmzoo
    from mmzoo.captioning.metrics import caption_metrics
    from mmzoo.training import trainer

    manifests, sizes = write_manifests(os.path.join(out, "data"), seed=seed)
    started = time.perf_counter()
    result = trainer.train(
        train=manifests["train"],
        val=manifests["val"],
        task="captioning",
        image_size=image_size,
        max_tokens=8,
        batch_size=64,
        lr=2e-3,
        epochs=epochs,
        seed=seed,
        model={"image_filters": [16, 32, 64], "decoder_dim": 64, "decoder_heads": 4},
        out=os.path.join(out, "run"),
        verbose=0,
    )
    train_seconds = result["train_seconds"]
    run = mmzoo.load_run(result["run_dir"])
    _, test_pixels, test_refs = _images_and_references(run, manifests["test"])
    train_paths, train_pixels, train_refs = _images_and_references(
        run, manifests["train"]
    )
    scores = {}
    for name, width in (("captioner, greedy", 1), ("captioner, beam 3", 3)):
        scores[name] = caption_metrics(_decode_all(run, test_pixels, width), test_refs)
    similarity = _embed(run, test_pixels) @ _embed(run, train_pixels).T
    nearest = [train_refs[i][0] for i in similarity.argmax(axis=1)]
    scores["nearest neighbour"] = caption_metrics(nearest, test_refs)
    counts = collections.Counter(c for refs in train_refs for c in refs)
    frequent = counts.most_common(1)[0][0]
    scores["most frequent caption"] = caption_metrics(
        [frequent] * len(test_refs), test_refs
    )
    return {
        "epochs": epochs,
        "image_size": image_size,
        "images": sizes,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "scores": scores,
        "examples": _decode_all(run, test_pixels[:5], 1),
        "example_references": [refs[0] for refs in test_refs[:5]],
        "speed": speed(run, np.concatenate([test_pixels] * 2)[:32]),
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; Python {platform.python_version()}, "
        f"Keras {keras.__version__}",
    }


def markdown(result):
    lines = [
        "## Captioning easy-VQA (`python -m benchmarks.captioning_easy_vqa`)",
        "",
        f"`mmzoo train --task captioning`: small_cnn ({result['image_size']} px) "
        f"grid + 2-block transformer decoder (width 64), {result['epochs']} epochs "
        f"({result['train_seconds']:.0f} s) on {result['images']['train']:,} "
        f"training images x 3 phrasings (best validation loss on "
        f"{result['images']['val']:,} more); scored on {result['images']['test']:,} "
        "test images against their 3 references (pycocoevalcap BLEU, CIDEr-D). "
        f"Machine: {result['machine']}.",
        "",
        "| captions from | BLEU-1 | BLEU-4 | CIDEr-D |",
        "|---|---|---|---|",
    ]
    for name, m in result["scores"].items():
        lines.append(
            f"| {name} | {m['BLEU-1']:.3f} | {m['BLEU-4']:.3f} | {m['CIDEr-D']:.3f} |"
        )
    lines += ["", "Decoding speed (median of 5, `tf.function`-compiled):", ""]
    lines += ["| method | batch | cache | captions/s |", "|---|---|---|---|"]
    for row in result["speed"]:
        lines.append(
            f"| {row['method']} | {row['batch']} | {'yes' if row['cache'] else 'no'} "
            f"| {row['captions_per_second']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args(argv)
    result = run_benchmark(args.out, args.epochs, args.image_size)
    with open(os.path.join(args.out, "captioning.json"), "w") as file:
        json.dump(result, file, indent=2)
    print(markdown(result))


if __name__ == "__main__":
    main()
