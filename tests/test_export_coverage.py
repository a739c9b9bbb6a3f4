"""Every fusion and the large image towers export to both targets.

Each case builds a tiny untrained model, exports it as a SavedModel (served
from encoded image files and raw text) and as a float32 TFLite file, and
checks both against the Keras model. The focused export tests live in
test_export_saved_model.py and test_export_tflite.py.
"""

import data_fixtures
import numpy as np
import pytest
import tensorflow as tf
from harness import TINY

import mmzoo
from mmzoo.data import LabelVocabulary
from mmzoo.data import WordTokenizer
from mmzoo.data.images import load_image
from mmzoo.export import export_saved_model
from mmzoo.export import tflite
from mmzoo.registry import FUSIONS
from mmzoo.training.runs import Run

TEXTS = ["is this a circle", "what colour is the square?", "triangle", ""]

# (image tower, text tower, fusion, TFLite batch size); bilstm converts to
# builtin ops only with a fixed batch.
CASES = [("small_cnn", "bow", fusion, None) for fusion in sorted(FUSIONS)] + [
    ("small_cnn", "transformer", "cross_attention", None),
    ("small_cnn", "cnn", "concat", None),
    ("small_cnn", "bilstm", "gated", 1),
    ("mobilenet_v3_small", "bow", "concat", None),
    pytest.param(
        "vgg16", "transformer", "cross_attention", None, marks=pytest.mark.slow
    ),
    pytest.param("resnet50", "bow", "gated", None, marks=pytest.mark.slow),
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


@pytest.mark.parametrize("image_tower,text_tower,fusion,batch_size", CASES)
def test_exports_match_keras(
    image_tower, text_tower, fusion, batch_size, images, tmp_path
):
    tokenizer = WordTokenizer.fit(TEXTS, max_tokens=TINY["max_tokens"])
    model = mmzoo.build_model(
        image_tower=image_tower,
        text_tower=text_tower,
        fusion=fusion,
        **{**TINY, "num_classes": 3, "vocab_size": tokenizer.vocab_size},
    )
    labels = LabelVocabulary(["circle", "square", "triangle"])
    run = Run(model, tokenizer, labels, {"task": "multiclass"}, str(tmp_path))
    contents = [open(path, "rb").read() for path in images]
    features = {
        "image": np.stack(
            [load_image(data, TINY["image_size"]).numpy() for data in contents]
        ).astype("float32"),
        "tokens": tokenizer(tf.constant(TEXTS)).numpy(),
    }
    expected = model(features, training=False)

    served = tf.saved_model.load(export_saved_model(run, base=tmp_path / "models"))
    outputs = served.signatures["serving_default"](
        image_bytes=tf.constant(contents), text=tf.constant(TEXTS)
    )
    for name, value in expected.items():
        difference = np.max(np.abs(outputs[name].numpy() - np.asarray(value)))
        assert difference <= 1e-5, ("SavedModel", name, difference)

    path = tmp_path / "model.tflite"
    path.write_bytes(tflite.convert(model, "none", batch_size=batch_size))
    result = tflite.parity(model, path, features)
    for name, difference in result["max_abs_diff_by_output"].items():
        assert difference <= 1e-5, ("TFLite", name, result)
