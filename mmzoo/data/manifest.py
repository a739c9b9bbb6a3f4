"""Reading manifests (CSV, JSONL, TFRecord) and the label vocabulary.

A manifest lists examples: the image (a path, relative to the manifest's own
folder, or absolute), the text and the label. Reading never stops at a bad
row: each one becomes a `Problem` with its line number and a reason, so a
run can skip it, count it and say where it is.

This module reads rows only; `mmzoo.data.check` looks inside the images.
"""

import collections
import csv
import dataclasses
import io
import json
import os

COLUMNS = ("image", "text", "label")

# The reasons a row is refused, in the order reports list them.
REASONS = {
    "malformed_row": "a line that is not a row (bad JSON, wrong field count)",
    "missing_column": "a required column is absent or empty",
    "missing_file": "the image file does not exist",
    "undecodable_image": "the image cannot be decoded",
    "truncated_image": "the image file ends early",
    "image_too_large": "the image header declares more pixels than allowed",
    "empty_text": "the text is empty or only whitespace",
    "invalid_utf8": "the text is not valid UTF-8",
    "unknown_label": "the label is not in the label vocabulary",
}

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".tfrecord")

# 64 megapixels: larger than any camera photo a model is trained on, and
# about 200 MB once decoded to RGB (Pillow's own bomb limit is 89 Mpx).
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

# The fraction of bad rows a run tolerates (skipping them) before failing.
DEFAULT_MAX_BAD_FRACTION = 0.01

# Multilabel rows separate their labels with this character.
LABEL_SEPARATOR = "|"


class ManifestError(ValueError):
    """A manifest that cannot be read at all (missing file, no header...)."""


@dataclasses.dataclass(frozen=True, order=True)
class Problem:
    """One refused row.

    Attributes:
        line: 1-based line number where the row starts in the manifest (for
            TFRecord shards, the record's line in the manifest it came from).
        reason: a key of `REASONS`.
        detail: what exactly is wrong, e.g. the missing path.
        source: the manifest (or shard) file.
    """

    line: int
    reason: str
    detail: str
    source: str = ""

    def __str__(self):
        return f"{self.source}:{self.line}: {self.reason}: {self.detail}"


@dataclasses.dataclass
class Manifest:
    """The rows of a manifest, one list per column.

    Rows that could not be parsed at all are in `problems` and not in the
    columns; every other row is in the columns, with `None` where a value is
    missing (checked later, so one report holds every reason).

    Attributes:
        source: the manifest path.
        format: `"csv"`, `"jsonl"` or `"tfrecord"`.
        lines: each row's 1-based line number in the manifest.
        images: absolute image paths (`None` for TFRecord rows, whose
            encoded image travels inside the record).
        texts: the text of each row.
        labels: the raw label string of each row (multilabel rows keep
            their `|` separators).
        problems: rows refused while parsing.
        files: TFRecord shard paths (TFRecord manifests only).
        records: per row, `(shard index, record index)` (TFRecord only).
        infos: per row, the image's `ImageInfo` header (TFRecord only).
    """

    source: str
    format: str
    lines: list = dataclasses.field(default_factory=list)
    images: list = dataclasses.field(default_factory=list)
    texts: list = dataclasses.field(default_factory=list)
    labels: list = dataclasses.field(default_factory=list)
    problems: list = dataclasses.field(default_factory=list)
    files: list = dataclasses.field(default_factory=list)
    records: list = dataclasses.field(default_factory=list)
    infos: list = dataclasses.field(default_factory=list)

    def __len__(self):
        return len(self.lines)

    @property
    def num_rows(self):
        """Every row the manifest holds, parsed or not."""
        return len(self.lines) + len(self.problems)

    def append(self, line, image, text, label, record=None):
        self.lines.append(line)
        self.images.append(image)
        self.texts.append(text)
        self.labels.append(label)
        if record is not None:
            self.records.append(record)


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
    if os.path.isdir(path) or path.endswith(".tfrecord"):
        from mmzoo.data import tfrecord

        return tfrecord.read_tfrecord_manifest(path)
    if not os.path.isfile(path):
        raise ManifestError(f"Manifest not found: {path!r}")
    if path.endswith(".csv"):
        return _read_csv(path, names)
    if path.endswith(".jsonl"):
        return _read_jsonl(path, names)
    raise ManifestError(
        f"Cannot tell the format of manifest {path!r}: its name must end in "
        f"one of {list(MANIFEST_SUFFIXES)}, or it must be a folder of "
        ".tfrecord shards."
    )


def _column_names(columns):
    names = dict(zip(COLUMNS, COLUMNS))
    for key, value in (columns or {}).items():
        if key not in names:
            raise ValueError(
                f"`columns` maps mmzoo's columns {list(COLUMNS)} to yours. "
                f"Received a mapping for {key!r}."
            )
        names[key] = value
    return names


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


def _read_csv(path, names):
    manifest = Manifest(source=path, format="csv")
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
            missing = [names[c] for c in COLUMNS if names[c] not in header]
            if missing:
                raise ManifestError(
                    f"{path}:{line}: the header lacks the column(s) "
                    f"{missing}. Columns found: {header}. mmzoo reads "
                    f"{list(COLUMNS)} (rename them with `columns=`)."
                )
            positions = {c: header.index(names[c]) for c in COLUMNS}
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


def _read_jsonl(path, names):
    manifest = Manifest(source=path, format="jsonl")
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
        image = row.get(names["image"])
        label = row.get(names["label"])
        if isinstance(label, list):
            label = LABEL_SEPARATOR.join(str(item) for item in label)
        elif label is not None and not isinstance(label, str):
            label = str(label)
        text_value = row.get(names["text"])
        manifest.append(
            line,
            _resolve(folder, image) if isinstance(image, str) else None,
            text_value if isinstance(text_value, str) else None,
            (label.strip() or None) if label is not None else None,
        )
    return manifest


def row_problems(manifest, index):
    """Problems with a row's own fields (not its image file)."""
    line, source = manifest.lines[index], manifest.source
    problems = []
    for column, value in (
        ("image", manifest.images[index] if manifest.format != "tfrecord" else ""),
        ("text", manifest.texts[index]),
        ("label", manifest.labels[index]),
    ):
        if value is None:
            problems.append(
                Problem(line, "missing_column", f"no `{column}` value", source)
            )
    text = manifest.texts[index]
    if text is not None:
        if not is_valid_utf8(text):
            raw = text.encode("utf-8", errors="surrogateescape")
            try:
                raw.decode("utf-8")
                reason = "lone surrogate code points"
            except UnicodeDecodeError as error:
                reason = f"byte 0x{raw[error.start]:02x} at position {error.start}"
            problems.append(
                Problem(line, "invalid_utf8", f"{reason} in text {raw[:60]!r}", source)
            )
        elif not text.strip():
            problems.append(Problem(line, "empty_text", f"text {text!r}", source))
    return problems


def is_valid_utf8(text):
    """False for text holding undecodable bytes (lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def split_labels(label):
    """The labels of a multilabel row: `"cat|dog"` -> `["cat", "dog"]`."""
    return [part.strip() for part in label.split(LABEL_SEPARATOR) if part.strip()]


class LabelVocabulary:
    """The class names a model predicts, in output order.

    Built from the training data (`fit`), saved as `labels.txt` (one name
    per line, line i = output i) and loaded for evaluation, so an index
    means the same class everywhere.

    Args:
        names: the class names in output order.

    Example:

    >>> labels = LabelVocabulary.fit(["yes", "no", "yes", "red"])
    >>> labels.names
    ['no', 'red', 'yes']
    >>> labels.index("yes")
    2
    """

    UNKNOWN = "[UNK]"

    def __init__(self, names):
        names = list(names)
        if len(set(names)) != len(names):
            duplicates = sorted(
                n for n, c in collections.Counter(names).items() if c > 1
            )
            raise ValueError(f"Label names must be unique. Repeated: {duplicates}")
        for name in names:
            if not isinstance(name, str) or not name or "\n" in name:
                raise ValueError(
                    "Each label must be a non-empty string without newlines "
                    f"(labels.txt holds one per line). Received: {name!r}"
                )
        self.names = names
        self._index = {name: i for i, name in enumerate(names)}

    @classmethod
    def fit(cls, labels, multilabel=False, add_unknown=False):
        """The sorted set of labels seen in training data.

        Args:
            labels: raw label strings (`None` entries are ignored).
            multilabel: split each string on `|`.
            add_unknown: append an `[UNK]` class, which
                `make_dataset(..., unknown_labels="unknown")` maps labels
                unseen in training to.
        """
        seen = set()
        for label in labels:
            if label is None:
                continue
            seen.update(split_labels(label) if multilabel else [label])
        names = sorted(seen - {cls.UNKNOWN})
        if add_unknown:
            names.append(cls.UNKNOWN)
        return cls(names)

    @classmethod
    def load(cls, path):
        """Read a `labels.txt` written by `save`."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "labels.txt")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Label vocabulary not found: {path!r}")
        with open(path, encoding="utf-8") as file:
            names = file.read().split("\n")
        if names and names[-1] == "":
            names.pop()
        return cls(names)

    def save(self, path):
        """Write one name per line; `path` may be a folder (-> labels.txt)."""
        path = os.fspath(path)
        if os.path.isdir(path) or not path.endswith(".txt"):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, "labels.txt")
        with open(path, "w", encoding="utf-8", newline="\n") as file:
            file.write("".join(name + "\n" for name in self.names))
        return path

    def __len__(self):
        return len(self.names)

    def __contains__(self, name):
        return name in self._index

    def __eq__(self, other):
        return isinstance(other, LabelVocabulary) and self.names == other.names

    def __repr__(self):
        return f"LabelVocabulary({self.names!r})"

    @property
    def has_unknown(self):
        return self.UNKNOWN in self._index

    def index(self, name):
        """The output index of a class name (KeyError when unknown)."""
        return self._index[name]

    def unknown(self, label, multilabel=False):
        """The parts of a raw label string that the vocabulary lacks."""
        parts = split_labels(label) if multilabel else [label]
        return [part for part in parts if part not in self._index]
