"""Search in a shared space: the index, `mmzoo index/search/zero-shot`."""

import json
import os

import data_fixtures
import numpy as np
import pytest
import shared_runs

from mmzoo import cli
from mmzoo import retrieval
from mmzoo.data.sources import read_manifest
from mmzoo.metrics import classification_metrics
from mmzoo.retrieval import Index
from mmzoo.retrieval import RetrievalError
from mmzoo.runs import load_run


def _unit(values):
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def _brute_force(embeddings, queries, k):
    scores = _unit(queries) @ _unit(embeddings).T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows


def _clustered(count, width=16, clusters=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, width))
    return centres[rng.integers(0, clusters, count)] + 0.3 * rng.normal(
        size=(count, width)
    )


# === The index ===


def test_exact_search_over_blocks_matches_a_sort(monkeypatch):
    # Small blocks, so that results merge across several of them.
    monkeypatch.setattr(retrieval, "_BLOCK_ROWS", 300)
    embeddings = _clustered(2_000)
    queries = np.random.default_rng(1).normal(size=(7, 16))
    index = Index(16, "image").add(embeddings, [f"img{i}" for i in range(2_000)])
    results = index.search(queries, k=25)
    scores, rows = _brute_force(embeddings, queries, 25)
    np.testing.assert_allclose(results.scores, scores, atol=1e-5)
    np.testing.assert_array_equal(results.rows, rows)
    assert results.ids[0][0] == f"img{rows[0, 0]}"
    # One query, and k beyond the size (clipped).
    small = Index(16, "text").add(embeddings[:3], ["a", "b", "c"])
    assert small.search(queries[0], k=10).rows.shape == (1, 3)

    half = Index(16, "image", dtype="float16").add(embeddings, index.ids)
    assert half.embeddings.dtype == np.float16
    np.testing.assert_allclose(half.search(queries, 25).scores, scores, atol=2e-3)


def test_index_refuses_what_it_cannot_hold():
    index = Index(4, "image").add(np.eye(4), ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="Ids must be unique.*'b'"):
        index.add(np.eye(4)[:1], ["b"])
    with pytest.raises(ValueError, match="Ids must be unique"):
        index.add(np.eye(4)[:2], ["e", "e"])
    with pytest.raises(ValueError, match="width 4"):
        index.add(np.ones((1, 3)), ["f"])
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.full((1, 4), np.nan), ["g"])
    with pytest.raises(ValueError, match="`k` must be a positive integer"):
        index.search(np.ones(4), k=0)
    with pytest.raises(RetrievalError, match="index is empty"):
        Index(4, "text").search(np.ones(4))
    assert len(index) == 4  # nothing refused was added


def test_saved_index_comes_back_and_saving_is_atomic(tmp_path, monkeypatch):
    embeddings = _clustered(50, width=8)
    index = Index(8, "text", fingerprint="abc", info={"run": "r"})
    index.add(embeddings, [f"t{i}" for i in range(50)], [{"text": "x"}] * 50)
    path = tmp_path / "index"
    index.save(path)
    loaded = retrieval.load_index(path)
    assert (loaded.modality, loaded.width, loaded.fingerprint) == ("text", 8, "abc")
    assert loaded.ids == index.ids and loaded.items[3] == {"id": "t3", "text": "x"}
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)

    # Appending and saving again; a save that fails leaves the old index.
    loaded.add(embeddings[:2], ["new1", "new2"])

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        loaded.save(path)
    monkeypatch.undo()
    assert len(retrieval.load_index(path)) == 50
    assert sorted(os.listdir(tmp_path)) == ["index"]  # no staging folder left
    loaded.save(path)
    assert len(retrieval.load_index(path)) == 52

    # A damaged index names what is wrong.
    lines = (path / "items.jsonl").read_text().splitlines()
    (path / "items.jsonl").write_text("\n".join(lines[:10]) + "\n")
    with pytest.raises(RetrievalError, match="damaged index.*10 items"):
        retrieval.load_index(path)
    with pytest.raises(FileNotFoundError, match="No mmzoo index"):
        retrieval.load_index(tmp_path / "nothing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "f.txt").write_text("x")
    with pytest.raises(RetrievalError, match="not an mmzoo index"):
        index.save(tmp_path / "other")


def test_faiss_backends_against_exact_search():
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(3_000, 16))
    queries = rng.normal(size=(50, 16))
    index = Index(16, "image").add(embeddings, [str(i) for i in range(3_000)])
    exact = index.search(queries, k=10)
    flat = index.search(queries, k=10, backend="faiss-flat")
    np.testing.assert_array_equal(flat.rows, exact.rows)
    np.testing.assert_allclose(flat.scores, exact.scores, atol=1e-5)
    # Approximate: most of the exact top 10 with the default settings (on
    # random directions, the hardest case for inverted lists), and more
    # when more cells are searched.
    assert retrieval.recall_against_exact(index, queries, 10, "faiss-hnsw") >= 0.95
    ivf = retrieval.recall_against_exact(index, queries, 10, "faiss-ivf")
    wider = retrieval.recall_against_exact(index, queries, 10, "faiss-ivf", nprobe=30)
    assert 0.8 <= ivf < wider <= 1.0


# === From a contrastive run ===


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A copy of the session's contrastive run (8 labelled images x 3
    captions): `zero-shot` writes its figures into the run folder."""
    run_dir, manifest = shared_runs.contrastive_run(tmp_path_factory)
    run = shared_runs.copy_run(run_dir, tmp_path_factory.mktemp("retrieval") / "run")
    return load_run(run), manifest


def test_index_of_a_manifest_holds_each_image_once(trained):
    run, manifest = trained
    images, report = retrieval.build_index(run, manifest, "image")
    texts, _ = retrieval.build_index(run, manifest, "text", dtype="float16")
    assert report.num_bad == 0 and len(images) == 8 and len(texts) == 24
    assert images.ids[0] == "images/red_0.png"
    assert images.items[0]["captions"] == [
        "a red picture",
        "all red",
        "red image number 0 caption 2",
    ]
    assert texts.items[0]["text"] == "a red picture" and texts.ids[0] == "captions:2"
    assert images.fingerprint == retrieval.fingerprint(run) == texts.fingerprint
    # The rows are the encoders' own embeddings, unit length.
    expected = retrieval.embed_images(run, [images.items[1]["path"]])
    np.testing.assert_allclose(images.embeddings[1], _unit(expected)[0], atol=1e-5)
    # A text finds the images by its run's text encoder.
    query = retrieval.embed_texts(run, ["all blue"])
    results = images.search(query, k=8)
    scores, rows = _brute_force(images.embeddings, query, 8)
    np.testing.assert_array_equal(results.rows, rows)

    # Another model's weights give another fingerprint, refused by name.
    weight = run.model.weights[0]
    kept = np.array(weight)
    weight.assign(kept + 1.0)
    try:
        with pytest.raises(RetrievalError, match="built by another model"):
            retrieval.check_fingerprint(images, run)
    finally:
        weight.assign(kept)
    retrieval.check_fingerprint(images, run)


def test_index_and_search_from_the_command_line(trained, tmp_path, capsys):
    run, manifest = trained
    out = tmp_path / "index"
    arguments = ["index", run.directory, "--data", manifest, "--out", str(out)]
    status = cli.main([*arguments, "--modality", "both"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "image index: 8 rows" in printed and "text index: 24 rows" in printed
    assert cli.main(["search", str(out), "--text", "a green picture", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "text -> image: top 3 of 8"
    assert lines[4].startswith("text -> text")
    images = retrieval.load_index(out / "image")
    expected = images.search(retrieval.embed_texts(run, ["a green picture"]), 3)
    for line, image_id, score in zip(
        lines[1:4], expected.ids[0], expected.scores[0], strict=True
    ):
        rank, printed_score, printed_id, path = line.split(maxsplit=3)
        assert printed_id == image_id and float(printed_score) == pytest.approx(
            score, abs=1e-4
        )
        assert os.path.isfile(path.strip("'"))
    image = images.items[0]["path"]
    assert cli.main(["search", str(out / "text"), "--image", image, "-k", "2"]) == 0
    assert capsys.readouterr().out.startswith("image -> text: top 2 of 24")

    # Appending keeps the rows there; a non-empty --out needs --append.
    arguments = ["index", run.directory, "--data", manifest, "--out"]
    assert cli.main([*arguments, str(out / "image")]) == 2
    assert "--append" in capsys.readouterr().err
    other = data_fixtures.caption_manifest(tmp_path / "more", images=4, captions=1)
    other_images = read_manifest(other).images
    arguments = ["index", run.directory, "--data", other, "--out", str(out / "image")]
    assert cli.main([*arguments, "--append"]) == 0
    capsys.readouterr()
    appended = retrieval.load_index(out / "image")
    # Ids relative to the first manifest's folder: the new images, outside
    # it, keep their full paths.
    assert len(appended) == 12 and appended.ids[8] == other_images[0]
    assert cli.main([*arguments, "--append"]) == 2  # the same ids again
    assert "Ids must be unique" in capsys.readouterr().err


def test_zero_shot_classifies_by_the_nearest_prompt(trained, tmp_path, capsys):
    run, manifest = trained
    templates = ["a {label} picture", "all {label}"]
    metrics = retrieval.zero_shot_evaluate(run, manifest, templates)
    # By hand: prompt embeddings averaged per label, then the nearest one.
    names = sorted(data_fixtures.COLORS)
    prompts = [t.replace("{label}", n) for n in names for t in templates]
    classes = _unit(
        _unit(retrieval.embed_texts(run, prompts)).reshape(4, 2, -1).mean(axis=1)
    )
    rows = read_manifest(manifest)
    images = _unit(retrieval.embed_images(run, rows.images))
    truth = [names.index(label) for label in rows.labels]
    expected = classification_metrics(truth, images @ classes.T, names)
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert metrics["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert metrics["templates"] == templates and metrics["examples"] == 24

    status = cli.main(
        ["zero-shot", run.directory, "--data", manifest]
        + [item for t in templates for item in ("--template", t)]
    )
    assert status == 0
    assert "Accuracy:" in capsys.readouterr().out
    written = json.loads(
        open(os.path.join(run.directory, "zero_shot_captions.json")).read()
    )
    assert written["accuracy"] == pytest.approx(metrics["accuracy"])
    with pytest.raises(ValueError, match="no row has a label"):
        unlabelled = data_fixtures.caption_manifest(tmp_path / "u", images=2)
        retrieval.zero_shot_evaluate(run, unlabelled)


def test_retrieval_demo_quick(tmp_path, monkeypatch):
    from mmzoo.apps.retrieval_demo import run_retrieval_demo

    monkeypatch.setenv("MMZOO_HOME", str(tmp_path / "home"))
    savedmodels = tmp_path / "savedmodels"
    out = tmp_path / "demo"
    assert run_retrieval_demo(out=out, quick=True, savedmodels=savedmodels) == 0
    summary = json.loads((out / "results.json").read_text())
    # The figures are the run's own test metrics and a search of its index.
    saved = json.loads((out / "run" / "metrics.json").read_text())["test"]
    assert summary["test"] == saved
    assert summary["zero_shot_colour"]["classes"] == 8
    assert summary["zero_shot_shape"]["classes"] == 3
    index = retrieval.load_index(out / "index")
    assert len(index) == 256 and index.modality == "image"
    assert [row["id"] for row in summary["search"]["results"]] == index.search(
        retrieval.embed_texts(load_run(out / "run"), ["a red circle"]), 5
    ).ids[0]
    assert (savedmodels / "easy_vqa_retrieval" / "1" / "saved_model.pb").is_file()
    table = (out / "results.md").read_text()
    assert "| image -> text |" in table and "| colour | 8 |" in table
