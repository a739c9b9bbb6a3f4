"""`mmzoo train --task contrastive`: dual encoders trained on caption files."""

import csv
import json

import data_fixtures
import keras
import numpy as np
import pytest
import shared_runs
import tensorflow as tf
import yaml

import mmzoo
from mmzoo import cli
from mmzoo.data.check import DataError
from mmzoo.data.check import check_manifest
from mmzoo.data.dataset import make_dataset
from mmzoo.data.sources import read_manifest
from mmzoo.data.tokenizers import WordTokenizer
from mmzoo.layers import recalibrate_batch_norm
from mmzoo.metrics import matching_metrics
from mmzoo.metrics import retrieval_metrics
from mmzoo.runs import load_run
from mmzoo.training import trainer
from mmzoo.training.config import ConfigError

IMAGES, CAPTIONS = 8, 3
TINY = {"image_filters": [8, 16], "embed_dim": 16}


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    folder = tmp_path_factory.mktemp("captions")
    return data_fixtures.caption_manifest(folder, images=IMAGES, captions=CAPTIONS)


def _ids(manifest_path):
    """Image and text ids of every row, by hand: equal path, equal text."""
    rows = read_manifest(manifest_path)
    paths, texts = {}, {}
    image_ids = [paths.setdefault(path, len(paths)) for path in rows.images]
    text_ids = [texts.setdefault(text, len(texts)) for text in rows.texts]
    return np.asarray(image_ids), np.asarray(text_ids)


# === Data ===


def test_pairs_need_no_labels_and_carry_image_and_text_ids(captions):
    rows = read_manifest(captions)
    assert len(rows) == IMAGES * CAPTIONS and set(rows.labels) == {None}
    assert check_manifest(captions).num_bad == 0
    tokenizer = WordTokenizer.fit(rows.texts, max_tokens=8)
    dataset = make_dataset(
        captions, tokenizer, 32, 5, training=False, task="contrastive"
    )
    targets = [y for _, y in dataset]
    image_ids = np.concatenate([y["image_ids"] for y in targets])
    text_ids = np.concatenate([y["text_ids"] for y in targets])
    expected_images, expected_texts = _ids(captions)
    np.testing.assert_array_equal(image_ids, expected_images)
    np.testing.assert_array_equal(text_ids, expected_texts)
    # "a red picture" is the first caption of both red images.
    assert len(set(text_ids)) < len(text_ids)

    # A task that needs labels says so, naming the manifest.
    with pytest.raises(DataError, match=r"captions\.csv: no row has a label"):
        make_dataset(captions, tokenizer, 32, training=False, task="multiclass")


@pytest.mark.parametrize("with_epoch", [True, False])
def test_training_batches_repeat_no_image(captions, with_epoch):
    tokenizer = WordTokenizer.fit(read_manifest(captions).texts, max_tokens=8)
    epoch = tf.Variable(0, dtype=tf.int64) if with_epoch else None
    dataset = make_dataset(
        captions,
        tokenizer,
        32,
        batch_size=IMAGES,
        task="contrastive",
        seed=3,
        epoch=epoch,
    )
    orders = []
    for index in range(3):
        if epoch is not None:
            epoch.assign(index)
        batches = [y["image_ids"].numpy() for _, y in dataset]
        # Every image once per batch, every row once per epoch.
        assert all(len(set(batch)) == IMAGES for batch in batches)
        rows = np.concatenate([y["text_ids"].numpy() for _, y in dataset])
        orders.append(np.concatenate(batches))
        assert len(rows) == IMAGES * CAPTIONS
    assert not np.array_equal(orders[0], orders[1])


# === A run from the command line ===


def test_contrastive_run_from_the_command_line(captions, tmp_path, capsys):
    run = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": TINY}))
    arguments = ["--train", captions, "--val", captions, "--test", captions]
    sizes = ["--image-size", "32", "--max-tokens", "8", "--batch-size", "8"]
    status = cli.main(
        [
            "train",
            "--task",
            "contrastive",
            "--loss",
            "siglip",
            "--config",
            str(config),
            *map(str, arguments),
            *sizes,
            "--epochs",
            "2",
            "--out",
            str(run),
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert "image -> text" in printed and "random ranking" in printed

    # The run folder of a classification run, less labels.txt.
    for name in ("config.yaml", "model.keras", "best.keras", "metrics.json"):
        assert (run / name).is_file(), name
    assert (run / "tokenizer").is_dir() and (run / "logs").is_dir()
    assert (run / "curves.png").is_file() and not (run / "labels.txt").exists()
    with open(run / "history.csv", newline="") as file:
        history = list(csv.DictReader(file))
    assert len(history) == 2
    for direction in ("image_to_text", "text_to_image"):
        for name in ("R@1", "R@5", "R@10", "median_rank"):
            value = float(history[-1][f"val_{direction}_{name}"])
            assert 0 < value <= (1 if "R@" in name else len(history) * 100)
    metrics = json.loads((run / "metrics.json").read_text())

    # metrics.json is retrieval over the whole set, by the best model,
    # with the rows of one image (or one text) counted as one item.
    loaded = load_run(run)
    assert loaded.task.name == "contrastive" and loaded.labels is None
    assert loaded.model.contrastive_loss.name == "siglip"
    rows = read_manifest(captions)
    inputs = make_dataset(
        captions, loaded.tokenizer, 32, 64, training=False, task="contrastive"
    ).map(lambda x, y: x)
    outputs = loaded.model.predict(inputs, verbose=0)
    image_ids, text_ids = _ids(captions)
    pair = (outputs["image_embedding"], outputs["text_embedding"], image_ids, text_ids)
    expected = retrieval_metrics(*pair)
    expected = {"examples": len(rows), **expected, **matching_metrics(*pair)}
    assert metrics["test"] == pytest.approx(expected)
    assert metrics["test"]["random_R@1"] > 1 / len(rows)  # the ids count

    # `evaluate` gives the same figures for the manifest.
    assert cli.main(["evaluate", str(run), "--data", str(captions)]) == 0
    assert "image -> text" in capsys.readouterr().out
    evaluated = json.loads((run / "evaluation_captions.json").read_text())
    assert {k: evaluated[k] for k in metrics["test"]} == pytest.approx(metrics["test"])

    # `predict` gives the cosine similarity of one pair.
    assert (
        cli.main(["predict", str(run), "--image", rows.images[0], "--text", "all red"])
        == 0
    )
    line = capsys.readouterr().out.strip()
    answer = loaded.predict(rows.images[0], "all red")
    similarity = answer["similarity"]
    assert line.startswith(f"similarity: {similarity:.4f} (") and -1 <= similarity <= 1
    # The match threshold is the one metrics.json chose on the validation set.
    threshold = metrics["val"]["match_threshold"]
    assert answer["match_threshold"] == threshold
    assert answer["match"] == (similarity >= threshold)
    assert ("a match" if answer["match"] else "no match") in line
    image = loaded.model.image_encoder.predict(next(iter(inputs))["image"][:1])
    tokens = loaded.tokenizer(tf.constant(["all red"]))
    text = loaded.model.text_encoder.predict(tokens, verbose=0)
    assert similarity == pytest.approx(float(np.sum(image * text)), abs=1e-5)

    # It exports as two encoders (test_export_dual_encoder.py); an index
    # asks for the SavedModel that searches it, in one line.
    argv = ["export", str(run), "--tflite", str(tmp_path / "app" / "pairs.tflite")]
    assert cli.main([*argv, "--index", str(run)]) == 2
    assert capsys.readouterr().err.startswith("error: --index is searched by")


@pytest.mark.parametrize("loss", ["clip", "dcca"])
def test_trained_model_is_finished_on_the_training_data(
    captions, tmp_path, tmp_path_factory, loss
):
    if loss == "clip":
        # The session's shared run: these settings, on the same images and
        # captions (with a label column, which a dual encoder ignores).
        run_dir, captions = shared_runs.contrastive_run(tmp_path_factory)
        assert shared_runs.CONTRASTIVE_MODEL == TINY
    else:
        run_dir = tmp_path / "run"
        trainer.train(
            train=captions,
            val=captions,
            task="contrastive",
            loss=loss,
            epochs=2,
            image_size=32,
            max_tokens=8,
            batch_size=8,
            model=TINY,
            out=run_dir,
            verbose=0,
        )
    run = load_run(run_dir)
    assert run.model.contrastive_loss.name == loss
    data = make_dataset(
        captions, run.tokenizer, 32, 8, training=False, task="contrastive"
    )
    # BatchNorm's moving mean is the mean over the training rows (three
    # equal batches): recalibrating again changes nothing.
    cnn = run.model.get_layer("image_tower").get_layer("small_cnn")
    layer = next(
        layer
        for layer in cnn.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    saved = np.asarray(layer.moving_mean)
    recalibrate_batch_norm(run.model, data)
    np.testing.assert_allclose(np.asarray(layer.moving_mean), saved, atol=1e-4)
    if loss == "dcca":
        # Deep CCA's outputs went through linear CCA: the two views'
        # projections are correlated column by column, and retrieval by
        # cosine finds the pairs.
        outputs = run.model.predict(data.map(lambda x, y: x), verbose=0)
        image, text = outputs["image_embedding"], outputs["text_embedding"]
        first = np.corrcoef(image[:, 0], text[:, 0])[0, 1]
        assert first > 0.9
    val = json.loads((run_dir / "metrics.json").read_text())["val"]
    assert val["text_to_image_R@5"] > val["random_R@5"]


def test_loss_is_a_contrastive_choice(captions, tmp_path):
    arguments = dict(train=captions, out=tmp_path / "run", epochs=1)
    with pytest.raises(ConfigError, match="`loss` chooses the loss of task"):
        trainer.train(loss="clip", **arguments)
    with pytest.raises(ConfigError, match="loss"):
        trainer.train(task="contrastive", loss="cosine", **arguments)
    assert not (tmp_path / "run").exists()
    # build_model's task registry reaches the dual encoder too.
    model = mmzoo.build_model(
        task="contrastive", image_size=32, max_tokens=8, vocab_size=20, **TINY
    )
    assert isinstance(model, mmzoo.DualEncoder)
    with pytest.raises(ValueError, match="builds no fused model"):
        mmzoo.build_model("small_cnn_bow_concat", task="contrastive")
