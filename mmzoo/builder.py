"""`build_model`: the zoo's front door."""

import difflib

import keras

from mmzoo import heads
from mmzoo.fusion import BilinearFusion
from mmzoo.fusion import ConcatFusion
from mmzoo.fusion import CrossAttentionFusion
from mmzoo.fusion import GatedFusion
from mmzoo.fusion import LateFusion
from mmzoo.fusion import ModalityAttentionFusion
from mmzoo.fusion import WeightedSumFusion
from mmzoo.fusion.late import COMBINES as LATE_COMBINES
from mmzoo.layers import ModalityDropout
from mmzoo.layers import PaddingMask
from mmzoo.registry import FUSIONS
from mmzoo.registry import IMAGE_TOWERS
from mmzoo.registry import TEXT_TOWERS
from mmzoo.registry import check_choice
from mmzoo.registry import get_preset
from mmzoo.towers import build_image_tower
from mmzoo.towers import build_text_tower
from mmzoo.towers.image import check_image_size

# Every argument `build_model` takes, with its default. A preset overrides
# some of these; keywords given to `build_model` override both.
DEFAULTS = {
    # Components.
    "image_tower": "small_cnn",
    "text_tower": "bow",
    "fusion": "concat",
    # Task and head.
    "task": "multiclass",
    "num_classes": None,
    "head_units": (256,),
    "dropout": 0.2,
    "modality_dropout": 0.0,
    # Image tower.
    "image_size": 224,
    "image_weights": None,
    "image_pooling": "auto",
    "freeze_image_tower": False,
    "image_trainable_layers": None,
    "image_filters": (32, 64, 128),
    # Text tower.
    "vocab_size": 20000,
    "max_tokens": 64,
    "embedding_dim": 128,
    "text_units": 128,
    "text_layers": 2,
    "text_heads": 4,
    "text_dropout": 0.1,
    "text_kernel_sizes": (3, 4, 5),
    "text_embeddings": None,
    "vocabulary": None,
    "freeze_embeddings": False,
    "text_preset": None,
    "hub_handle": None,
    "freeze_text_tower": False,
    # Fusion.
    "fusion_units": 256,
    "fusion_heads": 4,
    "fusion_layers": 1,
    "fusion_rank": 4,
    "fusion_dropout": 0.1,
    "fusion_weights": None,
    "late_combine": "average",
    # Model.
    "seed": None,
    "compile": True,
    "learning_rate": 1e-3,
    "name": None,
}

SEQUENCE_FUSIONS = ("cross_attention",)


def build_model(preset=None, /, **arguments):
    """Build a multimodal image + text model as a Keras functional model.

    Two ways in: a preset name (`mmzoo.list_models()`), with keyword
    overrides on top, or components by name.

    Args:
        preset: a preset name, or `None` to name the components.
        image_tower: one of `mmzoo.list_image_towers()`, default
            `small_cnn`; or a `keras.Model` of your own mapping raw
            (batch, image_size, image_size, 3) pixels to (batch, D) features
            (or a (batch, h, w, D) grid for cross-attention), used as is.
        text_tower: one of `mmzoo.list_text_towers()`. Default `bow`.
        fusion: one of `mmzoo.list_fusions()`. Default `concat`.
        task: `multiclass` (softmax), `multilabel` (sigmoid per class),
            `binary` (one sigmoid) or `regression` (linear).
        num_classes: classes (or regression targets).
        head_units: widths of the head's hidden layers. Default `(256,)`.
        dropout: dropout after each hidden head layer. Default 0.2.
        modality_dropout: probability that a training example loses its
            image or its text (see `mmzoo.layers.ModalityDropout`).
        image_size: input height and width, at least 32. Default 224.
        image_weights: `None`, `"imagenet"` or a local weights file.
        image_pooling: `"avg"`, `"max"` or `None` (keep the grid). Default:
            `None` for cross-attention, `"avg"` otherwise.
        freeze_image_tower: freeze the whole image tower.
        image_trainable_layers: fine-tune only the backbone's top N layers.
        image_filters: `small_cnn` conv block widths. Default (32, 64, 128).
        vocab_size: token ids, padding and OOV included. Default 20000.
        max_tokens: token sequence length of the `tokens` input. Default 64.
        embedding_dim, text_units, text_layers, text_heads, text_dropout,
        text_kernel_sizes: text tower sizes (`mmzoo.towers.build_text_tower`).
        text_embeddings: a GloVe-format vector file for the embeddings.
        vocabulary: the tokens in id order (list or file), for GloVe.
        freeze_embeddings: keep the embeddings fixed.
        text_preset: `bert` tower: a keras-hub preset (local directory).
        hub_handle: `hub` tower: a TF-Hub text-embedding module.
        freeze_text_tower: freeze the whole text tower.
        fusion_units: width of the fused features. Default 256.
        fusion_heads, fusion_layers: cross-attention heads and layers.
        fusion_rank: bilinear fusion's factors per unit. Default 4.
        fusion_dropout: dropout inside the fusion layer. Default 0.1.
        fusion_weights: weighted sum: fixed λ per modality, or `None` to
            learn them.
        late_combine: late fusion: `average`, `learned` or `stacking`.
        seed: seed for the model's random layers (modality dropout).
        compile: compile with Adam, the task's loss and a metric.
        learning_rate: Adam's learning rate when compiling. Default 1e-3.
        name: the model's name. Default: the preset or the components.

    Returns:
        A `keras.Model` with named inputs `image` (batch, H, W, 3; raw 0-255
        RGB) and `tokens` (batch, max_tokens; int32; 0 is padding), or `text`
        (strings) for the `hub` tower. Unimodal baselines take both inputs
        and ignore one. Its outputs are the dict `{"probabilities": ...}`
        (`"predictions"` for regression), plus `"modality_weights"` (batch,
        2) in [image, text] order for fusions that compute them. Outputs are
        float32 under any mixed-precision policy.

    Examples:

    >>> model = mmzoo.build_model("small_cnn_bow_gated", num_classes=13)
    >>> model = mmzoo.build_model(
    ...     image_tower="small_cnn", text_tower="transformer",
    ...     fusion="cross_attention", num_classes=13, image_size=64,
    ...     max_tokens=16, vocab_size=1000)
    >>> sorted(model.output)
    ['probabilities']
    """
    config = _resolve(preset, arguments)
    task = config["task"]
    output_name = heads.output_name(task)
    outputs_width = heads.num_outputs(task, config["num_classes"])
    fusion = config["fusion"]
    uses_image = fusion != "text_only"
    uses_text = fusion != "image_only"
    pooling = _image_pooling(config)

    # Unimodal baselines take both inputs too (ignoring one), so that every
    # zoo model fits the same data pipeline and serving signature.
    size = config["image_size"]
    check_image_size(size)
    inputs = {"image": keras.Input((size, size, 3), name="image")}
    if config["text_tower"] == "hub":
        inputs["text"] = keras.Input((), dtype="string", name="text")
    else:
        inputs["tokens"] = keras.Input(
            (config["max_tokens"],), dtype="int32", name="tokens"
        )
    image = inputs.get("image")
    tokens = inputs.get("tokens")

    if config["modality_dropout"]:
        if not (uses_image and uses_text and tokens is not None):
            raise ValueError(
                "`modality_dropout` blanks the image or the token ids of an "
                "example, so it needs both; it does not apply to "
                f"fusion={fusion!r} with text_tower={config['text_tower']!r}. "
                f"Received: modality_dropout={config['modality_dropout']}"
            )
        image, tokens = ModalityDropout(
            config["modality_dropout"], seed=config["seed"], name="modality_dropout"
        )([image, tokens])

    features = []
    if uses_image:
        tower = config["image_tower"]
        if isinstance(tower, str):
            tower = build_image_tower(
                tower,
                image_size=config["image_size"],
                weights=config["image_weights"],
                pooling=pooling,
                trainable=not config["freeze_image_tower"],
                trainable_layers=config["image_trainable_layers"],
                filters=config["image_filters"],
            )
        else:
            _check_custom_image_tower(tower, pooling, fusion)
        features.append(tower(image))
    text_mask = None
    if uses_text:
        tower = build_text_tower(
            config["text_tower"],
            vocab_size=config["vocab_size"],
            max_tokens=config["max_tokens"],
            embedding_dim=config["embedding_dim"],
            units=config["text_units"],
            num_layers=config["text_layers"],
            num_heads=config["text_heads"],
            dropout=config["text_dropout"],
            kernel_sizes=config["text_kernel_sizes"],
            embeddings=config["text_embeddings"],
            vocabulary=config["vocabulary"],
            trainable_embeddings=not config["freeze_embeddings"],
            preset=config["text_preset"],
            hub_handle=config["hub_handle"],
            trainable=not config["freeze_text_tower"],
        )
        text = tower(tokens if tokens is not None else inputs["text"])
        if fusion in SEQUENCE_FUSIONS:
            if "sequence" not in text:
                raise ValueError(
                    f"fusion={fusion!r} attends over the text's tokens, but "
                    f"text_tower={config['text_tower']!r} gives one vector per "
                    "text. Use a token-level text tower: "
                    f"{[t for t in TEXT_TOWERS if t != 'hub']}"
                )
            text_mask = PaddingMask(name="text_mask")(tokens)
            features.append(text["sequence"])
        else:
            features.append(text["pooled"])

    weights = None
    if fusion in ("image_only", "text_only"):
        (fused,) = features
    else:
        if fusion in SEQUENCE_FUSIONS:
            cells = features[0]
            features[0] = keras.layers.Reshape(
                (cells.shape[1] * cells.shape[2], cells.shape[3]), name="image_cells"
            )(cells)
        layer = _fusion_layer(fusion, config, outputs_width)
        fused = (
            layer(features, masks=[None, text_mask])
            if text_mask is not None
            else layer(features)
        )
        if layer.returns_weights:
            fused, weights = fused

    if fusion == "late":
        logits = fused
    else:
        x = heads.hidden_layers(fused, config["head_units"], config["dropout"])
        logits = keras.layers.Dense(outputs_width, name="logits")(x)
    outputs = {output_name: heads.output_layer(logits, task)}
    if weights is not None:
        outputs["modality_weights"] = keras.layers.Activation(
            "linear", dtype="float32", name="modality_weights"
        )(weights)

    image_name = config["image_tower"]
    if not isinstance(image_name, str):
        image_name = image_name.name
    name = (
        config["name"] or preset or "_".join((image_name, config["text_tower"], fusion))
    )
    model = keras.Model(inputs, outputs, name=name)
    if config["compile"]:
        model.compile(**heads.default_compile_arguments(task, config["learning_rate"]))
    return model


def _resolve(preset, arguments):
    unknown = sorted(set(arguments) - set(DEFAULTS))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, DEFAULTS, n=1)
            hints.append(
                f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            )
        raise TypeError(
            "build_model() got unexpected keyword argument(s): "
            + ", ".join(hints)
            + f". Valid arguments: {sorted(DEFAULTS)}"
        )
    config = dict(DEFAULTS)
    if preset is not None:
        config.update(get_preset(preset))
    config.update(arguments)
    if not isinstance(config["image_tower"], keras.Model):
        check_choice("image_tower", config["image_tower"], IMAGE_TOWERS)
    check_choice("text_tower", config["text_tower"], TEXT_TOWERS)
    check_choice("fusion", config["fusion"], FUSIONS)
    check_choice("late_combine", config["late_combine"], LATE_COMBINES)
    return config


def _check_custom_image_tower(tower, pooling, fusion):
    rank = 4 if pooling is None else 2
    shape = tuple(tower.output.shape) if hasattr(tower, "output") else None
    if shape is None or len(shape) != rank:
        kind = "a (batch, h, w, D) grid" if rank == 4 else "(batch, D) features"
        raise ValueError(
            f"fusion={fusion!r} needs an image tower giving {kind}. Received: "
            f"image_tower {tower.name!r} with output shape {shape}"
        )


def _image_pooling(config):
    pooling = config["image_pooling"]
    pooling = None if pooling in ("none", "None") else pooling
    sequence = config["fusion"] in SEQUENCE_FUSIONS
    if pooling == "auto":
        return None if sequence else "avg"
    check_choice("image_pooling", pooling, ("avg", "max", None))
    if sequence and pooling is not None:
        raise ValueError(
            f"fusion={config['fusion']!r} attends over the image's grid cells, "
            f"so the image tower must keep its grid: use image_pooling=None. "
            f"Received: image_pooling={pooling!r}"
        )
    if not sequence and pooling is None:
        raise ValueError(
            f"fusion={config['fusion']!r} fuses one vector per modality; "
            "image_pooling=None (a grid) only suits cross_attention. Use "
            "'avg' or 'max'."
        )
    return pooling


def _fusion_layer(fusion, config, outputs_width):
    units = config["fusion_units"]
    dropout = config["fusion_dropout"]
    if fusion == "concat":
        return ConcatFusion(units=units, name="fusion")
    if fusion == "weighted_sum":
        return WeightedSumFusion(
            units=units, modality_weights=config["fusion_weights"], name="fusion"
        )
    if fusion == "gated":
        return GatedFusion(units=units, name="fusion")
    if fusion == "modality_attention":
        return ModalityAttentionFusion(units=units, name="fusion")
    if fusion == "bilinear":
        return BilinearFusion(
            units=units, rank=config["fusion_rank"], dropout=dropout, name="fusion"
        )
    if fusion == "cross_attention":
        return CrossAttentionFusion(
            units=units,
            num_heads=config["fusion_heads"],
            num_layers=config["fusion_layers"],
            dropout=dropout,
            name="fusion",
        )
    return LateFusion(
        outputs_width,
        combine=config["late_combine"],
        units=units,
        dropout=dropout,
        name="fusion",
    )
