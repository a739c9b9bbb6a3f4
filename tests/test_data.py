"""Manifests, the bad-data check and `make_dataset`, on real files."""

import ast
import json
import os
import pathlib
import subprocess
import sys

import data_fixtures
import numpy as np
import pytest
import tensorflow as tf

import mmzoo
from mmzoo.data import LabelVocabulary
from mmzoo.data import check_manifest
from mmzoo.data import make_dataset
from mmzoo.data import read_manifest
from mmzoo.data import sources
from mmzoo.data import write_tfrecords
from mmzoo.data.check import DataError
from mmzoo.data.manifest import ManifestError
from mmzoo.data.tokenizers import WordTokenizer
from mmzoo.tasks import TASKS

MAX_PIXELS = 1_000_000  # the messy manifest's "large" image has 1.2 Mpx


@pytest.fixture(scope="module", params=["csv", "jsonl"])
def messy(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"messy_{request.param}")
    return data_fixtures.messy_manifest(folder, request.param)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return data_fixtures.clean_manifest(tmp_path_factory.mktemp("clean"))


@pytest.fixture(scope="module")
def tokenizer(clean):
    return WordTokenizer.fit(read_manifest(clean).texts, max_tokens=8)


def first_batches(dataset, count=2):
    return [
        (x["image"].numpy(), x["tokens"].numpy(), y.numpy())
        for x, y in dataset.take(count)
    ]


# --- Manifests ---------------------------------------------------------------


def test_csv_keeps_quotes_commas_newlines_and_unicode(messy):
    path, _ = messy
    manifest = read_manifest(path)
    texts = set(manifest.texts)
    for text in data_fixtures.TEXTS:
        assert text in texts
    assert len(manifest) + len(manifest.problems) == manifest.num_rows == 33
    # Image paths are resolved against the manifest's own folder.
    folder = os.path.dirname(os.path.abspath(path))
    assert manifest.images[0] == os.path.join(folder, "images", "good_0.png")


def test_csv_line_numbers_count_embedded_newlines(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        'image,text,label\na.png,"two\nlines",x\nb.png,one,y\n\nc.png,"x",z\n',
        encoding="utf-8",
    )
    manifest = read_manifest(path)
    assert manifest.lines == [2, 4, 6]
    assert manifest.texts == ["two\nlines", "one", "x"]


def test_header_without_a_required_column_names_it(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("image,caption,label\na.png,hi,x\n")
    with pytest.raises(ManifestError, match=r"lacks the column\(s\) \['text'\]"):
        read_manifest(path)


def test_columns_can_be_renamed(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("picture,question,answer\na.png,hi,x\n")
    manifest = read_manifest(
        path, columns={"image": "picture", "text": "question", "label": "answer"}
    )
    assert manifest.texts == ["hi"] and manifest.labels == ["x"]


def test_unknown_manifest_format_and_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ManifestError, match=r"must end in one of"):
        read_manifest(tmp_path / "m.txt")


def test_jsonl_list_labels_become_multilabel_strings(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(
        json.dumps({"image": "a.png", "text": "t", "label": ["cat", "dog"]}) + "\n"
    )
    assert read_manifest(path).labels == ["cat|dog"]


def test_each_format_has_a_reader_that_knows_where_images_are(clean, tmp_path):
    manifest = read_manifest(clean)
    assert isinstance(manifest.reader, sources.CsvReader)
    assert manifest.format == "csv" and not manifest.reader.images_inside
    write_tfrecords(clean, tmp_path / "shards", num_shards=2)
    shards = read_manifest(tmp_path / "shards")
    assert isinstance(shards.reader, sources.TFRecordReader)
    assert shards.format == "tfrecord" and shards.reader.images_inside
    assert shards.images == [None] * 12
    assert shards.texts == manifest.texts and shards.lines == manifest.lines
    assert read_manifest is sources.read_manifest


def test_take_keeps_the_chosen_rows(messy):
    path, _ = messy
    manifest = read_manifest(path)
    assert manifest.problems
    sample = manifest.take([5, 0, 2])
    assert sample.lines == [manifest.lines[i] for i in (5, 0, 2)]
    assert sample.texts == [manifest.texts[i] for i in (5, 0, 2)]
    assert sample.images == [manifest.images[i] for i in (5, 0, 2)]
    assert sample.problems == [] and sample.num_rows == 3
    assert len(manifest) > 3  # the original is untouched


def test_a_sample_of_tfrecord_rows_streams_its_own_records(clean, tokenizer, tmp_path):
    # A sample (int8 calibration takes one) holds rows from the middle of the
    # shards: each must come with its own record's image.
    write_tfrecords(clean, tmp_path / "shards", num_shards=2)
    rows = [1, 4, 5, 10]

    def examples(manifest):
        dataset = make_dataset(manifest, tokenizer, 16, batch_size=12, training=False)
        return first_batches(dataset, 1)[0]

    expected = examples(read_manifest(clean).take(rows))
    sampled = examples(read_manifest(tmp_path / "shards").take(rows))
    assert len(sampled[2]) == len(rows)
    for a, b in zip(expected, sampled, strict=True):
        np.testing.assert_array_equal(a, b)


def test_data_modules_import_each_other_one_way():
    # Every import of one mmzoo.data module by another, at any depth (a
    # function-level import is still a dependency), must form no cycle.
    folder = pathlib.Path(mmzoo.data.__file__).parent
    modules = {path.stem for path in folder.glob("*.py")} - {"__init__"}
    depends = {}
    for module in modules:
        tree = ast.parse((folder / f"{module}.py").read_text(encoding="utf-8"))
        depends[module] = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.module == "mmzoo.data":
                names = {alias.name for alias in node.names}
            elif (node.module or "").startswith("mmzoo.data."):
                names = {node.module.split(".")[2]}
            else:
                continue
            depends[module] |= names & modules
    order = []
    while len(order) < len(modules):
        ready = sorted(m for m in modules - set(order) if depends[m] <= set(order))
        assert ready, f"an import cycle among {sorted(modules - set(order))}"
        order += ready
    assert depends["manifest"] == set()
    assert depends["sources"] == {"manifest", "images"}
    assert depends["check"] == {"manifest", "images", "sources"}
    assert depends["images"] == {"manifest"}
    assert depends["tfrecord"] == {"check", "sources"}


# --- The check: exact counts and reasons ----------------------------------------


def test_check_finds_every_bad_row_with_its_line_and_reason(messy):
    path, expected = messy
    report = check_manifest(path, max_pixels=MAX_PIXELS)
    found = {problem.line: problem.reason for problem in report.problems}
    assert found == {k: v for k, v in expected.items() if k != "good"}
    assert len(report.problems) == len(found)  # one problem per bad row here
    assert len(report.good) == expected["good"] == 20
    assert report.counts == {
        "malformed_row": 1,
        "missing_column": 1,
        "missing_file": 1,
        "undecodable_image": 3,
        "truncated_image": 2,
        "image_too_large": 2,
        "empty_text": 2,
        "invalid_utf8": 1,
    }


def test_a_check_of_unchanged_files_is_kept_and_a_changed_file_checked_again(
    tmp_path,
):
    # `mmzoo demo` checks the same manifests for each of its six models.
    rows = []
    for index in range(3):
        image = tmp_path / f"{index}.png"
        data_fixtures.write_image(image, seed=index)
        rows.append({"image": str(image), "text": "a shape", "label": "red"})
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    hour_ago = os.stat(manifest).st_mtime - 3600
    for index in range(3):
        os.utime(tmp_path / f"{index}.png", (hour_ago, hour_ago))

    first = check_manifest(manifest, keep_images=(8, "stretch"))
    again = check_manifest(manifest, keep_images=(8, "stretch"))
    assert again.images is first.images  # not decoded again
    assert not first.images.flags.writeable  # shared, so read-only
    assert len(again.good) == 3 and not again.problems
    other_size = check_manifest(manifest, keep_images=(16, "stretch"))
    assert other_size.images.shape == (3, 16, 16, 3)

    # Rewritten: corrupt now, and a newer time (though an hour old).
    data_fixtures.write_corrupt_png(tmp_path / "1.png")
    os.utime(tmp_path / "1.png", (hour_ago + 60, hour_ago + 60))
    changed = check_manifest(manifest, keep_images=(8, "stretch"))
    assert [p.reason for p in changed.problems] == ["undecodable_image"]
    assert changed.good == [0, 2]
    # A file written just now is checked each time, never kept.
    data_fixtures.write_image(tmp_path / "1.png", seed=1)
    fresh = check_manifest(manifest, keep_images=(8, "stretch"))
    assert check_manifest(manifest, keep_images=(8, "stretch")).images is not (
        fresh.images
    )
    assert len(fresh.good) == 3


def test_problem_details_say_what_is_wrong(messy):
    path, _ = messy
    details = {p.reason: p.detail for p in check_manifest(path).problems}
    assert "missing.png" in details["missing_file"]
    assert "0xff at position 4" in details["invalid_utf8"]
    assert "20000x20000" in details["image_too_large"]
    # The decode failure keeps TensorFlow's reason, without op decorations.
    corrupt = [
        p.detail for p in check_manifest(path).problems if "corrupt.png" in p.detail
    ]
    assert corrupt and "Invalid PNG data" in corrupt[0]
    assert "function_node" not in corrupt[0]


def test_headers_only_check_misses_corrupt_pixel_data(messy):
    path, expected = messy
    report = check_manifest(path, max_pixels=MAX_PIXELS, decode=False)
    assert report.counts["undecodable_image"] == 2  # the corrupt PNG passes
    assert len(report.good) == expected["good"] + 1


def test_strict_check_names_corrupt_jpegs_by_line_and_file(tmp_path, capsys):
    # A JPEG with 20 bytes of its scan data changed, which TensorFlow decodes
    # (to garbage, printing an anonymous libjpeg warning), and an animated
    # GIF whose frames, not its screen, exceed the budget.
    images = tmp_path / "images"
    images.mkdir()
    (images / "corrupt.jpg").write_bytes(data_fixtures.corrupt_jpeg())
    (images / "animated.gif").write_bytes(data_fixtures.animated_gif(60, 10, 10))
    rows = [("images/corrupt.jpg", "garbage pixels", "circle", None)]
    rows.append(("images/animated.gif", "60 frames", "square", None))
    for index in range(4):
        name = f"images/good_{index}.jpg"
        data_fixtures.write_image(str(tmp_path / name), 20, 28, "jpg", seed=index)
        rows.append((name, "good", "circle", None))
    path, _ = data_fixtures._write(str(tmp_path), rows, "csv", malformed=False)

    lenient = check_manifest(path, max_pixels=5_000)
    assert [(p.line, p.reason) for p in lenient.problems] == [(3, "image_too_large")]
    assert "60 frames of 10x10 = 6,000 pixels" in lenient.problems[0].detail
    strict = check_manifest(path, max_pixels=5_000, strict=True)
    assert [(p.line, p.reason) for p in strict.problems] == [
        (2, "undecodable_image"),
        (3, "image_too_large"),
    ]
    problem = str(strict.problems[0])
    assert problem.startswith(f"{path}:2: undecodable_image: corrupt JPEG data: ")
    assert problem.endswith(str(images / "corrupt.jpg"))
    assert len(strict.good) == 4
    # Without decoding, too.
    headers = check_manifest(path, max_pixels=5_000, decode=False, strict=True)
    assert [p.line for p in headers.problems] == [2, 3]
    # The command line: `--strict`.
    from mmzoo import cli

    arguments = ["data", "check", path, "--max-pixels", "5000"]
    assert cli.main(arguments) == 1
    assert "corrupt.jpg" not in capsys.readouterr().out
    assert cli.main([*arguments, "--strict"]) == 1
    assert f"{path}:2: undecodable_image: corrupt JPEG data" in capsys.readouterr().out
    # The training pipeline skips it too.
    _, report, _ = make_dataset(
        path,
        None,
        16,
        max_pixels=5_000,
        strict=True,
        max_bad_fraction=0.5,
        return_report=True,
    )
    assert report.num_bad == 2


def test_unknown_labels_are_reported_against_a_vocabulary(clean, tmp_path):
    labels = LabelVocabulary(["circle", "square"])
    report = check_manifest(clean, labels=labels)
    assert report.counts == {"unknown_label": 4}
    assert {p.line for p in report.problems} == {4, 7, 10, 13}
    assert "'triangle'" in report.problems[0].detail


def test_data_check_command(messy, clean, capsys):
    # In this process: the command is `mmzoo.cli.main` (test_training.py
    # runs the installed entry point in processes of their own).
    from mmzoo import cli

    path, expected = messy
    status = cli.main(["data", "check", path, "--max-pixels", str(MAX_PIXELS)])
    assert status == 1
    lines = capsys.readouterr().out.strip().splitlines()
    for line, reason in expected.items():
        if line != "good":
            assert any(f":{line}: {reason}:" in text for text in lines), line
    assert "20 good, 13 bad" in lines[-1]
    assert cli.main(["data", "check", clean]) == 0
    assert "12 good, 0 bad" in capsys.readouterr().out
    assert cli.main(["data", "check", "/no/such.csv"]) == 2
    error = capsys.readouterr().err
    assert "not found" in error and "Traceback" not in error


# --- make_dataset -------------------------------------------------------------


def test_training_skips_bad_rows_and_counts_them(messy, tokenizer, caplog):
    path, expected = messy
    with pytest.raises(DataError, match=r"13 bad .* more than the 1% allowed"):
        make_dataset(path, tokenizer, 32, max_pixels=MAX_PIXELS)
    dataset, report, labels = make_dataset(
        path,
        tokenizer,
        32,
        batch_size=6,
        max_pixels=MAX_PIXELS,
        max_bad_fraction=0.5,
        return_report=True,
    )
    assert "Skipping bad rows" in caplog.text and "truncated_image 2" in caplog.text
    sizes = [len(y) for _, y in dataset]
    assert sum(sizes) == expected["good"] and sizes == [6, 6, 6, 2]
    assert labels.names == list(data_fixtures.LABELS)


def test_dataset_matches_the_model_inputs(clean, tokenizer):
    dataset = make_dataset(clean, tokenizer, 32, batch_size=4, seed=0)
    features, labels = dataset.element_spec
    model = mmzoo.build_model(
        image_tower="small_cnn",
        text_tower="bow",
        fusion="concat",
        num_classes=3,
        image_size=32,
        max_tokens=8,
        vocab_size=tokenizer.vocab_size,
    )
    for name, spec in features.items():
        model_input = model.get_layer(name).output
        assert spec.shape[1:] == tuple(model_input.shape[1:]), name
        assert spec.dtype.name == model_input.dtype, name
    assert labels.dtype == tf.int32 and labels.shape.as_list() == [None]
    history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_images_are_rgb_0_to_255_with_alpha_on_white(tmp_path, tokenizer):
    image = np.zeros((8, 8, 4), np.uint8)
    image[..., 0] = 255  # red, fully transparent: composited on white
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.fromarray(image, "RGBA").save(tmp_path / "images" / "a.png")
    (tmp_path / "m.csv").write_text("image,text,label\nimages/a.png,hi,x\n")
    x, _ = next(iter(make_dataset(tmp_path / "m.csv", tokenizer, 8, training=False)))
    np.testing.assert_array_equal(x["image"].numpy(), np.full((1, 8, 8, 3), 255.0))


def test_seeded_pipelines_repeat_and_seeds_differ(clean, tokenizer):
    def batches(seed, augment=False):
        dataset = make_dataset(
            clean, tokenizer, 16, batch_size=4, seed=seed, augment=augment
        )
        return first_batches(dataset, 3)

    for augment in (False, True):
        first, second = batches(1, augment), batches(1, augment)
        for a, b in zip(first, second, strict=True):
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(x, y)
    other = batches(2)
    assert any(
        not np.array_equal(a[2], b[2]) for a, b in zip(batches(1), other, strict=True)
    )


def test_epochs_reshuffle_deterministically(clean, tokenizer):
    def epoch(dataset):
        return np.concatenate([x["tokens"].numpy() for x, _ in dataset]).tolist()

    dataset = make_dataset(clean, tokenizer, 16, batch_size=5, seed=3)
    epoch_1, epoch_2 = epoch(dataset), epoch(dataset)
    assert epoch_1 != epoch_2  # a new order each epoch...
    assert sorted(epoch_1) == sorted(epoch_2)  # ...of the same rows
    again = make_dataset(clean, tokenizer, 16, batch_size=5, seed=3)
    assert [epoch(again), epoch(again)] == [epoch_1, epoch_2]


def test_evaluation_order_is_the_manifests(clean, tokenizer):
    manifest = read_manifest(clean)
    dataset = make_dataset(clean, tokenizer, 16, batch_size=5, training=False)
    tokens = np.concatenate([x["tokens"].numpy() for x, _ in dataset])
    np.testing.assert_array_equal(tokens, tokenizer(manifest.texts).numpy())


def test_memory_and_file_caches_give_the_same_examples(clean, tokenizer, tmp_path):
    def examples(**kwargs):
        dataset = make_dataset(
            clean, tokenizer, 16, batch_size=12, training=False, **kwargs
        )
        return first_batches(dataset, 1)[0]

    plain = examples()
    for cached in (examples(cache="memory"), examples(cache=str(tmp_path / "c"))):
        for a, b in zip(plain, cached, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_file_cache_is_read_back(tokenizer, tmp_path):
    manifest = data_fixtures.clean_manifest(tmp_path / "data", rows=6)
    cache = str(tmp_path / "cache")
    dataset = make_dataset(
        manifest, tokenizer, 16, batch_size=6, training=False, cache=cache
    )
    # A whole pass: tf.data writes the cache once its input is exhausted.
    (first,) = first_batches(dataset, -1)
    assert os.path.isfile(cache + ".index")
    # New pixels in every file: only the cache can give the old ones back.
    for path in read_manifest(manifest).images:
        data_fixtures.write_image(path, 20, 28, seed=99)
    (again,) = first_batches(dataset, -1)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    fresh = make_dataset(manifest, tokenizer, 16, batch_size=6, training=False)
    assert not np.array_equal(first_batches(fresh, 1)[0][0], first[0])


def test_pad_resize_keeps_the_aspect_ratio(tmp_path, tokenizer):
    data_fixtures.write_image(str(tmp_path / "images" / "wide.png"), 10, 20)
    (tmp_path / "m.csv").write_text("image,text,label\nimages/wide.png,hi,x\n")
    x, _ = next(iter(make_dataset(tmp_path / "m.csv", tokenizer, 20, resize="pad")))
    image = x["image"].numpy()[0]
    assert image.shape == (20, 20, 3)
    assert not image[:5].any() and not image[15:].any() and image[5:15].any()


def test_shards_for_input_contexts_partition_the_data(clean, tokenizer):
    seen = []
    for index in range(2):
        context = tf.distribute.InputContext(2, index, 2)
        dataset = make_dataset(
            clean,
            tokenizer,
            16,
            batch_size=4,
            training=False,
            input_context=context,
        )
        batches = [x["tokens"].numpy() for x, _ in dataset]
        assert all(len(batch) <= 2 for batch in batches)  # per replica
        seen.append(np.concatenate(batches))
    all_tokens = np.concatenate(seen)
    assert len(all_tokens) == 12
    expected = tokenizer(read_manifest(clean).texts).numpy()
    assert sorted(map(tuple, all_tokens)) == sorted(map(tuple, expected))


# --- Labels and tasks ------------------------------------------------------------


def test_label_vocabulary_round_trip(tmp_path):
    labels = LabelVocabulary.fit(["yes", "no", None, "yes", "red"])
    assert labels.names == ["no", "red", "yes"]
    labels.save(tmp_path)
    assert (tmp_path / "labels.txt").read_text() == "no\nred\nyes\n"
    assert LabelVocabulary.load(tmp_path / "labels.txt") == labels
    with pytest.raises(ValueError, match="unique"):
        LabelVocabulary(["a", "a"])
    with pytest.raises(FileNotFoundError, match="nope"):
        LabelVocabulary.load(tmp_path / "nope.txt")


def test_unknown_labels_error_skip_or_map(clean, tokenizer):
    labels = LabelVocabulary(["circle", "square"])
    with pytest.raises(DataError, match=r"4 row\(s\) have labels .*'triangle'"):
        make_dataset(clean, tokenizer, 16, labels=labels, training=False)
    dataset = make_dataset(
        clean,
        tokenizer,
        16,
        labels=labels,
        training=False,
        unknown_labels="skip",
        max_bad_fraction=0.5,
    )
    assert sum(len(y) for _, y in dataset) == 8
    with pytest.raises(DataError, match="add_unknown=True"):
        make_dataset(clean, tokenizer, 16, labels=labels, unknown_labels="unknown")
    with_unknown = LabelVocabulary(["circle", "square", "[UNK]"])
    dataset = make_dataset(
        clean,
        tokenizer,
        16,
        batch_size=12,
        labels=with_unknown,
        training=False,
        unknown_labels="unknown",
    )
    _, y = next(iter(dataset))
    assert y.numpy().tolist() == [0, 1, 2] * 4


def test_multilabel_binary_and_regression_targets(tmp_path, tokenizer):
    data_fixtures.write_image(str(tmp_path / "images" / "a.png"))
    rows = [("cat|dog", "1.5|2"), ("dog", "0|-1"), ("cat", "3|0.5")]
    (tmp_path / "multi.csv").write_text(
        "image,text,label\n" + "".join(f"images/a.png,t,{a}\n" for a, _ in rows)
    )
    (tmp_path / "reg.csv").write_text(
        "image,text,label\n" + "".join(f"images/a.png,t,{b}\n" for _, b in rows)
    )
    (tmp_path / "bin.csv").write_text(
        "image,text,label\n" + "".join(f"images/a.png,t,{v}\n" for v in "yny")
    )

    def targets(name, task):
        dataset = make_dataset(tmp_path / name, tokenizer, 8, training=False, task=task)
        return next(iter(dataset))[1].numpy()

    np.testing.assert_array_equal(
        targets("multi.csv", "multilabel"), [[1, 1], [0, 1], [1, 0]]
    )
    np.testing.assert_array_equal(targets("bin.csv", "binary"), [[1], [0], [1]])
    np.testing.assert_allclose(
        targets("reg.csv", "regression"), [[1.5, 2], [0, -1], [3, 0.5]]
    )
    with pytest.raises(DataError, match="exactly 2 labels"):
        targets("multi.csv", "binary")


def test_task_objects_and_names_give_the_same_targets(tmp_path, tokenizer):
    data_fixtures.write_image(str(tmp_path / "images" / "a.png"))
    (tmp_path / "multi.csv").write_text(
        "image,text,label\n"
        + "".join(f"images/a.png,t,{v}\n" for v in ("cat|dog", "dog", "cat"))
    )
    by_name = make_dataset(
        tmp_path / "multi.csv", tokenizer, 8, training=False, task="multilabel"
    )
    by_object = make_dataset(
        tmp_path / "multi.csv", tokenizer, 8, training=False, task=TASKS["multilabel"]
    )
    np.testing.assert_array_equal(
        next(iter(by_name))[1].numpy(), next(iter(by_object))[1].numpy()
    )
    with pytest.raises(
        ValueError, match=r"`task` must be one of .*Did you mean 'multilabel'"
    ):
        make_dataset(tmp_path / "multi.csv", tokenizer, 8, task="multilable")
    # A label that is not a number reaches the caller as a DataError.
    with pytest.raises(DataError, match="a regression label is not a number"):
        make_dataset(tmp_path / "multi.csv", tokenizer, 8, task="regression")


def test_argument_errors_name_the_argument(clean, tokenizer):
    with pytest.raises(ValueError, match=r"`resize` must be one of .*'stretch'\?"):
        make_dataset(clean, tokenizer, 16, resize="strech")
    with pytest.raises(ValueError, match=r"`image_size` must be a positive"):
        make_dataset(clean, tokenizer, 0)
    with pytest.raises(ValueError, match=r"`cache` must be None"):
        make_dataset(clean, tokenizer, 16, cache=3)
    with pytest.raises(ValueError, match=r"`augment key` must be one of"):
        make_dataset(clean, tokenizer, 16, augment={"flipp": True})


# --- TFRecord -------------------------------------------------------------------


def test_tfrecord_round_trip_gives_the_same_examples(messy, tokenizer, tmp_path):
    path, expected = messy
    paths, report = write_tfrecords(
        path, tmp_path / "shards", num_shards=3, max_pixels=MAX_PIXELS
    )
    assert len(paths) == 3 and report.num_bad == 13
    info = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert info["rows"] == 20 and info["skipped_by_reason"]["missing_file"] == 1

    def examples(source, **kwargs):
        dataset = make_dataset(
            source, tokenizer, 24, batch_size=32, training=False, **kwargs
        )
        return first_batches(dataset, 1)[0]

    from_manifest = examples(path, max_pixels=MAX_PIXELS, max_bad_fraction=0.5)
    from_shards = examples(tmp_path / "shards")
    for a, b in zip(from_manifest, from_shards, strict=True):
        np.testing.assert_array_equal(a, b)
    # Shuffled training reads every row once per epoch.
    dataset = make_dataset(tmp_path / "shards", tokenizer, 24, seed=0, batch_size=7)
    assert sum(len(y) for _, y in dataset) == 20


def test_tfrecord_rows_are_checked_again(clean, tokenizer, tmp_path):
    shards = tmp_path / "shards"
    write_tfrecords(clean, shards)
    # Corrupt one record's image after writing: cut its PNG in half.
    path = next(shards.glob("*.tfrecord"))
    records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    example = tf.train.Example.FromString(records[3])
    image = example.features.feature["image"].bytes_list.value[0]
    example.features.feature["image"].bytes_list.value[0] = image[: len(image) // 2]
    records[3] = example.SerializeToString()
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    report = check_manifest(shards)
    assert report.counts == {"truncated_image": 1}
    assert report.problems[0].line == 5  # the row's line in the source CSV
    with pytest.raises(FileExistsError, match="already holds"):
        write_tfrecords(clean, shards)


def test_to_tfrecord_command(clean, tmp_path, capsys):
    # `mmzoo.cli.main` in this process: a fresh one would import TensorFlow
    # again to check a status and a line.
    from mmzoo import cli

    argv = ["data", "to-tfrecord", clean, str(tmp_path / "out"), "--shards", "2"]
    assert cli.main(argv) == 0
    assert "Wrote 12 rows to 2 shard(s)" in capsys.readouterr().out
    assert len(read_manifest(tmp_path / "out")) == 12


# --- easy-VQA -------------------------------------------------------------------


def test_easy_vqa_manifests(tmp_path):
    paths = mmzoo.data.easy_vqa(tmp_path)
    train, test = read_manifest(paths["train"]), read_manifest(paths["test"])
    assert (len(train), len(test)) == (38_575, 9_673)
    assert (len(set(train.images)), len(set(test.images))) == (4_000, 1_000)
    assert len(set(train.labels)) == len(set(test.labels)) == 13
    answers = (tmp_path / "answers.txt").read_text().split()
    assert sorted(answers) == sorted(set(train.labels))
    assert train.texts[0] == "what is the blue shape?"
    assert train.labels[0] == "rectangle"
    # Written once, then reused.
    stamp = os.path.getmtime(paths["train"])
    assert mmzoo.data.easy_vqa(tmp_path) == paths
    assert os.path.getmtime(paths["train"]) == stamp


def test_easy_vqa_test_split_is_clean_and_feeds_a_model(tmp_path):
    paths = mmzoo.data.easy_vqa(tmp_path)
    report = check_manifest(paths["test"])
    assert report.num_bad == 0 and len(report.good) == 9_673
    tokenizer = WordTokenizer.fit(read_manifest(paths["test"]).texts, max_tokens=12)
    dataset = make_dataset(
        paths["test"], tokenizer, 64, batch_size=64, cache="memory", seed=0
    )
    x, y = next(iter(dataset))
    assert x["image"].shape == (64, 64, 64, 3) and x["tokens"].shape == (64, 12)
    assert 0 <= int(tf.reduce_min(y)) and int(tf.reduce_max(y)) < 13


MIRRORED_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)
import mmzoo
from mmzoo.data import make_dataset, read_manifest
from mmzoo.data.tokenizers import WordTokenizer

manifest = sys.argv[1]
tokenizer = WordTokenizer.fit(read_manifest(manifest).texts, max_tokens=8)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
dataset = make_dataset(manifest, tokenizer, 32, batch_size=4, seed=0)
distributed = strategy.experimental_distribute_dataset(dataset)
rows = 0
for x, y in distributed:
    parts = strategy.experimental_local_results(y)
    assert len(parts) == 2, parts
    rows += sum(int(part.shape[0]) for part in parts)
assert rows == 12, rows
with strategy.scope():
    model = mmzoo.build_model(
        image_tower="small_cnn", text_tower="bow", fusion="concat",
        num_classes=3, image_size=32, max_tokens=8,
        vocab_size=tokenizer.vocab_size,
    )
history = model.fit(dataset, epochs=2, verbose=0)
assert np.all(np.isfinite(history.history["loss"])), history.history
print("OK", rows)
"""


def test_dataset_feeds_a_mirrored_strategy(clean):
    # Two logical CPU devices must be configured before TensorFlow starts,
    # hence a fresh process.
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, clean],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK 12" in result.stdout


def test_an_epoch_variable_fixes_each_epochs_order(clean, tokenizer):
    epoch = tf.Variable(0, dtype=tf.int64)
    dataset = make_dataset(
        clean, tokenizer, 16, batch_size=12, seed=5, epoch=epoch, augment=True
    )

    def one_pass():
        x, y = next(iter(dataset))
        return x["tokens"].numpy().tolist(), x["image"].numpy()

    first, again = one_pass(), one_pass()
    assert first[0] == again[0]
    np.testing.assert_array_equal(first[1], again[1])
    epoch.assign(1)
    second = one_pass()
    assert second[0] != first[0]
    # A fresh pipeline (a resumed run) set to epoch 1 repeats epoch 1.
    resumed = make_dataset(
        clean,
        tokenizer,
        16,
        batch_size=12,
        seed=5,
        epoch=tf.Variable(1, dtype=tf.int64),
        augment=True,
    )
    x, _ = next(iter(resumed))
    assert x["tokens"].numpy().tolist() == second[0]
    np.testing.assert_array_equal(x["image"].numpy(), second[1])


def test_easy_vqa_captions_come_from_the_answers():
    from mmzoo.data.builtin import image_captions

    questions = [
        "what is the blue shape?",
        "is there a red shape?",
        "does the image not contain a circle?",
        "what color is the shape?",
        "is there not a triangle in the image?",
        "what shape is in the image?",
    ]
    answers = ["rectangle", "no", "no", "green", "no", "circle"]
    images = [0, 0, 1, 1, 2, 3]
    # Image 0: blue (named), rectangle; 1: green, circle (not "not");
    # 2: a triangle of no known colour; 3: a circle of no known colour.
    assert image_captions(questions, answers, images) == {
        0: "a blue rectangle",
        1: "a green circle",
    }
