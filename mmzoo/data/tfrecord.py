"""TFRecord shards: a manifest with its images inside, for streaming reads.

`write_tfrecords` checks a manifest, then writes its good rows to shards
`data-00000-of-0000N.tfrecord`, each record holding the image's encoded
bytes as they were on disk (no re-encoding), the text, the raw label
string and the row's line in the source manifest. A `manifest.json` beside
the shards says where they came from and what was skipped.

`read_manifest(folder)` reads them back into a `Manifest`, so `check` and
`make_dataset` treat them as any other manifest: every record is checked
again (files get corrupted after they are written).
"""

import glob
import json
import math
import os

import numpy as np
import tensorflow as tf

from mmzoo.data import images as image_lib
from mmzoo.data.manifest import Manifest
from mmzoo.data.manifest import ManifestError

_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "text": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.string),
    "line": tf.io.FixedLenFeature([], tf.int64),
}

# Shards of about this many rows: large enough to stream efficiently,
# small enough that tf.distribute can spread them across workers.
ROWS_PER_SHARD = 10_000


def _bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


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
    from mmzoo.data.check import check_manifest

    out_dir = os.fspath(out_dir)
    existing = glob.glob(os.path.join(out_dir, "*.tfrecord"))
    if existing:
        raise FileExistsError(
            f"{out_dir!r} already holds {len(existing)} .tfrecord shard(s); "
            "write to an empty folder."
        )
    report = check_manifest(source, **check_arguments)
    manifest = report.manifest
    if manifest.format == "tfrecord":
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
                features = {
                    "image": _bytes_feature(image),
                    "text": _bytes_feature(manifest.texts[index].encode("utf-8")),
                    "label": _bytes_feature(manifest.labels[index].encode("utf-8")),
                    "line": tf.train.Feature(
                        int64_list=tf.train.Int64List(value=[manifest.lines[index]])
                    ),
                }
                example = tf.train.Example(features=tf.train.Features(feature=features))
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


def shard_paths(path):
    """The shards of a TFRecord manifest (a folder or one file), in order."""
    path = os.fspath(path)
    if os.path.isdir(path):
        paths = sorted(glob.glob(os.path.join(path, "*.tfrecord")))
        if not paths:
            raise ManifestError(f"No .tfrecord shards in folder {path!r}")
        return paths
    if not os.path.isfile(path):
        raise ManifestError(f"Manifest not found: {path!r}")
    return [path]


def _parse(record):
    return tf.io.parse_single_example(record, _FEATURES)


def read_tfrecord_manifest(path):
    """Read shards into a `Manifest` (texts, labels, image headers).

    Image bytes are read to check their headers and then dropped: the
    pipeline streams them from the shards again.
    """
    manifest = Manifest(source=os.fspath(path), format="tfrecord")
    manifest.files = shard_paths(path)
    for shard, file in enumerate(manifest.files):
        dataset = tf.data.TFRecordDataset(file).map(_parse)
        try:
            for position, record in enumerate(dataset.as_numpy_iterator()):
                text = record["text"].decode("utf-8", errors="surrogateescape")
                label = record["label"].decode("utf-8", errors="surrogateescape")
                image = record["image"]
                manifest.append(
                    int(record["line"]),
                    None,
                    text,
                    label.strip() or None,
                    record=(shard, position),
                )
                manifest.infos.append(image_lib.inspect_image(image) if image else None)
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
            raise ManifestError(
                f"TFRecord shard {file!r} is corrupt after {len(manifest)} "
                f"records: {error.message.splitlines()[0]}"
            ) from None
    return manifest


def _records(manifest):
    """(row index, serialized record) over every shard, in manifest order."""
    dataset = tf.data.TFRecordDataset(manifest.files)
    return dataset.enumerate()


def image_bytes_dataset(manifest, selected):
    """(row index, encoded image) for the selected rows."""
    keep = np.zeros(len(manifest), bool)
    keep[np.asarray(selected, np.int64)] = True
    keep = tf.constant(keep)
    dataset = _records(manifest).filter(lambda index, _: tf.gather(keep, index))
    return dataset.map(
        lambda index, record: (index, _parse(record)["image"]),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
