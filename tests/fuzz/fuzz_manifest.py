"""Fuzz the CSV and JSONL manifest readers (`mmzoo.data.sources`).

The first byte picks what the rest is: 0, CSV rows after a fixed header; 1, a
whole CSV file; 2, a JSONL file. Each input is decoded as a manifest file is
(a UTF-8 BOM dropped, undecodable bytes kept as lone surrogates) and read.

Beyond "never crashes": the only exception is `ManifestError` (for a CSV
header that is not one), every line starts at most one row, a JSONL file
reports exactly its non-blank lines, every problem has a known reason and
prints as UTF-8, and the labels of rows whose fields pass can be written
to labels.txt. See README.md here for how to run it.
"""

import os
import sys

import atheris

# The checkout's mmzoo, not an installed one.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

# TensorFlow (which `import mmzoo` brings) is imported uninstrumented: only
# mmzoo's data modules are, so coverage feedback is about them and fast.
import keras  # noqa: F401
import tensorflow  # noqa: F401

with atheris.instrument_imports(include=["mmzoo.data"]):
    from mmzoo.data import sources
    from mmzoo.data.manifest import REASONS
    from mmzoo.data.manifest import LabelVocabulary
    from mmzoo.data.manifest import ManifestError
    from mmzoo.data.manifest import row_problems

COLUMNS = sources._column_names(None)
HEADER = "image,text,label\r\n"


def decode(data):
    """The text of manifest bytes, as `sources._read_text_file` decodes it."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="surrogateescape")


def TestOneInput(data):
    if not data:
        return
    mode, text = data[0] % 3, decode(data[1:])
    try:
        if mode == 2:
            manifest = sources.JsonlReader.parse(text, "fuzz.jsonl", COLUMNS)
        else:
            text = HEADER + text if mode == 0 else text
            manifest = sources.CsvReader.parse(text, "fuzz.csv", COLUMNS)
    except ManifestError:
        if mode == 0:
            raise  # the header is fixed: rows alone never fail the file
        return

    starts = manifest.lines + [problem.line for problem in manifest.problems]
    assert len(set(starts)) == len(starts) == manifest.num_rows, starts
    if mode == 2:
        present = [n for n, line in enumerate(text.split("\n"), 1) if line.strip()]
        assert sorted(starts) == present, (starts, present)
    good = []
    for index in range(len(manifest)):
        problems = row_problems(manifest, index)
        if not problems:
            good.append(manifest.labels[index])
        for problem in problems:
            assert problem.reason in REASONS, problem
            str(problem).encode("utf-8")
    for problem in manifest.problems:
        assert problem.reason in REASONS, problem
        str(problem).encode("utf-8")
    for multilabel in (False, True):
        labels = LabelVocabulary.fit(good, multilabel=multilabel)
        "".join(name + "\n" for name in labels.names).encode("utf-8")


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
