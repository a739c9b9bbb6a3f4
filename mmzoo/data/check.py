"""Finding the bad rows of a manifest before any of them reaches training.

Every row is checked in three stages, cheapest first:

1. its own fields (`mmzoo.data.manifest.row_problems`): a missing column,
   empty text, non-UTF-8 text, label or image path, a label outside the
   vocabulary;
2. its image's header and trailer, read in Python without decoding, by
   the guard every image entry point applies (`mmzoo.data.images`'
   `check_image` rules: `inspect_image` and `header_problem`): missing
   file, unknown format, truncated file, more pixels than `max_pixels`
   over all of a GIF's frames (a decompression bomb is refused here,
   before anything allocates its pixels);
3. a real decode of every image that passed, with the same TensorFlow op
   the pipeline uses, run in parallel through tf.data; with `strict`, each
   JPEG is also decoded by libjpeg, and refused when libjpeg warns that its
   entropy-coded data is corrupt (TensorFlow decodes such a file to
   garbage, printing a warning that names no file).

Where the images are (files, or bytes inside TFRecord records) is the
manifest's reader's business (`mmzoo.data.sources`): this module asks it for
the distinct images, their header problems and their bytes.

tf.data's own `ignore_errors()` drops failures without saying which or why
(and so hides a wrong image folder); here a failure is kept as a `Problem`
with its line number and TensorFlow's message.
"""

import collections
import concurrent.futures
import dataclasses
import logging
import os
import re
import time

import keras
import numpy as np
import tensorflow as tf

from mmzoo.data import images as image_lib
from mmzoo.data.manifest import DEFAULT_MAX_BAD_FRACTION
from mmzoo.data.manifest import DEFAULT_MAX_PIXELS
from mmzoo.data.manifest import REASONS
from mmzoo.data.manifest import LabelVocabulary
from mmzoo.data.manifest import Manifest
from mmzoo.data.manifest import Problem
from mmzoo.data.manifest import printable
from mmzoo.data.manifest import row_problems
from mmzoo.data.sources import read_manifest

logger = logging.getLogger("mmzoo.data")


class DataError(ValueError):
    """More bad rows than a run tolerates; the message lists the reasons."""


@dataclasses.dataclass
class DataReport:
    """What `check_manifest` found.

    Attributes:
        manifest: the `Manifest` checked.
        problems: every `Problem`, ordered by line (a row may have several).
        good: indices into the manifest's columns of the rows with none.
        images: for `keep_images`, a uint8 array (unique images, S, S, 3)
            and, per row, its index into that array (`image_ids`).
    """

    manifest: Manifest
    problems: list
    good: list
    images: np.ndarray = None
    image_ids: list = None

    @property
    def source(self):
        return self.manifest.source

    @property
    def num_rows(self):
        return self.manifest.num_rows

    @property
    def num_bad(self):
        return self.num_rows - len(self.good)

    @property
    def bad_fraction(self):
        return self.num_bad / self.num_rows if self.num_rows else 0.0

    @property
    def texts(self):
        """The texts of the good rows (what a tokenizer should learn from)."""
        return [self.manifest.texts[i] for i in self.good]

    @property
    def counts(self):
        """Problems per reason, in `REASONS` order."""
        counts = collections.Counter(problem.reason for problem in self.problems)
        return {reason: counts[reason] for reason in REASONS if counts[reason]}

    def summary(self):
        """One line: rows, bad rows and the count per reason."""
        # `printable`: a path of undecodable bytes prints as \xNN escapes.
        text = printable(
            f"{self.source}: {self.num_rows:,} rows, {len(self.good):,} good, "
            f"{self.num_bad:,} bad ({100 * self.bad_fraction:.2f}%)"
        )
        if self.counts:
            text += ": " + ", ".join(f"{r} {n:,}" for r, n in self.counts.items())
        return text

    def enforce(self, max_bad_fraction=DEFAULT_MAX_BAD_FRACTION):
        """Log what is skipped; raise `DataError` above `max_bad_fraction`."""
        if not self.good:
            raise DataError(f"No usable rows. {self.summary()}{self._examples()}")
        if self.bad_fraction > max_bad_fraction:
            raise DataError(
                f"{self.summary()}, more than the {100 * max_bad_fraction:g}% "
                f"allowed (`max_bad_fraction`).{self._examples()}\n"
                f"Run `mmzoo data check {printable(self.source)}` for the full list."
            )
        if self.num_bad:
            logger.warning(
                "Skipping bad rows. %s. Run `mmzoo data check %s` for the list.",
                self.summary(),
                printable(self.source),
            )

    def _examples(self, limit=5):
        if not self.problems:
            return ""
        shown = "\n".join(f"  {p}" for p in self.problems[:limit])
        more = len(self.problems) - limit
        more = f"\n  ... {more} more" if more > 0 else ""
        return f"\nFirst problems:\n{shown}{more}"


def check_manifest(
    source,
    labels=None,
    multilabel=False,
    max_pixels=DEFAULT_MAX_PIXELS,
    decode=True,
    keep_images=None,
    columns=None,
    progress=False,
    strict=False,
    needs_labels=None,
    row_checks=None,
):
    """Find every bad row of a manifest, with its line and reason.

    Args:
        source: a manifest path (CSV, JSONL, TFRecord) or a `Manifest`.
        labels: a `LabelVocabulary` (or a labels.txt path); rows whose
            label it lacks are `unknown_label`. `None` checks no labels.
        multilabel: labels are `|`-separated sets.
        max_pixels: refuse images whose header declares more pixels.
        decode: also decode every image (stage 3). Without it only headers
            and trailers are read: faster, but corrupt pixel data passes.
        keep_images: `(image_size, resize)` to keep each image, decoded
            and resized as the pipeline does, in `report.images` (decode
            and check in one pass; used for in-memory caching).
        columns: column renaming for `read_manifest`.
        progress: show a progress bar while images are decoded.
        strict: also refuse JPEGs whose entropy-coded data libjpeg finds
            corrupt (`mmzoo.data.images.check_image`'s `strict`). Such a
            file decodes "successfully" to garbage pixels, TensorFlow
            printing only an anonymous warning; here it is
            `undecodable_image`, with its line and file.
        needs_labels: a row without a label is bad. `None`: when any row
            has one (a manifest without labels, for a contrastive task, is
            checked as such); `False`: labels are not read at all.
        row_checks: more checks of a row's fields, a function `(manifest,
            index) -> [Problem]`: a multi-task model's label columns
            (`mmzoo.tasks.Task.row_checks`).

    Returns:
        A `DataReport`.

    Example:

    >>> report = check_manifest("train.csv")
    >>> print(report.summary())
    train.csv: 1,000 rows, 997 good, 3 bad (0.30%): missing_file 2, truncated_image 1
    """
    if isinstance(source, Manifest):
        manifest = source
    else:
        manifest = read_manifest(source, columns=columns)
    if isinstance(labels, (str, os.PathLike)):
        labels = LabelVocabulary.load(labels)
    if not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(
            "`max_pixels` must be a positive integer. "
            f"Received: max_pixels={max_pixels!r}"
        )

    if needs_labels is None:
        needs_labels = any(label is not None for label in manifest.labels)
    problems = list(manifest.problems)
    bad = set()
    for index in range(len(manifest)):
        found = row_problems(manifest, index, needs_labels)
        if needs_labels and labels is not None and manifest.labels[index] is not None:
            unknown = labels.unknown(manifest.labels[index], multilabel)
            if unknown:
                found.append(
                    Problem(
                        manifest.lines[index],
                        "unknown_label",
                        f"{', '.join(map(repr, unknown))} (not in the "
                        f"{len(labels)} training labels)",
                        manifest.source,
                    )
                )
        if row_checks is not None:
            found += row_checks(manifest, index)
        if found:
            bad.add(index)
            problems.extend(found)

    # A VQA manifest asks many questions about one image: each image is
    # checked (and decoded) once.
    keys, image_ids = manifest.reader.image_keys(manifest)
    image_problems, decoded = _check_images(
        manifest.reader, keys, max_pixels, decode, keep_images, progress, strict
    )
    for index in range(len(manifest)):
        key = image_ids[index]
        if key is not None and key in image_problems:
            reason, detail = image_problems[key]
            problems.append(
                Problem(manifest.lines[index], reason, detail, manifest.source)
            )
            bad.add(index)

    problems.sort(key=lambda p: (p.line, list(REASONS).index(p.reason)))
    good = [index for index in range(len(manifest)) if index not in bad]
    return DataReport(
        manifest=manifest,
        problems=problems,
        good=good,
        images=decoded,
        image_ids=image_ids if decoded is not None else None,
    )


# `mmzoo demo` trains six models on the same three manifests, and each
# run checked (and decoded) the same images again: 9 s of a 60-s model.
# The last few checks of image files are kept, keyed by every file's path,
# size and modification time, so a file that changes is checked again.
_KEPT_CHECKS = collections.OrderedDict()
_KEPT_CHECKS_MAX = 4


def _check_images(reader, keys, max_pixels, decode, keep_images, progress, strict):
    """{key: (reason, detail)} for bad images, and the kept pixels."""
    kept = _kept_check_key(reader, keys, (max_pixels, decode, keep_images, strict))
    if kept in _KEPT_CHECKS:
        _KEPT_CHECKS.move_to_end(kept)
        problems, decoded = _KEPT_CHECKS[kept]
        return dict(problems), decoded
    problems, decoded = _run_image_checks(
        reader, keys, max_pixels, decode, keep_images, progress, strict
    )
    if kept is not None:
        if decoded is not None:
            # Shared by later runs: nobody may write into it.
            decoded.flags.writeable = False
        _KEPT_CHECKS[kept] = (dict(problems), decoded)
        while len(_KEPT_CHECKS) > _KEPT_CHECKS_MAX:
            _KEPT_CHECKS.popitem(last=False)
    return problems, decoded


def _kept_check_key(reader, keys, arguments):
    """What identifies a check of image files; `None` for images inside
    records (a TFRecord shard is read as a stream) and for files written
    in the last few seconds (a file rewritten at once could keep its size
    and, on a coarse clock, its time)."""
    if reader.images_inside:
        return None
    recent = time.time_ns() - 5 * 10**9
    files = []
    for path in keys:
        try:
            status = os.stat(path)
        except OSError:
            files.append((path, None, None))
            continue
        if status.st_mtime_ns > recent:
            return None
        files.append((path, status.st_size, status.st_mtime_ns))
    return arguments, tuple(files)


def _run_image_checks(reader, keys, max_pixels, decode, keep_images, progress, strict):
    # Stage 2, the header of every image: the guard of
    # `mmzoo.data.images.check_image`, which every other entry point applies.
    problems = reader.image_problems(keys, max_pixels)
    if not (decode or keep_images or strict):
        return problems, None

    # A JPEG without its end marker may still decode: cameras append data
    # (motion photos) after it. Let the decoder decide; if it fails, the
    # missing marker is the reason.
    suspects = {
        key
        for key, (reason, detail) in problems.items()
        if reason == "truncated_image" and detail.startswith("JPEG")
    }
    for key in suspects:
        del problems[key]
    candidates = [key for key in range(len(keys)) if key not in problems]
    contents = reader.image_contents(keys, candidates)
    decoded = None
    if keep_images:
        image_size, resize = keep_images
        decoded = np.zeros((len(keys), image_size, image_size, 3), np.uint8)

        def load(key, data):
            return key, image_lib.load_image(data, image_size, resize)
    elif decode:

        def load(key, data):
            return key, tf.shape(image_lib.decode_image(data))
    else:

        def load(key, data):
            # `strict` without `decode`: only libjpeg decodes.
            return key, tf.zeros([0], tf.int32)

    def load_and_keep(key, data):
        # The bytes come back to Python only for the strict check.
        return *load(key, data), data if strict else tf.constant(b"")

    passed = set()
    strict_checks = _StrictChecks() if strict else None
    dataset = contents.map(load_and_keep, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.ignore_errors()
    bar = None
    if progress:
        bar = keras.utils.Progbar(len(candidates), unit_name="image")
    for key, value, data in dataset.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        passed.add(int(key))
        if decoded is not None:
            decoded[key] = value
        if strict_checks is not None:
            strict_checks.submit(int(key), data)
        if bar is not None and len(passed) % 256 == 0:
            bar.update(len(passed))
    if bar is not None:
        bar.update(len(candidates), finalize=True)
    if strict_checks is not None:
        for key, (reason, detail) in strict_checks.results():
            problems[key] = (reason, f"{detail}: {reader.describe(keys, key)}")
    failed = [key for key in candidates if key not in passed]
    # Failures are rare: decode each again, eagerly, for TensorFlow's message.
    for key, data in reader.image_contents(keys, failed):
        key = int(key)
        try:
            image_lib.decode_image(data)
            message = "decoding failed"
        except (tf.errors.InvalidArgumentError, tf.errors.OpError) as error:
            message = _tensorflow_message(error)
        where = reader.describe(keys, key)
        if key in suspects:
            problems[key] = ("truncated_image", f"JPEG file ends early: {where}")
        else:
            problems[key] = ("undecodable_image", f"{message}: {where}")
    return problems, decoded


class _StrictChecks:
    """`strict_problem` on the images that decoded, in threads.

    libjpeg releases the GIL while it decodes, so a few threads keep up
    with tf.data; at most `2 * workers` files wait in memory at once.
    """

    def __init__(self):
        self.workers = os.cpu_count() or 1
        self.pool = concurrent.futures.ThreadPoolExecutor(self.workers)
        self.pending = collections.deque()
        self.found = []

    def submit(self, key, data):
        if len(self.pending) >= 2 * self.workers:
            self._collect(self.pending.popleft())
        self.pending.append((key, self.pool.submit(image_lib.strict_problem, data)))

    def _collect(self, item):
        key, future = item
        problem = future.result()
        if problem is not None:
            self.found.append((key, problem))

    def results(self):
        """`[(key, (reason, detail))]` of the refused images."""
        while self.pending:
            self._collect(self.pending.popleft())
        self.pool.shutdown()
        return self.found


def _tensorflow_message(error):
    """TensorFlow's reason without its op and device decorations."""
    message = error.message.strip().split("\n")[0]
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
    return re.sub(r"\s*\[Op:\w+\].*$", "", message)
