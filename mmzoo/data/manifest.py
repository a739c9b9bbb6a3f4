"""What a manifest is: its rows, their problems, and the label vocabulary.

A manifest lists examples: the image (a path, relative to the manifest's own
folder, or absolute), the text and the label. Reading never stops at a bad
row: each one becomes a `Problem` with its line number and a reason, so a
run can skip it, count it and say where it is.

This module is the data model and imports nothing heavy (the task registry
and `mmzoo list` read it). The layers above it, each importing only those
below:

- `mmzoo.data.sources`: a reader per format (CSV, JSONL, TFRecord shards)
  that fills a `Manifest` and knows where its images are; `read_manifest`.
- `mmzoo.data.check`: looks inside the images (`check_manifest`).
- `mmzoo.data.tfrecord`: writes checked rows to shards.
- `mmzoo.data.dataset`: the tf.data pipeline (`make_dataset`).
"""

import collections
import dataclasses
import os

COLUMNS = ("image", "text", "label")

# The reasons a row is refused, in the order reports list them.
REASONS = {
    "malformed_row": (
        "a line that is not a row (bad JSON or CSV quoting, wrong field count "
        "or value type, a field over the size limit)"
    ),
    "missing_column": "a required column is absent or empty",
    "missing_file": "the image file does not exist",
    "undecodable_image": "the image cannot be decoded",
    "truncated_image": "the image file ends early",
    "image_too_large": "the image header declares more pixels than allowed",
    "empty_text": "the text is empty or only whitespace",
    "invalid_utf8": "the text, label or image path is not valid UTF-8",
    "unknown_label": "the label is not in the label vocabulary",
    "invalid_label": (
        "a label its task cannot read (a regression value that is not a number)"
    ),
}

# 64 megapixels: larger than any camera photo a model is trained on, and
# about 200 MB once decoded to RGB (Pillow's own bomb limit is 89 Mpx). The
# data check and the exported serving graph both refuse larger images
# (`mmzoo.data.images`); it lives here, in the light module, because the
# command line's defaults read it without importing TensorFlow.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

# The fraction of bad rows a run tolerates (skipping them) before failing.
DEFAULT_MAX_BAD_FRACTION = 0.01

# Multilabel rows separate their labels with this character.
LABEL_SEPARATOR = "|"

# A label vocabulary's file in a run folder (`LabelVocabulary.save`).
LABELS_FILE = "labels.txt"


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
        # Paths and values may hold undecodable bytes (kept as lone
        # surrogates): shown as \xNN escapes, so a report always prints.
        return printable(f"{self.source}:{self.line}: {self.reason}: {self.detail}")


@dataclasses.dataclass
class Manifest:
    """The rows of a manifest, one list per column.

    Rows that could not be parsed at all are in `problems` and not in the
    columns; every other row is in the columns, with `None` where a value is
    missing (checked later, so one report holds every reason).

    Attributes:
        source: the manifest path.
        reader: the reader of its format (`mmzoo.data.sources`), which
            knows where the images are: files beside the manifest, or
            encoded bytes inside TFRecord records.
        lines: each row's 1-based line number in the manifest.
        images: absolute image paths (`None` for TFRecord rows, whose
            encoded image travels inside the record).
        texts: the text of each row.
        labels: the raw label string of each row (multilabel rows keep
            their `|` separators).
        label_columns: `{column: raw values, one per row}` of the other
            label columns read (`read_manifest(..., label_columns=...)`:
            the columns of a multi-task model's heads), `None` where a row
            has no value.
        problems: rows refused while parsing.
    """

    source: str
    reader: object
    lines: list = dataclasses.field(default_factory=list)
    images: list = dataclasses.field(default_factory=list)
    texts: list = dataclasses.field(default_factory=list)
    labels: list = dataclasses.field(default_factory=list)
    label_columns: dict = dataclasses.field(default_factory=dict)
    problems: list = dataclasses.field(default_factory=list)

    def __len__(self):
        return len(self.lines)

    @property
    def format(self):
        """`"csv"`, `"jsonl"` or `"tfrecord"`: the reader's name."""
        return self.reader.name

    @property
    def num_rows(self):
        """Every row the manifest holds, parsed or not."""
        return len(self.lines) + len(self.problems)

    def append(self, line, image, text, label, label_columns=None):
        self.lines.append(line)
        self.images.append(image)
        self.texts.append(text)
        self.labels.append(label)
        for column, value in (label_columns or {}).items():
            self.label_columns.setdefault(column, []).append(value)

    def take(self, rows):
        """A manifest of some of the rows, e.g. a sample to calibrate on.

        Args:
            rows: indices into the columns, in the order to keep (sorted
                indices keep the manifest's order, and a TFRecord reader
                streams the records in their own order anyway).

        Returns:
            A `Manifest` of those rows with no `problems`: rows refused
            while parsing are not rows, so no index selects them.

        Example:

        >>> manifest = read_manifest("train.csv")
        >>> len(manifest.take([0, 2, 4]))
        3
        """
        rows = [int(row) for row in rows]

        def pick(column):
            return [column[row] for row in rows]

        return dataclasses.replace(
            self,
            reader=self.reader.take(rows),
            lines=pick(self.lines),
            images=pick(self.images),
            texts=pick(self.texts),
            labels=pick(self.labels),
            label_columns={c: pick(v) for c, v in self.label_columns.items()},
            problems=[],
        )


def row_problems(manifest, index, needs_label=True):
    """Problems with a row's own fields (not its image file).

    Args:
        manifest: a `Manifest`.
        index: the row.
        needs_label: a row without a label is bad (`False`: a label is
            optional, as for a contrastive task, and not read).
    """
    line, source = manifest.lines[index], manifest.source
    problems = []
    # Where images travel inside the records, rows have no image column.
    image = "" if manifest.reader.images_inside else manifest.images[index]
    label = manifest.labels[index] if needs_label else ""
    for column, value in (
        ("image", image),
        ("text", manifest.texts[index]),
        ("label", label),
    ):
        if value is None:
            problems.append(
                Problem(line, "missing_column", f"no `{column}` value", source)
            )
    text = manifest.texts[index]
    if text is not None:
        if not is_valid_utf8(text):
            problems.append(_utf8_problem(line, "text", text, source))
        elif not text.strip():
            problems.append(Problem(line, "empty_text", f"text {text!r}", source))
    # A label or path with undecodable bytes would pass until something
    # writes it out as UTF-8 (labels.txt, a report).
    label = manifest.labels[index] if needs_label else None
    if label is not None and not is_valid_utf8(label):
        problems.append(_utf8_problem(line, "label", label, source))
    elif label is not None and ("\n" in label or "\r" in label):
        problems.append(
            Problem(
                line,
                "malformed_row",
                f"a line break in label {label[:60]!r} (labels.txt holds one "
                "label per line)",
                source,
            )
        )
    if image and not is_valid_utf8(image):
        # Only what the manifest wrote: the folder it lives in is the
        # user's, not a row's problem.
        folder = os.path.join(os.path.dirname(os.path.abspath(source)), "")
        if image.startswith(folder):
            image = image[len(folder) :]
        if not is_valid_utf8(image):
            problems.append(_utf8_problem(line, "image path", image, source))
    return problems


def label_value_problems(line, column, value, source):
    """Problems with a label value of column `column` as a field: missing,
    not UTF-8, or holding a line break (it is written to a labels file).

    The checks of `row_problems` for the `label` column, for any other
    label column (a multi-task model's heads, `mmzoo.tasks.MultiTask`).
    """
    if value is None:
        return [Problem(line, "missing_column", f"no `{column}` value", source)]
    if not is_valid_utf8(value):
        return [_utf8_problem(line, f"`{column}` value", value, source)]
    if "\n" in value or "\r" in value:
        return [
            Problem(
                line,
                "malformed_row",
                f"a line break in `{column}` value {value[:60]!r} (a labels "
                "file holds one label per line)",
                source,
            )
        ]
    return []


def _utf8_problem(line, field, value, source):
    try:
        # Undecodable bytes, kept as lone surrogates when the file was read.
        raw = value.encode("utf-8", errors="surrogateescape")
        raw.decode("utf-8")
    except UnicodeEncodeError:  # surrogates that were never bytes (JSON's \ud800)
        raw = value.encode("utf-8", errors="backslashreplace")
        reason = "lone surrogate code points"
    except UnicodeDecodeError as error:
        reason = f"byte 0x{raw[error.start]:02x} at position {error.start}"
    else:
        reason = "lone surrogate code points"
    return Problem(line, "invalid_utf8", f"{reason} in {field} {raw[:60]!r}", source)


def is_valid_utf8(text):
    """False for text holding undecodable bytes (lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text):
    """`text` with undecodable bytes (lone surrogates) as `\\xNN` escapes.

    >>> printable(b"caf\\xe9".decode("utf-8", errors="surrogateescape"))
    'caf\\\\xe9'
    """
    if is_valid_utf8(text):
        return text
    try:
        raw = text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:  # surrogates that were never bytes (JSON's \ud800)
        return text.encode("utf-8", errors="backslashreplace").decode("utf-8")
    return raw.decode("utf-8", errors="backslashreplace")


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
            if (
                not isinstance(name, str)
                or not name
                or "\n" in name
                or "\r" in name
                or not is_valid_utf8(name)
            ):
                raise ValueError(
                    "Each label must be a non-empty UTF-8 string without line "
                    f"breaks (labels.txt holds one per line). Received: {name!r}"
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
