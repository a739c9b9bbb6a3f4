"""The zoo's catalogue: every component and preset, as plain data.

Each image tower, text tower, fusion and task is registered here once, with
what it is (its traits) and where its code lives. Everything else asks the
registry: `build_model` reads a fusion's traits instead of testing its
name, the command line's choices and the benchmark lists are derived from
these tables, and the generic tests in `tests/` run over them, so a
component is built and tested the moment it is added here.

The code of a component is named by a `"module:attribute"` string and
imported only when it is built: importing this module imports neither
Keras nor TensorFlow, which keeps `mmzoo list` fast.

Adding a fusion is one module (a `mmzoo.fusion.Fusion` subclass) and one
`FusionSpec` below; see the README's "Adding a component".
"""

import dataclasses
import fnmatch
import importlib
from types import MappingProxyType

from mmzoo.checks import check_choice
from mmzoo.tasks import TASKS

__all__ = [
    "FUSIONS",
    "IMAGE_TOWERS",
    "PRESETS",
    "TASKS",
    "TEXT_TOWERS",
    "FusionSpec",
    "ImageTowerSpec",
    "TextTowerSpec",
    "check_choice",
    "fusion",
    "get_preset",
    "image_tower",
    "list_fusions",
    "list_image_towers",
    "list_losses",
    "list_models",
    "list_tasks",
    "list_text_towers",
    "resolve",
    "text_tower",
]


@dataclasses.dataclass(frozen=True)
class ImageTowerSpec:
    """An image tower: raw RGB pixels in, pooled features or a grid out.

    Attributes:
        name: the `image_tower=` name.
        description: one line for `mmzoo list`.
        application: the `keras.applications` constructor (without top),
            or `None` for a tower that `backbone` builds.
        backbone: for a tower that is not a keras.applications model,
            `"module:function"` building its backbone from `(image_size,
            filters, weights)`.
        preprocessing: the family's `preprocess_input` mode run inside the
            tower (`mmzoo.layers.ImagePreprocessing`), or `None` when the
            application (or backbone) rescales raw pixels in its own graph.
        large: several seconds to build on a CPU (tests mark it `slow`).
    """

    name: str
    description: str
    application: str | None = None
    backbone: str | None = None
    preprocessing: str | None = None
    large: bool = False


@dataclasses.dataclass(frozen=True)
class TextTowerSpec:
    """A text tower: token ids (or strings) in, a sequence and a vector out.

    Attributes:
        name: the `text_tower=` name.
        description: one line for `mmzoo list`.
        build: `"module:function"` building the tower as a `keras.Model`.
        arguments: the builder's keyword arguments, each mapped to the
            `build_model` argument that supplies it (or to a value
            `build_model` derives: see `mmzoo.builder.DERIVED`).
        takes: `"tokens"` (int32 ids, 0 is padding) or `"text"` (strings,
            tokenized inside the graph).
        sequence: the tower also returns per-token features
            (`"sequence"`), which token-level fusions attend over.
        tokenizer: what makes its ids: `"word"` (`WordTokenizer`, fitted on
            the training texts; the tower's vocabulary size follows it),
            `"wordpiece"` (the preset's `WordPieceTokenizer`) or `None`
            (strings go in as they are).
        portable: written with `keras.ops` only, so it builds on the JAX
            and PyTorch backends too.
        recurrent: it holds a recurrent layer, which TFLite's builtin
            WHILE op takes only with a fixed batch size.
    """

    name: str
    description: str
    build: str
    arguments: MappingProxyType
    takes: str = "tokens"
    sequence: bool = True
    tokenizer: str | None = "word"
    portable: bool = True
    recurrent: bool = False


@dataclasses.dataclass(frozen=True)
class FusionSpec:
    """A fusion: modality features in, fused features (or logits) out.

    Attributes:
        name: the `fusion=` name.
        description: one line for `mmzoo list`.
        layer: `"module:Class"` of its `mmzoo.fusion.Fusion` layer, or
            `None` for a unimodal baseline (its one modality's features go
            to the head as they are).
        arguments: the layer's keyword arguments, each mapped to the
            `build_model` argument that supplies it (or to a value
            `build_model` derives: see `mmzoo.builder.DERIVED`).
        modalities: the modalities it reads, in order: `("image", "text")`,
            or one of them for a unimodal baseline (which still takes both
            inputs, so every zoo model fits one pipeline and signature).
        image_grid: it takes the image's grid cells `(batch, cells, D)`
            instead of one pooled vector (the tower keeps its grid).
        text_sequence: it takes the text's tokens `(batch, steps, D)`,
            with their padding mask, instead of one pooled vector (it
            needs a text tower whose `sequence` trait is true).
        returns_logits: the layer ends in the task's logits (it holds its
            own heads), so the model adds no head after it (map an argument
            to `num_outputs` for the logits' width).
        modality_weights: the layer can report how much each modality
            counted (`layer.returns_weights` says whether a built layer
            does: late fusion only with `late_combine="learned"`).
        units: the `fusion_units` it gets when `build_model` is given none.
    """

    name: str
    description: str
    layer: str | None
    arguments: MappingProxyType = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )
    modalities: tuple = ("image", "text")
    image_grid: bool = False
    text_sequence: bool = False
    returns_logits: bool = False
    modality_weights: bool = False
    units: int = 256


def _frozen(mapping):
    return MappingProxyType(dict(mapping))


# The `build_model` arguments every trained-from-scratch text tower takes.
_EMBEDDING = {
    "vocab_size": "vocab_size",
    "embedding_dim": "embedding_dim",
    "embeddings": "text_embeddings",
    "vocabulary": "vocabulary",
    "trainable_embeddings": "trainable_embeddings",
    "trainable": "trainable_text_tower",
}

_APPLICATIONS = (
    ("vgg16", "VGG16", "caffe", False),
    ("vgg19", "VGG19", "caffe", True),
    ("resnet50", "ResNet50", "caffe", False),
    ("resnet101", "ResNet101", "caffe", True),
    ("resnet152", "ResNet152", "caffe", True),
    ("resnet50v2", "ResNet50V2", "tf", True),
    # MobileNetV3's and EfficientNet's `include_preprocessing` rescales raw
    # pixels inside the application's own graph.
    ("mobilenet_v3_small", "MobileNetV3Small", None, False),
    ("mobilenet_v3_large", "MobileNetV3Large", None, True),
    ("efficientnet_b0", "EfficientNetB0", None, True),
)

IMAGE_TOWERS = MappingProxyType(
    {
        **{
            name: ImageTowerSpec(
                name,
                f"keras.applications.{application}, without top",
                application=application,
                preprocessing=preprocessing,
                large=large,
            )
            for name, application, preprocessing, large in _APPLICATIONS
        },
        "small_cnn": ImageTowerSpec(
            "small_cnn",
            "conv / batch-norm / max-pool blocks for small images",
            backbone="mmzoo.towers.image:small_cnn",
        ),
    }
)

TEXT_TOWERS = MappingProxyType(
    {
        "bow": TextTowerSpec(
            "bow",
            "bag of words: embedding + masked mean",
            "mmzoo.towers.text:bow_tower",
            _frozen(_EMBEDDING),
        ),
        "cnn": TextTowerSpec(
            "cnn",
            "parallel n-gram convolutions, masked max over time (Kim 2014)",
            "mmzoo.towers.text:cnn_tower",
            _frozen(
                {
                    **_EMBEDDING,
                    "units": "text_units",
                    "kernel_sizes": "text_kernel_sizes",
                    "dropout": "text_dropout",
                }
            ),
        ),
        "bilstm": TextTowerSpec(
            "bilstm",
            "bidirectional LSTM, masked mean",
            "mmzoo.towers.text:bilstm_tower",
            _frozen({**_EMBEDDING, "units": "text_units", "dropout": "text_dropout"}),
            recurrent=True,
        ),
        "transformer": TextTowerSpec(
            "transformer",
            "position embedding + masked transformer encoder blocks",
            "mmzoo.towers.text:transformer_tower",
            _frozen(
                {
                    **_EMBEDDING,
                    "max_tokens": "max_tokens",
                    "units": "text_units",
                    "num_layers": "text_layers",
                    "num_heads": "text_heads",
                    "dropout": "text_dropout",
                }
            ),
        ),
        "bert": TextTowerSpec(
            "bert",
            "a pretrained BERT-family encoder from a keras-hub preset",
            "mmzoo.towers.pretrained:bert_tower",
            _frozen({"preset": "text_preset", "trainable": "trainable_text_tower"}),
            tokenizer="wordpiece",
            portable=False,
        ),
        "hub": TextTowerSpec(
            "hub",
            "a TF-Hub text-embedding SavedModel (strings in)",
            "mmzoo.towers.pretrained:hub_tower",
            _frozen({"hub_handle": "hub_handle", "trainable": "trainable_text_tower"}),
            takes="text",
            sequence=False,
            tokenizer=None,
            portable=False,
        ),
    }
)

_UNITS = {"units": "fusion_units"}

FUSIONS = MappingProxyType(
    {
        "concat": FusionSpec(
            "concat",
            "early fusion: concatenation + projection",
            "mmzoo.fusion.pooled:ConcatFusion",
            _frozen(_UNITS),
        ),
        "weighted_sum": FusionSpec(
            "weighted_sum",
            "projections summed with fixed or learned weights",
            "mmzoo.fusion.pooled:WeightedSumFusion",
            _frozen({**_UNITS, "modality_weights": "fusion_weights"}),
            modality_weights=True,
        ),
        "gated": FusionSpec(
            "gated",
            "Gated Multimodal Unit (Arevalo et al. 2017)",
            "mmzoo.fusion.pooled:GatedFusion",
            _frozen(_UNITS),
            modality_weights=True,
        ),
        "modality_attention": FusionSpec(
            "modality_attention",
            "softmax attention over the modalities",
            "mmzoo.fusion.pooled:ModalityAttentionFusion",
            _frozen(_UNITS),
            modality_weights=True,
        ),
        "cross_attention": FusionSpec(
            "cross_attention",
            "bidirectional co-attention between grid cells and tokens",
            "mmzoo.fusion.cross_attention:CrossAttentionFusion",
            _frozen(
                {
                    **_UNITS,
                    "num_heads": "fusion_heads",
                    "num_layers": "fusion_layers",
                    "dropout": "fusion_dropout",
                }
            ),
            image_grid=True,
            text_sequence=True,
            # Co-attention costs units^2 per image cell and token: at 256 it
            # nearly doubled MobileNetV3-Small's FLOPs (0.105 GFLOP against
            # the tower's 0.116), at 128 it costs a quarter of that.
            units=128,
        ),
        "bilinear": FusionSpec(
            "bilinear",
            "low-rank bilinear pooling (MFB, Yu et al. 2017)",
            "mmzoo.fusion.pooled:BilinearFusion",
            _frozen({**_UNITS, "rank": "fusion_rank", "dropout": "fusion_dropout"}),
        ),
        "film": FusionSpec(
            "film",
            "the text scales and shifts the image's channels (Perez et al. 2018)",
            "mmzoo.fusion.film:FiLMFusion",
            _frozen({**_UNITS, "dropout": "fusion_dropout"}),
            image_grid=True,
        ),
        "late": FusionSpec(
            "late",
            "a head per modality, logits combined",
            "mmzoo.fusion.late:LateFusion",
            _frozen(
                {
                    **_UNITS,
                    "num_outputs": "num_outputs",
                    "combine": "late_combine",
                    "dropout": "fusion_dropout",
                }
            ),
            returns_logits=True,
            modality_weights=True,
        ),
        "image_only": FusionSpec(
            "image_only",
            "unimodal baseline: the image alone",
            None,
            modalities=("image",),
        ),
        "text_only": FusionSpec(
            "text_only",
            "unimodal baseline: the text alone",
            None,
            modalities=("text",),
        ),
    }
)

# Each preset names its three components plus any keyword overrides; every
# keyword given to `build_model` goes on top of these.
PRESETS = MappingProxyType(
    {
        "small_cnn_bow_concat": {
            "description": "Small CNN + bag of words, concatenated (fast baseline).",
            "image_tower": "small_cnn",
            "text_tower": "bow",
            "fusion": "concat",
            "image_size": 64,
        },
        "small_cnn_bow_gated": {
            "description": "Small CNN + bag of words, Gated Multimodal Unit.",
            "image_tower": "small_cnn",
            "text_tower": "bow",
            "fusion": "gated",
            "image_size": 64,
        },
        "small_cnn_transformer_cross_attention": {
            "description": "Small CNN grid + transformer tokens, co-attention.",
            "image_tower": "small_cnn",
            "text_tower": "transformer",
            "fusion": "cross_attention",
            "image_size": 64,
        },
        "small_cnn_bow_image_only": {
            "description": "Unimodal image baseline (small CNN).",
            "image_tower": "small_cnn",
            "text_tower": "bow",
            "fusion": "image_only",
            "image_size": 64,
        },
        "small_cnn_bow_text_only": {
            "description": "Unimodal text baseline (bag of words).",
            "image_tower": "small_cnn",
            "text_tower": "bow",
            "fusion": "text_only",
            "image_size": 64,
        },
        "vgg16_bilstm_concat": {
            "description": "VGG16 + BiLSTM, concatenated and projected.",
            "image_tower": "vgg16",
            "text_tower": "bilstm",
            "fusion": "concat",
        },
        "vgg16_transformer_cross_attention": {
            "description": "VGG16 grid + transformer tokens, co-attention.",
            "image_tower": "vgg16",
            "text_tower": "transformer",
            "fusion": "cross_attention",
        },
        "resnet50_transformer_gated": {
            "description": "ResNet50 + transformer, Gated Multimodal Unit.",
            "image_tower": "resnet50",
            "text_tower": "transformer",
            "fusion": "gated",
        },
        "resnet50_cnn_bilinear": {
            "description": "ResNet50 + Kim CNN, low-rank bilinear pooling (MFB).",
            "image_tower": "resnet50",
            "text_tower": "cnn",
            "fusion": "bilinear",
        },
        "resnet50_bow_late": {
            "description": "ResNet50 + bag of words, late fusion of two heads.",
            "image_tower": "resnet50",
            "text_tower": "bow",
            "fusion": "late",
        },
        "mobilenet_v3_small_cnn_modality_attention": {
            "description": "MobileNetV3-Small + Kim CNN, attention over modalities.",
            "image_tower": "mobilenet_v3_small",
            "text_tower": "cnn",
            "fusion": "modality_attention",
        },
        "efficientnet_b0_transformer_weighted_sum": {
            "description": "EfficientNet-B0 + transformer, learned weighted sum.",
            "image_tower": "efficientnet_b0",
            "text_tower": "transformer",
            "fusion": "weighted_sum",
        },
    }
)


def image_tower(name):
    """The `ImageTowerSpec` registered as `name` (ValueError if none)."""
    check_choice("image_tower", name, IMAGE_TOWERS)
    return IMAGE_TOWERS[name]


def text_tower(name):
    """The `TextTowerSpec` registered as `name` (ValueError if none)."""
    check_choice("text_tower", name, TEXT_TOWERS)
    return TEXT_TOWERS[name]


def fusion(name):
    """The `FusionSpec` registered as `name` (ValueError if none)."""
    check_choice("fusion", name, FUSIONS)
    return FUSIONS[name]


def resolve(path):
    """The object a `"module:attribute"` string names, imported now."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _matching(names, pattern):
    if pattern is None:
        return sorted(names)
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def list_models(pattern=None):
    """Names of the presets, optionally filtered by a glob such as `"*gated*"`."""
    return _matching(PRESETS, pattern)


def list_image_towers(pattern=None):
    """Names of the image towers, optionally filtered by a glob."""
    return _matching(IMAGE_TOWERS, pattern)


def list_text_towers(pattern=None):
    """Names of the text towers, optionally filtered by a glob."""
    return _matching(TEXT_TOWERS, pattern)


def list_fusions(pattern=None):
    """Names of the fusions (and unimodal baselines), optionally filtered."""
    return _matching(FUSIONS, pattern)


def list_tasks(pattern=None):
    """Names of the tasks (`build_model(task=...)`), optionally filtered."""
    return _matching(TASKS, pattern)


def list_losses(pattern=None):
    """Names of the losses a contrastive task trains with (`loss=`)."""
    return _matching({name for task in TASKS.values() for name in task.losses}, pattern)


def get_preset(name):
    """The preset's components and overrides, as a new dict."""
    check_choice("preset", name, PRESETS)
    config = dict(PRESETS[name])
    config.pop("description")
    return config
