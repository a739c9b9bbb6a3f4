"""Where a manifest's rows and images come from: one reader per format.

A reader turns its files into a `Manifest` (`read`) and then answers, for
`check_manifest` and `make_dataset`, every question that depends on how the
data is stored:

- `images_inside`: whether each row's encoded image travels inside its
  record (TFRecord shards) or is a file the row names (CSV, JSONL);
- `image_keys`: the distinct images and each row's key into them (a VQA
  manifest asks many questions about one image file: it is checked once);
- `image_problems`: what the image headers say, read without decoding;
- `image_contents`: a tf.data pipeline of `(key, encoded bytes)`.

`read_manifest(path)` picks the reader from the path. The layers around it:
`mmzoo.data.manifest` (the data model) below, `mmzoo.data.check` and
`mmzoo.data.dataset` above; `mmzoo.data.tfrecord` writes what
`TFRecordReader` reads.
"""

import concurrent.futures
import csv
import glob
import io
import json
import os

import numpy as np
import tensorflow as tf

from mmzoo.data import images as image_lib
from mmzoo.data.manifest import COLUMNS
from mmzoo.data.manifest import LABEL_SEPARATOR
from mmzoo.data.manifest import Manifest
from mmzoo.data.manifest import ManifestError
from mmzoo.data.manifest import Problem

# What a TFRecord record holds: the image file's bytes as they were on disk,
# the text, the raw label string and the row's line in the source manifest.
RECORD_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "text": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.string),
    "line": tf.io.FixedLenFeature([], tf.int64),
}


class SourceReader:
    """How one manifest format is read; subclasses fill in the details.

    The class reads files (`read`); the instance a `Manifest` holds (its
    `reader`) keeps whatever else the format needs to reach the images.

    Attributes:
        name: the format's name, `Manifest.format`.
        suffix: the file name ending that selects this reader.
        reads_folders: a folder path is a manifest of this format.
        images_inside: each row's encoded image is inside its record, so a
            row has no image column, and each row is its own image.
    """

    name = None
    suffix = None
    reads_folders = False
    images_inside = False

    def __repr__(self):
        return f"<{type(self).__name__}>"

    @classmethod
    def recognises(cls, path):
        """Whether `path` (which exists) is a manifest of this format."""
        if os.path.isdir(path):
            return cls.reads_folders
        return path.endswith(cls.suffix)

    @classmethod
    def read(cls, path, columns):
        """The `Manifest` of the file at `path`.

        Args:
            path: an existing path that `recognises` accepts.
            columns: a full mapping from mmzoo's column names to the file's.
        """
        raise NotImplementedError

    def take(self, rows):
        """The reader for a manifest of some of the rows (`Manifest.take`)."""
        return self

    def image_keys(self, manifest):
        """`(keys, image_ids)`: the distinct images, and each row's index
        into `keys` (`None` for a row without an image)."""
        raise NotImplementedError

    def image_problems(self, keys, max_pixels):
        """`{key index: (reason, detail)}` for the images whose header fails
        (see `mmzoo.data.images.header_problem`)."""
        raise NotImplementedError

    def image_contents(self, keys, selected):
        """A tf.data pipeline of `(key index, encoded bytes)` for the
        selected key indices."""
        raise NotImplementedError

    def describe(self, keys, key):
        """Where image `key` is, for messages."""
        raise NotImplementedError


# === Image files beside the manifest (CSV, JSONL) ===


class _ImageFilesReader(SourceReader):
    """Rows that name image files; the keys are their absolute paths."""

    def image_keys(self, manifest):
        keys, position, image_ids = [], {}, []
        for path in manifest.images:
            if path is None:
                image_ids.append(None)
                continue
            if path not in position:
                position[path] = len(keys)
                keys.append(path)
            image_ids.append(position[path])
        return keys, image_ids

    def image_problems(self, keys, max_pixels):
        problems = {}
        # File reads release the GIL; the header parsing is small.
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = pool.map(lambda path: _file_problem(path, max_pixels), keys)
            for key, problem in enumerate(results):
                if problem is not None:
                    problems[key] = problem
        return problems

    def image_contents(self, keys, selected):
        selected = np.asarray(selected, np.int64)
        paths = tf.constant([os.fsencode(keys[key]) for key in selected], tf.string)
        dataset = tf.data.Dataset.from_tensor_slices(
            (selected, tf.reshape(paths, [-1]))
        )
        return dataset.map(
            lambda key, path: (key, tf.io.read_file(path)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    def describe(self, keys, key):
        return keys[key]


def _file_problem(path, max_pixels):
    """(reason, detail) for an image file that fails its header check."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return "missing_file", f"no such file: {path}"
    except IsADirectoryError:
        return "missing_file", f"a folder, not an image file: {path}"
    except OSError as error:
        return "missing_file", f"cannot read {path}: {error.strerror}"
    if not data:
        return "undecodable_image", f"empty file: {path}"
    problem = image_lib.header_problem(image_lib.inspect_image(data), max_pixels)
    if problem is not None:
        return problem[0], f"{problem[1]}: {path}"
    return None


class CsvReader(_ImageFilesReader):
    """A CSV file with a header row naming the columns."""

    name = "csv"
    suffix = ".csv"

    @classmethod
    def read(cls, path, columns):
        manifest = Manifest(source=path, reader=cls())
        folder = os.path.dirname(os.path.abspath(path))
        reader = csv.reader(io.StringIO(_read_text_file(path), newline=""))
        header = None
        start = 1
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row:
                continue
            if header is None:
                header = [name.strip() for name in row]
                missing = [columns[c] for c in COLUMNS if columns[c] not in header]
                if missing:
                    raise ManifestError(
                        f"{path}:{line}: the header lacks the column(s) "
                        f"{missing}. Columns found: {header}. mmzoo reads "
                        f"{list(COLUMNS)} (rename them with `columns=`)."
                    )
                positions = {c: header.index(columns[c]) for c in COLUMNS}
                continue
            if len(row) != len(header):
                manifest.problems.append(
                    Problem(
                        line,
                        "malformed_row",
                        f"{len(row)} fields where the header has {len(header)}",
                        path,
                    )
                )
                continue
            values = {c: row[positions[c]] for c in COLUMNS}
            manifest.append(
                line,
                _resolve(folder, values["image"].strip()),
                values["text"],
                values["label"].strip() or None,
            )
        if header is None:
            raise ManifestError(f"{path}: the manifest is empty (no header row).")
        return manifest


class JsonlReader(_ImageFilesReader):
    """One JSON object per line; a list label is a multilabel row."""

    name = "jsonl"
    suffix = ".jsonl"

    @classmethod
    def read(cls, path, columns):
        manifest = Manifest(source=path, reader=cls())
        folder = os.path.dirname(os.path.abspath(path))
        for line, text in enumerate(_read_text_file(path).split("\n"), start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                manifest.problems.append(
                    Problem(line, "malformed_row", f"not JSON: {error}", path)
                )
                continue
            if not isinstance(row, dict):
                manifest.problems.append(
                    Problem(
                        line,
                        "malformed_row",
                        f"a JSON {type(row).__name__}, not an object",
                        path,
                    )
                )
                continue
            image = row.get(columns["image"])
            label = row.get(columns["label"])
            if isinstance(label, list):
                label = LABEL_SEPARATOR.join(str(item) for item in label)
            elif label is not None and not isinstance(label, str):
                label = str(label)
            text_value = row.get(columns["text"])
            manifest.append(
                line,
                _resolve(folder, image) if isinstance(image, str) else None,
                text_value if isinstance(text_value, str) else None,
                (label.strip() or None) if label is not None else None,
            )
        return manifest


def _read_text_file(path):
    with open(path, "rb") as file:
        data = file.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    # surrogateescape keeps undecodable bytes as lone surrogates, so one
    # bad row is reported (`invalid_utf8`) instead of the file failing.
    return data.decode("utf-8", errors="surrogateescape")


def _resolve(folder, image):
    if image is None or image == "":
        return None
    return os.path.normpath(os.path.join(folder, image))


# === Images inside TFRecord records ===


class TFRecordReader(SourceReader):
    """TFRecord shards written by `write_tfrecords`: one folder or shard.

    Reading parses every record once, keeping the text, the label and what
    the image header says; the image bytes are dropped and streamed from
    the shards again when they are decoded.

    Args:
        files: the shard paths, in order.
        records: per row, its record's position in the stream of all the
            shards' records.
        infos: per row, its image's `ImageInfo` (`None` for empty bytes).
        num_records: how many records the shards held when read.
    """

    name = "tfrecord"
    suffix = ".tfrecord"
    reads_folders = True
    images_inside = True

    def __init__(self, files, records, infos, num_records):
        self.files = list(files)
        self.records = list(records)
        self.infos = list(infos)
        self.num_records = num_records

    def __repr__(self):
        return f"<TFRecordReader of {len(self.files)} shard(s)>"

    @classmethod
    def read(cls, path, columns):
        # The records have fixed feature names: `columns` renames nothing.
        path = os.fspath(path)
        files = shard_paths(path)
        manifest = Manifest(source=path, reader=None)
        infos = []
        for file in files:
            dataset = tf.data.TFRecordDataset(file).map(_parse)
            try:
                for record in dataset.as_numpy_iterator():
                    text = record["text"].decode("utf-8", errors="surrogateescape")
                    label = record["label"].decode("utf-8", errors="surrogateescape")
                    manifest.append(
                        int(record["line"]), None, text, label.strip() or None
                    )
                    image = record["image"]
                    infos.append(image_lib.inspect_image(image) if image else None)
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
                raise ManifestError(
                    f"TFRecord shard {file!r} is corrupt after {len(manifest)} "
                    f"records: {error.message.splitlines()[0]}"
                ) from None
        manifest.reader = cls(files, range(len(manifest)), infos, len(manifest))
        return manifest

    def take(self, rows):
        return TFRecordReader(
            self.files,
            [self.records[row] for row in rows],
            [self.infos[row] for row in rows],
            self.num_records,
        )

    def image_keys(self, manifest):
        # Every row holds its own image: its key is the row.
        rows = list(range(len(manifest)))
        return rows, rows

    def image_problems(self, keys, max_pixels):
        problems = {}
        for key in keys:
            info = self.infos[key]
            if info is None:
                problem = ("undecodable_image", "empty image bytes")
            else:
                problem = image_lib.header_problem(info, max_pixels)
            if problem is not None:
                problems[key] = problem
        return problems

    def image_contents(self, keys, selected):
        # Record position -> row, -1 for records not selected (or not in
        # this manifest, when it holds a sample of the rows).
        selected = np.asarray(selected, np.int64)
        rows = np.full(self.num_records, -1, np.int64)
        rows[np.asarray(self.records, np.int64)[selected]] = selected
        rows = tf.constant(rows)
        dataset = tf.data.TFRecordDataset(self.files).enumerate()
        # Records appended to a shard after it was read are not rows.
        dataset = dataset.filter(lambda position, _: position < self.num_records)
        dataset = dataset.filter(lambda position, _: tf.gather(rows, position) >= 0)
        return dataset.map(
            lambda position, record: (
                tf.gather(rows, position),
                _parse(record)["image"],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    def describe(self, keys, key):
        return "record"


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
    return tf.io.parse_single_example(record, RECORD_FEATURES)


# === Picking the reader ===

READERS = (CsvReader, JsonlReader, TFRecordReader)
MANIFEST_SUFFIXES = tuple(reader.suffix for reader in READERS)


def read_manifest(path, columns=None):
    """Read a CSV, JSONL or TFRecord manifest.

    Args:
        path: a `.csv` or `.jsonl` file, a `.tfrecord` shard, or a folder of
            shards written by `mmzoo data to-tfrecord`.
        columns: optional mapping from mmzoo's column names (`image`,
            `text`, `label`) to the manifest's, e.g. `{"text": "question"}`.

    Returns:
        A `Manifest`.

    Raises:
        ManifestError: the file is missing, is not a manifest, or a CSV
            header lacks a required column.

    Example:

    >>> manifest = read_manifest("train.csv")
    >>> manifest.texts[:2]
    ['a red circle', 'a blue square']
    """
    path = os.fspath(path)
    names = _column_names(columns)
    if not os.path.exists(path):
        raise ManifestError(f"Manifest not found: {path!r}")
    for reader in READERS:
        if reader.recognises(path):
            return reader.read(path, names)
    raise ManifestError(
        f"Cannot tell the format of manifest {path!r}: its name must end in "
        f"one of {list(MANIFEST_SUFFIXES)}, or it must be a folder of "
        ".tfrecord shards."
    )


def _column_names(columns):
    names = dict(zip(COLUMNS, COLUMNS, strict=True))
    for key, value in (columns or {}).items():
        if key not in names:
            raise ValueError(
                f"`columns` maps mmzoo's columns {list(COLUMNS)} to yours. "
                f"Received a mapping for {key!r}."
            )
        names[key] = value
    return names
