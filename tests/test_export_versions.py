"""Exports that do not collide: two processes exporting the same model at the
same moment get two versions and one valid models.config."""

import os
import subprocess
import sys
import time

import pytest
from google.protobuf import text_format
from harness import ENV
from harness import TINY
from tensorflow_serving.config import model_server_config_pb2

import mmzoo
from mmzoo.data import LabelVocabulary
from mmzoo.data import WordTokenizer
from mmzoo.export import export_saved_model
from mmzoo.export import saved_model

# Loads the run, says it is ready, waits for the go, exports: both processes
# choose their version within milliseconds of each other.
EXPORT = """
import os, sys, time
from mmzoo.export import export_saved_model
from mmzoo.runs import load_run

run_dir, base, go = sys.argv[1:]
run = load_run(run_dir)
open(f"{go}.ready.{os.getpid()}", "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
print(export_saved_model(run, base=base, name="shapes"))
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder around an untrained tiny model (nothing to train here)."""
    folder = tmp_path_factory.mktemp("run")
    tokenizer = WordTokenizer.fit(["a red circle", "a blue square"], max_tokens=8)
    tokenizer.save(folder / "tokenizer")
    LabelVocabulary(["circle", "square", "triangle"]).save(folder / "labels.txt")
    arguments = {**TINY, "vocab_size": tokenizer.vocab_size}
    mmzoo.build_model(**arguments).save(folder / "best.keras")
    (folder / "config.yaml").write_text("task: multiclass\n")
    return folder


def test_two_exports_at_once_get_two_versions(run_dir, tmp_path):
    base, go = tmp_path / "savedmodels", tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", EXPORT, str(run_dir), str(base), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 240
        while len(list(tmp_path.glob("go.ready.*"))) < 2:
            assert time.monotonic() < deadline, "the exporters never got ready"
            assert all(p.poll() is None for p in processes), processes[0].stderr
            time.sleep(0.05)
        go.touch()
        outputs = [process.communicate(timeout=240) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    printed = sorted(stdout.strip().splitlines()[-1] for stdout, _ in outputs)
    assert printed == [str(base / "shapes" / "1"), str(base / "shapes" / "2")]
    assert sorted(os.listdir(base / "shapes")) == ["1", "2"]  # no claim left
    for version in ("1", "2"):
        assert (base / "shapes" / version / "saved_model.pb").is_file()
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse((base / "models.config").read_text(), config)
    assert [entry.name for entry in config.model_config_list.config] == ["shapes"]


def test_a_claimed_version_is_skipped_or_refused(run_dir, tmp_path):
    folder = tmp_path / "shapes"
    folder.mkdir()
    (folder / ".claim-1").mkdir()  # another export holds 1
    assert saved_model._next_version(folder) == 2
    with pytest.raises(FileExistsError, match="being exported by another process"):
        saved_model._claim_version(str(folder), 1)
    version, claim = saved_model._claim_version(str(folder), None)
    assert version == 2 and os.path.isdir(claim)


def test_a_failed_export_releases_its_claim(run_dir, tmp_path, monkeypatch):
    def fail(folder):
        raise ValueError("warmup failed")

    monkeypatch.setattr(saved_model, "_load_and_warm_up", fail)
    with pytest.raises(ValueError, match="warmup failed"):
        export_saved_model(run_dir, base=tmp_path, name="shapes")
    assert os.listdir(tmp_path) == []
