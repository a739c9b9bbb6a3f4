"""A captioning run as a TF Serving SavedModel: raw image bytes in, captions out.

One endpoint, `caption` (also written as `serving_default`):

    caption(image_bytes: string [batch], beam_width: int32 [],
            max_length: int32 []) -> {"captions": string [batch, beam_width],
                                      "scores": float32 [batch, beam_width],
                                      "token_ids": int32 [batch, beam_width, T]}

Images are checked and decoded by the same graph code as every mmzoo
serving signature (`mmzoo.data.images.load_images`: headers first, a bad
file fails the batch naming its index); the whole beam search
(`mmzoo.captioning.decoding.beam_search`, width 1 being greedy decoding)
runs in the graph as a `While` loop with the key/value cache, and ids
become text by a gather over the vocabulary: no `py_function`, nothing
but core TensorFlow ops, so a process that imports only TensorFlow (TF
Serving) runs it. `export_saved_model` writes it through the zoo's export
(`mmzoo.export.saved_model.ExportPlan`): numbered versions, warmup
records, model card, the tokenizer in `assets.extra/`.
"""

import os

import keras
import tensorflow as tf

from mmzoo.captioning.decoding import beam_search
from mmzoo.captioning.vocabulary import END_ID
from mmzoo.captioning.vocabulary import SPECIAL_TOKENS
from mmzoo.data import images as image_lib
from mmzoo.data.manifest import DEFAULT_MAX_PIXELS

SIGNATURE = "caption"
CAPTION_INPUTS = (
    tf.TensorSpec([None], tf.string, name="image_bytes"),
    tf.TensorSpec([], tf.int32, name="beam_width"),
    tf.TensorSpec([], tf.int32, name="max_length"),
)


def ids_to_text(ids, vocabulary):
    """Token ids `(..., T)` to captions in TensorFlow ops: the words before
    the first `[END]`, special tokens dropped, joined by spaces."""
    words = tf.gather(tf.constant(vocabulary, tf.string), ids)
    before_end = tf.equal(tf.cumsum(tf.cast(tf.equal(ids, END_ID), tf.int32), -1), 0)
    keep = before_end & (ids >= len(SPECIAL_TOKENS))
    shape = tf.shape(ids)
    flat_words = tf.reshape(words, [-1, shape[-1]])
    flat_keep = tf.reshape(keep, [-1, shape[-1]])
    joined = tf.strings.reduce_join(
        tf.ragged.boolean_mask(flat_words, flat_keep), axis=-1, separator=" "
    )
    return tf.reshape(joined, shape[:-1])


def build_caption_module(model, image_size, resize="stretch", length_penalty=0.0):
    """A `keras.export.ExportArchive` with the `caption` endpoint.

    Args:
        model: a `Captioner` built with its `vocabulary`.
        image_size: the model's input size.
        resize: `"stretch"` or `"pad"`, as the run was trained.
        length_penalty: beam search's GNMT alpha.
    """
    vocabulary = model.vocabulary
    if vocabulary is None:
        raise ValueError(
            "The captioner has no vocabulary to write captions with: build it "
            "with build_captioner(vocabulary=...) (mmzoo train does)."
        )
    longest = model.max_length

    def caption(image_bytes, beam_width, max_length):
        tf.debugging.assert_positive(beam_width, message="beam_width must be >= 1")
        tf.debugging.assert_positive(max_length, message="max_length must be >= 1")
        pixels = tf.cast(
            image_lib.load_images(image_bytes, image_size, resize, DEFAULT_MAX_PIXELS),
            tf.float32,
        )
        memory = model.encoder(pixels, training=False)
        ids, scores = beam_search(
            model.decoder,
            memory,
            beam_width,
            tf.minimum(max_length, longest),
            length_penalty,
        )
        return {
            "captions": ids_to_text(ids, vocabulary),
            "scores": scores,
            "token_ids": ids,
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, caption, input_signature=list(CAPTION_INPUTS))
    return archive


def saved_model_plan(run, name, warmup=None):
    """The `ExportPlan` of a captioning run (see `export_saved_model`)."""
    from mmzoo.export import saved_model as exporting

    examples = exporting._synthetic_warmup(run.image_size) if warmup is None else warmup
    examples = exporting._check_warmup(examples)
    archive = build_caption_module(run.model, run.image_size, run.resize)
    # beam_width is an input, not a shape: one width warms the one graph.
    requests = [
        _caption_request(name, [image for image, _ in batch], 3)
        for batch in exporting._batches(examples)
    ]

    def write_assets(extra):
        run.tokenizer.save(os.path.join(extra, exporting.TOKENIZER_FOLDER))

    outputs = {
        "max_length": run.model.max_length,
        "vocabulary_size": len(run.model.vocabulary),
    }

    def card(signatures, name, version, records):
        return exporting._model_card(run, signatures, name, version, records, outputs)

    return exporting.ExportPlan(archive, requests, write_assets, card)


def _caption_request(model_name, images, beam_width):
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = SIGNATURE
    request.inputs["image_bytes"].CopyFrom(
        tf.make_tensor_proto(list(images), dtype=tf.string, shape=[len(images)])
    )
    for key, value in (("beam_width", beam_width), ("max_length", 64)):
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value, tf.int32, shape=[]))
    return request
