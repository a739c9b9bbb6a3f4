"""What both exports of a dual encoder take from the run: its two halves as
models with named inputs and outputs, and a checked search index.

A contrastive run's model (`mmzoo.DualEncoder`) is exported as two
encoders, not as one prediction per image and text: the SavedModel's
`embed_image` / `embed_text` signatures and the TFLite export's
`<stem>.image.tflite` / `<stem>.text.tflite` files each run one half.
`encoder_models` gives those halves with the dict inputs and outputs that
name the signatures' tensors (`{"image"} -> {"image_embedding"}`,
`{"tokens"} -> {"text_embedding"}`), sharing the trained weights.

A SavedModel exported with an index also searches it; `check_index`
refuses an index the model cannot search (another width, no rows, ids
that do not match the rows) before anything is built. An index is any
object with the attributes of `mmzoo.retrieval.Index`: `embeddings` (a
NumPy `(n, d)` float32 or float16 array), `ids` (one str per row),
`modality` (`"image"` or `"text"`: what the rows embed) and `fingerprint`
(a str naming the index's contents).

Importing this module does not import Keras or TensorFlow (the command
line's parser reads `mmzoo.export.tflite`, which imports it).
"""

import dataclasses

import numpy as np

from mmzoo.checks import check_choice

MODALITIES = ("image", "text")
EMBEDDINGS = {"image": "image_embedding", "text": "text_embedding"}


def encoder_models(model):
    """The image and the text half of a dual encoder, with named tensors.

    Args:
        model: a dual encoder (`mmzoo.build_dual_encoder`, or a contrastive
            run's model): inputs `image` and `tokens` (or `text`), outputs
            `image_embedding` and `text_embedding`.

    Returns:
        `{"image": keras.Model({"image"} -> {"image_embedding"}), "text":
        keras.Model({"tokens"} or {"text"} -> {"text_embedding"})}`,
        sharing the model's weights.

    Example:

    >>> halves = encoder_models(run.model)
    >>> halves["text"]({"tokens": run.tokenizer(["a red picture"])})
    {'text_embedding': <tf.Tensor: shape=(1, 16), dtype=float32, ...>}
    """
    import keras

    inputs = getattr(model, "input", None)
    outputs = getattr(model, "output", None)
    names = set(inputs) if isinstance(inputs, dict) else set()
    returned = set(outputs) if isinstance(outputs, dict) else set()
    if (
        "image" not in names
        or not names & {"tokens", "text"}
        or not set(EMBEDDINGS.values()) <= returned
    ):
        raise ValueError(
            "A dual encoder takes a dict of inputs {'image', 'tokens'} (or "
            "{'image', 'text'}) and returns {'image_embedding', "
            "'text_embedding'}, as mmzoo.build_dual_encoder builds. Received: "
            f"inputs {sorted(names) or inputs}, outputs {sorted(returned) or outputs}"
        )
    text = "tokens" if "tokens" in names else "text"
    return {
        "image": keras.Model(
            {"image": inputs["image"]},
            {"image_embedding": outputs["image_embedding"]},
            name="image_encoder",
        ),
        "text": keras.Model(
            {text: inputs[text]},
            {"text_embedding": outputs["text_embedding"]},
            name="text_encoder",
        ),
    }


def embedding_width(model):
    """The width of a dual encoder's shared space."""
    return int(model.output["image_embedding"].shape[-1])


@dataclasses.dataclass(frozen=True)
class CheckedIndex:
    """An index's rows as an export holds them.

    Attributes:
        embeddings: float32 `(n, d)`, as given (not normalised).
        ids: a list of `n` str.
        modality: `"image"` or `"text"`.
        fingerprint: the index's fingerprint (`None`: unknown).
        dtype: the dtype the index stored its embeddings in.
    """

    embeddings: np.ndarray
    ids: list
    modality: str
    fingerprint: object
    dtype: str

    def card(self):
        """What a model card says about the index."""
        return {
            "size": len(self.ids),
            "width": int(self.embeddings.shape[1]),
            "modality": self.modality,
            "fingerprint": self.fingerprint,
            "dtype": self.dtype,
        }


def check_index(index, width):
    """An index's rows, once they are shown to be searchable by a model.

    Args:
        index: a `mmzoo.retrieval.Index`, or any object with its attributes
            `embeddings`, `ids`, `modality` and `fingerprint`.
        width: the model's embedding width.

    Returns:
        A `CheckedIndex`.

    Raises:
        ValueError: an attribute is missing or of the wrong kind, the index
            is empty, its width is not `width`, it holds NaN or infinite
            values, or it has not one id per row.
    """
    missing = [
        name
        for name in ("embeddings", "ids", "modality", "fingerprint")
        if not hasattr(index, name)
    ]
    if missing:
        raise ValueError(
            "`index` must be a mmzoo.retrieval.Index (attributes `embeddings`, "
            f"`ids`, `modality`, `fingerprint`). Received: a {type(index).__name__} "
            f"without {', '.join(f'`{name}`' for name in missing)}"
        )
    embeddings = index.embeddings
    dtype = getattr(embeddings, "dtype", None)
    if not isinstance(embeddings, np.ndarray) or dtype not in (
        np.float32,
        np.float16,
    ):
        raise ValueError(
            "`index.embeddings` must be a NumPy array of float32 or float16. "
            f"Received: {type(embeddings).__name__} of dtype {dtype}"
        )
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(
            "`index` is empty or not a matrix: its embeddings must have shape "
            f"(n, {width}) with n >= 1. Received: shape {embeddings.shape}"
        )
    if embeddings.shape[1] != width:
        raise ValueError(
            f"`index` holds embeddings of width {embeddings.shape[1]}, but the "
            f"model embeds into {width} dimensions: it was built by another model."
        )
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("`index.embeddings` holds NaN or infinite values.")
    ids = list(index.ids)
    if len(ids) != len(embeddings) or not all(isinstance(i, str) for i in ids):
        raise ValueError(
            f"`index.ids` must hold one str per row ({len(embeddings)}). "
            f"Received: {len(ids)} ids"
            + ("" if all(isinstance(i, str) for i in ids) else ", not all str")
        )
    check_choice("index.modality", index.modality, MODALITIES)
    if index.fingerprint is not None and not isinstance(index.fingerprint, str):
        raise ValueError(
            "`index.fingerprint` must be a str or None. Received: "
            f"{type(index.fingerprint).__name__}"
        )
    return CheckedIndex(
        embeddings.astype(np.float32),
        ids,
        index.modality,
        index.fingerprint,
        np.dtype(dtype).name,
    )
