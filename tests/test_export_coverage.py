"""Every fusion, every text tower and keras.applications towers export to
both targets.

Each case builds a tiny untrained model and runs `harness.run_export_test`:
a SavedModel served from encoded image files and raw text by a process
that imports only TensorFlow, and a float32 TFLite file in the LiteRT
interpreter, both against the Keras model (modality weights included).
The focused export tests live in test_export_saved_model.py and
test_export_tflite.py; the trained end-to-end runs in test_training.py.
"""

import data_fixtures
import pytest
from harness import LABEL_NAMES
from harness import TINY
from harness import run_export_test
from harness import task_batch

import mmzoo
from mmzoo import registry
from mmzoo.data import WordTokenizer
from mmzoo.runs import Run

TEXTS = ["is this a circle", "what colour is the square?", "triangle", ""]

# (image tower, text tower, fusion, task, TFLite batch size): every fusion;
# every other token text tower, through cross-attention (its tokens and
# mask in the graph); a keras.applications tower or two. A recurrent text
# tower converts to builtin ops only with a fixed batch. Every task is
# exported, trained, by test_training.py's end-to-end test.
CASES = [
    *[("small_cnn", "bow", fusion, "multiclass", None) for fusion in registry.FUSIONS],
    *[
        (
            "small_cnn",
            name,
            "cross_attention",
            "multiclass",
            1 if spec.recurrent else None,
        )
        for name, spec in registry.TEXT_TOWERS.items()
        if spec.tokenizer == "word" and spec.sequence and name != "bow"
    ],
    ("mobilenet_v3_small", "bow", "concat", "multiclass", None),
    pytest.param(
        "vgg16",
        "transformer",
        "cross_attention",
        "multiclass",
        None,
        marks=pytest.mark.slow,
    ),
]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    return [
        data_fixtures.write_image(str(folder / "a.png"), 20, 28, "png", seed=1),
        data_fixtures.write_image(str(folder / "b.jpg"), 45, 31, "jpg", seed=2),
        data_fixtures.write_image(
            str(folder / "c.png"), 33, 17, "png", seed=3, mode="RGBA"
        ),
        data_fixtures.write_image(str(folder / "d.gif"), 32, 32, "gif", seed=4),
    ]


@pytest.mark.parametrize("image_tower,text_tower,fusion,task,batch_size", CASES)
def test_exports_match_keras(
    image_tower, text_tower, fusion, task, batch_size, images, tmp_path
):
    tokenizer = WordTokenizer.fit(TEXTS, max_tokens=TINY["max_tokens"])
    _, _, labels, num_classes = task_batch(task)
    model = mmzoo.build_model(
        image_tower=image_tower,
        text_tower=text_tower,
        fusion=fusion,
        task=task,
        **{**TINY, "num_classes": num_classes, "vocab_size": tokenizer.vocab_size},
    )
    run = Run(model, tokenizer, labels, {"task": task}, str(tmp_path))
    served, _ = run_export_test(run, images, TEXTS, tmp_path, batch_size=batch_size)
    assert ("modality_weights" in served) is model.returns_modality_weights
    if run.task.classes:
        assert set(served["top_k_labels"].ravel()) <= set(LABEL_NAMES)
