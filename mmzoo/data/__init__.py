"""Input pipelines: manifests of images + text + labels to tf.data.

`make_dataset` turns a manifest (CSV, JSONL or TFRecord shards) into a
tf.data pipeline feeding a model's `image` and `tokens` inputs;
`check_manifest` finds bad rows; `WordTokenizer` and `WordPieceTokenizer`
turn text into token ids; `easy_vqa()` writes the built-in dataset's
manifests.

Data flows one way through the modules: `manifest` (the data model) <-
`sources` (a reader per format, `read_manifest`) <- `check` <- `dataset`,
with `tfrecord` (the writer) above `check`, and `images` (bytes to pixels,
the header checks) beside them all.

The names below are imported on first use: most of them import TensorFlow,
which `mmzoo.data.manifest` (and so `mmzoo list`) does not need.
"""

from mmzoo._lazy import lazy_exports

_EXPORTS = {
    "COLUMNS": "manifest",
    "REASONS": "manifest",
    "LabelVocabulary": "manifest",
    "Manifest": "manifest",
    "ManifestError": "manifest",
    "Problem": "manifest",
    "read_manifest": "sources",
    "DataError": "check",
    "DataReport": "check",
    "check_manifest": "check",
    "make_dataset": "dataset",
    "easy_vqa": "builtin",
    "write_tfrecords": "tfrecord",
    "WordTokenizer": "tokenizers",
    "WordPieceTokenizer": "tokenizers",
    "load_tokenizer": "tokenizers",
    "PythonWordTokenizer": "pure_python_tokenizer",
    "build_vocabulary": "pure_python_tokenizer",
    "ImageInfo": "images",
    "check_image": "images",
    "check_encoded_image": "images",
    "inspect_image": "images",
    "load_image": "images",
    "load_images": "images",
    "prepare_image": "images",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
