"""Export for serving: SavedModels for TF Serving, and requests to them.

`export_saved_model(run)` writes a trained run as a numbered version under
TF Serving's model base folder (`savedmodels/<name>/<version>/`), with a
`serving_default` signature that takes encoded image files and raw texts and
decodes, resizes and tokenizes them inside the graph exactly as training
did. `rest_request` and `grpc_request` build requests for it.

`export_tflite(run, "app/model.tflite", quantize=...)` writes a LiteRT file
(builtin ops only; decoding and tokenization stay in the app, which gets the
labels, the vocabulary and the pure-Python tokenizer beside the file), and
`parity` checks it against the Keras model in the LiteRT interpreter.

A contrastive run (a dual encoder) exports as its two encoders: SavedModel
signatures `embed_image` and `embed_text` (and, given an index,
`search_by_text` / `search_by_image`; `encoder_rest_request` and
`encoder_grpc_request` call them), and one TFLite file per encoder, which
`retrieval_parity` checks.

An ensemble of runs (`mmzoo.ensemble`) exports as one SavedModel whose
`serving_default` takes the raw inputs once and preprocesses them for each
member in the graph, and as one TFLite file taking every member's inputs
(`mmzoo.export.ensemble`).

The names below are imported on first use, so importing `mmzoo.export` does
not import TensorFlow.
"""

from mmzoo._lazy import lazy_exports

_EXPORTS = {
    "build_encoder_module": "saved_model",
    "build_ensemble_module": "ensemble",
    "export_ensemble_tflite": "ensemble",
    "build_serving_module": "saved_model",
    "export_saved_model": "saved_model",
    "write_models_config": "saved_model",
    "encoder_grpc_request": "serving",
    "encoder_rest_request": "serving",
    "encoder_models": "encoders",
    "grpc_request": "serving",
    "read_warmup_requests": "serving",
    "rest_request": "serving",
    "convert": "tflite",
    "export_tflite": "tflite",
    "parity": "tflite",
    "retrieval_parity": "tflite",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
