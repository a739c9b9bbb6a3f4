"""Runs that survive damage and mistakes: a moved run, damaged backups, a run
that fails before training, a loss that diverges.

The damaged folders are copies of one real interrupted run (stopped after
its second epoch's backup, as a kill would leave it), each with one backup
file truncated or overwritten.
"""

import contextlib
import io
import logging
import os
import shutil

import data_fixtures
import keras
import numpy as np
import pytest
import yaml

import mmzoo
from mmzoo import cli
from mmzoo.data.check import DataError
from mmzoo.training import backup
from mmzoo.training import trainer

TINY = {
    "image_size": 32,
    "max_tokens": 8,
    "batch_size": 4,
    "model": {"image_filters": [8, 16], "head_units": [16], "fusion_units": 16},
}
EPOCHS = 3


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return data_fixtures.clean_manifest(tmp_path_factory.mktemp("data"), rows=12)


def _settings(manifest):
    return dict(train=manifest, epochs=EPOCHS, augment=True, **TINY)


class _Interrupt(keras.callbacks.Callback):
    """Stops a run after its second epoch's backup, as a kill would."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")


@pytest.fixture(scope="module")
def runs(manifest, tmp_path_factory):
    """An uninterrupted run and an interrupted one of the same settings."""
    root = tmp_path_factory.mktemp("runs")
    trainer.train(out=root / "whole", verbose=0, **_settings(manifest))
    with pytest.raises(KeyboardInterrupt):
        trainer.train(
            out=root / "cut", verbose=0, callbacks=[_Interrupt()], **_settings(manifest)
        )
    generations = sorted(os.listdir(root / "cut" / "backup"))
    assert generations == ["epoch-0001", "epoch-0002"]
    return root / "whole", root / "cut"


def _weights(run):
    return mmzoo.load_model(os.path.join(run, "model.keras")).get_weights()


def _epochs(run):
    lines = open(os.path.join(run, "history.csv")).read().splitlines()[1:]
    return [line.split(",")[0] for line in lines]


def _cli(*argv):
    """`mmzoo ARGV` in this process: (status, stderr)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        status = cli.main([str(value) for value in argv])
    return status, stderr.getvalue()


def _train_flags(manifest, out):
    return [
        "train",
        "--train",
        manifest,
        "--augment",
        "--epochs",
        EPOCHS,
        "--image-size",
        32,
        "--max-tokens",
        8,
        "--batch-size",
        4,
        "--out",
        out,
    ]


def test_moved_run_resumes_in_the_folder_given(runs, manifest, tmp_path):
    whole, cut = runs
    moved = tmp_path / "moved"
    shutil.copytree(cut, moved)
    before = sorted(os.listdir(cut))
    # The model options come from the saved config.yaml (YAML in the run).
    saved = yaml.safe_load((moved / "config.yaml").read_text())
    assert saved["out"] == str(cut)
    status, error = _cli(*_train_flags(manifest, moved), "--resume")
    assert status == 0, error
    assert (moved / "model.keras").is_file() and not (moved / "backup").exists()
    assert _epochs(moved) == ["0", "1", "2"]
    assert sorted(os.listdir(cut)) == before  # the original is untouched
    for a, b in zip(_weights(whole), _weights(moved), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _damage(path, how):
    data = open(path, "rb").read()
    with open(path, "wb") as file:
        if how == "truncate":
            file.write(data[: len(data) // 2])
        else:
            file.write(np.random.default_rng(0).bytes(len(data)))


@pytest.mark.parametrize(
    "name, how",
    [
        (backup.WEIGHTS, "truncate"),
        (backup.RANDOM_STATE, "garbage"),
        (backup.MANIFEST, "truncate"),
        (backup.MANIFEST, "remove"),
    ],
)
def test_a_damaged_generation_is_passed_over(name, how, runs, tmp_path):
    folder = tmp_path / "backup"
    shutil.copytree(runs[1] / "backup", folder)
    damaged = folder / "epoch-0002" / name
    if how == "remove":
        damaged.unlink()
    else:
        _damage(damaged, how)
    restore, problems = backup.choose(folder)
    assert restore == backup.Generation(str(folder / "epoch-0001"), 1)
    fault = "is missing" if how == "remove" else "is damaged"
    assert problems == [problems[0]] and problems[0].startswith(f"{damaged} {fault}")


def test_resume_after_a_damaged_backup_ends_as_an_uninterrupted_run(
    runs, manifest, tmp_path, caplog
):
    whole, cut = runs
    run = tmp_path / "run"
    shutil.copytree(cut, run)
    damaged = run / "backup" / "epoch-0002" / backup.WEIGHTS
    _damage(damaged, "truncate")
    with caplog.at_level(logging.WARNING, logger="mmzoo.training"):
        trainer.train(out=run, resume=True, verbose=0, **_settings(manifest))
    assert f"{damaged} is damaged" in caplog.text
    assert "resuming from the backup of epoch 1 instead" in caplog.text
    # Epoch 1 trained again and logged once.
    assert _epochs(run) == ["0", "1", "2"]
    for a, b in zip(_weights(whole), _weights(run), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_no_good_backup_left_is_one_line_naming_the_files(runs, manifest, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs[1], run)
    _damage(run / "backup" / "epoch-0002" / backup.WEIGHTS, "truncate")
    (run / "backup" / "epoch-0001" / backup.MANIFEST).unlink()
    status, error = _cli(*_train_flags(manifest, run), "--resume")
    assert status == 2 and error.count("\n") == 1, error
    assert error.startswith(f"error: Cannot resume {str(run)!r}: ")
    assert f"epoch-0002/{backup.WEIGHTS} is damaged" in error
    assert f"epoch-0001/{backup.MANIFEST} is missing" in error
    assert "train again without --resume" in error and "Traceback" not in error
    assert not (run / "model.keras").exists()


def test_run_failing_before_training_leaves_the_folder_reusable(manifest, tmp_path):
    # Every image missing: the data check fails after the folder was
    # prepared (config.yaml, tokenizer/ written).
    bad = tmp_path / "bad.csv"
    bad.write_text("image,text,label\nnope.png,a text,circle\n")
    out = tmp_path / "run"
    with pytest.raises(DataError):
        trainer.train(train=bad, out=out, epochs=1, verbose=0, **TINY)
    assert not out.exists()
    out.mkdir()  # an empty folder given stays, emptied
    with pytest.raises(DataError):
        trainer.train(train=bad, out=out, epochs=1, verbose=0, **TINY)
    assert out.is_dir() and os.listdir(out) == []
    trainer.train(train=manifest, out=out, epochs=1, verbose=0, **TINY)
    assert (out / "model.keras").is_file()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train", "missing.csv", "`train`: manifest not found"),
        ("image_weights", "missing.weights.h5", "`image_weights` must be none"),
        ("cache", "missing/cache", "`cache`: the folder"),
    ],
)
def test_unusable_paths_create_nothing(key, value, message, manifest, tmp_path):
    arguments = {"train": manifest, **TINY, key: str(tmp_path / value)}
    with pytest.raises(mmzoo.training.config.ConfigError, match=message):
        trainer.train(out=tmp_path / "run", **arguments)
    assert os.listdir(tmp_path) == []


def test_diverging_loss_stops_with_exit_status_1(manifest, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"train": str(manifest), "epochs": 2, **TINY}))
    status, error = _cli("train", "--config", config, "--lr", "1e30", "--out", out)
    assert status == 1 and error.count("\n") == 1, error
    assert error.startswith("error: Training diverged: the loss became ")
    assert "in epoch 1, batch " in error and "lr=1e+30" in error
    assert "Nothing was kept." in error and not out.exists()


class _Explode(keras.callbacks.Callback):
    """Makes the second epoch diverge."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.optimizer.learning_rate.assign(1e30)


def test_diverged_run_leaves_no_model_and_no_backup(manifest, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(trainer.TrainingDiverged, match=r"in epoch 2, batch \d+\.") as e:
        trainer.train(
            train=manifest,
            out=out,
            epochs=3,
            verbose=0,
            callbacks=[_Explode()],
            **TINY,
        )
    assert "keeps history.csv and logs/" in str(e.value)
    assert sorted(os.listdir(out)) == [
        "config.yaml",
        "history.csv",
        "labels.txt",
        "logs",
        "tokenizer",
    ]
    assert _epochs(out) == ["0"]
