"""`mmzoo train / evaluate / predict / demo` end to end on real files."""

import csv
import json
import os
import socket
import subprocess
import sys

import data_fixtures
import keras
import numpy as np
import pytest
import shared_runs
import yaml
from harness import FUSED_TASKS
from harness import run_export_test

import mmzoo
from mmzoo.data.sources import read_manifest
from mmzoo.runs import load_run
from mmzoo.runs import predict
from mmzoo.training import trainer
from mmzoo.training.config import ConfigError
from mmzoo.training.evaluation import evaluate

TINY = {
    "image_size": 32,
    "max_tokens": 8,
    "batch_size": 4,
    "model": {"image_filters": [8, 16], "head_units": [16], "fusion_units": 16},
}
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return data_fixtures.clean_manifest(tmp_path_factory.mktemp("data"), rows=12)


def mmzoo_cli(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "mmzoo.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env or ENV,
        timeout=timeout,
    )


def test_cli_train_evaluate_predict(manifest, tmp_path, capsys):
    # `train` through the installed entry point, in a process of its own
    # (its exit status and output); `evaluate` and `predict` through
    # `mmzoo.cli.main` in this one, which spares a TensorFlow import each.
    from mmzoo import cli

    run = tmp_path / "run"
    result = mmzoo_cli(
        "train",
        "--train",
        manifest,
        "--val",
        manifest,
        "--test",
        manifest,
        "--fusion",
        "gated",
        "--image-size",
        32,
        "--max-tokens",
        8,
        "--epochs",
        2,
        "--batch-size",
        4,
        "--out",
        run,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in (
        "model.keras",
        "best.keras",
        "labels.txt",
        "config.yaml",
        "history.csv",
        "metrics.json",
        "curves.png",
        "confusion_matrix.png",
        "tokenizer/vocabulary.txt",
        "tokenizer/tokenizer.json",
    ):
        assert (run / name).is_file(), name
    assert list((run / "logs" / "train").glob("events.out.tfevents.*"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["fusion"] == "gated" and config["epochs"] == 2
    history = (run / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch") and len(history) == 3
    assert "val_sparse_categorical_accuracy" in history[0].split(",")
    assert "Accuracy:" in result.stdout
    # BatchNorm is recalibrated once when the last epoch was the best one
    # (then best.keras is the final model), else for each model.
    with open(run / "history.csv", newline="") as file:
        losses = [float(row["val_loss"]) for row in csv.DictReader(file)]
    last_is_best = losses[-1] < min(losses[:-1])
    final, best = (
        mmzoo.load_model(run / name) for name in ("model.keras", "best.keras")
    )
    same = all(
        np.array_equal(a, b)
        for a, b in zip(final.get_weights(), best.get_weights(), strict=True)
    )
    assert same == last_is_best
    assert result.stderr.count("BatchNorm layer(s) recalibrated") == 2 - last_is_best

    assert cli.main(["evaluate", str(run), "--data", str(manifest)]) == 0
    assert "Accuracy:" in capsys.readouterr().out
    metrics = json.loads((run / "evaluation_manifest.json").read_text())
    # best.keras on the test manifest, which is this one: the same figures.
    trained = json.loads((run / "metrics.json").read_text())["test"]
    assert metrics["examples"] == 12
    assert metrics["accuracy"] == trained["accuracy"]
    assert metrics["confusion_matrix"] == trained["confusion_matrix"]

    image = os.path.join(os.path.dirname(manifest), "images", "img_0.png")
    argv = ["predict", str(run), "--image", image, "--text", "is this a circle"]
    assert cli.main([*argv, "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[2].startswith("modality weights: image")
    scores = [float(line.split()[0]) for line in lines[:2]]
    labels = [line.split()[1] for line in lines[:2]]
    assert len(set(labels)) == 2 and set(labels) <= set(data_fixtures.LABELS)
    assert scores == sorted(scores, reverse=True)
    weights = [float(value.strip(",")) for value in lines[2].split()[3::2]]
    assert sum(weights) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("task", FUSED_TASKS)
def test_every_task_trains_evaluates_predicts_and_exports(task, tmp_path):
    task = mmzoo.get_task(task)
    raw = task.example_labels(12, data_fixtures.LABELS, seed=1)
    manifest = data_fixtures.clean_manifest(tmp_path / "data", rows=12, labels=raw)
    # With the balancing options (mmzoo.balance): every export below must
    # drop the unimodal heads, which exist in training only.
    balancing = {"unimodal_heads": 0.5, "balance": "ogm_ge" if task.classes else "none"}
    result = trainer.train(
        train=manifest,
        val=manifest,
        test=manifest,
        task=task.name,
        fusion="gated",
        epochs=2,
        out=tmp_path / "run",
        verbose=0,
        **balancing,
        **TINY,
    )
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()[0]
    assert "image_only_loss" in history.split(",")
    run = load_run(tmp_path / "run")
    assert run.task is task and (run.labels is not None) is task.classes
    # `evaluate` on the test manifest gives the run's own test figures.
    evaluated, path = evaluate(run, manifest)
    tested = result["metrics"]["test"]
    assert {k: v for k, v in evaluated.items() if k in tested} == tested
    assert json.loads(open(path).read())["examples"] == 12

    rows = read_manifest(manifest)
    answer = predict(run, rows.images[0], rows.texts[0], top_k=2)
    assert sum(answer["modality_weights"].values()) == pytest.approx(1.0, abs=1e-3)
    if task.classes:
        assert set(answer["labels"]) <= set(run.labels.names)
        assert answer["scores"] == sorted(answer["scores"], reverse=True)
    else:
        assert len(answer["predictions"]) == len(raw[0].split("|"))
    served, lite = run_export_test(
        run, rows.images[:4], rows.texts[:4], tmp_path / "export"
    )
    assert not any(name.endswith("_only") for name in served)
    assert not any(name.endswith("_only") for name in lite["max_abs_diff_by_output"])


def test_metrics_match_a_direct_computation(manifest, tmp_path):
    result = trainer.train(
        train=manifest,
        val=manifest,
        epochs=2,
        out=tmp_path / "run",
        verbose=0,
        **TINY,
    )
    run = load_run(tmp_path / "run")
    # Direct: the best model on every row, argmax against labels.txt.
    from mmzoo.data import read_manifest
    from mmzoo.data.images import load_image

    rows = read_manifest(manifest)
    images = np.stack(
        [
            load_image(open(path, "rb").read(), 32).numpy().astype("float32")
            for path in rows.images
        ]
    )
    tokens = run.tokenizer(rows.texts).numpy()
    probabilities = run.model.predict({"image": images, "tokens": tokens}, verbose=0)[
        "probabilities"
    ]
    truth = np.array([run.labels.index(label) for label in rows.labels])
    predicted = probabilities.argmax(-1)
    metrics = result["metrics"]["val"]
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == truth))
    matrix = np.zeros((3, 3), int)
    np.add.at(matrix, (truth, predicted), 1)
    assert metrics["confusion_matrix"] == matrix.tolist()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["val"]["accuracy"] == metrics["accuracy"]
    assert saved["parameters"] == run.model.count_params()


def _features(run):
    """One tiny batch of model inputs for a run."""
    size, length = run.image_size, run.model.input["tokens"].shape[1]
    return {
        "image": np.zeros((1, size, size, 3), "float32"),
        "tokens": np.ones((1, length), "int32"),
    }


class _Interrupt(keras.callbacks.Callback):
    """Stops a run after an epoch, as a kill would (the backup is saved)."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill after epoch 2")


def test_resume_ends_where_an_uninterrupted_run_would(manifest, tmp_path):
    settings = dict(
        train=manifest, val=manifest, epochs=4, augment=True, verbose=0, **TINY
    )
    trainer.train(out=tmp_path / "whole", **settings)

    with pytest.raises(KeyboardInterrupt):
        trainer.train(out=tmp_path / "cut", callbacks=[_Interrupt()], **settings)
    assert (tmp_path / "cut" / "backup").is_dir()
    assert not (tmp_path / "cut" / "model.keras").exists()
    with pytest.raises(trainer.RunError, match="pass --resume"):
        trainer.train(out=tmp_path / "cut", **settings)
    trainer.train(out=tmp_path / "cut", resume=True, **settings)
    assert not (tmp_path / "cut" / "backup").exists()

    whole = mmzoo.load_model(tmp_path / "whole" / "model.keras")
    resumed = mmzoo.load_model(tmp_path / "cut" / "model.keras")
    for a, b in zip(whole.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    epochs = [
        line.split(",")[0]
        for line in (tmp_path / "cut" / "history.csv").read_text().splitlines()[1:]
    ]
    assert epochs == ["0", "1", "2", "3"]
    with pytest.raises(trainer.RunError, match="already finished"):
        trainer.train(out=tmp_path / "cut", resume=True, **settings)


KILLED = """
import os, sys
import keras
from mmzoo.training import trainer

class Kill(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            os._exit(137)  # as kill -9 would, after the epoch's backup

trainer.train(
    train=sys.argv[1], out=sys.argv[2], image_size=32, max_tokens=8,
    epochs=3, batch_size=4, verbose=0, callbacks=[Kill()],
)
"""


def test_killed_process_resumes_from_the_command_line(manifest, tmp_path, capsys):
    run = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED, str(manifest), str(run)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert sorted(os.listdir(run / "backup")) == ["epoch-0001", "epoch-0002"]
    # The newest backup damaged (a disk that lost its tail): resume falls
    # back to the one before and trains its epoch again.
    weights = run / "backup" / "epoch-0002" / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])
    arguments = [
        "train",
        "--train",
        manifest,
        "--image-size",
        32,
        "--max-tokens",
        8,
        "--epochs",
        3,
        "--batch-size",
        4,
        "--out",
        run,
    ]
    # The refusal in this process (`mmzoo.cli.main`); the resumed run from
    # the entry point, whose log on stderr names the damage.
    from mmzoo import cli

    assert cli.main([str(value) for value in arguments]) == 2
    assert "--resume" in capsys.readouterr().err
    resumed = mmzoo_cli(*arguments, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{weights} is damaged" in resumed.stderr
    assert "resuming from the backup of epoch 1 instead" in resumed.stderr
    lines = (run / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1", "2"]
    assert (run / "model.keras").is_file() and not (run / "backup").exists()


def test_yaml_config_and_flags(manifest, tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {"train": str(manifest), "epochs": 1, "fusion": "concat", **TINY}
        )
    )
    # In this process (`mmzoo.cli.main`): the entry point itself runs in
    # test_cli_train_evaluate_predict.
    from mmzoo import cli

    argv = ["train", "--config", str(path), "--fusion", "bilinear"]
    assert cli.main([*argv, "--out", str(tmp_path / "r")]) == 0
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["fusion"] == "bilinear"  # the flag wins over the file
    assert saved["model"]["image_filters"] == [8, 16]

    path.write_text("train: x.csv\nepoch: 3\nout: y\n")
    assert cli.main(["train", "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert "Unknown run config key 'epoch'. Did you mean 'epochs'?" in error


def test_configuration_errors_name_the_key(manifest, tmp_path):
    with pytest.raises(ConfigError, match=r"`fusion` must be one of .*'gated'\?"):
        trainer.train(train=manifest, out=tmp_path / "a", fusion="gatd")
    with pytest.raises(ConfigError, match=r"`epochs` must be a positive integer"):
        trainer.train(train=manifest, out=tmp_path / "a", epochs=0)
    with pytest.raises(
        ConfigError, match=r"`train` \(a training manifest\) is required"
    ):
        trainer.train(out=tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(trainer.RunError, match="not empty"):
        trainer.train(train=manifest, out=tmp_path / "full", **TINY)
    with pytest.raises(trainer.RunError, match="Nothing to resume"):
        trainer.train(train=manifest, out=tmp_path / "none", resume=True)


def test_predict_explains_bad_inputs(tmp_path, tmp_path_factory, capsys):
    run_dir, _ = shared_runs.gated_run(tmp_path_factory)  # read only
    with pytest.raises(FileNotFoundError, match="Image not found"):
        predict(run_dir, tmp_path / "nope.png", "hi")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="Cannot decode the image"):
        predict(run_dir, tmp_path / "bad.png", "hi")
    # A 144-Mpx PNG (a 100-byte header) is refused by the guard the data
    # check and serving apply, before anything is decoded; the command line
    # says so in one line and exits 2.
    bomb = data_fixtures.write_png_header_bomb(
        str(tmp_path / "big.png"), 12_000, 12_000
    )
    with pytest.raises(ValueError, match=r"12000x12000 = 144,000,000 pixels"):
        predict(run_dir, bomb, "hi")
    from mmzoo import cli

    assert cli.main(["predict", str(run_dir), "--image", bomb, "--text", "hi"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"error: Cannot decode the image {bomb!r}: 12000x12000 = 144,000,000 "
        "pixels > max_pixels=67,108,864."
    )
    with pytest.raises(FileNotFoundError, match="not a finished"):
        load_run(tmp_path)


MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)
from mmzoo.training import distributed, trainer

replicas = []
make_strategy = distributed.make_strategy


def recording(name):
    strategy = make_strategy(name)
    replicas.append(strategy.num_replicas_in_sync)
    return strategy


distributed.make_strategy = recording
result = trainer.train(
    train=sys.argv[1], val=sys.argv[1], out=sys.argv[2], strategy="mirrored",
    epochs=2, image_size=32, max_tokens=8, batch_size=4, verbose=0,
)
print("replicas", replicas)
print("accuracy", result["metrics"]["val"]["accuracy"])
"""


def test_mirrored_strategy_on_two_logical_cpus(manifest, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED, str(manifest), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas [2]" in result.stdout.splitlines()
    assert (tmp_path / "run" / "best.keras").is_file()
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 3


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for item in sockets:
        item.bind(("localhost", 0))
    ports = [item.getsockname()[1] for item in sockets]
    for item in sockets:
        item.close()
    return ports


def test_multiworker_cli_run_on_two_processes(manifest, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    processes = []
    for index in range(2):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {**ENV, "TF_CONFIG": json.dumps(config)}
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mmzoo.cli",
                    "train",
                    "--train",
                    str(manifest),
                    "--val",
                    str(manifest),
                    "--strategy",
                    "multiworker",
                    "--epochs",
                    "2",
                    "--image-size",
                    "32",
                    "--max-tokens",
                    "8",
                    "--batch-size",
                    "4",
                    "--out",
                    str(tmp_path / "run"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    try:
        outputs = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    run = tmp_path / "run"
    assert (run / "model.keras").is_file() and (run / "metrics.json").is_file()
    lines = (run / "history.csv").read_text().splitlines()
    assert len(lines) == 3 and "loss" in lines[0]


def test_demo_quick(tmp_path, monkeypatch):
    from mmzoo.apps.demo import BASELINES
    from mmzoo.apps.demo import MODELS
    from mmzoo.apps.demo import run_demo

    monkeypatch.setenv("MMZOO_HOME", str(tmp_path / "home"))
    savedmodels = tmp_path / "savedmodels"
    # Both baselines and two fusions (every fusion trains in test_zoo.py).
    models = [*BASELINES, "concat", "gated"]
    assert set(models) <= set(MODELS)
    status = run_demo(
        out=tmp_path / "demo", quick=True, models=models, savedmodels=savedmodels
    )
    assert status == 0
    summary = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert list(summary["models"]) == models
    for name, row in summary["models"].items():
        # Each row is its run's own figures.
        saved = json.loads((tmp_path / "demo" / name / "metrics.json").read_text())
        assert row["accuracy"] == saved["test"]["accuracy"]
        assert row["parameters"] == saved["parameters"] > 0
        assert (tmp_path / "demo" / name / "confusion_matrix.png").is_file()
    fused = {k: v for k, v in summary["models"].items() if k not in BASELINES}
    assert summary["best_fusion"] == max(fused, key=lambda k: fused[k]["accuracy"])
    assert summary["best_accuracy"] == fused[summary["best_fusion"]]["accuracy"]
    assert isinstance(summary["target_met"], bool)
    table = (tmp_path / "demo" / "results.md").read_text()
    assert "| gated |" in table and "Best fusion:" in table
    export = summary["export"]
    assert (savedmodels / "easy_vqa" / "1" / "saved_model.pb").is_file()
    assert "easy_vqa" in (savedmodels / "models.config").read_text()
    assert export["saved_model"]["max_abs_diff"] <= 1e-5
    assert export["tflite_float32"]["max_abs_diff"] <= 1e-5
    assert export["tflite_int8"]["size_ratio"] < export["tflite_float32"]["size_ratio"]
    assert "| int8 |" in table


def test_mixed_precision_run(manifest, tmp_path):
    policy = keras.config.dtype_policy()
    result = trainer.train(
        train=manifest,
        val=manifest,
        epochs=1,
        mixed_precision=True,
        out=tmp_path / "run",
        verbose=0,
        **TINY,
    )
    # The run computes in float16 and leaves the global policy as it was.
    assert keras.config.dtype_policy().name == policy.name
    run = load_run(tmp_path / "run")
    assert run.model.get_layer("logits").dtype_policy.name == "mixed_float16"
    assert run.model(_features(run))["probabilities"].dtype == "float32"
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    losses = [float(row.split(",")[1]) for row in history[1:]]
    assert len(losses) == 1 and np.isfinite(losses).all()
    assert result["metrics"]["val"]["examples"] == 12
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["mixed_precision"] is True


class _JitProbe(keras.callbacks.Callback):
    """Records whether the compiled train step really uses XLA."""

    def on_train_begin(self, logs=None):
        self.jit_compile = self.model.jit_compile


@pytest.mark.parametrize("xla", [True, False])
def test_xla_run(manifest, tmp_path, xla):
    # text_only keeps the XLA compilation short on CPU.
    probe = _JitProbe()
    trainer.train(
        train=manifest,
        epochs=1,
        xla=xla,
        fusion="text_only",
        out=tmp_path / "run",
        verbose=0,
        callbacks=[probe],
        **TINY,
    )
    assert probe.jit_compile is xla
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 2 and float(history[1].split(",")[1]) > 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["xla"] is xla


def test_export_command(tmp_path, tmp_path_factory, capsys):
    # A trained gated run (`shared_runs.gated_run`), which the export reads.
    run = str(shared_runs.gated_run(tmp_path_factory)[0])
    # In this process (`mmzoo.cli.main`), three commands: each one run by
    # the entry point would import TensorFlow again.
    from mmzoo import cli

    models = tmp_path / "savedmodels" / "vqa"
    status = cli.main(
        [
            "export",
            run,
            "--saved-model",
            str(models),
            "--tflite",
            str(tmp_path / "app" / "vqa.tflite"),
            "--quantize",
            "dynamic",
        ]
    )
    assert status == 0
    assert (models / "1" / "saved_model.pb").is_file()
    assert "vqa" in (tmp_path / "savedmodels" / "models.config").read_text()
    for name in (
        "vqa.tflite",
        "labels.txt",
        "vocabulary.txt",
        "pure_python_tokenizer.py",
    ):
        assert (tmp_path / "app" / name).is_file(), name
    assert "TFLite (dynamic) written" in capsys.readouterr().out
    assert cli.main(["export", run, "--saved-model", str(models)]) == 0
    assert (models / "2").is_dir()
    assert cli.main(["export", run]) == 2
    assert "--saved-model" in capsys.readouterr().err
