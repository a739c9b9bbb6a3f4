"""Property tests of the manifest readers: tables written by Python's csv and
json modules read back exactly, and no corruption loses a line or crashes.

Hypothesis profiles (`tests/conftest.py`): `ci`, the default, runs a bounded
number of derandomized examples; `MMZOO_HYPOTHESIS_PROFILE=thorough` runs many
more, at random.
"""

import csv
import io
import json
import os

import pytest
from hypothesis import assume
from hypothesis import given
from hypothesis import strategies as st

from mmzoo.data import read_manifest
from mmzoo.data.manifest import row_problems

# What CSV quoting and line counting trip over, mixed with arbitrary text.
SPECIAL = (
    '"',
    '""',
    ",",
    "\n",
    "\r\n",
    "\r",
    " ",
    "\t",
    "",
    "é",
    "日本",
    "🐱",
    "\x00",
    "\u2028",
    "\x85",
    "\ufeff",
    "|",
    "{",
)
PIECES = st.one_of(st.sampled_from(SPECIAL), st.text(max_size=4))
ANY_CELL = st.lists(PIECES, max_size=5).map("".join)
# Line breaks in an image path or a label are refused by design (labels.txt
# holds one label per line); everywhere else they are data.
ONE_LINE_CELL = ANY_CELL.map(lambda v: v.replace("\r", "").replace("\n", ""))
ROWS = st.lists(st.tuples(ONE_LINE_CELL, ANY_CELL, ONE_LINE_CELL), max_size=8)
# Bytes that break CSV, JSON or UTF-8, for corrupting written files.
DAMAGE = st.one_of(
    st.sampled_from(
        [b'"', b",", b"\n", b"\r", b"\r\n", b"\xff", b"\xc3", b"\x00", b"{", b"]"]
    ),
    st.binary(min_size=1, max_size=3),
)
EDITS = st.lists(
    st.tuples(st.sampled_from(["insert", "delete", "replace"]), st.integers(0), DAMAGE),
    min_size=1,
    max_size=3,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("properties"))


def count_lines(text):
    """Lines as Python's csv reader counts them (\\n, \\r\\n or \\r ends one)."""
    return len(io.StringIO(text, newline="").readlines())


def write_csv(path, header, rows, terminator="\r\n", quoting=csv.QUOTE_MINIMAL):
    """Write `rows` with Python's csv; returns each row's 1-based line."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator=terminator, quoting=quoting)
    writer.writerow(header)
    lines = []
    for row in rows:
        lines.append(count_lines(buffer.getvalue()) + 1)
        writer.writerow(row)
    with open(path, "w", encoding="utf-8", newline="") as file:
        file.write(buffer.getvalue())
    return lines


def expected_image(folder, value, strip=True):
    value = value.strip() if strip else value
    return os.path.normpath(os.path.join(folder, value)) if value else None


def expected_label(value):
    return value.strip() or None


def edit(data, edits, start):
    """`data` with each edit applied at a position at or after `start`."""
    data = bytearray(data)
    for kind, position, damage in edits:
        position = start + position % (len(data) - start + 1)
        if kind == "insert":
            data[position:position] = damage
        elif kind == "delete":
            del data[position : position + len(damage)]
        else:
            data[position : position + len(damage)] = damage
    return bytes(data)


def check_rows_are_printable(manifest):
    for index in range(len(manifest)):
        for problem in row_problems(manifest, index):
            str(problem).encode("utf-8")
    for problem in manifest.problems:
        str(problem).encode("utf-8")


# --- CSV ---------------------------------------------------------------------


@given(
    rows=ROWS,
    extra=st.none() | st.lists(ANY_CELL, min_size=8, max_size=8),
    order=st.permutations(range(4)),
    terminator=st.sampled_from(["\r\n", "\n"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
)
def test_csv_tables_read_back_exactly(folder, rows, extra, order, terminator, quoting):
    columns = ["image", "text", "label"]
    table = [list(row) for row in rows]
    if extra is not None:  # a column mmzoo does not read, anywhere
        columns.append("note")
        for row, note in zip(table, extra[: len(table)], strict=True):
            row.append(note)
    order = [i for i in order if i < len(columns)]
    header = [columns[i] for i in order]
    table = [[row[i] for i in order] for row in table]
    if terminator == "\n":
        # Python 3.11's csv writer leaves a lone \r unquoted unless it is
        # part of the line terminator, and then its own reader splits there.
        table = [[cell.replace("\r", "") for cell in row] for row in table]
    path = os.path.join(folder, "table.csv")
    lines = write_csv(path, header, table, terminator, quoting)
    manifest = read_manifest(path)
    assert manifest.problems == []
    assert manifest.lines == lines
    cells = [dict(zip(header, row, strict=True)) for row in table]
    assert manifest.images == [expected_image(folder, c["image"]) for c in cells]
    assert manifest.texts == [c["text"] for c in cells]
    assert manifest.labels == [expected_label(c["label"]) for c in cells]


@given(rows=ROWS, data=st.data())
def test_a_stray_quote_in_an_image_or_label_takes_no_other_row(folder, rows, data):
    # The reported failure: one unclosed quote swallowed the rest of the file.
    assume(rows)
    row = data.draw(st.integers(0, len(rows) - 1), label="row")
    column = data.draw(st.sampled_from([0, 2]), label="column")
    value = rows[row][column]
    assume(not any(c in value for c in ',"'))  # written unquoted
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["image", "text", "label"])
    lines = []
    for index, cells in enumerate(rows):
        lines.append(count_lines(buffer.getvalue()) + 1)
        if index != row:
            writer.writerow(cells)
            continue
        one = io.StringIO(newline="")
        csv.writer(one).writerow(cells)
        text = one.getvalue()
        at = 0 if column == 0 else len(text) - len("\r\n") - len(value)
        buffer.write(text[:at] + '"' + text[at:])
    path = os.path.join(folder, "stray.csv")
    with open(path, "w", encoding="utf-8", newline="") as file:
        file.write(buffer.getvalue())

    manifest = read_manifest(path)
    # The row's own lines (its text may hold line breaks) are read one by
    # one once it is refused; every other row is read as written.
    end = lines[row + 1] if row + 1 < len(rows) else count_lines(buffer.getvalue()) + 1
    own = range(lines[row], end)
    assert all(problem.line in own for problem in manifest.problems)
    assert manifest.problems or lines[row] in manifest.lines
    kept = {line: i for i, line in enumerate(manifest.lines)}
    assert set(kept) - set(own) == set(lines) - set(own)
    for index, cells in enumerate(rows):
        if index == row:
            continue
        i = kept[lines[index]]
        assert manifest.images[i] == expected_image(folder, cells[0])
        assert manifest.texts[i] == cells[1]
        assert manifest.labels[i] == expected_label(cells[2])


@given(rows=ROWS, edits=EDITS)
def test_a_corrupt_csv_loses_no_line_and_never_crashes(folder, rows, edits):
    path = os.path.join(folder, "corrupt.csv")
    write_csv(path, ["image", "text", "label"], rows)
    with open(path, "rb") as file:
        data = file.read()
    header = len(b"image,text,label\r\n")
    data = edit(data, edits, header)
    with open(path, "wb") as file:
        file.write(data)

    manifest = read_manifest(path)  # the header is intact: no ManifestError
    check_rows_are_printable(manifest)
    text = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    text = text.decode("utf-8", errors="surrogateescape")
    file_lines = io.StringIO(text, newline="").readlines()
    starts = sorted(
        [(line, index) for index, line in enumerate(manifest.lines)]
        + [(problem.line, None) for problem in manifest.problems]
    )
    # Each line starts at most one row, and rows start after the header.
    assert len({line for line, _ in starts}) == len(starts)
    assert all(2 <= line <= len(file_lines) for line, _ in starts)
    # Every line belongs to a row: from a row's first line to the next row's,
    # a good row's lines hold exactly that row (and blank lines after it); a
    # malformed row holds its first line only (reading resumed after it).
    first = starts[0][0] if starts else len(file_lines) + 1
    assert all(not line.strip("\r\n") for line in file_lines[1 : first - 1])
    bounds = [line for line, _ in starts[1:]] + [len(file_lines) + 1][: len(starts)]
    for (line, index), bound in zip(starts, bounds, strict=True):
        chunk = file_lines[line - 1 : bound - 1]
        while chunk and not chunk[-1].strip("\r\n"):
            chunk.pop()
        if index is None:
            assert len(chunk) == 1
            continue
        records = list(csv.reader(chunk))
        assert len(records) == 1, chunk
        image, value, label = records[0]
        assert manifest.images[index] == expected_image(folder, image)
        assert manifest.texts[index] == value
        assert manifest.labels[index] == expected_label(label)


# --- JSONL -------------------------------------------------------------------


JSON_ROWS = st.lists(
    st.tuples(ANY_CELL, ANY_CELL, ANY_CELL, st.sampled_from(["", "  ", "\t "])),
    max_size=8,
)


def write_jsonl(path, rows, ensure_ascii):
    """One object per row, each followed by a blank-ish line; their lines."""
    lines, parts = [], []
    for image, text, label, blank in rows:
        lines.append(len(parts) + 1)
        record = {"image": image, "text": text, "label": label}
        parts.append(json.dumps(record, ensure_ascii=ensure_ascii))
        if blank:
            parts.append(blank)
    with open(path, "w", encoding="utf-8", newline="") as file:
        file.write("".join(part + "\n" for part in parts))
    return lines


@given(rows=JSON_ROWS, ensure_ascii=st.booleans())
def test_jsonl_rows_read_back_exactly(folder, rows, ensure_ascii):
    path = os.path.join(folder, "table.jsonl")
    lines = write_jsonl(path, rows, ensure_ascii)
    manifest = read_manifest(path)
    assert manifest.problems == []
    assert manifest.lines == lines
    assert manifest.images == [
        expected_image(folder, image, strip=False) for image, *_ in rows
    ]
    assert manifest.texts == [text for _, text, _, _ in rows]
    assert manifest.labels == [expected_label(label) for _, _, label, _ in rows]


@given(rows=JSON_ROWS, edits=EDITS)
def test_a_corrupt_jsonl_counts_every_line_and_never_crashes(folder, rows, edits):
    path = os.path.join(folder, "corrupt.jsonl")
    write_jsonl(path, rows, ensure_ascii=False)
    with open(path, "rb") as file:
        data = edit(file.read(), edits, 0)
    with open(path, "wb") as file:
        file.write(data)

    manifest = read_manifest(path)
    check_rows_are_printable(manifest)
    text = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    text = text.decode("utf-8", errors="surrogateescape")
    present = [n for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    reported = sorted(manifest.lines + [p.line for p in manifest.problems])
    assert reported == present
