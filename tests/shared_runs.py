"""Run folders trained once per test session, shared by the files that read them.

A run folder (`mmzoo.training.trainer.train`) costs seconds to train; several
test files need the same tiny run and only read it. `shared_run` trains each
one once per session: under pytest-xdist the first worker to ask trains it
under a file lock in the session's temporary folder and the others wait for
it, so a run is never trained twice, even when the tests that use it run on
both workers.

The runs are deterministic (`train` seeds everything from its `seed`), so a
test sees the run it would have trained itself. A test that writes into a
run folder (`evaluate` writes its JSON there) takes a copy (`copy_run`).
"""

import contextlib
import fcntl
import os
import shutil

import data_fixtures

from mmzoo.training import trainer

_DONE = ".shared-run-complete"


def _root(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's base is a folder of the session's base.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    root = base / "shared-runs"
    root.mkdir(exist_ok=True)
    return root


@contextlib.contextmanager
def _locked(path):
    with open(path, "w") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def shared(tmp_path_factory, key, make):
    """`make(folder)` run once per session into `folder`; returns the folder."""
    folder = _root(tmp_path_factory) / key
    with _locked(f"{folder}.lock"):
        if not (folder / _DONE).exists():
            shutil.rmtree(folder, ignore_errors=True)  # a failed attempt
            folder.mkdir()
            make(folder)
            (folder / _DONE).touch()
    return folder


def copy_run(run_dir, destination):
    """A private copy of a shared run folder, for a test that writes into it."""
    shutil.copytree(run_dir, destination)
    return destination


# === The runs ===

CONTRASTIVE_IMAGES, CONTRASTIVE_CAPTIONS, CONTRASTIVE_WIDTH = 8, 3, 16
CONTRASTIVE_MODEL = {"image_filters": [8, 16], "embed_dim": CONTRASTIVE_WIDTH}


def contrastive_run(tmp_path_factory):
    """A dual encoder (clip loss, 2 epochs) on `caption_manifest`'s 8 images
    x 3 captions, with their colour labels (for zero-shot).

    Returns:
        `(run folder "pairs", captions manifest)`.
    """

    def make(folder):
        captions = data_fixtures.caption_manifest(
            folder / "data",
            images=CONTRASTIVE_IMAGES,
            captions=CONTRASTIVE_CAPTIONS,
            labels=True,
        )
        trainer.train(
            train=captions,
            val=captions,
            task="contrastive",
            loss="clip",
            epochs=2,
            image_size=32,
            max_tokens=8,
            batch_size=8,
            model=CONTRASTIVE_MODEL,
            out=folder / "pairs",
            verbose=0,
        )

    folder = shared(tmp_path_factory, "contrastive", make)
    return folder / "pairs", str(folder / "data" / "captions.csv")


def gated_run(tmp_path_factory):
    """A classifier (gated fusion, padded resize, 1 epoch) on a clean
    manifest of 12 rows.

    Returns:
        `(run folder "gated", manifest)`.
    """

    def make(folder):
        manifest = data_fixtures.clean_manifest(folder / "data", rows=12)
        trainer.train(
            train=manifest,
            val=manifest,
            epochs=1,
            out=folder / "gated",
            fusion="gated",
            resize="pad",
            image_size=32,
            max_tokens=8,
            batch_size=4,
            model={"image_filters": [8, 16], "head_units": [16]},
            verbose=0,
        )

    folder = shared(tmp_path_factory, "gated", make)
    return folder / "gated", str(folder / "data" / "manifest.csv")
