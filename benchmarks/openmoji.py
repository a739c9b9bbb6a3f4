"""OpenMoji as an image + text classification set: emoji pictures, keywords,
and the emoji's Unicode group.

OpenMoji (https://openmoji.org, CC BY-SA 4.0) ships on npm as `openmoji`:
4,495 hand-drawn SVG emoji with `data/openmoji.json`, which gives each one
its group ("animals-nature", "food-drink", ...), its CLDR keywords
(`tags`) and OpenMoji's own (`openmoji_tags`). Each row here is one
emoji: its colour SVG rasterised to PNG with cairosvg (white background),
its keywords as the text (the annotation, which often names the group's
subject outright, is left out), and its group as the label. Skin-tone
variants (the same drawing recoloured) and the "component" group (bare
skin-tone and hair swatches) are left out, so no picture appears twice
across splits: 2,456 emoji in 11 groups, split 70/15/15 per group.

    npm pack openmoji@17.0.0                 # the registry's tarball
    python -m benchmarks.openmoji openmoji-17.0.0.tgz --out DIR

The rasteriser is the `benchmarks` extra: `pip install -e ".[benchmarks]"`
(cairosvg, which needs the system's libcairo).
"""

import argparse
import collections
import csv
import io
import json
import os
import tarfile

import numpy as np

VERSION = "17.0.0"
PIXELS = 72
SPLITS = {"train": 0.70, "val": 0.15, "test": 0.15}


def rows_of(records):
    """`(hexcode, text, group)` of the emoji kept (see the module docstring),
    and `{reason: count}` of those left out."""
    rows, left_out = [], collections.Counter()
    for record in records:
        if record.get("skintone"):
            left_out["skin-tone variant"] += 1
            continue
        if record["group"] == "component":
            left_out["component group"] += 1
            continue
        words = []
        for field in ("tags", "openmoji_tags"):
            for word in (record.get(field) or "").split(","):
                word = word.strip()
                if word and word not in words:
                    words.append(word)
        if not words:
            left_out["no keywords"] += 1
            continue
        rows.append((record["hexcode"], ", ".join(words), record["group"]))
    return rows, dict(left_out)


def split_rows(rows, seed=0):
    """`{split: rows}`, each group divided 70/15/15 at random."""
    rng = np.random.default_rng(seed)
    by_group = collections.defaultdict(list)
    for row in rows:
        by_group[row[2]].append(row)
    splits = {name: [] for name in SPLITS}
    for group in sorted(by_group):
        members = by_group[group]
        order = rng.permutation(len(members))
        train_end = int(round(len(members) * SPLITS["train"]))
        val_end = train_end + int(round(len(members) * SPLITS["val"]))
        for position, index in enumerate(order):
            split = (
                "train"
                if position < train_end
                else "val"
                if position < val_end
                else "test"
            )
            splits[split].append(members[index])
    return splits


def prepare(tarball, out, pixels=PIXELS, seed=0):
    """Rasterise the emoji and write `train.csv`, `val.csv`, `test.csv`.

    Returns:
        `{"manifests": {split: path}, "sizes": {split: rows}, "left_out":
        {reason: count}, "groups": {group: rows}}`.
    """
    import cairosvg

    with tarfile.open(tarball) as archive:
        records = json.load(archive.extractfile("package/data/openmoji.json"))
        rows, left_out = rows_of(records)
        images = os.path.join(out, "images")
        os.makedirs(images, exist_ok=True)
        kept = []
        for hexcode, text, group in rows:
            path = os.path.join(images, f"{hexcode}.png")
            if not os.path.isfile(path):
                try:
                    svg = archive.extractfile(f"package/color/svg/{hexcode}.svg")
                except KeyError:
                    left_out["no SVG"] = left_out.get("no SVG", 0) + 1
                    continue
                try:
                    png = cairosvg.svg2png(
                        bytestring=svg.read(),
                        output_width=pixels,
                        output_height=pixels,
                        background_color="white",
                    )
                except Exception:  # noqa: BLE001 - any drawing failure
                    # A few files reference markers that are not there,
                    # which cairosvg cannot draw: counted, not guessed at.
                    reason = "SVG that cairosvg cannot draw"
                    left_out[reason] = left_out.get(reason, 0) + 1
                    continue
                _write_atomically(path, png)
            kept.append((path, text, group))
    manifests = {}
    splits = split_rows(kept, seed)
    for split, entries in splits.items():
        manifests[split] = os.path.join(out, f"{split}.csv")
        with open(manifests[split], "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["image", "text", "label"])
            writer.writerows(
                (os.path.relpath(path, out), text, group)
                for path, text, group in entries
            )
    return {
        "manifests": manifests,
        "sizes": {split: len(entries) for split, entries in splits.items()},
        "left_out": left_out,
        "groups": dict(sorted(collections.Counter(row[2] for row in kept).items())),
    }


def _write_atomically(path, data):
    staging = f"{path}.partial"
    with open(staging, "wb") as file:
        file.write(data)
    os.replace(staging, path)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.openmoji", description=__doc__.splitlines()[0]
    )
    parser.add_argument("tarball", help=f"openmoji-{VERSION}.tgz (npm pack)")
    parser.add_argument("--out", required=True, help="folder for images and CSVs")
    parser.add_argument("--pixels", type=int, default=PIXELS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.tarball):
        parser.error(f"no file {args.tarball!r}: run `npm pack openmoji@{VERSION}`")
    summary = prepare(args.tarball, args.out, args.pixels, args.seed)
    buffer = io.StringIO()
    json.dump({k: v for k, v in summary.items()}, buffer, indent=2)
    print(buffer.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
