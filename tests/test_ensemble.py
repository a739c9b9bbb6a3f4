"""Ensembles of trained runs: the combiners against hand computations, the
out-of-fold validation figures, members that read the data their own way,
the run folder, both exports against Keras, and the command line.

Three members that differ in image size, resize mode, fusion, text tower and
vocabulary are made once (module fixture): two trained by `mmzoo.training.train`,
the third built (an untrained model in a run folder, as are the other tasks'
members: a combiner does not care how good a member is, and training costs
seconds each). Every manifest read costs about a second per member, so the
tests share the members' outputs where they can.
"""

import contextlib
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap

import data_fixtures
import keras
import numpy as np
import pytest
import yaml
from harness import ENV
from harness import TINY
from harness import probe_saved_model
from harness import run_layer_test

import mmzoo
from mmzoo import cli
from mmzoo import ensembles
from mmzoo.data.check import DataError
from mmzoo.data.manifest import LabelVocabulary
from mmzoo.data.sources import read_manifest
from mmzoo.data.tokenizers import WordTokenizer
from mmzoo.ensembles import EnsembleCombiner
from mmzoo.export import read_warmup_requests
from mmzoo.export import tflite
from mmzoo.runs import load_run
from mmzoo.training import train

MEMBERS = (
    {"image_size": 32, "fusion": "concat", "text_tower": "bow", "max_tokens": 8},
    {
        "image_size": 36,
        "fusion": "gated",
        "text_tower": "cnn",
        "resize": "pad",
        "max_tokens": 6,
    },
    {
        # Member 0's image preparation: the exported graph decodes once for both.
        "image_size": 32,
        "fusion": "late",
        "text_tower": "bow",
        "max_tokens": 10,
        "vocab_size": 12,
    },
)
TEXTS = ["is this a circle", "a square?", "", "Ünïcödé triangle 3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble_data")
    return {
        "train": data_fixtures.clean_manifest(root / "train", rows=12),
        "val": data_fixtures.clean_manifest(root / "val", rows=15, seed=50),
        "test": data_fixtures.clean_manifest(root / "test", rows=9, seed=80),
        "root": root,
    }


@pytest.fixture(scope="module")
def folders(data, tmp_path_factory):
    """Three member runs, each its own kind; the first two trained."""
    root = tmp_path_factory.mktemp("members")
    paths = []
    for index, settings in enumerate(MEMBERS[:2]):
        out = root / f"member_{index}"
        train(
            train=data["train"],
            epochs=1,
            batch_size=4,
            seed=index,
            out=out,
            model={"image_filters": [4, 8], "head_units": [8], "fusion_units": 8},
            verbose=0,
            **settings,
        )
        paths.append(str(out))
    third = MEMBERS[2]
    _built_run(
        root / "member_2",
        "multiclass",
        data["train"],
        third["image_size"],
        third["fusion"],
        seed=2,
        max_tokens=third["max_tokens"],
        max_vocab_size=third["vocab_size"],
    )
    return [*paths, str(root / "member_2")]


@pytest.fixture(scope="module")
def members(folders):
    return [load_run(folder) for folder in folders]


@pytest.fixture(scope="module")
def val_outputs(members, data):
    return ensembles.member_outputs(members, data["val"])


@pytest.fixture(scope="module")
def weighted(members, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("weighted") / "ensemble"
    ensembles.ensemble(
        members, "weighted", val=data["val"], test=data["test"], out=out, folds=3
    )
    return load_run(out)


def _images(folder):
    write = data_fixtures.write_image
    return [
        write(str(folder / "a.png"), 20, 28, "png", seed=1),
        write(str(folder / "b.jpg"), 45, 31, "jpg", seed=2),
        write(str(folder / "c.png"), 33, 17, "png", seed=3, mode="RGBA"),
        write(str(folder / "d.jpg"), 32, 32, "jpg", seed=4),
    ]


# === The combiners ===


def test_members_differ_in_what_they_read(members):
    sizes = [member.image_size for member in members]
    assert sizes == [32, 36, 32]
    assert [member.resize for member in members] == ["stretch", "pad", "stretch"]
    lengths = [member.tokenizer.max_tokens for member in members]
    assert lengths == [8, 6, 10]
    assert members[2].tokenizer.vocab_size < members[0].tokenizer.vocab_size


def test_average_is_the_mean_of_the_members_outputs(val_outputs, weighted):
    targets, outputs, report = val_outputs
    assert outputs.shape == (15, 3, 3) and report.num_bad == 0
    combiner, fit = ensembles.fit_combiner("average", "multiclass", outputs, targets)
    assert fit == {}
    np.testing.assert_allclose(
        np.asarray(combiner(outputs)), outputs.mean(axis=1), atol=1e-6
    )
    # One model takes every member's own inputs.
    assert sorted(weighted.model.input) == sorted(
        f"member_{i}_{name}" for i in range(3) for name in ("image", "tokens")
    )
    assert weighted.model.input["member_1_tokens"].shape == (None, 6)


def test_vote_against_a_hand_count_with_ties():
    combiner = EnsembleCombiner("vote", "multiclass", num_members=4, width=3)
    outputs = np.array(
        [
            # Two votes for class 0, two for class 2: the average decides (2).
            [[0.5, 0.2, 0.3], [0.4, 0.3, 0.3], [0.1, 0.1, 0.8], [0.2, 0.1, 0.7]],
            # Three votes for class 1, one for class 0 (which the average
            # prefers).
            [[0.3, 0.4, 0.3], [0.3, 0.4, 0.3], [0.3, 0.4, 0.3], [1.0, 0.0, 0.0]],
        ],
        "float32",
    )
    result = np.asarray(combiner(outputs))
    shares = np.array([[0.5, 0.0, 0.5], [0.25, 0.75, 0.0]])
    average = outputs.mean(axis=1)
    expected = (1 - ensembles.TIE_BREAK) * shares + ensembles.TIE_BREAK * average
    np.testing.assert_allclose(result, expected, atol=1e-7)
    assert result.argmax(-1).tolist() == [2, 1]
    assert average.argmax(-1).tolist() == [2, 0]
    np.testing.assert_allclose(result.sum(-1), 1.0, atol=1e-6)

    # Per label at 0.5; a 1-1 tie goes to the side of the average.
    labels = EnsembleCombiner("vote", "multilabel", num_members=2, width=2)
    outputs = np.array([[[0.9, 0.6], [0.2, 0.3]]], "float32")
    result = np.asarray(labels(outputs))[0]
    assert result[0] > 0.5 > result[1]  # averages 0.55 and 0.45
    np.testing.assert_allclose(result, 0.5 * 0.999 + 0.001 * np.array([0.55, 0.45]))
    binary = EnsembleCombiner("vote", "binary", num_members=3, width=1)
    outputs = np.array([[[0.6], [0.7], [0.01]], [[0.4], [0.45], [0.99]]], "float32")
    assert (np.asarray(binary(outputs))[:, 0] > 0.5).tolist() == [True, False]


def test_weighted_weights_are_a_distribution_no_worse_than_the_average(
    val_outputs, weighted
):
    targets, outputs, _ = val_outputs
    weights, fit = ensembles.fit_weights(outputs, targets, "multiclass")
    assert min(weights) >= 0 and sum(weights) == pytest.approx(1.0)
    average = ensembles.loss("multiclass", outputs.mean(axis=1), targets)
    mixed = ensembles.loss(
        "multiclass", np.einsum("bmw,m->bw", outputs, weights), targets
    )
    assert mixed <= average + 1e-12
    assert fit == {"loss": pytest.approx(mixed), "average_loss": pytest.approx(average)}
    # The ensemble fitted the same weights on the same rows, and reports them.
    assert weighted.member_weights == pytest.approx(weights, abs=1e-6)
    assert weighted.report["fit"]["loss"] <= weighted.report["fit"]["average_loss"]
    assert weighted.config["member_weights"] == weighted.member_weights

    # A member that knows the answers takes all the weight from a noisy one.
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 60)
    good = np.eye(3)[truth] * 0.9 + 0.05
    noise = rng.dirichlet(np.ones(3), 60)
    weights, _ = ensembles.fit_weights(np.stack([noise, good], 1), truth, "multiclass")
    assert weights[1] > 0.99


def test_stacking_is_logistic_regression_in_a_dense_layer(val_outputs):
    from sklearn.linear_model import LogisticRegression

    targets, outputs, _ = val_outputs
    combiner, _ = ensembles.fit_combiner("stacking", "multiclass", outputs, targets)
    features = outputs.reshape(len(outputs), -1).astype(np.float64)
    reference = LogisticRegression(C=1.0, max_iter=2000, random_state=0)
    reference.fit(features, targets)
    expected = np.zeros((len(outputs), 3))
    expected[:, reference.classes_] = reference.predict_proba(features)
    np.testing.assert_allclose(np.asarray(combiner(outputs)), expected, atol=1e-5)
    config = combiner.get_config()
    assert config["method"] == "stacking" and config["num_members"] == 3


def test_vote_of_real_members_is_the_hand_count(val_outputs):
    targets, outputs, _ = val_outputs
    combiner, _ = ensembles.fit_combiner("vote", "multiclass", outputs, targets)
    votes = np.eye(3)[outputs.argmax(-1)].mean(axis=1)
    expected = (1 - ensembles.TIE_BREAK) * votes + ensembles.TIE_BREAK * outputs.mean(1)
    np.testing.assert_allclose(np.asarray(combiner(outputs)), expected, atol=1e-6)


def test_fitted_methods_are_scored_out_of_fold():
    # Members whose outputs are noise: a meta-learner fits its own rows, but
    # cannot predict rows it has not seen.
    rng = np.random.default_rng(1)
    outputs = rng.dirichlet(np.ones(3), (40, 4)).astype("float32")
    truth = rng.integers(0, 3, 40)
    combiner, _ = ensembles.fit_combiner("stacking", "multiclass", outputs, truth)
    in_sample = np.mean(np.asarray(combiner(outputs)).argmax(-1) == truth)
    combined, fold, details = ensembles.out_of_fold(
        "stacking", "multiclass", outputs, truth, folds=5
    )
    held_out = np.mean(combined.argmax(-1) == truth)
    assert in_sample > held_out + 0.15, (in_sample, held_out)
    assert details["stratified"] and sorted(set(fold)) == [0, 1, 2, 3, 4]
    # Each fold's rows come from a combiner fitted on the other folds only.
    for number in range(5):
        rows = fold == number
        refit, _ = ensembles.fit_combiner(
            "stacking", "multiclass", outputs[~rows], truth[~rows]
        )
        np.testing.assert_allclose(
            combined[rows], np.asarray(refit(outputs[rows])), atol=1e-6
        )
        # Stratified: every class in every fold.
        assert set(truth[rows]) == {0, 1, 2}


def test_the_report_holds_out_of_fold_members_agreement_and_test(
    weighted, val_outputs, members
):
    report = weighted.report
    targets, outputs, _ = val_outputs
    validation = report["validation"]
    assert validation["out_of_fold"] and validation["folds"] == 3
    fold = np.asarray(validation["fold"])
    combined = np.zeros((15, 3), "float32")
    for number in range(3):
        rows = fold == number
        refit, _ = ensembles.fit_combiner(
            "weighted", "multiclass", outputs[~rows], targets[~rows]
        )
        combined[rows] = np.asarray(refit(outputs[rows]))
        assert validation["fold_weights"][number] == refit.member_weights
    accuracy = np.mean(combined.argmax(-1) == targets)
    assert report["ensemble"]["val"]["accuracy"] == pytest.approx(accuracy)
    assert report["ensemble"]["val"]["log_loss"] == pytest.approx(
        ensembles.loss("multiclass", combined, targets), rel=1e-5
    )
    assert "val_in_sample" in report["ensemble"]
    assert report["ensemble"]["test"]["examples"] == 9
    for index, member in enumerate(report["members"]):
        mine = np.mean(outputs[:, index].argmax(-1) == targets)
        assert member["val"]["accuracy"] == pytest.approx(mine)
        assert member["image_size"] == members[index].image_size
        assert member["test"]["examples"] == 9
    agreement = np.asarray(report["agreement"]["val"])
    answers = outputs.argmax(-1)
    assert agreement[0, 1] == pytest.approx(np.mean(answers[:, 0] == answers[:, 1]))
    assert agreement[1, 2] == agreement[2, 1] and np.all(np.diag(agreement) == 1)
    with open(os.path.join(weighted.directory, "report.md")) as file:
        text = file.read()
    assert "member 1 (small_cnn + cnn, gated, 36 px pad)" in text
    assert "**ensemble (weighted)**" in text and "Weights: member 0" in text


def test_the_folder_is_a_self_contained_run(weighted, members, data, tmp_path):
    folder = tmp_path / "moved"
    shutil.copytree(weighted.directory, folder)
    for name in ("config.yaml", "labels.txt", "combiner.keras", "metrics.json"):
        assert (folder / name).is_file(), name
    for index in range(3):
        for name in ("config.yaml", "labels.txt", "best.keras", "tokenizer"):
            assert (folder / "members" / str(index) / name).exists(), (index, name)
    loaded = load_run(folder)  # the copy, not the members' own folders
    assert isinstance(loaded, mmzoo.Ensemble) and loaded.task.name == "multiclass"
    assert [m.image_size for m in loaded.members] == [32, 36, 32]
    assert loaded.labels.names == members[0].labels.names
    status, stdout, stderr = _cli("evaluate", folder, "--data", data["test"])
    assert status == 0 and "Accuracy:" in stdout, stderr
    metrics = json.loads((folder / "evaluation_manifest.json").read_text())
    assert metrics["accuracy"] == weighted.metrics["test"]["accuracy"]
    assert metrics["confusion_matrix"] == weighted.metrics["test"]["confusion_matrix"]
    assert metrics["skipped_rows"] == 0
    image = read_manifest(data["test"]).images[0]
    answer = loaded.predict(image, "is this a circle", top_k=2)
    assert len(answer["labels"]) == 2 and len(answer["members"]) == 3
    features = loaded.member_features([image], ["is this a circle"])
    probabilities = loaded.model.predict_on_batch(features)["probabilities"][0]
    assert answer["scores"][0] == pytest.approx(float(probabilities.max()))


def test_members_skip_the_same_rows_and_stay_aligned(
    members, data, tmp_path, monkeypatch
):
    val = read_manifest(data["val"])
    lines = open(data["val"]).read().splitlines()
    folder = os.path.dirname(data["val"])
    bad = data_fixtures.truncate(
        data_fixtures.write_image(os.path.join(folder, "images", "cut.png"), 30, 30)
    )
    lines[3:3] = [f"{bad},cut short,circle", "images/missing.png,no file,square"]
    manifest = os.path.join(folder, "with_bad_rows.csv")
    with open(manifest, "w") as file:
        file.write("\n".join(lines) + "\n")
    targets, stacked, report = ensembles.member_outputs(
        members, manifest, max_bad_fraction=0.5
    )
    assert report.num_bad == 2 and len(stacked) == len(val.images) == 15
    assert sorted(p.reason for p in report.problems) == [
        "missing_file",
        "truncated_image",
    ]
    # Row by row: each member on the good rows, read with `prepare_image` and
    # its tokenizer, one image at a time (no tf.data).
    combined = mmzoo.Ensemble(
        members,
        ensembles.combiner_model(EnsembleCombiner("average", "multiclass", 3, 3)),
        members[0].labels,
        {"task": "multiclass", "method": "average"},
        None,
    )
    features = combined.member_features(val.images, val.texts)
    expected = combined.model(features)["member_probabilities"]
    np.testing.assert_allclose(stacked, np.asarray(expected), atol=1e-6)
    np.testing.assert_array_equal(
        targets, [members[0].labels.index(label) for label in val.labels]
    )

    # Members keeping other rows could not be paired: refused.
    original = members[1].dataset

    def fewer_rows(*args, **kwargs):
        dataset, found = original(*args, **kwargs)
        return dataset, dataclasses.replace(found, good=found.good[1:])

    monkeypatch.setattr(members[1], "dataset", fewer_rows)
    with pytest.raises(DataError, match="member 1 .* keeps other rows"):
        ensembles.member_outputs(members, manifest, max_bad_fraction=0.5)


def test_combiner_layer_contract():
    outputs = np.random.default_rng(0).dirichlet(np.ones(3), (4, 2)).astype("float32")
    for method, extra in (
        ("average", {}),
        ("weighted", {"member_weights": [0.25, 0.75]}),
        ("vote", {}),
    ):
        run_layer_test(
            lambda method=method, extra=extra: EnsembleCombiner(
                method, "multiclass", 2, 3, **extra
            ),
            outputs,
            mixed_precision=False,
        )
    with pytest.raises(ValueError, match="`method` must be one of"):
        EnsembleCombiner("mean", "multiclass", 2, 3)
    with pytest.raises(ValueError, match="non-negative numbers summing to one"):
        EnsembleCombiner("weighted", "multiclass", 2, 3, member_weights=[0.5, 0.6])
    with pytest.raises(ValueError, match="takes the members' outputs"):
        EnsembleCombiner("average", "multiclass", 2, 3)(np.zeros((1, 3, 3)))


# === Other tasks ===


def _built_run(
    folder, task, manifest, image_size, fusion, seed, max_tokens=8, **tokenizer
):
    """A run folder around a built (untrained) tiny model: what `load_run`
    reads, without the cost of training."""
    task = mmzoo.get_task(task)
    rows = read_manifest(manifest)
    tokenizer = WordTokenizer.fit(rows.texts, max_tokens=max_tokens, **tokenizer)
    labels = LabelVocabulary.fit(rows.labels, task.multilabel) if task.classes else None
    width = task.num_classes(labels, task.targets(rows.labels, labels)[:1])
    arguments = {
        **TINY,
        "num_classes": width,
        "image_size": image_size,
        "max_tokens": max_tokens,
        "vocab_size": tokenizer.vocab_size,
    }
    keras.utils.set_random_seed(seed)
    model = mmzoo.build_model(task=task.name, fusion=fusion, **arguments)
    os.makedirs(folder)
    model.save(os.path.join(folder, "best.keras"))
    tokenizer.save(os.path.join(folder, "tokenizer"))
    if labels is not None:
        labels.save(os.path.join(folder, "labels.txt"))
    config = {
        "task": task.name,
        "fusion": fusion,
        "image_size": image_size,
        "train": os.fspath(manifest),
    }
    with open(os.path.join(folder, "config.yaml"), "w") as file:
        yaml.safe_dump(config, file)
    return load_run(folder)


@pytest.mark.parametrize("task", ["multilabel", "binary", "regression"])
def test_every_task_ensembles(task, tmp_path):
    raw = mmzoo.get_task(task).example_labels(10, data_fixtures.LABELS, seed=2)
    manifest = data_fixtures.clean_manifest(tmp_path / "data", rows=10, labels=raw)
    runs = [
        _built_run(tmp_path / "a", task, manifest, 32, "concat", seed=1),
        _built_run(tmp_path / "b", task, manifest, 36, "gated", seed=2, max_tokens=6),
    ]
    fitted = "weighted" if task == "regression" else "stacking"
    combined = ensembles.ensemble(runs, fitted, val=manifest, out=tmp_path / "e")
    assert combined.task.name == task and combined.method == fitted
    config = yaml.safe_load((tmp_path / "e" / "config.yaml").read_text())
    assert config["kind"] == "ensemble" and config["task"] == task
    # The members' outputs, each from its own inputs, one image at a time.
    rows = read_manifest(manifest)
    results = combined.model(combined.member_features(rows.images, rows.texts))
    name = combined.output_name
    outputs = np.asarray(results[f"member_{name}"])
    targets = mmzoo.get_task(task).targets(rows.labels, runs[0].labels)
    validation = combined.report["validation"]
    assert validation["out_of_fold"] and len(validation["fold"]) == 10
    for index, member in enumerate(combined.report["members"]):
        expected = mmzoo.get_task(task).evaluate(
            targets, outputs[:, index], runs[0].labels
        )
        first = "mae" if task == "regression" else "macro_f1"
        assert member["val"][first] == pytest.approx(expected[first], abs=1e-6)
    average, _ = ensembles.fit_combiner("average", task, outputs, targets)
    np.testing.assert_allclose(np.asarray(average(outputs)), outputs.mean(1), atol=1e-6)
    if task == "regression":
        weights = combined.member_weights
        assert min(weights) >= 0 and sum(weights) == pytest.approx(1.0)
        mixed = np.einsum("bmw,m->bw", outputs, weights)
        np.testing.assert_allclose(np.asarray(results[name]), mixed, atol=1e-5)
        fit = combined.report["fit"]
        assert fit["objective"] == "mean_squared_error"
        assert fit["loss"] <= fit["average_loss"]
        assert combined.report["agreement"]["val"] is None
        for method in ("vote", "stacking"):
            with pytest.raises(ValueError, match="regression ensemble averages"):
                ensembles.ensemble(runs, method, val=manifest, out=tmp_path / method)
            assert not (tmp_path / method).exists()
        return
    # Stacking: one logistic regression per label over the members' outputs
    # of that label, nothing across labels.
    kernel, _ = combined.combiner.layers[-1].meta_learner.get_weights()
    width = outputs.shape[2]
    assert kernel.shape == (2 * width, width)
    across = [
        kernel[member * width + label, other]
        for member in range(2)
        for label in range(width)
        for other in range(width)
        if other != label
    ]
    assert not np.any(across)
    vote, _ = ensembles.fit_combiner("vote", task, outputs, targets)
    shares = (outputs >= 0.5).mean(axis=1)
    expected = (1 - ensembles.TIE_BREAK) * shares + ensembles.TIE_BREAK * outputs.mean(
        1
    )
    np.testing.assert_allclose(np.asarray(vote(outputs)), expected, atol=1e-6)
    assert combined.report["agreement"]["val"][0][1] == pytest.approx(
        mmzoo.get_task(task).agreement(outputs[:, 0], outputs[:, 1])
    )


# === Export ===


def test_saved_model_in_a_tensorflow_only_process_matches_keras(weighted, tmp_path):
    images = _images(tmp_path)
    expected = weighted.model(weighted.member_features(images, TEXTS))
    base = tmp_path / "savedmodels"
    status = _cli("export", weighted.directory, "--saved-model", base / "ensemble")
    assert status[0] == 0, status
    folder = str(base / "ensemble" / "1")
    served, audit = probe_saved_model(folder, images, TEXTS, tmp_path / "probe")
    assert audit["unregistered"] == [] and audit["importable"] == []
    assert audit["text"] == []
    assert sorted(served) == [
        "member_probabilities",
        "probabilities",
        "top_k_labels",
        "top_k_scores",
    ]
    for name in ("probabilities", "member_probabilities"):
        difference = np.max(np.abs(served[name] - np.asarray(expected[name])))
        print(f"SavedModel vs Keras, {name}: max abs difference {difference:.3g}")
        assert difference <= 1e-5, name
    assert served["member_probabilities"].shape == (4, 3, 3)
    names = np.asarray(weighted.labels.names)
    order = np.argsort(-np.asarray(expected["probabilities"]), axis=1, kind="stable")
    np.testing.assert_array_equal(served["top_k_labels"], names[order])

    # The single run's guarantees: models.config, warmup of every signature,
    # the model card.
    assert "ensemble" in (base / "models.config").read_text()
    requests = read_warmup_requests(folder)
    signatures = [request.model_spec.signature_name for request in requests]
    assert sorted(set(signatures)) == ["predict_tensors", "serving_default"]
    assert signatures.count("predict_tensors") == 3  # each example, then both
    card = json.loads(open(os.path.join(folder, "model_card.json")).read())
    assert card["kind"] == "ensemble" and card["method"] == "weighted"
    assert card["member_weights"] == pytest.approx(weighted.member_weights)
    assert [m["image_size"] for m in card["members"]] == [32, 36, 32]
    assert card["members"][1]["resize"] == "pad"
    assert card["warmup_records"] == len(requests)
    inputs = card["signatures"]["predict_tensors"]["inputs"]
    assert inputs["member_1_image"]["shape"] == [None, 36, 36, 3]
    assert inputs["member_2_tokens"]["shape"] == [None, 10]
    for index in range(3):
        tokenizer = card["members"][index]["tokenizer"]
        assert os.path.isfile(os.path.join(folder, tokenizer["vocabulary_file"]))


def test_tflite_in_litert_matches_keras(weighted, tmp_path):
    from mmzoo.data.pure_python_tokenizer import PythonWordTokenizer

    images = _images(tmp_path)
    report = tflite.export_tflite(weighted, tmp_path / "app" / "ensemble.tflite")
    tflite.check_builtin_ops(report["path"])
    features = weighted.member_features(images, TEXTS)
    result = tflite.parity(weighted, report["path"], features)
    print("TFLite vs Keras:", result["max_abs_diff_by_output"])
    assert sorted(result["max_abs_diff_by_output"]) == [
        "member_probabilities",
        "probabilities",
    ]
    assert max(result["max_abs_diff_by_output"].values()) <= 1e-5
    assert result["top1_agreement"] == 1.0
    card = json.loads((tmp_path / "app" / "ensemble.json").read_text())
    assert card["kind"] == "ensemble" and len(card["members"]) == 3
    assert sorted(entry["name"] for entry in card["inputs"]) == sorted(features)
    # What an app in Python does with the card: each member's own tokens.
    for index, member in enumerate(card["members"]):
        folder = tmp_path / "app" / member["tokenizer"]["folder"]
        tokens = PythonWordTokenizer.from_directory(folder).encode(TEXTS)
        np.testing.assert_array_equal(tokens, features[f"member_{index}_tokens"])


def test_a_member_that_cannot_go_to_tflite_is_named(members, tmp_path):
    image = keras.Input((32, 32, 3), name="image")
    text = keras.Input((), dtype="string", name="text")
    probabilities = keras.layers.Dense(3, activation="softmax", name="probabilities")(
        keras.layers.GlobalAveragePooling2D()(image)
    )
    hub_like = keras.Model(
        {"image": image, "text": text}, {"probabilities": probabilities}
    )
    member = dataclasses.replace(members[0], model=hub_like, tokenizer=None)
    member.directory = "runs/hub_text"
    combined = mmzoo.Ensemble(
        [members[0], member],
        ensembles.combiner_model(EnsembleCombiner("average", "multiclass", 2, 3)),
        members[0].labels,
        {"task": "multiclass", "method": "average"},
        None,
    )
    with pytest.raises(tflite.ExportError, match=r"Member 1 \(runs/hub_text\)"):
        tflite.export_tflite(combined, tmp_path / "app" / "e.tflite")
    assert not (tmp_path / "app").exists()


# === The command line ===


def _cli(*argv):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = cli.main([str(value) for value in argv])
        except SystemExit as exit:
            status = exit.code
    return status, stdout.getvalue(), stderr.getvalue()


def test_cli_ensemble_and_predict(folders, data, val_outputs, tmp_path):
    out = tmp_path / "averaged"
    status, stdout, stderr = _cli(
        "ensemble", *folders[:2], "--method", "average", "--val", data["val"],
        "--out", out,
    )  # fmt: skip
    assert status == 0, stderr
    assert "**ensemble (average)**" in stdout and "Pairwise agreement" in stdout
    report = json.loads((out / "ensemble.json").read_text())
    targets, outputs, _ = val_outputs
    answers = outputs[:, :2].mean(axis=1).argmax(-1)
    assert report["ensemble"]["val"]["accuracy"] == pytest.approx(
        np.mean(answers == targets)
    )
    assert report["test"] is None and "test" not in report["ensemble"]
    image = read_manifest(data["test"]).images[0]
    status, stdout, stderr = _cli("predict", out, "--image", image, "--text", "a")
    assert status == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 5 and lines[3].startswith("member 0: ")
    assert lines[4].startswith("member 1: ")


def _one_line_error(argv):
    status, _, stderr = _cli(*argv)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 2, (argv, status, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_cli_mistakes_are_one_line(folders, data, tmp_path):
    def command(*runs, method="average", out=tmp_path / "out"):
        return [
            "ensemble",
            *runs,
            "--method",
            method,
            "--val",
            data["val"],
            "--out",
            out,
        ]

    assert "no run folder" in _one_line_error(command(folders[0], tmp_path / "nope"))
    assert "--method" in _one_line_error(command(*folders[:2], method="mean"))
    assert "at least 2 runs" in _one_line_error(command(folders[0]))
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    line = _one_line_error(command(*folders[:2], out=tmp_path / "used"))
    assert "--out" in line and "not empty" in line

    relabelled = tmp_path / "relabelled"
    shutil.copytree(folders[1], relabelled)
    names = (relabelled / "labels.txt").read_text().split()
    (relabelled / "labels.txt").write_text("\n".join(reversed(names)) + "\n")
    line = _one_line_error(command(folders[0], relabelled))
    assert f"Member 1 ({relabelled})" in line and "same labels" in line

    contrastive = tmp_path / "pairs"
    shutil.copytree(folders[1], contrastive)
    config = yaml.safe_load((contrastive / "config.yaml").read_text())
    (contrastive / "config.yaml").write_text(
        yaml.safe_dump({**config, "task": "contrastive"})
    )
    line = _one_line_error(command(folders[0], contrastive))
    assert "Member 1" in line and "contrastive run" in line
    assert not (tmp_path / "out").exists()


# === Other backends ===

JAX_SCRIPT = textwrap.dedent(
    """
    import json, sys

    class NoTensorFlow:
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("tensorflow", "tf_keras", "keras_hub"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)")

    sys.meta_path.insert(0, NoTensorFlow())
    import numpy as np
    import keras
    from mmzoo.ensembles import EnsembleCombiner

    outputs = np.asarray(json.loads(sys.argv[1]), "float32")
    results = {}
    for method, extra in (("average", {}), ("vote", {}),
                          ("weighted", {"member_weights": [0.2, 0.3, 0.5]})):
        layer = EnsembleCombiner(method, "multiclass", 3, 2, **extra)
        results[method] = np.asarray(layer(outputs)).tolist()
    print(json.dumps({"backend": keras.backend.backend(), "results": results,
                      "tensorflow": "tensorflow" in sys.modules}))
    """
)


def test_the_combiner_runs_on_jax():
    outputs = np.random.default_rng(3).dirichlet(np.ones(2), (5, 3)).astype("float32")
    done = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, json.dumps(outputs.tolist())],
        env={**ENV, "KERAS_BACKEND": "jax"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax" and report["tensorflow"] is False
    for method, values in report["results"].items():
        extra = {"member_weights": [0.2, 0.3, 0.5]} if method == "weighted" else {}
        layer = EnsembleCombiner(method, "multiclass", 3, 2, **extra)
        np.testing.assert_allclose(values, np.asarray(layer(outputs)), atol=1e-6)
