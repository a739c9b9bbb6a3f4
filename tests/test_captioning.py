"""Image captioning: the model, its decoding, the run, evaluation, export.

One tiny captioner is trained once for the module (`mmzoo train --task
captioning` through `trainer.train`, 8 images x 3 captions, 32 px, 2
epochs, interrupted after the first and finished by `--resume`) and read
by every test after the first few, which build untrained models.
"""

import glob
import json
import os

import data_fixtures
import keras
import numpy as np
import pytest
from harness import probe_signatures

import mmzoo
from mmzoo import cli
from mmzoo.captioning import build_captioner
from mmzoo.captioning import generate
from mmzoo.captioning.metrics import caption_metrics
from mmzoo.captioning.vocabulary import END_ID
from mmzoo.captioning.vocabulary import PAD_ID
from mmzoo.captioning.vocabulary import START_ID
from mmzoo.captioning.vocabulary import UNK_ID
from mmzoo.captioning.vocabulary import build_caption_vocabulary
from mmzoo.captioning.vocabulary import caption_text
from mmzoo.training import trainer

TINY = {
    "image_size": 32,
    "image_filters": (8, 16),
    "vocab_size": 20,
    "max_tokens": 6,
    "decoder_dim": 16,
    "decoder_layers": 2,
    "decoder_heads": 2,
}
MODEL = {"image_filters": [8, 16], "decoder_dim": 32, "decoder_heads": 2}


def _pixels(count, seed=0):
    return (
        np.random.default_rng(seed)
        .uniform(0, 255, (count, 32, 32, 3))
        .astype("float32")
    )


@pytest.fixture(scope="module")
def untrained():
    return build_captioner(**TINY, seed=1)


class _Interrupt(keras.callbacks.Callback):
    """Stops a run after its first epoch, as a kill would (after the
    epoch's backup)."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("simulated kill after epoch 1")


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """The first sitting of the module's run, stopped after epoch 1: `(run
    folder, manifest, what the folder held then)`."""
    folder = tmp_path_factory.mktemp("captioning")
    manifest = data_fixtures.caption_manifest(folder / "data", images=8, captions=3)
    out = folder / "run"
    with pytest.raises(KeyboardInterrupt):
        trainer.train(
            train=manifest,
            val=manifest,
            test=manifest,
            task="captioning",
            epochs=2,
            image_size=32,
            max_tokens=8,
            batch_size=8,
            model=MODEL,
            out=out,
            verbose=0,
            callbacks=[_Interrupt()],
        )
    left = {
        "backup": os.path.isdir(out / "backup"),
        "model": os.path.exists(out / "model.keras"),
        "history": (out / "history.csv").read_text().splitlines(),
    }
    return out, manifest, left


@pytest.fixture(scope="module")
def trained(interrupted):
    """`(run folder, manifest, image files)` of the module's run, finished by
    `mmzoo train --out RUN --resume` (every later test reads a resumed run)."""
    out, manifest, _ = interrupted
    assert cli.main(["train", "--out", str(out), "--resume"]) == 0
    images = sorted(glob.glob(str(out.parent / "data" / "images" / "*.png")))
    return out, manifest, images


@pytest.fixture(scope="module")
def run(trained):
    return mmzoo.load_run(trained[0])


# === Model and decoding ===


def test_bad_arguments_say_what_was_received():
    with pytest.raises(ValueError, match="Did you mean 'transformer'"):
        build_captioner(decoder="transfomer")
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        build_captioner(fusion="concat")
    with pytest.raises(ValueError, match="must divide"):
        build_captioner(**{**TINY, "decoder_heads": 3})
    with pytest.raises(ValueError, match=r"\[START\]"):
        build_captioner(vocabulary=["[PAD]", "[UNK]", "a", "b", "c"])


def test_loss_is_masked_smoothed_cross_entropy_of_the_next_word():
    model = build_captioner(**TINY, seed=2, label_smoothing=0.1, compile=False)
    tokens = np.array([[4, 5, 6, 0, 0, 0], [7, 8, 9, 10, 11, 12]], "int32")
    logits = np.random.default_rng(0).normal(size=(2, 6, 20)).astype("float32")
    loss = model.compute_loss({"tokens": tokens}, None, {"logits": logits})
    # Targets: the words then [END] (the full caption has no room for it).
    targets = np.array([[4, 5, 6, END_ID, 0, 0], [7, 8, 9, 10, 11, 12]])
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    per_token = -0.9 * picked - 0.1 * log_probs.mean(-1)
    mask = targets != 0
    expected = per_token[mask].mean()
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_beam_width_one_is_greedy(untrained):
    images = _pixels(4)
    greedy_ids, greedy_scores = generate(untrained, images)
    beam_ids, beam_scores = generate(untrained, images, method="beam", beam_width=1)
    np.testing.assert_array_equal(np.asarray(beam_ids)[:, 0], greedy_ids)
    np.testing.assert_allclose(np.asarray(beam_scores)[:, 0], greedy_scores, atol=1e-5)


@pytest.mark.parametrize("beam_width", [1, 3])
def test_cache_decodes_as_the_whole_prefix_does(untrained, beam_width):
    images = _pixels(3, seed=1)
    options = {"beam_width": beam_width, "length_penalty": 0.6}
    cached = generate(untrained, images, **options)
    recomputed = generate(untrained, images, use_cache=False, **options)
    np.testing.assert_array_equal(cached[0], recomputed[0])
    np.testing.assert_allclose(cached[1], recomputed[1], atol=1e-4)


def test_beam_search_beats_or_ties_greedy_and_orders_its_beams(untrained):
    images = _pixels(3, seed=2)
    _, greedy_scores = generate(untrained, images)
    ids, scores = generate(untrained, images, beam_width=3)
    scores = np.asarray(scores)
    assert ids.shape == (3, 3, untrained.max_length)
    assert np.all(scores[:, 0] >= np.asarray(greedy_scores) - 1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert not np.any(np.asarray(ids) == START_ID)


def test_sampling_is_seeded_and_top_1_is_greedy(untrained):
    images = _pixels(3, seed=3)
    first = generate(untrained, images, method="sample", seed=5, temperature=1.5)
    again = generate(untrained, images, method="sample", seed=5, temperature=1.5)
    np.testing.assert_array_equal(first[0], again[0])
    top_1 = generate(untrained, images, method="sample", top_k=1, seed=9)
    np.testing.assert_array_equal(top_1[0], generate(untrained, images)[0])


def test_max_length_caps_the_caption(untrained):
    ids, _ = generate(untrained, _pixels(2), max_length=2)
    assert np.all(np.asarray(ids)[:, 2:] == 0)
    with pytest.raises(ValueError, match="max_length"):
        generate(untrained, _pixels(1), max_length=untrained.max_length + 1)


def test_vocabulary_has_start_and_end_that_no_text_makes():
    vocabulary = build_caption_vocabulary(["[START] a red circle [END]"])
    assert vocabulary[START_ID] == "[START]" and vocabulary[END_ID] == "[END]"
    # The rule splits the brackets off: the words are "[", "start", "]", ...
    assert vocabulary.count("[START]") == 1 and "start" in vocabulary
    ids = [vocabulary.index("red"), vocabulary.index("circle"), END_ID, 5]
    assert caption_text(ids, vocabulary) == "red circle"


def test_ids_become_the_same_text_in_keras_and_in_the_saved_model():
    from mmzoo.captioning.export import ids_to_text

    vocabulary = build_caption_vocabulary(["a red circle"])
    red, circle = vocabulary.index("red"), vocabulary.index("circle")
    # [UNK] can be generated (only [PAD] and [START] are ruled out).
    rows = [[red, UNK_ID, circle, END_ID, red], [START_ID, PAD_ID, red, 4, END_ID]]
    texts = [caption_text(row, vocabulary) for row in rows]
    assert texts == ["red circle", f"red {vocabulary[4]}"]
    graph = ids_to_text(np.asarray(rows, "int32"), vocabulary).numpy()
    assert [text.decode() for text in graph] == texts


# The script runs as on an accelerator machine without TensorFlow (as in
# test_portability): any attempt to import it fails.
JAX_SCRIPT = """
import json, sys

class NoTensorFlow:
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras", "keras_hub"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")

sys.meta_path.insert(0, NoTensorFlow())
import keras
import numpy as np
from mmzoo.captioning import build_captioner, generate

tiny, data, out = json.loads(sys.argv[1])
images, tokens = np.load(data)["images"], np.load(data)["tokens"]
model = build_captioner(**tiny, seed=1)
history = model.fit({"image": images, "tokens": tokens}, epochs=2, verbose=0)
greedy = generate(model, images)
beam_1 = generate(model, images, method="beam", beam_width=1)
beam_3 = generate(model, images, beam_width=3, length_penalty=0.6)
model.save(out)
print(json.dumps({
    "backend": keras.backend.backend(),
    "tensorflow_imported": "tensorflow" in sys.modules,
    "loss": history.history["loss"],
    **{name: [np.asarray(part).tolist() for part in result]
       for name, result in
       (("greedy", greedy), ("beam_1", beam_1), ("beam_3", beam_3))},
}))
"""


def test_trains_and_decodes_on_jax_without_tensorflow(tmp_path):
    import subprocess
    import sys

    images = _pixels(4, seed=6)
    tokens = np.random.default_rng(6).integers(4, 20, (4, 6))
    tokens[:, 4:] = 0
    data, out = str(tmp_path / "data.npz"), str(tmp_path / "jax.keras")
    np.savez(data, images=images, tokens=tokens.astype("int32"))
    arguments = json.dumps([TINY, data, out])
    done = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, arguments],
        env={**os.environ, "KERAS_BACKEND": "jax"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax" and report["tensorflow_imported"] is False
    assert np.all(np.isfinite(report["loss"]))
    greedy_ids, greedy_scores = report["greedy"]
    beam_ids, beam_scores = report["beam_1"]
    assert [row[0] for row in beam_ids] == greedy_ids
    np.testing.assert_allclose(np.asarray(beam_scores)[:, 0], greedy_scores, atol=1e-5)
    assert np.asarray(report["beam_3"][0]).shape == (4, 3, TINY["max_tokens"])
    # The JAX-trained file decodes the same on TensorFlow.
    ids, scores = generate(mmzoo.load_model(out), images)
    np.testing.assert_array_equal(ids, greedy_ids)
    np.testing.assert_allclose(scores, greedy_scores, atol=1e-4)


# === Metrics ===


def test_metrics_of_identical_captions_and_against_the_library():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    references = [
        ["a red circle on the left side", "red circle left"],
        ["a blue square on the right side", "blue square"],
        ["a green triangle at the top", "green triangle up top"],
    ]
    same = caption_metrics([refs[0] for refs in references], references)
    for n in range(1, 5):
        assert same[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-6)
    assert same["CIDEr-D"] > 2.0
    captions = ["a red circle", "a blue circle on the right", "green triangle top"]
    metrics = caption_metrics(captions, references)
    gts = dict(enumerate(references))
    res = {i: [c] for i, c in enumerate(captions)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert [metrics[f"BLEU-{n}"] for n in range(1, 5)] == pytest.approx(bleu)
    assert metrics["CIDEr-D"] == pytest.approx(Cider().compute_score(gts, res)[0])
    assert metrics["CIDEr-D"] < same["CIDEr-D"]


# === A run: train, caption, evaluate ===


def test_run_folder_and_metrics(trained, run):
    folder = trained[0]
    for name in ("config.yaml", "tokenizer", "model.keras", "best.keras"):
        assert os.path.exists(folder / name), name
    assert os.path.isfile(folder / "history.csv") and os.path.isdir(folder / "logs")
    metrics = json.loads((folder / "metrics.json").read_text())
    test = metrics["test"]
    # 8 images with 3 references each, every row one example.
    assert test["examples"] == 24 and test["images"] == 8
    assert {"BLEU-1", "BLEU-4", "CIDEr-D"} <= set(test)
    assert run.task.name == "captioning"
    assert run.model.vocabulary == run.tokenizer.vocabulary


def test_an_interrupted_run_resumes_from_its_backup(interrupted, trained, run):
    _, _, left = interrupted
    folder = trained[0]
    assert left["backup"] and not left["model"]
    assert [row.split(",")[0] for row in left["history"][1:]] == ["0"]
    history = (folder / "history.csv").read_text().splitlines()
    # Epoch 0's row is the first sitting's, epoch 1 the resumed one's.
    assert history[: len(left["history"])] == left["history"]
    assert [row.split(",")[0] for row in history[1:]] == ["0", "1"]
    assert not (folder / "backup").exists()
    assert mmzoo.load_model(folder / "model.keras").vocabulary == run.model.vocabulary
    with pytest.raises(trainer.RunError, match="already finished"):
        trainer.train(out=folder, resume=True, verbose=0)


def test_caption_command(trained, capsys):
    folder, _, images = trained
    assert cli.main(["caption", str(folder), "--image", images[0], "--beam", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == images[0] and len(lines) == 4


def test_caption_command_refuses_mistakes_in_one_line(trained, tmp_path, capsys):
    folder, manifest, _ = trained
    not_image = ["caption", str(folder), "--image", manifest]
    assert cli.main(not_image) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error
    with pytest.raises(SystemExit) as exit_:
        cli.main(["caption", str(folder), "--image", str(tmp_path / "no.png")])
    assert exit_.value.code == 2
    _, _, images = trained
    predict = ["predict", str(folder), "--image", images[0], "--text", "what?"]
    assert cli.main(predict) == 2
    assert "mmzoo caption" in capsys.readouterr().err
    baselines = ["train", "--task", "captioning", "--train", manifest, "--baselines"]
    assert cli.main([*baselines, "--out", str(tmp_path / "no")]) == 2
    assert "does not" in capsys.readouterr().err


def test_evaluate_command_reports_bleu_and_cider(trained, tmp_path, capsys):
    folder, manifest, _ = trained
    out = tmp_path / "evaluation.json"
    command = ["evaluate", str(folder), "--data", manifest, "--out", str(out)]
    assert cli.main(command) == 0
    assert "CIDEr-D:" in capsys.readouterr().out
    metrics = json.loads(out.read_text())
    assert metrics["images"] == 8 and 0 <= metrics["BLEU-4"] <= 1
    assert os.path.isfile(tmp_path / "evaluation_examples.png")


# === SavedModel ===


def test_saved_model_in_a_fresh_process_captions_as_keras(trained, run, tmp_path):
    from mmzoo.captioning.inference import caption_files

    folder, _, images = trained
    base = tmp_path / "models"
    command = ["export", str(folder), "--saved-model", str(base / "captioner")]
    assert cli.main(command) == 0
    folder = str(base / "captioner" / "1")
    calls = {
        f"beam{width}": (
            "caption",
            {"image_bytes": images, "beam_width": width, "max_length": 64},
        )
        for width in (1, 3)
    }
    served, audit = probe_signatures(folder, calls, tmp_path / "probe")
    assert audit["unregistered"] == [] and audit["importable"] == []
    assert not {"PyFunc", "EagerPyFunc", "PyFuncStateless"} & set(audit["core"])
    assert "While" in set(audit["core"]) or "StatelessWhile" in set(audit["core"])
    for width in (1, 3):
        expected = caption_files(run, images, beam_width=width)
        outputs = served[f"beam{width}"]
        assert outputs["captions"].shape == (len(images), width)
        for row, result in enumerate(expected):
            keras_captions = [h["caption"] for h in result["captions"]]
            assert list(outputs["captions"][row]) == keras_captions
            np.testing.assert_allclose(
                outputs["scores"][row],
                [h["score"] for h in result["captions"]],
                atol=1e-4,
            )
    card = json.loads(open(os.path.join(folder, "model_card.json")).read())
    assert card["task"] == "captioning" and "caption" in card["signatures"]
    assert os.path.basename(folder) == "1"


# === TFLite ===


def test_tflite_files_caption_as_keras_greedy_and_beam(trained, run, tmp_path):
    import importlib.util

    from mmzoo.captioning.inference import caption_files
    from mmzoo.data.images import prepare_image

    run_dir, _, images = trained
    folder = tmp_path / "tflite"
    assert cli.main(["export", str(run_dir), "--tflite", str(folder)]) == 0
    for name in ("encoder.tflite", "decoder_step.tflite"):
        content = (folder / name).read_bytes()
        assert b"Flex" not in content, name
    spec = importlib.util.spec_from_file_location(
        "caption_loop", folder / "caption_loop.py"
    )
    loop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loop)
    captioner = loop.Captioner(str(folder))
    greedy = caption_files(run, images)
    beam = caption_files(run, images[:3], beam_width=3)
    pixels = [prepare_image(path, run.image_size, run.resize)[0] for path in images]
    for image, result in zip(pixels, greedy, strict=True):
        text, score = captioner.caption(image)
        assert text == result["captions"][0]["caption"]
        assert score == pytest.approx(result["captions"][0]["score"], abs=1e-3)
    for image, result in zip(pixels, beam, strict=False):
        hypotheses = captioner.beam_ids(image, beam_width=3)
        assert [captioner.words(ids) for ids, _ in hypotheses] == [
            h["caption"] for h in result["captions"]
        ]
        np.testing.assert_allclose(
            [score for _, score in hypotheses],
            [h["score"] for h in result["captions"]],
            atol=1e-3,
        )


def test_decodes_under_mixed_precision():
    import keras

    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_captioner(**TINY, seed=3, compile=False)
        images = _pixels(2, seed=4)
        greedy_ids, _ = generate(model, images)
        beam_ids, _ = generate(model, images, method="beam", beam_width=1)
    finally:
        keras.config.set_dtype_policy(policy)
    np.testing.assert_array_equal(np.asarray(beam_ids)[:, 0], greedy_ids)
