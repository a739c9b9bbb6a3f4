"""`build_model`: the zoo's front door, and the model class it returns.

`build_model` reads everything it builds from `mmzoo.registry` (which
tower, which fusion layer, with which of its arguments, what the fusion
takes and returns) and from the task (`mmzoo.tasks`): it tests no
component's name.
"""

import contextlib
import difflib
import re

import keras

from mmzoo import registry
from mmzoo.balance import FEATURE_LAYERS
from mmzoo.balance import UNIMODAL_OUTPUTS
from mmzoo.balance import GradientModulation
from mmzoo.balance import UnimodalHead
from mmzoo.balance import UnimodalHeads
from mmzoo.balance import check_balance_arguments
from mmzoo.balance import trains_unimodal_heads
from mmzoo.checks import check_choice
from mmzoo.checks import plain_data
from mmzoo.layers import ModalityDropout
from mmzoo.layers import PaddingMask
from mmzoo.tasks import MultiTask
from mmzoo.tasks import get_task
from mmzoo.tasks import task_of
from mmzoo.towers.image import POOLINGS
from mmzoo.towers.image import build_image_tower
from mmzoo.towers.image import check_image_size

# Every argument `build_model` takes, with its default: the one table the
# towers' and fusions' own defaults agree with (tested). A preset overrides
# some of these; keywords given to `build_model` override both.
DEFAULTS = {
    # Components.
    "image_tower": "small_cnn",
    "text_tower": "bow",
    "fusion": "concat",
    # Task and head.
    "task": "multiclass",
    "num_classes": None,
    # Several heads, each a task of its own (`mmzoo.tasks.MultiTask`).
    "heads": None,
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
    "fusion_units": None,  # the fusion's own (`FusionSpec.units`)
    "fusion_heads": 4,
    "fusion_layers": 1,
    "fusion_rank": 4,
    "fusion_dropout": 0.1,
    "fusion_weights": None,
    "late_combine": "average",
    # Modality balance (`mmzoo.balance`).
    "unimodal_heads": 0.0,
    "balance": None,
    "balance_alpha": 0.5,
    # Model.
    "seed": None,
    "compile": True,
    "learning_rate": 1e-3,
    "name": None,
}

# Values `build_model` derives from its arguments, which a registry spec's
# `arguments` may map a component's argument to.
DERIVED = {
    "num_outputs": "the output layer's width (the task's, from `num_classes`)",
    "trainable_embeddings": "not `freeze_embeddings`",
    "trainable_text_tower": "not `freeze_text_tower`",
}


@keras.saving.register_keras_serializable(package="mmzoo")
class MultimodalModel(keras.Model):
    """A zoo model: an ordinary functional Keras model that keeps its recipe.

    `build_model` returns one. It trains, evaluates, predicts, saves and
    exports like any functional model; its single output is the dict
    `{task.output_name: ...}` (one entry per head with `heads`), so
    `compile(loss="...")`, output-named dicts, `fit(x, y)` and `fit(x,
    {"probabilities": y})` all work. On top
    of that it remembers the `build_model` arguments it was made with
    (saved in its config, so in `.keras` files), which is enough to build
    it again, at another size or with another component:
    `mmzoo.build_model(model, image_size=96)`.

    Attributes:
        build_arguments: the resolved `build_model` arguments (a copy).
        task: its `mmzoo.tasks.Task`.
        returns_modality_weights: its fusion layer reports per-example
            modality weights, which `with_modality_weights` exposes.
        unimodal_heads: `{"image": UnimodalHead, "text": ...}` for a model
            built with `unimodal_heads` or `balance` (`mmzoo.balance`),
            else `{}`. Training calls (`model(x, training=True)`, so `fit`)
            add their outputs, `image_only` and `text_only`, and
            `compute_loss` adds their losses; every other call returns the
            model's own outputs only.
    """

    def __init__(self, inputs, outputs, name=None, **kwargs):
        # Keras revives a functional subclass through this signature (the
        # one of `Functional.__init__`); the recipe rides in `kwargs`.
        build_arguments = kwargs.pop("build_arguments", None)
        super().__init__(inputs, outputs, name=name, **kwargs)
        self._build_arguments = dict(build_arguments or {})
        self._unimodal = None
        self.unimodal_heads = {}
        if trains_unimodal_heads(self._build_arguments):
            self._attach_unimodal_heads()

    def _attach_unimodal_heads(self):
        """The heads on the towers' features, and the training graph that
        returns their outputs too (built here, not saved in the config, so
        a loaded model gets them back from its recipe)."""
        arguments = {**DEFAULTS, **self._build_arguments}
        task = self.task
        width = self.output[task.output_name].shape[-1]
        layers = {m: self.get_layer(name) for m, name in FEATURE_LAYERS.items()}
        mask = None
        with contextlib.suppress(ValueError):
            mask = self.get_layer("text_mask").output
        outputs = dict(self.output)
        for modality, layer in layers.items():
            features = layer.input
            head = UnimodalHead(
                width,
                task.activation,
                stop_gradient=not arguments["unimodal_heads"],
                name=UNIMODAL_OUTPUTS[modality],
            )
            sequence_mask = mask if len(features.shape) == 3 else None
            if modality == "image":
                sequence_mask = None
            outputs[UNIMODAL_OUTPUTS[modality]] = head(features, mask=sequence_mask)
            self.unimodal_heads[modality] = head
        # Not tracked (object.__setattr__): it shares this model's layers,
        # which must not appear twice in `layers` or the saved file.
        object.__setattr__(self, "_training_graph", keras.Model(self.input, outputs))
        self._unimodal = UnimodalHeads(
            task,
            arguments["unimodal_heads"],
            arguments["balance"],
            arguments["balance_alpha"],
            layers,
        )
        self._unimodal_trackers = list(self._unimodal.trackers.values())

    def call(self, inputs, training=None, mask=None):
        if training and self._unimodal is not None:
            return self._training_graph(inputs, training=True)
        return super().call(inputs, training=training, mask=mask)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        heads = None
        if self._unimodal is not None:
            y_pred, heads = self._unimodal.split(y_pred)
            # Read by `get_metrics_result` in the same step (a Python flag,
            # so fixed when the step is traced).
            self._unimodal_step = heads is not None
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        if heads is not None:
            loss = loss + self._unimodal.loss_of(y, heads, sample_weight)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if self._unimodal is not None:
            y_pred, _ = self._unimodal.split(y_pred)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def get_metrics_result(self):
        results = super().get_metrics_result()
        # The heads' trackers see values in training steps only: a
        # validation step has no heads' outputs, and would log zeros.
        if not getattr(self, "_unimodal_step", True):
            for tracker in self._unimodal_trackers:
                results.pop(tracker.name, None)
        return results

    @property
    def build_arguments(self):
        return dict(self._build_arguments)

    @property
    def task(self):
        return task_of(self._build_arguments)

    @property
    def returns_modality_weights(self):
        return _weights_of(self) is not None

    def get_config(self):
        return {**super().get_config(), "build_arguments": self._build_arguments}


def with_modality_weights(model):
    """The same model with a second output, `modality_weights`.

    A zoo model's only output is its prediction, so that plain Keras
    `compile`/`fit` code works. Fusions that weigh the modalities
    (`weighted_sum`, `gated`, `modality_attention`, `late` with
    `late_combine="learned"`) compute per-example weights `(batch, 2)` in
    [image, text] order inside the `fusion` layer; this returns a model
    sharing every layer (and so every weight) with `model` whose outputs
    add them. The exports and `mmzoo predict` use it.

    Args:
        model: a zoo model (`build_model`, `mmzoo.load_model`).

    Returns:
        A `keras.Model` with the outputs of `model` plus
        `"modality_weights"` (float32).

    Raises:
        ValueError: the model's fusion computes no modality weights.

    Example:

    >>> model = mmzoo.build_model(fusion="gated", num_classes=3,
    ...                           image_size=32, max_tokens=8)
    >>> explained = mmzoo.with_modality_weights(model)
    >>> sorted(explained.output)
    ['modality_weights', 'probabilities']
    """
    weights = _weights_of(model)
    if weights is None:
        raise ValueError(
            f"Model {model.name!r} computes no modality weights: its fusion "
            "is not one of weighted_sum, gated, modality_attention or late "
            "with late_combine='learned'."
        )
    weights = keras.layers.Activation(
        "linear", dtype="float32", name="modality_weights"
    )(weights)
    return keras.Model(
        model.input, {**model.output, "modality_weights": weights}, name=model.name
    )


def explained_model(model):
    """`with_modality_weights(model)` where the fusion computes the weights,
    else `model` itself."""
    if _weights_of(model) is None:
        return model
    return with_modality_weights(model)


def _weights_of(model):
    """The fusion layer's modality-weights tensor in `model`'s graph, or None."""
    try:
        layer = model.get_layer("fusion")
    except ValueError:
        return None
    if not getattr(layer, "returns_weights", False):
        return None
    return layer.output[1]


def build_model(preset=None, /, **arguments):
    """Build a multimodal image + text model as a Keras functional model.

    Three ways in: a preset name (`mmzoo.list_models()`), with keyword
    overrides on top; a zoo model, rebuilt from the arguments it was built
    with, the keywords on top (new weights); or components by name.

    Args:
        preset: a preset name, a zoo model (`MultimodalModel`), or `None`
            to name the components.
        image_tower: one of `mmzoo.list_image_towers()`, default
            `small_cnn`; or a `keras.Model` of your own mapping raw
            (batch, image_size, image_size, 3) pixels to (batch, D) features
            (or a (batch, h, w, D) grid for grid fusions), used as is.
        text_tower: one of `mmzoo.list_text_towers()`. Default `bow`.
        fusion: one of `mmzoo.list_fusions()`. Default `concat`.
        task: one of `mmzoo.list_tasks()`: `multiclass` (softmax),
            `multilabel` (sigmoid per class), `binary` (one sigmoid),
            `regression` (linear), or `contrastive`, which builds a dual
            encoder instead: `build_model(task="contrastive", **arguments)`
            is `mmzoo.build_dual_encoder(**arguments)`.
        num_classes: classes (or regression targets).
        heads: several outputs over the same fused features instead of
            one, `{name: {"task": ..., "num_classes": ..., "weight": ...}}`
            (`mmzoo.tasks.MultiTask`): each head is an output named after
            it, with `head_units` hidden layers of its own and its task's
            activation, compiled with its task's loss and metrics, the loss
            weighted by `weight` (default 1). `task` and `num_classes` then
            stay unset. Not with fusion `late` (its own logits) nor with
            `unimodal_heads` or `balance`.
        head_units: widths of the head's hidden layers. Default `(256,)`.
        dropout: dropout after each hidden head layer. Default 0.2.
        modality_dropout: probability that a training example loses its
            image or its text (see `mmzoo.layers.ModalityDropout`).
        image_size: input height and width, at least 32. Default 224.
        image_weights: `None`, `"imagenet"` or a local weights file.
        image_pooling: `"avg"`, `"max"` or `None` (keep the grid). Default:
            `None` for fusions that take the image's grid (cross_attention,
            film), `"avg"` otherwise.
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
        fusion_units: width of the fused features. Default `None`: the
            fusion's own, 256, or 128 for `cross_attention` (whose cost
            grows with its square).
        fusion_heads, fusion_layers: cross-attention heads and layers.
        fusion_rank: bilinear fusion's factors per unit. Default 4.
        fusion_dropout: dropout inside the fusion layer. Default 0.1.
        fusion_weights: weighted sum: fixed λ per modality, or `None` to
            learn them.
        late_combine: late fusion: `average`, `learned` or `stacking`.
        unimodal_heads: the weight of unimodal heads' losses: each tower
            also predicts the label alone in training (`mmzoo.balance`).
            Default 0 (none).
        balance: `None`, `"ogm"` or `"ogm_ge"`: on-the-fly gradient
            modulation of the dominant modality's tower (Peng et al.
            2022; `mmzoo.balance`). Default `None`.
        balance_alpha: OGM's alpha, how hard the dominant tower is slowed
            down. Default 0.5.
        seed: seed for the model's random layers (modality dropout).
        compile: compile with Adam, the task's loss and metric.
        learning_rate: Adam's learning rate when compiling. Default 1e-3.
        name: the model's name. Default: the preset or the components.

    Returns:
        A `MultimodalModel` with named inputs `image` (batch, H, W, 3; raw
        0-255 RGB) and `tokens` (batch, max_tokens; int32; 0 is padding),
        or `text` (strings) for the `hub` tower. Unimodal baselines take
        both inputs and ignore one. Its output is the dict
        `{"probabilities": ...}` (`"predictions"` for regression), or with
        `heads` one entry per head, float32 under any mixed-precision
        policy; `with_modality_weights(model)` adds the modality weights of
        fusions that compute them.

    Examples:

    >>> model = mmzoo.build_model("small_cnn_bow_gated", num_classes=13)
    >>> model = mmzoo.build_model(
    ...     image_tower="small_cnn", text_tower="transformer",
    ...     fusion="cross_attention", num_classes=13, image_size=64,
    ...     max_tokens=16, vocab_size=1000)
    >>> sorted(model.output)
    ['probabilities']
    >>> bigger = mmzoo.build_model(model, image_size=96)
    >>> vqa = mmzoo.build_model(
    ...     fusion="bilinear", image_size=64, max_tokens=16,
    ...     heads={"answer": {"task": "multiclass", "num_classes": 13},
    ...            "kind": {"task": "binary", "weight": 0.5}})
    >>> sorted(vqa.output)
    ['answer', 'kind']
    """
    task = get_task(arguments.get("task", DEFAULTS["task"]))
    if not task.fused and preset is None:
        # E.g. task="contrastive": a dual encoder (`build_dual_encoder`).
        return task.build(**{k: v for k, v in arguments.items() if k != "task"})
    config, preset_name = _resolve(preset, arguments)
    task = task_of(config)
    if not task.fused:
        raise ValueError(
            f"task={task.name!r} builds no fused model, so there is no preset "
            f"or zoo model to start from; call build_model(task={task.name!r}, "
            "...) with its builder's arguments."
        )
    fusion = registry.fusion(config["fusion"])
    text_spec = registry.text_tower(config["text_tower"])
    if task.heads:
        _check_heads(config, fusion)
    context = {
        **config,
        "fusion_units": fusion.units
        if config["fusion_units"] is None
        else config["fusion_units"],
        "num_outputs": task.num_outputs(config["num_classes"]),
        "trainable_embeddings": not config["freeze_embeddings"],
        "trainable_text_tower": not config["freeze_text_tower"],
    }
    check_balance_arguments(
        config["unimodal_heads"],
        config["balance"],
        config["balance_alpha"],
        task,
        fusion,
    )
    pooling = _image_pooling(config, fusion)
    # Instantiated first: the layer validates its arguments before any
    # tower is built.
    layer = _fusion_layer(fusion, context)

    # === Inputs ===
    # Unimodal baselines take both inputs too (ignoring one), so that every
    # zoo model fits the same data pipeline and serving signature.
    size = config["image_size"]
    inputs = {"image": keras.Input((size, size, 3), name="image")}
    if text_spec.takes == "tokens":
        inputs["tokens"] = keras.Input(
            (config["max_tokens"],), dtype="int32", name="tokens"
        )
    else:
        inputs["text"] = keras.Input((), dtype="string", name="text")
    image, text = _modality_dropout(config, fusion, text_spec, inputs)

    # === Towers ===
    features, masks = [], []
    if "image" in fusion.modalities:
        features.append(_image_features(config, fusion, pooling, image))
        masks.append(None)
    if "text" in fusion.modalities:
        sequence, mask = _text_features(context, fusion, text_spec, text)
        features.append(sequence)
        masks.append(mask)

    if trains_unimodal_heads(config):
        # Named, so that the unimodal heads find each tower's features
        # (`MultimodalModel`); the identity unless `balance` modulates.
        features = [
            GradientModulation(
                active=config["balance"] is not None,
                noise=config["balance"] == "ogm_ge",
                seed=config["seed"],
                name=FEATURE_LAYERS[modality],
            )(feature)
            for modality, feature in zip(fusion.modalities, features, strict=True)
        ]

    # === Fusion and heads ===
    fused = _fuse(layer, features, masks)
    outputs = {}
    # One output, or one per head of a multi-task model (`task.heads`).
    for spec in task.output_specs(config["num_classes"]):
        logits = fused
        if not fusion.returns_logits:
            logits = _head(fused, config, spec.width, spec.prefix)
        outputs[spec.name] = spec.task.output_layer(logits, name=spec.name)

    # === Model ===
    name = config["name"] or preset_name or _components_name(config)
    model = MultimodalModel(
        inputs, outputs, name=name, build_arguments=_recipe(config, preset_name)
    )
    if config["compile"]:
        model.compile(**task.compile_arguments(config["learning_rate"]))
    return model


def _resolve(preset, arguments):
    """The complete, validated arguments, and the preset's name (or None)."""
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
    preset_name = None
    if isinstance(preset, MultimodalModel):
        recipe = preset.build_arguments
        if isinstance(recipe.get("image_tower"), dict) and "image_tower" not in (
            arguments
        ):
            raise ValueError(
                f"Model {preset.name!r} was built with an image tower of your "
                f"own ({recipe['image_tower']['custom']!r}); pass it again as "
                "`image_tower=` to rebuild the model."
            )
        config.update({k: v for k, v in recipe.items() if k in DEFAULTS})
        preset_name = config["name"]
    elif preset is not None:
        if not isinstance(preset, str):
            raise TypeError(
                "build_model's first argument is a preset name or a zoo model "
                f"to rebuild. Received: {type(preset).__name__}"
            )
        config.update(registry.get_preset(preset))
        preset_name = preset
    config.update(arguments)
    if not isinstance(config["image_tower"], keras.Model):
        registry.image_tower(config["image_tower"])
    registry.text_tower(config["text_tower"])
    registry.fusion(config["fusion"])
    get_task(config["task"])
    if config["heads"] is not None:
        # Complete, so that the recipe holds every head's task and weight.
        config["heads"] = MultiTask(config["heads"]).spec
    check_image_size(config["image_size"])
    return config, preset_name


def _recipe(config, preset_name):
    """The arguments as JSON-ready data, for the model's config."""
    recipe = {**config, "name": config["name"] or preset_name}
    tower = config["image_tower"]
    if isinstance(tower, keras.Model):
        recipe["image_tower"] = {"custom": tower.name}
    return plain_data(recipe)


def _components_name(config):
    tower = config["image_tower"]
    image_name = tower.name if isinstance(tower, keras.Model) else tower
    return "_".join((image_name, config["text_tower"], config["fusion"]))


def _image_pooling(config, fusion):
    pooling = config["image_pooling"]
    pooling = None if pooling in ("none", "None") else pooling
    if pooling == "auto":
        return None if fusion.image_grid else "avg"
    check_choice("image_pooling", pooling, POOLINGS)
    if fusion.image_grid and pooling is not None:
        raise ValueError(
            f"fusion={fusion.name!r} takes the image's grid cells, so the image "
            "tower must keep its grid: use image_pooling=None. Received: "
            f"image_pooling={pooling!r}"
        )
    if not fusion.image_grid and pooling is None:
        grid = [name for name, spec in registry.FUSIONS.items() if spec.image_grid]
        raise ValueError(
            f"fusion={fusion.name!r} fuses one vector per modality; "
            f"image_pooling=None (a grid) only suits {grid}. Use 'avg' or "
            "'max'."
        )
    return pooling


def _modality_dropout(config, fusion, text_spec, inputs):
    """The image and text inputs, through `ModalityDropout` if asked for."""
    image = inputs["image"]
    text = inputs.get("tokens", inputs.get("text"))
    if not config["modality_dropout"]:
        return image, text
    if len(fusion.modalities) < 2 or text_spec.takes != "tokens":
        raise ValueError(
            "`modality_dropout` blanks the image or the token ids of an "
            "example, so it needs both; it does not apply to "
            f"fusion={fusion.name!r} with text_tower={text_spec.name!r}. "
            f"Received: modality_dropout={config['modality_dropout']}"
        )
    return ModalityDropout(
        config["modality_dropout"], seed=config["seed"], name="modality_dropout"
    )([image, text])


def _image_features(config, fusion, pooling, image):
    tower = config["image_tower"]
    if isinstance(tower, keras.Model):
        _check_custom_image_tower(tower, pooling, fusion)
    else:
        tower = build_image_tower(
            tower,
            image_size=config["image_size"],
            weights=config["image_weights"],
            pooling=pooling,
            trainable=not config["freeze_image_tower"],
            trainable_layers=config["image_trainable_layers"],
            filters=config["image_filters"],
        )
    features = tower(image)
    if fusion.image_grid:
        features = keras.layers.Reshape(
            (features.shape[1] * features.shape[2], features.shape[3]),
            name="image_cells",
        )(features)
    return features


def _text_features(context, fusion, spec, text):
    """The text's features for the fusion, and their padding mask (or None)."""
    builder = registry.resolve(spec.build)
    with in_build_terms(spec.arguments):
        tower = builder(**arguments_for(spec.arguments, context))
    outputs = tower(text)
    if not fusion.text_sequence:
        return outputs["pooled"], None
    if not spec.sequence:
        token_towers = [n for n, s in registry.TEXT_TOWERS.items() if s.sequence]
        raise ValueError(
            f"fusion={fusion.name!r} attends over the text's tokens, but "
            f"text_tower={spec.name!r} gives one vector per text. Use a "
            f"token-level text tower: {token_towers}"
        )
    return outputs["sequence"], PaddingMask(name="text_mask")(text)


def arguments_for(mapping, context):
    """A component's keyword arguments, from a spec's `arguments` mapping."""
    return {argument: context[key] for argument, key in mapping.items()}


@contextlib.contextmanager
def in_build_terms(mapping):
    """Re-raise a component's ValueError naming `build_model`'s arguments.

    A fusion layer checks `combine`, which the user passed as
    `late_combine`: the message should say what they wrote.
    """
    try:
        yield
    except ValueError as error:
        message = str(error)
        for argument, key in mapping.items():
            if key != argument and key in DEFAULTS:
                message = re.sub(rf"`{argument}`", f"`{key}`", message)
                message = re.sub(rf"\b{argument}=", f"{key}=", message)
        if message == str(error):
            raise
        raise ValueError(message) from error


def _check_custom_image_tower(tower, pooling, fusion):
    rank = 4 if pooling is None else 2
    shape = tuple(tower.output.shape) if hasattr(tower, "output") else None
    if shape is None or len(shape) != rank:
        kind = "a (batch, h, w, D) grid" if rank == 4 else "(batch, D) features"
        raise ValueError(
            f"fusion={fusion.name!r} needs an image tower giving {kind}. "
            f"Received: image_tower {tower.name!r} with output shape {shape}"
        )


def _fusion_layer(fusion, context):
    """The registered fusion layer with its arguments, or None (unimodal)."""
    if fusion.layer is None:
        return None
    layer_class = registry.resolve(fusion.layer)
    with in_build_terms(fusion.arguments):
        return layer_class(**arguments_for(fusion.arguments, context), name="fusion")


def _fuse(layer, features, masks):
    """The fusion layer's output (a unimodal baseline's features as they are)."""
    if layer is None:
        (fused,) = features
        return fused
    if any(mask is not None for mask in masks):
        fused = layer(features, masks=masks)
    else:
        fused = layer(features)
    if layer.returns_weights:
        # The weights stay in the graph, reachable through
        # `with_modality_weights`, but are not an output: a second output
        # without a target breaks plain `fit(x, y)` (see the README).
        fused, _ = fused
    return fused


def _head(fused, config, width, prefix=""):
    """Dense + ReLU + dropout per `head_units` width, then the logits; the
    layers' names start with `prefix` (a multi-task model's head name)."""
    x = fused
    for index, units in enumerate(config["head_units"]):
        x = keras.layers.Dense(
            units, activation="relu", name=f"{prefix}head_dense_{index}"
        )(x)
        x = keras.layers.Dropout(
            config["dropout"], name=f"{prefix}head_dropout_{index}"
        )(x)
    return keras.layers.Dense(width, name=f"{prefix}logits")(x)


def _check_heads(config, fusion):
    """Refuse what a model with several heads cannot combine with."""
    if config["task"] != DEFAULTS["task"]:
        raise ValueError(
            "With `heads`, each head names its own task: leave `task` unset "
            f"(or pass heads=None for one output). Received: task={config['task']!r}"
        )
    if fusion.returns_logits:
        raise ValueError(
            f"fusion={fusion.name!r} ends in its own logits, one per modality, "
            "so it has room for one output only; a model with `heads` needs a "
            "fusion that gives features (e.g. 'concat', 'gated', 'bilinear')."
        )
    if trains_unimodal_heads(config):
        # The unimodal heads predict the model's one output from each tower;
        # per head of several they would need a loss and a score each.
        raise ValueError(
            "`unimodal_heads` and `balance` train each tower to predict the "
            "model's single output; a model with `heads` has several, which "
            "they do not support. Received: "
            f"unimodal_heads={config['unimodal_heads']!r}, "
            f"balance={config['balance']!r}"
        )
