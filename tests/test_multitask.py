"""Multi-task heads: one model, several outputs over the same fused features.

`build_model(heads=...)` in plain Keras (weighted loss, fit, saving,
rebuilding, mixed precision, every fused task as a head, bad specs), the
manifests' label columns (targets per head, bad values counted), and one
run trained from the README's configuration example, then evaluated,
predicted, exported as a SavedModel served by a TensorFlow-only process
and as a TFLite file in LiteRT, all compared with Keras or a direct
computation.
"""

import contextlib
import csv
import io
import json
import os
import re

import data_fixtures
import keras
import numpy as np
import pytest
import yaml
from harness import TINY
from harness import assert_saving_round_trip
from harness import probe_saved_model
from harness import tiny_batch

import mmzoo
from mmzoo import cli
from mmzoo.data import make_dataset
from mmzoo.data.images import load_image
from mmzoo.data.manifest import ManifestError
from mmzoo.data.sources import read_manifest
from mmzoo.metrics import classification_metrics
from mmzoo.metrics import regression_metrics
from mmzoo.runs import load_run
from mmzoo.runs import predict
from mmzoo.tasks import MultiTask
from mmzoo.training import trainer
from mmzoo.training.evaluation import evaluate

SIZES = {k: v for k, v in TINY.items() if k != "num_classes"}
HEADS = {
    "shape": {"task": "multiclass", "num_classes": 3},
    "round": {"task": "binary", "weight": 0.5},
}
README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def vqa_targets(labels):
    """A shape class and whether it is round, per example."""
    return {"shape": labels, "round": (labels == 0)[:, None].astype("float32")}


# === The model in plain Keras ===


def test_compiled_loss_is_the_weighted_sum_of_the_heads_losses():
    model = mmzoo.build_model(
        heads={**HEADS, "size": {"task": "regression", "weight": 0.25}}, **SIZES
    )
    x, labels = tiny_batch(8)
    y = {**vqa_targets(labels), "size": np.linspace(0, 1, 8)[:, None]}
    outputs = model(x, training=False)
    by_hand = {
        name: float(np.mean(keras.losses.get(loss)(y[name], outputs[name])))
        for name, loss in (
            ("shape", "sparse_categorical_crossentropy"),
            ("round", "binary_crossentropy"),
            ("size", "mean_squared_error"),
        )
    }
    got = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    weighted = by_hand["shape"] + 0.5 * by_hand["round"] + 0.25 * by_hand["size"]
    assert got["loss"] == pytest.approx(weighted, rel=1e-5)
    for name, value in by_hand.items():
        assert got[f"{name}_loss"] == pytest.approx(value, rel=1e-5)
    # The weights are the spec's: with 0 a head adds nothing to the loss.
    spec = model.task.spec
    spec["round"]["weight"] = spec["size"]["weight"] = 0.0
    model.compile(**MultiTask(spec).compile_arguments())
    got = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert got["loss"] == pytest.approx(by_hand["shape"], rel=1e-5)
    assert got["round_loss"] == pytest.approx(by_hand["round"], rel=1e-5)


def test_heads_fit_in_plain_keras_save_and_rebuild(tmp_path):
    model = mmzoo.build_model(fusion="bilinear", heads=HEADS, **SIZES)
    assert isinstance(model, mmzoo.MultimodalModel)
    assert isinstance(model.task, MultiTask) and model.task.output_names == (
        "shape",
        "round",
    )
    x, labels = tiny_batch(8)
    y = vqa_targets(labels)
    outputs = model.predict(x, verbose=0)
    assert sorted(outputs) == ["round", "shape"]
    assert outputs["shape"].shape == (8, 3) and outputs["round"].shape == (8, 1)
    np.testing.assert_allclose(outputs["shape"].sum(-1), 1.0, rtol=1e-5)  # softmax
    assert ((outputs["round"] > 0) & (outputs["round"] < 1)).all()  # sigmoid
    # Each head has its own hidden layers over the one fused layer.
    names = {layer.name for layer in model.layers}
    assert {"fusion", "shape_head_dense_0", "round_head_dense_0"} <= names
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert {"shape_sparse_categorical_accuracy", "round_binary_accuracy"} <= set(
        history
    )
    restored = assert_saving_round_trip(model, x, tmp_path)
    assert restored.task == model.task
    assert restored.build_arguments["heads"]["round"] == {
        "task": "binary",
        "num_classes": None,
        "weight": 0.5,
        "column": "round",
    }
    bigger = mmzoo.build_model(restored, image_size=40)
    assert bigger.input["image"].shape[1] == 40
    assert sorted(bigger.output) == ["round", "shape"]


def test_every_fused_task_is_a_head_with_float32_outputs_in_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    heads = {
        "a": {"task": "multiclass", "num_classes": 3},
        "b": {"task": "multilabel", "num_classes": 3},
        "c": {"task": "binary"},
        "d": {"task": "regression", "num_classes": 2},
    }
    model = mmzoo.build_model(heads=heads, **SIZES)
    x, labels = tiny_batch(4)
    outputs = model(x)
    assert {name: tuple(value.shape) for name, value in outputs.items()} == {
        "a": (4, 3),
        "b": (4, 3),
        "c": (4, 1),
        "d": (4, 2),
    }
    assert all(value.dtype == "float32" for value in outputs.values())
    assert model.get_layer("a_head_dense_0").compute_dtype == "float16"
    compiled = model.task.compile_arguments()
    assert compiled["loss"] == {
        "a": "sparse_categorical_crossentropy",
        "b": "binary_crossentropy",
        "c": "binary_crossentropy",
        "d": "mean_squared_error",
    }


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"heads": ["shape"]}, r"`heads` must be a non-empty mapping"),
        ({"heads": {}}, r"`heads` must be a non-empty mapping"),
        ({"heads": {"shape": {"tsk": "binary"}}}, r"unknown key 'tsk'.*'task'"),
        (
            {"heads": {"shape": {"task": "binay"}}},
            r"`heads\['shape'\]\['task'\]` must be one of .*Did you mean 'binary'",
        ),
        ({"heads": {"shape": {"task": "contrastive"}}}, r"\['task'\]` must be one of"),
        ({"heads": {"shape": {"weight": -1}}}, r"`heads\['shape'\]\['weight'\]`"),
        ({"heads": {"shape": {"weight": 0}}}, r"needs a weight above 0"),
        ({"heads": {"2nd": {}}}, r"names a head.*'2nd'"),
        ({"heads": {"modality_weights": {}}}, r"'modality_weights' is taken"),
        ({"heads": {"shape_top_k_labels": {}}}, r"is taken"),
        (
            {"heads": {"round": {"task": "binary", "num_classes": 3}}},
            r"`heads\['round'\]`: .*num_classes",
        ),
        ({"heads": {"shape": {}}}, r"`heads\['shape'\]`: .*`num_classes`"),
        ({"heads": HEADS, "task": "binary"}, r"leave `task` unset.*task='binary'"),
        ({"heads": HEADS, "num_classes": 3}, r"not `num_classes`.*num_classes=3"),
        ({"heads": HEADS, "fusion": "late"}, r"fusion='late'"),
        ({"heads": HEADS, "unimodal_heads": 0.5}, r"`unimodal_heads` and `balance`"),
        ({"heads": HEADS, "balance": "ogm"}, r"`unimodal_heads` and `balance`"),
    ],
)
def test_bad_head_specs_are_value_errors_naming_the_argument(arguments, message):
    with pytest.raises(ValueError, match=message):
        mmzoo.build_model(**{**SIZES, **arguments})


# === Manifests with several label columns ===

FIELDS = ["image", "text", "label", "round", "size"]


def write_rows(folder, count=16, fmt="csv", damage=True):
    """Rows of a shape, whether it is round and a size; with `damage`,
    line 3 lacks `round`, line 5 has size 'big' and line 7 an unknown-free
    but empty label (missing)."""
    folder = os.fspath(folder)
    rows = []
    for index in range(count):
        name = f"images/img_{index}.png"
        data_fixtures.write_image(os.path.join(folder, name), 20, 28, seed=index)
        shape = data_fixtures.LABELS[index % 3]
        rows.append(
            {
                "image": name,
                "text": f"is this a {shape} {index}",
                "label": shape,
                "round": "yes" if shape == "circle" else "no",
                "size": f"{index / count:.4f}",
            }
        )
    if damage:
        rows[1]["round"] = ""
        rows[3]["size"] = "big"
        rows[5]["label"] = ""
    path = os.path.join(folder, f"rows.{fmt}")
    with open(path, "w", newline="", encoding="utf-8") as file:
        if fmt == "csv":
            writer = csv.DictWriter(file, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        else:
            for row in rows:
                row = {k: v for k, v in row.items() if v != ""}
                if "size" in row and row["size"] != "big":
                    row["size"] = float(row["size"])  # a JSON number
                file.write(json.dumps(row) + "\n")
    return path, rows


THREE_HEADS = {
    "shape": {"task": "multiclass", "column": "label"},
    "round": {"task": "binary", "weight": 0.5},
    "size": {"task": "regression", "weight": 0.25},
}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_targets_per_head_from_a_manifest_with_bad_values_counted(fmt, tmp_path):
    path, rows = write_rows(tmp_path, fmt=fmt)
    task = MultiTask(THREE_HEADS)
    dataset, report, labels = make_dataset(
        path,
        None,
        32,
        batch_size=64,
        training=False,
        task=task,
        max_bad_fraction=0.2,
        return_report=True,
    )
    assert report.counts == {"missing_column": 2, "invalid_label": 1}
    first = 2 if fmt == "csv" else 1  # the line of row 0 (after a header)
    assert [(p.line - first, p.reason) for p in report.problems] == [
        (1, "missing_column"),
        (3, "invalid_label"),
        (5, "missing_column"),
    ]
    assert "`round`" in str(report.problems[0]) and "'big'" in str(report.problems[1])
    assert labels["shape"].names == list(data_fixtures.LABELS)
    assert labels["round"].names == ["no", "yes"] and labels["size"] is None
    good = [row for index, row in enumerate(rows) if index not in (1, 3, 5)]
    (_, targets), *rest = list(dataset)
    assert not rest
    np.testing.assert_array_equal(
        targets["shape"], [data_fixtures.LABELS.index(r["label"]) for r in good]
    )
    np.testing.assert_array_equal(
        targets["round"][:, 0], [r["round"] == "yes" for r in good]
    )
    np.testing.assert_allclose(
        targets["size"][:, 0], [float(r["size"]) for r in good], rtol=1e-6
    )


def test_unknown_head_labels_follow_the_unknown_labels_policy(tmp_path):
    path, _ = write_rows(tmp_path, damage=False)
    task = MultiTask(THREE_HEADS)
    _, _, labels = make_dataset(path, None, 32, task=task, return_report=True)
    labels["round"] = mmzoo.data.LabelVocabulary(["no", "yes_it_is"])
    with pytest.raises(mmzoo.data.DataError, match=r"'yes'.*head 'round'"):
        make_dataset(path, None, 32, training=False, labels=labels, task=task)
    _, report, _ = make_dataset(
        path,
        None,
        32,
        training=False,
        labels=labels,
        task=task,
        unknown_labels="skip",
        max_bad_fraction=0.5,
        return_report=True,
    )
    assert report.counts == {"unknown_label": 6}  # the circles


def test_a_missing_head_column_and_tfrecords_are_one_clear_error(tmp_path):
    path, _ = write_rows(tmp_path, damage=False)
    with pytest.raises(ManifestError, match=r"lacks the label column\(s\) \['kind'\]"):
        make_dataset(
            path,
            None,
            32,
            task=MultiTask({"shape": {"column": "label"}, "kind": {"task": "binary"}}),
        )
    from mmzoo.data.tfrecord import write_tfrecords

    write_tfrecords(path, tmp_path / "shards")
    with pytest.raises(ManifestError, match=r"one label column, `label`.*'round'"):
        read_manifest(tmp_path / "shards", label_columns=["label", "round"])
    # The `label` column itself travels in the records.
    shards = read_manifest(tmp_path / "shards", label_columns=["label"])
    assert shards.label_columns["label"] == shards.labels


# === A run trained from the README's example ===


def readme_config():
    """The YAML block of the README's "Multi-task heads" section."""
    text = open(README, encoding="utf-8").read()
    section = text.split("## Multi-task heads", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    return yaml.safe_load(block)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multitask")
    train, rows = write_rows(folder / "data")
    clean, clean_rows = write_rows(folder / "clean", damage=False)
    config = readme_config()
    assert set(config["heads"]) == {"shape", "round", "size"}
    config.update(
        train=train,
        val=clean,
        test=clean,
        out=str(folder / "run"),
        image_size=32,
        max_tokens=8,
        batch_size=8,
        epochs=2,
        max_bad_fraction=0.2,
        model={"image_filters": [8, 16], "head_units": [16], "fusion_units": 16},
    )
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = trainer.train(path, verbose=0)
    return {
        "result": result,
        "run": load_run(folder / "run"),
        "clean": clean,
        "rows": clean_rows,
        "folder": folder,
    }


def test_the_run_folder_holds_a_vocabulary_and_metrics_per_head(trained):
    run, result = trained["run"], trained["result"]
    folder = run.directory
    assert result["skipped_rows"] == 3
    assert not os.path.exists(os.path.join(folder, "labels.txt"))
    assert sorted(os.listdir(os.path.join(folder, "labels"))) == [
        "round.txt",
        "shape.txt",
    ]
    assert run.labels["shape"].names == list(data_fixtures.LABELS)
    assert run.labels["round"].names == ["no", "yes"] and run.labels["size"] is None
    assert isinstance(run.task, MultiTask)
    assert [head.weight for head in run.task.heads] == [1.0, 0.5, 0.25]
    saved = json.loads(open(os.path.join(folder, "metrics.json")).read())
    assert sorted(saved["test"]["heads"]) == ["round", "shape", "size"]
    assert saved["test"]["examples"] == 16
    assert {"accuracy", "macro_f1", "confusion_matrix"} <= set(
        saved["test"]["heads"]["round"]
    )
    assert {"mae", "rmse", "r2"} <= set(saved["test"]["heads"]["size"])
    for name in ("confusion_matrix_shape.png", "confusion_matrix_round.png"):
        assert os.path.isfile(os.path.join(folder, name))
    header = open(os.path.join(folder, "history.csv")).readline().strip().split(",")
    assert {"shape_loss", "round_loss", "size_loss", "val_round_loss"} <= set(header)


def _direct_outputs(run, rows, folder):
    images = np.stack(
        [
            load_image(open(os.path.join(folder, r["image"]), "rb").read(), 32)
            .numpy()
            .astype("float32")
            for r in rows
        ]
    )
    tokens = run.tokenizer([r["text"] for r in rows]).numpy()
    return {"image": images, "tokens": tokens}, run.model.predict(
        {"image": images, "tokens": tokens}, verbose=0
    )


def test_evaluate_reports_each_heads_metrics_as_a_direct_computation(trained):
    run, rows = trained["run"], trained["rows"]
    metrics, path = evaluate(run, trained["clean"])
    assert json.loads(open(path).read())["heads"] == metrics["heads"]
    # What training wrote for the test split, evaluate gives again.
    tested = trained["result"]["metrics"]["test"]
    assert metrics["heads"] == tested["heads"]
    _, outputs = _direct_outputs(run, rows, os.path.dirname(trained["clean"]))
    shapes = np.array([run.labels["shape"].index(r["label"]) for r in rows])
    expected = classification_metrics(
        shapes, outputs["shape"], run.labels["shape"].names
    )
    for key in ("accuracy", "macro_f1", "weighted_f1"):
        assert metrics["heads"]["shape"][key] == pytest.approx(expected[key])
    assert metrics["heads"]["shape"]["confusion_matrix"] == expected["confusion_matrix"]
    assert metrics["heads"]["shape"]["accuracy"] == pytest.approx(
        np.mean(outputs["shape"].argmax(-1) == shapes)
    )
    round_truth = np.array([r["round"] == "yes" for r in rows], float)
    assert metrics["heads"]["round"]["accuracy"] == pytest.approx(
        np.mean((outputs["round"][:, 0] >= 0.5) == round_truth)
    )
    sizes = np.array([[float(r["size"])] for r in rows])
    expected = regression_metrics(sizes, outputs["size"])
    for key in ("mae", "mse", "rmse", "r2"):
        assert metrics["heads"]["size"][key] == pytest.approx(expected[key], rel=1e-5)
    report = mmzoo.metrics.format_metrics(metrics)
    assert report.startswith("Examples: 16")
    for head in ("shape", "round", "size"):
        assert f"Head {head}:" in report


def _cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main([str(a) for a in argv])
        except SystemExit as exit:
            status = exit.code
    return status, out.getvalue(), err.getvalue()


def test_predict_answers_every_head(trained):
    run, rows = trained["run"], trained["rows"]
    image = os.path.join(os.path.dirname(trained["clean"]), rows[0]["image"])
    answer = predict(run, image, rows[0]["text"], top_k=2)
    _, outputs = _direct_outputs(run, rows[:1], os.path.dirname(trained["clean"]))
    shape = answer["heads"]["shape"]
    assert shape["labels"][0] == run.labels["shape"].names[outputs["shape"][0].argmax()]
    assert shape["scores"][0] == pytest.approx(outputs["shape"][0].max(), rel=1e-5)
    assert set(answer["heads"]["round"]["labels"]) == {"no", "yes"}
    assert answer["heads"]["size"]["predictions"] == pytest.approx(
        outputs["size"][0].tolist(), rel=1e-4
    )
    assert sum(answer["modality_weights"].values()) == pytest.approx(1.0, abs=1e-3)
    status, out, _ = _cli(
        "predict", run.directory, "--image", image, "--text", rows[0]["text"]
    )
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "shape:" and "round:" in lines and "size:" in lines
    assert lines[-1].startswith("modality weights:")
    status, out, _ = _cli("evaluate", run.directory, "--data", trained["clean"])
    assert status == 0 and "Head round:" in out


def test_the_saved_model_serves_every_head_from_a_tensorflow_only_process(
    trained, tmp_path
):
    from mmzoo.data.images import prepare_image
    from mmzoo.export import export_saved_model

    run, rows = trained["run"], trained["rows"]
    folder = os.path.dirname(trained["clean"])
    images = [os.path.join(folder, r["image"]) for r in rows[:4]]
    texts = [r["text"] for r in rows[:4]]
    version = export_saved_model(run, base=tmp_path / "models", name="shapes")
    served, audit = probe_saved_model(version, images, texts, tmp_path / "serve")
    assert audit["unregistered"] == [] and audit["importable"] == []
    features = {
        "image": np.concatenate([prepare_image(p, 32, run.resize) for p in images]),
        "tokens": run.tokenizer(texts).numpy(),
    }
    expected = run.explained_model()(features, training=False)
    assert sorted(served) == sorted(
        [
            "modality_weights",
            "round",
            "round_top_k_labels",
            "round_top_k_scores",
            "shape",
            "shape_top_k_labels",
            "shape_top_k_scores",
            "size",
        ]
    )
    for name, value in expected.items():
        assert np.max(np.abs(served[name] - np.asarray(value))) <= 1e-5, name
    best = np.asarray(expected["shape"]).argmax(-1)
    names = np.array(run.labels["shape"].names)
    np.testing.assert_array_equal(served["shape_top_k_labels"][:, 0], names[best])
    assert served["round_top_k_labels"].shape == (4, 2)
    card = json.loads(open(os.path.join(version, "model_card.json")).read())
    assert card["task"] == "multitask"
    assert card["heads"]["round"] == {
        "task": "binary",
        "weight": 0.5,
        "labels": ["no", "yes"],
        "labels_file": "assets.extra/labels/round.txt",
    }
    assert card["heads"]["size"]["labels"] is None
    assert card["warmup_records"] == 3
    extra = os.path.join(version, "assets.extra")
    assert open(os.path.join(extra, "labels", "shape.txt")).read().split() == list(
        data_fixtures.LABELS
    )


def test_tflite_has_an_output_per_head_equal_to_keras_in_litert(trained, tmp_path):
    from mmzoo.export import tflite

    run = trained["run"]
    report = tflite.export_tflite(run, tmp_path / "app" / "shapes.tflite")
    outputs = {
        entry["name"] for entry in tflite.signature_details(report["path"])["outputs"]
    }
    assert outputs == {"shape", "round", "size", "modality_weights"}
    data = make_dataset(
        trained["clean"],
        run.tokenizer,
        run.image_size,
        training=False,
        labels=run.labels,
        task=run.task,
    )
    result = tflite.parity(run, report["path"], data)
    assert result["examples"] == 16
    assert max(result["max_abs_diff_by_output"].values()) <= 1e-5, result
    assert result["top1_agreement"] == 1.0
    assert result["agreement_by_head"] == {"shape": 1.0, "round": 1.0, "size": None}
    card = json.loads((tmp_path / "app" / "shapes.json").read_text())
    assert card["heads"]["round"]["labels"] == "labels/round.txt"
    assert (tmp_path / "app" / "labels" / "shape.txt").is_file()


@pytest.mark.parametrize(
    "change, key",
    [
        ({"heads": {"shape": {"tsk": "binary"}}}, "tsk"),
        ({"heads": {"shape": {"num_classes": 3}}}, "num_classes"),
        ({"task": "binary"}, "task"),
        ({"fusion": "late"}, "late"),
        ({"unimodal_heads": 0.5}, "unimodal_heads"),
        ({"baselines": True}, "baselines"),
        ({"heads": "shape"}, "heads"),
    ],
)
def test_run_config_mistakes_with_heads_are_one_line_and_exit_2(change, key, tmp_path):
    path, _ = write_rows(tmp_path / "data", count=3, damage=False)
    config = {"train": path, "out": str(tmp_path / "run"), "heads": THREE_HEADS}
    config.update(change)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    status, _, error = _cli("train", "--config", tmp_path / "run.yaml")
    assert status == 2 and error.count("\n") == 1 and error.startswith("error: ")
    assert key in error, error
    assert not (tmp_path / "run").exists()


def test_a_head_column_the_manifest_lacks_stops_the_run_in_one_line(tmp_path):
    path, _ = write_rows(tmp_path / "data", count=3, damage=False)
    heads = {"shape": {"column": "label"}, "kind": {"task": "binary"}}
    config = {"train": path, "out": str(tmp_path / "run"), "heads": heads}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    status, _, error = _cli("train", "--config", tmp_path / "run.yaml")
    # (Log lines of the run's start may come first.)
    last = error.strip().splitlines()[-1]
    assert status == 2 and "Traceback" not in error and last.startswith("error: ")
    assert "['kind']" in last and "lacks the label column" in last
    assert not (tmp_path / "run").exists()
