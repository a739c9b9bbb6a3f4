"""The zoo's catalogue: component names, presets, and choice validation.

Presets are plain data. `build_model` and every `list_*` function read the
same tables, so a preset or component registered here is built and tested
the moment it is added (tests/test_zoo.py is driven by these tables).
"""

import difflib
import fnmatch

IMAGE_TOWERS = (
    "vgg16",
    "vgg19",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet50v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "small_cnn",
)

TEXT_TOWERS = (
    "bow",
    "cnn",
    "bilstm",
    "transformer",
    "bert",
    "hub",
)

FUSIONS = (
    "concat",
    "weighted_sum",
    "gated",
    "modality_attention",
    "cross_attention",
    "bilinear",
    "late",
    "image_only",
    "text_only",
)

TASKS = ("multiclass", "multilabel", "binary", "regression")

# Each preset names its three components plus any keyword overrides; every
# keyword given to `build_model` goes on top of these.
PRESETS = {
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


def check_choice(argument, value, choices):
    """Raise a ValueError naming the valid choices and the closest matches.

    Example:

    >>> check_choice("fusion", "gated", FUSIONS)
    >>> check_choice("fusion", "gatd", FUSIONS)
    Traceback (most recent call last):
    ...
    ValueError: `fusion` must be one of [...]. Received: fusion='gatd'. Did you
    mean 'gated'?
    """
    if value in choices:
        return
    message = (
        f"`{argument}` must be one of {sorted(choices, key=str)}. "
        f"Received: {argument}={value!r}."
    )
    if isinstance(value, str):
        names = [choice for choice in choices if isinstance(choice, str)]
        close = difflib.get_close_matches(value, names, n=3, cutoff=0.6)
        if close:
            message += " Did you mean " + " or ".join(map(repr, close)) + "?"
    raise ValueError(message)


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


def get_preset(name):
    """The preset's components and overrides, as a new dict."""
    check_choice("preset", name, PRESETS)
    config = dict(PRESETS[name])
    config.pop("description")
    return config
