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
import re
import stat

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
    # Unlabelled rows (a contrastive task's) are written with an empty label.
    "label": tf.io.FixedLenFeature([], tf.string, default_value=""),
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
    def read(cls, path, columns, label_columns=()):
        """The `Manifest` of the file at `path`.

        Args:
            path: an existing path that `recognises` accepts.
            columns: a full mapping from mmzoo's column names to the file's.
            label_columns: the file's other label columns to read, into
                `Manifest.label_columns`.
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
        data = _read_regular_file(path)
    except FileNotFoundError:
        return "missing_file", f"no such file: {path}"
    except IsADirectoryError:
        return "missing_file", f"a folder, not an image file: {path}"
    except _NotARegularFile as error:
        return "missing_file", f"{error.kind}, not an image file: {path}"
    except OSError as error:
        return "missing_file", f"cannot read {path}: {error.strerror}"
    if not data:
        return "undecodable_image", f"empty file: {path}"
    # The guard every image entry point applies (predict, the TFLite app
    # path and, in TensorFlow ops, the serving graph).
    problem = image_lib.check_image(data, max_pixels)
    if problem is not None:
        return problem[0], f"{problem[1]}: {path}"
    return None


class CsvReader(_ImageFilesReader):
    """A CSV file with a header row naming the columns.

    Fields are read as Python's `csv` module reads them (the Excel dialect),
    and a quoted field may hold line breaks. What a stray quote could do to
    the rows after it is bounded: a row is a `malformed_row` at the line
    where it opened, and reading resumes on the next line, when

    - a quoted field opened in it is never closed;
    - it runs over several lines but is not well-formed CSV (RFC 4180: a
      closing quote followed by something other than a comma or the line's
      end, or a quote inside an unquoted field), has the wrong number of
      fields, or holds a line break in its image or label field;
    - a field is longer than `csv.field_size_limit()` (131,072 characters
      unless raised).

    So every line is read, as part of at most one row; only a line break
    inside a well-formed text field joins lines into one row.
    """

    name = "csv"
    suffix = ".csv"

    @classmethod
    def read(cls, path, columns, label_columns=()):
        return cls.parse(_read_text_file(path), path, columns, label_columns)

    @classmethod
    def parse(cls, text, path, columns, label_columns=()):
        """The `Manifest` of a CSV file's decoded text (see `read`)."""
        manifest = Manifest(source=path, reader=cls())
        folder = os.path.dirname(os.path.abspath(path))
        records = _CsvRecords(text)
        header = None
        for line, end, row, problem in records:
            if row == []:
                continue  # a blank line
            if header is None:
                header, positions = _csv_header(path, columns, line, end, problem, row)
                extra = _csv_label_columns(path, line, header, label_columns)
                continue
            if problem is None:
                problem = _csv_row_problem(row, header, positions, columns, line, end)
            if problem is None and end > line:
                problem = _csv_line_break(row, extra, line, end)
            if problem is not None:
                manifest.problems.append(Problem(line, "malformed_row", problem, path))
                # What follows the row's first line is read again: a
                # stray quote must not take good rows with it.
                records.refuse(line, end)
                continue
            values = {c: row[positions[c]] for c in positions}
            manifest.append(
                line,
                _resolve(folder, values["image"].strip()),
                values["text"],
                values.get("label", "").strip() or None,
                {c: row[p].strip() or None for c, p in extra.items()},
            )
        if header is None:
            raise ManifestError(f"{path}: the manifest is empty (no header row).")
        return manifest


def _csv_header(path, columns, line, end, problem, row):
    """The header's column names and where mmzoo's columns are among them."""
    if problem is None and end > line:
        problem = f"it runs on to line {end} (a column name holds a line break)"
    if problem is not None:
        raise ManifestError(f"{path}:{line}: the header row is not CSV: {problem}.")
    header = [name.strip() for name in row]
    # The label column is optional: a contrastive task reads none, and a
    # task that needs labels says so when it finds none (`make_dataset`).
    missing = [columns[c] for c in COLUMNS if columns[c] not in header and c != "label"]
    if missing:
        raise ManifestError(
            f"{path}:{line}: the header lacks the column(s) "
            f"{missing}. Columns found: {header}. mmzoo reads "
            f"{list(COLUMNS)} (rename them with `columns=`)."
        )
    return header, {
        c: header.index(columns[c]) for c in COLUMNS if columns[c] in header
    }


def _csv_label_columns(path, line, header, label_columns):
    """`{column: position}` of the other label columns asked for."""
    missing = [column for column in label_columns if column not in header]
    if missing:
        raise ManifestError(
            f"{path}:{line}: the header lacks the label column(s) {missing} "
            f"(a head's `column`). Columns found: {header}."
        )
    return {column: header.index(column) for column in label_columns}


def _csv_line_break(row, extra, line, end):
    """Why a record over several lines cannot be a row: a line break in
    another label column (see `_csv_row_problem`), or None."""
    for column, position in extra.items():
        value = row[position]
        if "\n" in value or "\r" in value:
            return (
                f"a line break in the `{column}` field (a quoted field runs from "
                f"this line to line {end}: is a quote left open?)"
            )
    return None


def _csv_row_problem(row, header, positions, columns, line, end):
    """Why a parsed CSV record is not a row, or None."""
    spans = ""
    if end > line:
        spans = (
            f" (a quoted field runs from this line to line {end}: is a quote "
            "left open?)"
        )
    if len(row) != len(header):
        return f"{len(row)} fields where the header has {len(header)}{spans}"
    if end > line:
        for column in ("image", "label"):
            if column not in positions:
                continue
            value = row[positions[column]]
            if "\n" in value or "\r" in value:
                return f"a line break in the `{columns[column]}` field{spans}"
    return None


# A record as RFC 4180 writes it: each field quoted (quotes inside doubled,
# line breaks allowed) or free of quotes, commas and line breaks.
_FIELD = r'(?:"(?:[^"]|"")*"|[^",\r\n]*)'
_WELL_FORMED = re.compile(rf"{_FIELD}(?:,{_FIELD})*(?:\r\n|\r|\n)?")


class _CsvRecords:
    """The records of a CSV text, each with the lines it spans.

    Iterating gives `(line, end, fields, problem)`: the 1-based first and
    last line, and the fields (`[]` for a blank line), or `None` and why the
    record is not CSV. A line ends at a line feed, a carriage return or
    both, as Python's csv reader counts lines.

    Records are read strictly (a quoted field must close before a comma or
    the line's end), so a stray quote stops at the first sign of trouble,
    and one that took several lines must be RFC 4180 CSV. A one-line record
    is read as the csv module reads by default (`"a"b` reads `ab`, `5"` is
    kept), except on lines that a refused record ran over.

    `refuse(line, end)` says the record on lines `line` to `end` is no row:
    reading goes back to `line + 1`.
    """

    def __init__(self, text):
        self.lines = _Lines(io.StringIO(text, newline="").readlines())
        self.reader = csv.reader(self.lines, strict=True)
        self.strict_through = 0  # lines up to this one are read as RFC 4180
        self.open_to_end = False  # the last record's quote never closed

    def refuse(self, line, end):
        self.lines.position = line
        if not self.open_to_end:
            # A quote that closed on one of these lines belongs to the
            # refused record: a line holding it is not a row either.
            self.strict_through = max(self.strict_through, end)

    def __iter__(self):
        return self

    def __next__(self):
        lines = self.lines
        start = lines.position
        if start >= len(lines.lines):
            raise StopIteration
        lines.exhausted = self.open_to_end = False
        try:
            fields = next(self.reader)
        except csv.Error as error:
            strict_error = error
        else:
            end = lines.position
            if end - start == 1 and end > self.strict_through:
                return start + 1, end, fields, None
            if _WELL_FORMED.fullmatch("".join(lines.lines[start:end])):
                return start + 1, end, fields, None
            # Python's csv keeps `5"` (a quote in an unquoted field) as is;
            # in a row that took several lines, or on a line a refused row
            # ran over, it is more likely the quote that closed a stray one.
            if end - start > 1:
                where = f"in a row running from this line to line {end}"
            else:
                where = "on a line that the refused row above ran over"
            problem = (
                f"a quote inside an unquoted field, {where}: is a quote left open?"
            )
            return start + 1, end, None, problem
        end = lines.position
        if lines.exhausted:
            self.open_to_end = True
            problem = (
                "a quoted field opened on this line is never closed (it runs "
                "to the end of the file)"
            )
        elif "field larger than field limit" in str(strict_error):
            problem = (
                f"a field longer than {csv.field_size_limit():,} characters, "
                "the most a CSV field may hold, starts on this line"
            )
            if end - start > 1:
                problem += " (is a quote left open?)"
        elif end - start == 1 and end > self.strict_through:
            return start + 1, end, *_lenient_record(lines.lines[start], strict_error)
        elif end - start == 1:
            problem = f"bad CSV quoting ({strict_error})"
        else:
            problem = (
                f"bad CSV quoting in a field running from this line to line "
                f"{end} ({strict_error}): is a quote left open?"
            )
        return start + 1, end, None, problem


class _Lines:
    """The lines the csv reader reads, from a position that can move back."""

    def __init__(self, lines):
        self.lines = lines
        self.position = 0  # the index of the next line to give
        self.exhausted = False  # the reader asked for a line past the end

    def __iter__(self):
        return self

    def __next__(self):
        if self.position >= len(self.lines):
            self.exhausted = True
            raise StopIteration
        self.position += 1
        return self.lines[self.position - 1]


def _lenient_record(line, strict_error):
    """`(fields, problem)` of a one-line record that strict CSV refuses.

    The csv module's default reading keeps such rows (`"a"b` reads `ab`);
    a quote it leaves open at the line's end would have taken the next
    lines, so that record is refused.
    """
    try:
        fields = next(csv.reader([line]))
    except csv.Error as error:
        return None, f"not a CSV row: {error}"
    if any("\n" in field or "\r" in field for field in fields):
        return None, (
            f"bad CSV quoting ({strict_error}) leaves a quoted field open at "
            "the end of this line"
        )
    return fields, None


class JsonlReader(_ImageFilesReader):
    """One JSON object per line; a list label is a multilabel row.

    Values are strings; a label may also be a number or a list of strings
    and numbers. A line that is not a JSON object, or holds a value of
    another type, is a `malformed_row` saying what it holds.
    """

    name = "jsonl"
    suffix = ".jsonl"

    @classmethod
    def read(cls, path, columns, label_columns=()):
        return cls.parse(_read_text_file(path), path, columns, label_columns)

    @classmethod
    def parse(cls, text, path, columns, label_columns=()):
        """The `Manifest` of a JSONL file's decoded text (see `read`)."""
        manifest = Manifest(source=path, reader=cls())
        folder = os.path.dirname(os.path.abspath(path))
        for line, content in enumerate(text.split("\n"), start=1):
            if not content.strip():
                continue
            try:
                row = json.loads(content)
            except (ValueError, RecursionError) as error:
                # ValueError: JSONDecodeError, or an integer of more digits
                # than Python converts; RecursionError: nesting too deep.
                manifest.problems.append(
                    Problem(line, "malformed_row", f"not JSON: {error}", path)
                )
                continue
            if not isinstance(row, dict):
                manifest.problems.append(
                    Problem(
                        line,
                        "malformed_row",
                        f"a JSON {_json_type(row)}, not an object",
                        path,
                    )
                )
                continue
            try:
                image = _json_string(row, columns["image"])
                text_value = _json_string(row, columns["text"])
                label = _json_label(row, columns["label"])
                extra = {c: _json_label(row, c) for c in label_columns}
            except _WrongType as error:
                manifest.problems.append(
                    Problem(line, "malformed_row", str(error), path)
                )
                continue
            manifest.append(
                line,
                _resolve(folder, image),
                text_value,
                (label.strip() or None) if label is not None else None,
                {
                    c: (v.strip() or None) if v is not None else None
                    for c, v in extra.items()
                },
            )
        return manifest


class _WrongType(ValueError):
    """A JSONL value of a type the column cannot hold."""


_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _json_type(value):
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _wrong_type(key, expected, value):
    if isinstance(value, (dict, list)):
        shown = f"{len(value)} item(s)"
    else:
        shown = json.dumps(value, ensure_ascii=False)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return _WrongType(
        f"`{key}` must be {expected}. Received a JSON {_json_type(value)}: {shown}"
    )


def _json_string(row, key):
    value = row.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _wrong_type(key, "a string", value)


def _json_label(row, key):
    value = row.get(key)
    expected = "a string, a number or a list of them"
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        if not all(isinstance(item, (str, int, float)) for item in value):
            raise _wrong_type(key, expected, value)
        return LABEL_SEPARATOR.join(str(item) for item in value)
    raise _wrong_type(key, expected, value)


class _NotARegularFile(OSError):
    """A FIFO, device or socket: reading it could block or never end."""

    def __init__(self, path, kind):
        super().__init__(f"{path!r} is {kind}, not a regular file")
        self.kind = kind


def _special_kind(mode):
    """What a file that is neither a regular file nor a folder is, or None."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    for is_kind, kind in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if is_kind(mode):
            return kind
    return "a special file"


def _read_regular_file(path):
    """The bytes of a regular file, refusing special files without reading.

    A FIFO would block `open` until something writes to it, and a device
    may never end (`/dev/zero`), so the kind is checked with `stat` first;
    the file is then opened non-blocking and checked again, in case it was
    replaced in between.
    """
    kind = _special_kind(os.stat(path).st_mode)
    if kind is not None:
        raise _NotARegularFile(path, kind)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    descriptor = os.open(path, flags)
    with open(descriptor, "rb") as file:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(21, "Is a directory", path)
        kind = _special_kind(mode)
        if kind is not None:
            raise _NotARegularFile(path, kind)
        return file.read()


def _read_text_file(path):
    try:
        data = _read_regular_file(path)
    except OSError as error:  # e.g. replaced by a FIFO since it was checked
        reason = error.strerror or error
        raise ManifestError(f"Cannot read manifest {path!r}: {reason}") from None
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
    def read(cls, path, columns, label_columns=()):
        # The records have fixed feature names: `columns` renames nothing.
        path = os.fspath(path)
        others = [column for column in label_columns if column != "label"]
        if others:
            raise ManifestError(
                f"TFRecord shards hold one label column, `label`; {path!r} cannot "
                f"give the label column(s) {others} (a head's `column`). Train "
                "a model with several heads from the CSV or JSONL manifest."
            )
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
            except tf.errors.OpError as error:  # e.g. permission denied
                raise ManifestError(
                    f"TFRecord shard {file!r} cannot be read: "
                    f"{error.message.splitlines()[0]}"
                ) from None
        manifest.reader = cls(files, range(len(manifest)), infos, len(manifest))
        if label_columns:
            manifest.label_columns["label"] = list(manifest.labels)
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
    if _manifest_mode(path, "Manifest") == "folder":
        paths = sorted(glob.glob(os.path.join(glob.escape(path), "*.tfrecord")))
        if not paths:
            raise ManifestError(f"No .tfrecord shards in folder {path!r}")
        for shard in paths:
            if _manifest_mode(shard, "TFRecord shard") == "folder":
                raise ManifestError(
                    f"TFRecord shard {shard!r} is a folder, not a regular file."
                )
        return paths
    return [path]


def _manifest_mode(path, what):
    """`"file"` or `"folder"`; a `ManifestError` for anything else.

    A FIFO, device or socket is refused from `stat`, never opened: reading
    one could block forever or never end.
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise ManifestError(f"{what} not found: {path!r}") from None
    except OSError as error:
        raise ManifestError(
            f"Cannot read {what.lower()} {path!r}: {error.strerror}"
        ) from None
    if stat.S_ISDIR(mode):
        return "folder"
    kind = _special_kind(mode)
    if kind is not None:
        raise ManifestError(
            f"{what} {path!r} is {kind}, not a regular file: mmzoo reads "
            "manifests from files (or folders of shards) only."
        )
    return "file"


def _parse(record):
    return tf.io.parse_single_example(record, RECORD_FEATURES)


# === Picking the reader ===

READERS = (CsvReader, JsonlReader, TFRecordReader)
MANIFEST_SUFFIXES = tuple(reader.suffix for reader in READERS)


def read_manifest(path, columns=None, label_columns=()):
    """Read a CSV, JSONL or TFRecord manifest.

    Args:
        path: a `.csv` or `.jsonl` file, a `.tfrecord` shard, or a folder of
            shards written by `mmzoo data to-tfrecord`.
        columns: optional mapping from mmzoo's column names (`image`,
            `text`, `label`) to the manifest's, e.g. `{"text": "question"}`.
        label_columns: other label columns to read (CSV columns, JSONL
            keys), the manifest's own names, into `Manifest.label_columns`:
            a multi-task model's heads' columns (`mmzoo.tasks.MultiTask`).
            A CSV header without one is a `ManifestError`; TFRecord shards
            hold only `label`.

    Returns:
        A `Manifest`.

    Raises:
        ManifestError: the file is missing, unreadable, a FIFO, device or
            socket, is not a manifest, or a CSV header is not CSV or lacks a
            required column.

    Example:

    >>> manifest = read_manifest("train.csv")
    >>> manifest.texts[:2]
    ['a red circle', 'a blue square']
    """
    path = os.fspath(path)
    names = _column_names(columns)
    _manifest_mode(path, "Manifest")
    for reader in READERS:
        if reader.recognises(path):
            return reader.read(path, names, tuple(label_columns))
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
