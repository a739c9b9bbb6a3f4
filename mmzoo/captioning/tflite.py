"""A captioner as two builtin-ops-only TFLite files and a Python loop.

`export_tflite(run, folder)` writes:

- `encoder.tflite`: `image (1, size, size, 3)` float32 pixels (0-255, as
  `mmzoo.data.images.prepare_image` gives them) -> `cross_keys`,
  `cross_values` (the image cells' keys and values of every block);
- `decoder_step.tflite`: one step of `CaptionDecoder.step`, `token (1,)`,
  `position ()`, `cache_keys`, `cache_values`, `cross_keys`,
  `cross_values` -> `logits (1, vocab)`, `cache_keys`, `cache_values`;
- `vocabulary.txt`, `caption_tflite.json` (lengths, cache shape) and
  `caption_loop.py` (`mmzoo/captioning/tflite_loop.py`), the greedy and beam loops
  in NumPy that drives them.

Both files hold TFLite builtin ops only (no Flex), so the LiteRT
interpreter runs them.
"""

import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from mmzoo.export.tflite import check_builtin_ops

LOOP = os.path.join(os.path.dirname(__file__), "tflite_loop.py")


def _convert(model, function, signature):
    """A builtin-ops TFLite file of `function`, written through a SavedModel
    (`keras.export.ExportArchive`, which tracks the model's variables): the
    file keeps the signature, its inputs and outputs by name, that the
    loop's signature runners call."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", function, input_signature=signature)
    with tempfile.TemporaryDirectory() as folder:
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        content = converter.convert()
    # The zoo's TFLite op audit: builtins only, or ExportError naming the rest.
    check_builtin_ops(content)
    return content


def export_tflite(run, folder):
    """Write the TFLite files of a captioning run into `folder`; returns it."""
    model = run.model
    decoder = model.decoder
    size = run.image_size
    os.makedirs(folder, exist_ok=True)

    def encode(image):
        keys, values = decoder.cross_cache(model.encoder(image, training=False))
        return {"cross_keys": keys, "cross_values": values}

    cache_shape = [
        decoder.num_layers,
        1,
        decoder.num_heads,
        decoder.max_length,
        decoder.head_dim,
    ]
    cells = model.encoder.output.shape[1]
    cross_shape = [*cache_shape[:3], cells, decoder.head_dim]

    def step(token, position, cache_keys, cache_values, cross_keys, cross_values):
        logits, (keys, values) = decoder.step(
            token, position, (cache_keys, cache_values), (cross_keys, cross_values)
        )
        return {"logits": logits, "cache_keys": keys, "cache_values": values}

    step_signature = [
        tf.TensorSpec([1], tf.int32, "token"),
        tf.TensorSpec([], tf.int32, "position"),
        tf.TensorSpec(cache_shape, tf.float32, "cache_keys"),
        tf.TensorSpec(cache_shape, tf.float32, "cache_values"),
        tf.TensorSpec(cross_shape, tf.float32, "cross_keys"),
        tf.TensorSpec(cross_shape, tf.float32, "cross_values"),
    ]
    image_signature = [tf.TensorSpec([1, size, size, 3], tf.float32, "image")]
    files = {
        "encoder.tflite": _convert(model, encode, image_signature),
        "decoder_step.tflite": _convert(model, step, step_signature),
    }
    for name, content in files.items():
        with open(os.path.join(folder, name), "wb") as file:
            file.write(content)
    with open(os.path.join(folder, "vocabulary.txt"), "w", encoding="utf-8") as file:
        file.write("\n".join(model.vocabulary))
    with open(os.path.join(folder, "caption_tflite.json"), "w") as file:
        json.dump(
            {
                "image_size": size,
                "resize": run.resize,
                "max_length": decoder.max_length,
                "cache_shape": cache_shape,
            },
            file,
            indent=2,
        )
    shutil.copyfile(LOOP, os.path.join(folder, "caption_loop.py"))
    return folder
