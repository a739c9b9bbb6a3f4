"""Manifests a user gets wrong, on real files: no row lost, no traceback.

Each test writes the file a failure was reported with (issue 12) and checks
that every line is counted, the bad row is named with its line and reason,
and nothing hangs or raises past `ManifestError`.
"""

import json
import os
import socket
import threading

import data_fixtures
import pytest

from mmzoo import cli
from mmzoo.data import LabelVocabulary
from mmzoo.data import check_manifest
from mmzoo.data import make_dataset
from mmzoo.data import read_manifest
from mmzoo.data.manifest import ManifestError
from mmzoo.data.manifest import Problem
from mmzoo.data.tokenizers import WordTokenizer

LABELS = data_fixtures.LABELS
# A 41-line manifest: the header and 40 rows, all naming one good image.
ROWS = [f"a.png,caption {i},{LABELS[i % 3]}" for i in range(40)]


def write_manifest(folder, rows, name="m.csv", header="image,text,label"):
    data_fixtures.write_image(os.path.join(folder, "a.png"))
    path = os.path.join(folder, name)
    with open(path, "wb") as file:
        for row in [header, *rows] if header is not None else rows:
            file.write((row if isinstance(row, bytes) else row.encode()) + b"\n")
    return path


def with_row(line, row):
    """The 40 rows with the row on manifest line `line` replaced."""
    rows = list(ROWS)
    rows[line - 2] = row
    return rows


def finishes(function, *args, fifos=(), seconds=60):
    """`function(*args)`, failing (not hanging) if it blocks on a FIFO."""
    result = {}

    def run():
        try:
            result["value"] = function(*args)
        except BaseException as error:  # re-raised in the test's thread
            result["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:  # let a blocked reader go: it reads end-of-file
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"{function.__name__} blocked on a special file")
    if "error" in result:
        raise result["error"]
    return result["value"]


# --- Quotes: one stray quote is one bad row ----------------------------------


UNCLOSED = {
    "image": '"a.png,caption 9,square',
    "text": 'a.png,"caption 9,square',
    "label": 'a.png,caption 9,"square',
}


@pytest.mark.parametrize("column", sorted(UNCLOSED))
def test_an_unclosed_quote_is_one_bad_row_and_the_rest_is_read(tmp_path, column):
    # Reported: "10 rows, 9 good, 1 bad" (30 rows gone), and with the quote
    # in the label column "10 rows, 10 good", then a crash in training.
    path = write_manifest(tmp_path, with_row(11, UNCLOSED[column]))
    report = check_manifest(path)
    assert (report.num_rows, len(report.good)) == (40, 39)
    [problem] = report.problems
    assert (problem.line, problem.reason) == (11, "malformed_row")
    assert "never closed" in problem.detail
    assert report.manifest.lines == [n for n in range(2, 42) if n != 11]


@pytest.mark.parametrize("column", sorted(UNCLOSED))
def test_a_stray_quote_closed_further_down_takes_no_row_with_it(tmp_path, column):
    rows = with_row(11, UNCLOSED[column])
    rows[29 - 2] = 'a.png,"caption, with ""quotes""",circle'
    manifest = read_manifest(write_manifest(tmp_path, rows))
    assert manifest.num_rows == 40
    assert [(p.line, p.reason) for p in manifest.problems] == [(11, "malformed_row")]
    assert "quote left open" in manifest.problems[0].detail
    assert manifest.texts[manifest.lines.index(29)] == 'caption, with "quotes"'


def test_data_check_fails_on_a_quote_left_open_in_the_label(tmp_path, capsys):
    path = write_manifest(tmp_path, with_row(11, UNCLOSED["label"]))
    assert cli.main(["data", "check", path]) == 1
    out = capsys.readouterr().out
    assert f"{path}:11: malformed_row: a quoted field" in out
    assert "40 rows, 39 good, 1 bad" in out


def test_line_breaks_are_data_in_the_text_only(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(
        b'image,text,label\na.png,"two\nlines",x\na.png,t,"multi\nline"\n'
        b'a.png,"three\r\nlines\rhere",y\n"b\n.png",t,x\n'
    )
    manifest = read_manifest(path)
    assert manifest.lines == [2, 6]
    assert manifest.texts == ["two\nlines", "three\r\nlines\rhere"]
    # A refused row is named at its first line; its other lines are read
    # again, and the one holding its closing quote is no row either.
    problems = [(p.line, p.detail) for p in manifest.problems]
    assert [line for line, _ in problems] == [4, 5, 9, 10]
    assert "line break in the `label` field" in problems[0][1]
    assert "line break in the `image` field" in problems[2][1]
    for _, detail in problems[1::2]:
        assert detail.startswith("a quote inside an unquoted field, on a line that")
    assert manifest.num_rows == 6


def test_rows_that_are_not_csv_say_why(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(
        b'image,text,label\na.png,"a"b,x\na.png,"a"b,"c\na.png,"x\ny"z,w\n'
        b'a.png,"x\ny",5"\n'
    )
    manifest = read_manifest(path)
    # A one-line quirk reads as the csv module reads it.
    assert manifest.texts == ["ab"]
    details = {p.line: p.detail for p in manifest.problems}
    assert "open at the end of this line" in details[3]
    assert "bad CSV quoting" in details[4] and "line 5" in details[4]
    assert "a quote inside an unquoted field" in details[6]
    assert manifest.num_rows == len(details) + 1


def test_a_broken_header_is_a_manifest_error_naming_the_line(tmp_path):
    path = write_manifest(tmp_path, ROWS[:2], header='image,"text,label')
    with pytest.raises(ManifestError, match=r"m.csv:1: the header row is not CSV"):
        read_manifest(path)


# --- Field size --------------------------------------------------------------


def test_a_field_over_the_csv_limit_is_one_bad_row(tmp_path):
    # Reported: `_csv.Error: field larger than field limit` ended the check.
    rows = with_row(5, "a.png," + "word " * 30_000 + ",circle")
    report = check_manifest(write_manifest(tmp_path, rows))
    assert (report.num_rows, len(report.good)) == (40, 39)
    [problem] = report.problems
    assert (problem.line, problem.reason) == (5, "malformed_row")
    assert "longer than 131,072 characters" in problem.detail


def test_a_quote_left_open_before_a_long_file_is_one_bad_row(tmp_path):
    rows = [f"a.png,caption {i} {'x' * 40},circle" for i in range(4_000)]
    rows[0] = 'a.png,"caption 0,circle'  # 180,000 characters before the end
    manifest = read_manifest(write_manifest(tmp_path, rows))
    assert len(manifest) == 3_999 and manifest.num_rows == 4_000
    [problem] = manifest.problems
    assert problem.line == 2 and "is a quote left open?" in problem.detail


# --- Bytes and types ---------------------------------------------------------


def test_undecodable_bytes_in_a_label_or_image_path_are_bad_rows(tmp_path):
    # Reported: they passed `data check`, then `LabelVocabulary.save` crashed.
    rows = [
        b"a.png,fine,circle",
        b"a.png,a bad label,caf\xe9",
        b"b\xff.png,a bad path,square",
        b"a.png,also fine,square",
    ]
    path = write_manifest(tmp_path, rows)
    report = check_manifest(path)
    bad = {(p.line, p.reason) for p in report.problems}
    assert {(3, "invalid_utf8"), (4, "invalid_utf8")} <= bad
    details = [p.detail for p in report.problems if p.reason == "invalid_utf8"]
    assert details == [
        "byte 0xe9 at position 3 in label b'caf\\xe9'",
        "byte 0xff at position 1 in image path b'b\\xff.png'",
    ]
    for problem in report.problems:  # every report line prints
        str(problem).encode("utf-8")
    tokenizer = WordTokenizer.fit(["fine"], max_tokens=4)
    _, _, labels = make_dataset(
        path, tokenizer, 8, max_bad_fraction=0.5, return_report=True
    )
    assert labels.names == ["circle", "square"]
    labels.save(tmp_path / "run")


def test_a_folder_with_undecodable_bytes_is_not_a_bad_row(tmp_path):
    folder = tmp_path / os.fsdecode(b"caf\xe9")
    folder.mkdir()
    report = check_manifest(write_manifest(str(folder), ROWS[:3]))
    assert report.problems == [] and len(report.good) == 3
    # The summary names the path in escapes, so it prints to any stdout.
    assert "caf\\xe9" in report.summary()
    report.summary().encode("utf-8")


def test_jsonl_values_of_the_wrong_type_say_the_type(tmp_path):
    rows = [
        {"image": "a.png", "text": 123, "label": "circle"},
        {"image": ["a.png"], "text": "t", "label": "circle"},
        {"image": "a.png", "text": "t", "label": {"name": "circle"}},
        {"image": "a.png", "text": "t", "label": ["circle", 2]},
        {"image": "a.png", "text": "t", "label": 1.5},
        {"image": "a.png", "text": None, "label": "circle"},
        {"image": "a.png", "text": "\ud800 lone", "label": "circle"},
    ]
    lines = [json.dumps(row) for row in rows] + ["1" * 5000, "[" * 100_000]
    report = check_manifest(write_manifest(tmp_path, lines, "m.jsonl", header=None))
    details = {p.line: (p.reason, p.detail) for p in report.problems}
    assert details[1] == (
        "malformed_row",
        "`text` must be a string. Received a JSON number: 123",
    )
    assert details[2] == (
        "malformed_row",
        "`image` must be a string. Received a JSON array: 1 item(s)",
    )
    assert details[3][1].startswith("`label` must be a string, a number or a list")
    assert details[6] == ("missing_column", "no `text` value")
    assert details[7][0] == "invalid_utf8"
    assert details[8][0] == details[9][0] == "malformed_row"
    assert report.manifest.labels[:2] == ["circle|2", "1.5"]
    assert report.num_rows == 9


def test_problems_print_whatever_bytes_they_hold():
    path = os.fsdecode(b"/data/caf\xe9.png")
    problem = Problem(3, "missing_file", f"no such file: {path}", "m.csv")
    assert str(problem) == "m.csv:3: missing_file: no such file: /data/caf\\xe9.png"
    with pytest.raises(ValueError, match="UTF-8"):
        LabelVocabulary(["circle", os.fsdecode(b"caf\xe9")])


# --- Special files -----------------------------------------------------------


def test_a_fifo_or_device_manifest_is_refused_without_opening_it(tmp_path, capsys):
    # Reported: `data check` on a FIFO hung.
    fifo = str(tmp_path / "m.csv")
    os.mkfifo(fifo)
    with pytest.raises(ManifestError, match=r"is a FIFO \(named pipe\)"):
        finishes(read_manifest, fifo, fifos=[fifo])
    assert finishes(cli.main, ["data", "check", fifo], fifos=[fifo]) == 2
    assert "is a FIFO" in capsys.readouterr().err
    os.symlink("/dev/zero", tmp_path / "zero.jsonl")
    with pytest.raises(ManifestError, match="is a character device"):
        read_manifest(tmp_path / "zero.jsonl")
    (tmp_path / "shards").mkdir()
    shard = str(tmp_path / "shards" / "data-00000-of-00001.tfrecord")
    os.mkfifo(shard)
    with pytest.raises(ManifestError, match="shard .* is a FIFO"):
        finishes(read_manifest, tmp_path / "shards", fifos=[shard])


def test_special_image_files_are_bad_rows_with_their_line(tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    os.mkfifo(images / "pipe.png")
    monkeypatch.chdir(images)  # a socket's path must be short
    server = socket.socket(socket.AF_UNIX)
    server.bind("socket.png")
    (images / "folder.png").mkdir()
    rows = [
        "images/pipe.png,a FIFO,circle",
        "a.png,fine,circle",
        "images/socket.png,a socket,circle",
        "/dev/null,a device,circle",
        "images/folder.png,a folder,circle",
    ]
    path = write_manifest(str(tmp_path), rows)
    try:
        report = finishes(check_manifest, path, fifos=[str(images / "pipe.png")])
    finally:
        server.close()
    details = {p.line: (p.reason, p.detail.split(":")[0]) for p in report.problems}
    assert details == {
        2: ("missing_file", "a FIFO (named pipe), not an image file"),
        4: ("missing_file", "a socket, not an image file"),
        5: ("missing_file", "a character device, not an image file"),
        6: ("missing_file", "a folder, not an image file"),
    }
    assert len(report.good) == 1
