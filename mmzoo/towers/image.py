"""Image towers: keras.applications backbones and a small CNN."""

import os

import keras

from mmzoo import registry
from mmzoo.checks import check_choice
from mmzoo.layers import BatchNormalization
from mmzoo.layers import ImagePreprocessing

POOLINGS = ("avg", "max", None)
MIN_IMAGE_SIZE = 32


def build_image_tower(
    name="small_cnn",
    image_size=224,
    weights=None,
    pooling="avg",
    trainable=True,
    trainable_layers=None,
    filters=(32, 64, 128),
):
    """Build an image tower: raw RGB pixels in, features out.

    Args:
        name: one of `mmzoo.list_image_towers()`.
        image_size: height and width of the square input, at least 32.
        weights: `None` (random), `"imagenet"` (downloads keras.applications'
            weights) or the path to a local weights file for the backbone.
        pooling: `"avg"` or `"max"` give (batch, D) features; `None` keeps the
            (batch, h, w, D) grid, which cross-attention fusion needs.
        trainable: `False` freezes the whole tower.
        trainable_layers: fine-tune only the top N layers of the backbone,
            freezing the rest. `None` leaves every layer trainable.
        filters: `small_cnn` only: filters of its conv blocks, each followed
            by a 2x2 max-pool.

    Returns:
        A functional `keras.Model` named `"image_tower"`, input `image`.

    Example:

    >>> tower = build_image_tower("small_cnn", image_size=64)
    >>> tower.output.shape
    (None, 128)
    """
    spec = registry.image_tower(name)
    check_choice("image_pooling", pooling, POOLINGS)
    check_image_size(image_size)
    if weights is not None and weights != "imagenet":
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                "`image_weights` must be None, 'imagenet' or the path of a "
                f"weights file. Received: image_weights={weights!r}, which "
                "is not a file."
            )
    if trainable_layers is not None and (
        not isinstance(trainable_layers, int) or trainable_layers < 0
    ):
        raise ValueError(
            "`image_trainable_layers` must be None or a non-negative integer. "
            f"Received: image_trainable_layers={trainable_layers!r}"
        )

    image = keras.Input((image_size, image_size, 3), name="image")
    if spec.application is None:
        backbone = registry.resolve(spec.backbone)(image_size, filters, weights)
        x = backbone(image)
    else:
        x = image
        if spec.preprocessing is not None:
            x = ImagePreprocessing(spec.preprocessing, name="preprocessing")(x)
        backbone = getattr(keras.applications, spec.application)(
            include_top=False,
            weights=weights,
            input_shape=(image_size, image_size, 3),
            pooling=None,
        )
        x = backbone(x)
    if pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)

    _set_trainable(backbone, trainable, trainable_layers)
    return keras.Model(image, x, name="image_tower")


def check_image_size(image_size):
    """Raise a ValueError unless `image_size` is an integer of at least 32."""
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"`image_size` must be an integer of at least {MIN_IMAGE_SIZE}. "
            f"Received: image_size={image_size!r}"
        )


def small_cnn(image_size, filters=(32, 64, 128), weights=None):
    """The `small_cnn` backbone: conv / batch-norm / ReLU / 2x2 max-pool
    blocks of `filters` channels each, on pixels rescaled to [0, 1]."""
    if weights == "imagenet":
        raise ValueError(
            "`small_cnn` has no pretrained weights: use image_weights=None or "
            "a local weights file. Received: image_weights='imagenet'"
        )
    if not filters or 2 ** len(filters) > image_size:
        raise ValueError(
            f"`small_cnn` halves the image {len(filters)} times, which needs "
            f"an image of at least {2 ** len(filters)} pixels. Received: "
            f"image_size={image_size}, filters={filters}"
        )
    image = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescaling")(image)
    for block, width in enumerate(filters, start=1):
        x = keras.layers.Conv2D(
            width, 3, padding="same", use_bias=False, name=f"block{block}_conv"
        )(x)
        x = BatchNormalization(name=f"block{block}_bn")(x)
        x = keras.layers.Activation("relu", name=f"block{block}_relu")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    model = keras.Model(image, x, name="small_cnn")
    if weights is not None:
        model.load_weights(weights)
    return model


def _set_trainable(backbone, trainable, trainable_layers):
    if not trainable:
        backbone.trainable = False
        return
    if trainable_layers is None:
        return
    layers = backbone.layers
    cutoff = max(len(layers) - trainable_layers, 0)
    for index, layer in enumerate(layers):
        layer.trainable = index >= cutoff
