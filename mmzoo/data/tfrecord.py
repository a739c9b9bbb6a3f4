"""TFRecord shards: a manifest with its images inside, for streaming reads.

`write_tfrecords` checks a manifest, then writes its good rows to shards
`data-00000-of-0000N.tfrecord`, each record holding the image's encoded
bytes as they were on disk (no re-encoding), the text, the raw label
string and the row's line in the source manifest
(`mmzoo.data.sources.RECORD_FEATURES`). A `manifest.json` beside the shards
says where they came from and what was skipped.

`read_manifest(folder)` reads them back (`mmzoo.data.sources.TFRecordReader`)
into a `Manifest`, so `check` and `make_dataset` treat them as any other
manifest: every record is checked again (files get corrupted after they are
written).
"""

import glob
import json
import math
import os

import numpy as np
import tensorflow as tf

from mmzoo.data.check import check_manifest
from mmzoo.data.sources import RECORD_FEATURES

# Shards of about this many rows: large enough to stream efficiently,
# small enough that tf.distribute can spread them across workers.
ROWS_PER_SHARD = 10_000


def _example(values):
    """A `tf.train.Example` holding `RECORD_FEATURES`, from their values."""
    features = {}
    for name, spec in RECORD_FEATURES.items():
        if spec.dtype == tf.int64:
            feature = tf.train.Feature(
                int64_list=tf.train.Int64List(value=[values[name]])
            )
        else:
            feature = tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[values[name]])
            )
        features[name] = feature
    return tf.train.Example(features=tf.train.Features(feature=features))


def write_tfrecords(source, out_dir, num_shards=None, **check_arguments):
    """Write a manifest's good rows to TFRecord shards.

    Args:
        source: a manifest path or `Manifest` (CSV or JSONL).
        out_dir: the folder to write (created; must hold no shards yet).
        num_shards: how many shards; default one per 10,000 rows.
        **check_arguments: passed to `check_manifest` (e.g. `max_pixels`,
            `labels`).

    Returns:
        `(shard paths, DataReport)`: the report says what was skipped.

    Example:

    >>> paths, report = write_tfrecords("train.csv", "train_tfrecords")
    >>> dataset = make_dataset("train_tfrecords", tokenizer, image_size=64)
    """
    out_dir = os.fspath(out_dir)
    existing = glob.glob(os.path.join(out_dir, "*.tfrecord"))
    if existing:
        raise FileExistsError(
            f"{out_dir!r} already holds {len(existing)} .tfrecord shard(s); "
            "write to an empty folder."
        )
    report = check_manifest(source, **check_arguments)
    manifest = report.manifest
    if manifest.reader.images_inside:
        raise ValueError(f"{manifest.source!r} is already TFRecord shards.")
    good = report.good
    if num_shards is None:
        num_shards = max(1, math.ceil(len(good) / ROWS_PER_SHARD))
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(
            "`num_shards` must be a positive integer. "
            f"Received: num_shards={num_shards!r}"
        )
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for shard, rows in enumerate(np.array_split(np.asarray(good, int), num_shards)):
        path = os.path.join(out_dir, f"data-{shard:05d}-of-{num_shards:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for index in rows:
                with open(manifest.images[index], "rb") as file:
                    image = file.read()
                example = _example(
                    {
                        "image": image,
                        "text": manifest.texts[index].encode("utf-8"),
                        "label": (manifest.labels[index] or "").encode("utf-8"),
                        "line": manifest.lines[index],
                    }
                )
                writer.write(example.SerializeToString())
        paths.append(path)
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as file:
        json.dump(
            {
                "source": os.path.abspath(manifest.source),
                "rows": len(good),
                "skipped": report.num_bad,
                "skipped_by_reason": report.counts,
                "shards": [os.path.basename(path) for path in paths],
            },
            file,
            indent=2,
        )
    return paths, report
