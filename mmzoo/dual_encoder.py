"""Dual encoders: an image and a text mapped into one shared space.

`build_dual_encoder` pairs any registered image tower with any text tower,
each followed by a projection to `embed_dim` and L2 normalisation, and
returns a `DualEncoder`: a functional Keras model whose outputs are the
dict `{"image_embedding", "text_embedding"}` and which trains with one of
the contrastive losses of `mmzoo.losses` (CLIP, SigLIP, margin, triplet,
alignment) or Deep CCA (`mmzoo.cca`).

The loss compares every image of a batch with every text, so it cannot be
a per-output Keras loss: the model's `compute_loss` calls it on both
embeddings at once, with the learnable temperature (and SigLIP's bias) that
the model's `temperature` layer holds. Plain Keras usage therefore needs no
targets: `model.compile(optimizer="adam")`, `model.fit(x)` (or
`model.fit(x, {"image_ids": ..., "text_ids": ...})` to mark the rows that
show the same image or the same text, which are then not negatives).
"""

import math

import keras

from mmzoo import registry
from mmzoo.builder import DEFAULTS as MODEL_DEFAULTS
from mmzoo.builder import arguments_for
from mmzoo.builder import in_build_terms
from mmzoo.checks import check_choice
from mmzoo.checks import plain_data
from mmzoo.towers.image import build_image_tower
from mmzoo.towers.image import check_image_size

PROJECTIONS = ("linear", "mlp")

# The towers' arguments are `build_model`'s, with its defaults; the rest is
# the dual encoder's own.
_TOWER_ARGUMENTS = (
    "image_tower",
    "text_tower",
    "image_size",
    "image_weights",
    "freeze_image_tower",
    "image_trainable_layers",
    "image_filters",
    "vocab_size",
    "max_tokens",
    "embedding_dim",
    "text_units",
    "text_layers",
    "text_heads",
    "text_dropout",
    "text_kernel_sizes",
    "text_embeddings",
    "vocabulary",
    "freeze_embeddings",
    "text_preset",
    "hub_handle",
    "freeze_text_tower",
)
DEFAULTS = {
    **{key: MODEL_DEFAULTS[key] for key in _TOWER_ARGUMENTS},
    "embed_dim": 128,
    "projection": "linear",
    "share_projection": False,
    "loss": "clip",
    "loss_arguments": None,
    "logit_scale": None,
    "logit_bias": None,
    "learn_temperature": True,
    "gather_negatives": True,
    "local_loss": False,
    "compile": True,
    "learning_rate": 1e-3,
    "name": None,
}
# CLIP's temperature starts at 0.07 (a logit scale of log(1/0.07)), SigLIP's
# at 10 with a bias of -10 (Zhai et al. 2023); see `mmzoo.losses`.
CLIP_LOGIT_SCALE = math.log(1 / 0.07)
SIGLIP_LOGIT_SCALE = math.log(10.0)
SIGLIP_LOGIT_BIAS = -10.0


@keras.saving.register_keras_serializable(package="mmzoo")
class Temperature(keras.layers.Layer):
    """The contrastive loss's learnable temperature, and SigLIP's bias.

    A `DualEncoder` keeps one as its `temperature` attribute: the model
    trains, saves and loads its weights, and `compute_loss` hands them to
    the loss, which multiplies the similarities by `exp(logit_scale)`.
    Nothing in the graph calls it.

    Args:
        logit_scale: the initial log of the similarity multiplier, or
            `None` for no scale weight.
        logit_bias: the initial bias, or `None` for no bias weight.
        trainable: learn them (`False` keeps them at their initial values).
    """

    def __init__(self, logit_scale=None, logit_bias=None, **kwargs):
        super().__init__(**kwargs)
        self.initial_logit_scale = logit_scale
        self.initial_logit_bias = logit_bias
        self.logit_scale = None
        self.logit_bias = None

    def build(self, input_shape):
        # float32 whatever the policy: the scale is exponentiated.
        if self.initial_logit_scale is not None:
            self.logit_scale = self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(self.initial_logit_scale),
                name="logit_scale",
                dtype="float32",
            )
        if self.initial_logit_bias is not None:
            self.logit_bias = self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(self.initial_logit_bias),
                name="logit_bias",
                dtype="float32",
            )

    def get_config(self):
        return {
            **super().get_config(),
            "logit_scale": self.initial_logit_scale,
            "logit_bias": self.initial_logit_bias,
        }


@keras.saving.register_keras_serializable(package="mmzoo")
class CanonicalProjection(keras.layers.Layer):
    """`(x - mean) @ directions`: one view's canonical coordinates.

    Deep CCA's last step (Andrew et al. 2013): its objective only asks the
    two outputs to be correlated, up to any linear map of each, so their
    raw cosine similarity means little. Linear CCA fitted on the trained
    outputs gives the map under which they agree, and this layer applies it
    (`DualEncoder.fit_canonical_projection` sets its weights); until then
    it is the identity. Its weights are not trained, and fitting again
    starts from the raw outputs.
    """

    def build(self, input_shape):
        width = input_shape[-1]
        self.mean = self.add_weight(
            shape=(width,), initializer="zeros", trainable=False, name="mean"
        )
        self.directions = self.add_weight(
            shape=(width, width),
            initializer="identity",
            trainable=False,
            name="directions",
        )

    def call(self, inputs):
        inputs = keras.ops.cast(inputs, self.compute_dtype)
        return keras.ops.matmul(inputs - self.mean, self.directions)


@keras.saving.register_keras_serializable(package="mmzoo")
class DualEncoder(keras.Model):
    """An image encoder and a text encoder trained into one shared space.

    `build_dual_encoder` returns one. Its inputs are `build_model`'s
    (`image`, and `tokens` or `text`); its output is the dict
    `{"image_embedding": (batch, embed_dim), "text_embedding": (batch,
    embed_dim)}`, L2-normalised (except for Deep CCA, which whitens each
    view itself) and float32 under any precision policy. `image_encoder`
    and `text_encoder` are the halves as models of their own (sharing the
    weights), for indexing one modality.

    Training: `compute_loss` applies the model's contrastive loss to the two
    embeddings of the batch, with the weights of its `temperature` (a
    `Temperature` layer). `y` is optional; a dict `{"image_ids": (batch,),
    "text_ids": (batch,)}` marks rows showing the same image or text (see
    `mmzoo.losses`). A loss
    of `mmzoo.losses.LOSSES` given to `compile` replaces the model's own
    (and is saved with the compile configuration); a loss that needs a
    scale the model was not built with uses its own `temperature`.

    Attributes:
        build_arguments: the resolved `build_dual_encoder` arguments.
        contrastive_loss: the loss object.
        temperature: the `Temperature` layer: `logit_scale`, `logit_bias`.
    """

    def __init__(self, inputs, outputs, name=None, **kwargs):
        build_arguments = kwargs.pop("build_arguments", None)
        super().__init__(inputs, outputs, name=name, **kwargs)
        self._build_arguments = dict(build_arguments or {})
        self._contrastive_loss = _make_loss(self._build_arguments)
        # Outside the graph (it computes nothing there), but an attribute of
        # the model: its weights train, save and load with the others.
        config = {**DEFAULTS, **self._build_arguments}
        self.temperature = Temperature(
            _initial_scale(config, self._contrastive_loss),
            _initial_bias(config, self._contrastive_loss),
            trainable=config["learn_temperature"],
            name="temperature",
            dtype="float32",
        )
        self.temperature.build(None)

    @property
    def build_arguments(self):
        return dict(self._build_arguments)

    @property
    def image_encoder(self):
        """Image in, `image_embedding` out: a model sharing these weights
        (built once)."""
        return self._half("image", self.input["image"])

    @property
    def text_encoder(self):
        """Text in, `text_embedding` out: a model sharing these weights
        (built once)."""
        return self._half("text", self.input.get("tokens", self.input.get("text")))

    def _half(self, modality, inputs):
        # Kept outside Keras' attribute tracking: the halves are views of
        # this model's layers, not layers of its own to save.
        halves = self.__dict__.get("_halves")
        if halves is None:
            halves = {}
            object.__setattr__(self, "_halves", halves)
        if modality not in halves:
            halves[modality] = keras.Model(
                inputs,
                self.output[f"{modality}_embedding"],
                name=f"{modality}_encoder",
            )
        return halves[modality]

    @property
    def contrastive_loss(self):
        """The pair loss `compute_loss` applies: one given to `compile`, or
        the one the model was built with."""
        from mmzoo.losses import LOSSES

        if isinstance(self.loss, tuple(LOSSES.values())):
            return self.loss
        return self._contrastive_loss

    @property
    def canonical_projections(self):
        """The `CanonicalProjection` layers of a Deep CCA model (or `()`)."""
        layers = [
            self.get_layer(name) for name in ("image_embedding", "text_embedding")
        ]
        if all(isinstance(layer, CanonicalProjection) for layer in layers):
            return tuple(layers)
        return ()

    def fit_canonical_projection(self, data):
        """Fit linear CCA on the model's outputs and project onto it.

        Deep CCA's last step (see `CanonicalProjection`): embeds `data`
        (the training set: inputs, or a dataset of them or of `(inputs,
        targets)` pairs) without the projection, fits `mmzoo.cca.LinearCCA`
        with one component per feature and the loss's ridge terms, and sets
        both views' projections, each component weighted by its canonical
        correlation so that directions the views barely share count little
        in cosine similarity.

        Returns:
            The canonical correlations on `data`, descending.
        """
        import numpy as np

        from mmzoo.cca import LinearCCA

        layers = self.canonical_projections
        if not layers:
            raise ValueError(
                f"Model {self.name!r} has no canonical projections: only a Deep "
                "CCA dual encoder (loss='dcca') does."
            )
        for layer in layers:
            width = layer.mean.shape[0]
            layer.mean.assign(np.zeros(width, "float32"))
            layer.directions.assign(np.eye(width, dtype="float32"))
        outputs = self.predict(data, verbose=0)
        image, text = outputs["image_embedding"], outputs["text_embedding"]
        loss = self.contrastive_loss
        cca = LinearCCA(
            image.shape[1], r1=getattr(loss, "r1", 1e-4), r2=getattr(loss, "r2", 1e-4)
        ).fit(image, text)
        weight = np.maximum(cca.correlations_, 1e-6)
        for layer, mean, directions in zip(
            layers,
            (cca.mean_x_, cca.mean_y_),
            (cca.weights_x_, cca.weights_y_),
            strict=True,
        ):
            layer.mean.assign(mean.astype("float32"))
            layer.directions.assign((directions * weight).astype("float32"))
        return cca.correlations_

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        ids = y if isinstance(y, dict) else {}
        pair = [
            y_pred["image_embedding"],
            y_pred["text_embedding"],
            ids.get("image_ids"),
            ids.get("text_ids"),
        ]
        replicas = _replicas()
        gather = replicas > 1 and self._build_arguments.get("gather_negatives", True)
        rows = None
        if gather:
            if self._build_arguments.get("local_loss", False):
                rows = _local_rows(pair[0])
            # Every replica sees the global batch: its pairs and the other
            # replicas' as negatives (open_clip's gather_with_grad).
            pair = [None if value is None else _gather(value) for value in pair]
        image, text, image_ids, text_ids = pair
        if rows is not None:
            loss = self.contrastive_loss.rows_loss(
                image,
                text,
                *rows,
                logit_scale=self.temperature.logit_scale,
                image_ids=image_ids,
                text_ids=text_ids,
            )
        else:
            loss = self.contrastive_loss(
                image,
                text,
                logit_scale=self.temperature.logit_scale,
                logit_bias=self.temperature.logit_bias,
                image_ids=image_ids,
                text_ids=text_ids,
            )
        if self.losses:
            loss = loss + keras.ops.sum(
                keras.ops.stack([keras.ops.cast(x, "float32") for x in self.losses])
            )
        # What Keras' own losses do under tf.distribute: the replicas'
        # gradients are summed, so each contributes 1/replicas of the loss.
        return loss / replicas

    def get_config(self):
        return {**super().get_config(), "build_arguments": self.build_arguments}


class RetrievalMetrics(keras.callbacks.Callback):
    """Recall@K both ways, and ranks, over a whole validation set each epoch.

    A contrastive loss only sees a batch; retrieval is judged against every
    item of a set. After each epoch this embeds `inputs` with the model and
    adds `mmzoo.metrics.retrieval_metrics` to the epoch's logs, prefixed
    (`val_image_to_text_R@1`, `val_text_to_image_median_rank`, ...), so
    that `History`, `CSVLogger`, TensorBoard and `EarlyStopping` see them.

    Args:
        inputs: the model's inputs for the set: a dict of arrays, or a
            `tf.data` dataset of batches of inputs or of `(inputs,
            targets)` pairs, as `make_dataset(..., task="contrastive")`
            yields (whose targets hold the ids).
        image_ids, text_ids: optional ids of the rows (several captions of
            one image), as in `retrieval_metrics`; by default those in the
            dataset's targets.
        ks: the K of Recall@K. Default (1, 5, 10).
        prefix: prepended to each name. Default `"val_"`.
        batch_size: for `model.predict`.

    Example:

    >>> callback = RetrievalMetrics(val_inputs, image_ids=val_image_ids)
    >>> history = model.fit(train_inputs, epochs=5, callbacks=[callback])
    >>> history.history["val_text_to_image_R@10"]
    """

    def __init__(
        self,
        inputs,
        image_ids=None,
        text_ids=None,
        ks=(1, 5, 10),
        prefix="val_",
        batch_size=256,
    ):
        super().__init__()
        self.inputs = inputs
        self.image_ids = image_ids
        self.text_ids = text_ids
        self.ks = tuple(ks)
        self.prefix = prefix
        self.batch_size = batch_size
        self._prepared = None

    def on_epoch_end(self, epoch, logs=None):
        from mmzoo.metrics import retrieval_metrics

        inputs, image_ids, text_ids = self._prepare()
        if hasattr(inputs, "element_spec"):
            outputs = self.model.predict(inputs, verbose=0)
        else:
            outputs = self.model.predict(inputs, batch_size=self.batch_size, verbose=0)
        metrics = retrieval_metrics(
            outputs["image_embedding"],
            outputs["text_embedding"],
            image_ids,
            text_ids,
            self.ks,
        )
        if logs is not None:
            logs.update({self.prefix + name: value for name, value in metrics.items()})

    def _prepare(self):
        """The inputs to predict on, and the ids (read from the dataset's
        targets once)."""
        if self._prepared is None:
            inputs, ids = self.inputs, {}
            if hasattr(inputs, "element_spec") and isinstance(
                inputs.element_spec, tuple
            ):
                import numpy as np

                targets = [y for _, y in inputs]
                if targets and isinstance(targets[0], dict):
                    ids = {
                        key: np.concatenate([np.asarray(y[key]) for y in targets])
                        for key in ("image_ids", "text_ids")
                        if key in targets[0]
                    }
                inputs = inputs.map(lambda x, y: x)
            self._prepared = (
                inputs,
                ids.get("image_ids") if self.image_ids is None else self.image_ids,
                ids.get("text_ids") if self.text_ids is None else self.text_ids,
            )
        return self._prepared


def build_dual_encoder(**arguments):
    """Build a dual encoder: image and text towers into one shared space.

    Args:
        image_tower, text_tower: as in `mmzoo.build_model` (any registered
            tower; the `bert` tower takes a local keras-hub preset, e.g. the
            all-MiniLM-L6-v2 checkpoint, through `text_preset`).
        image_size, image_weights, freeze_image_tower,
        image_trainable_layers, image_filters, vocab_size, max_tokens,
        embedding_dim, text_units, text_layers, text_heads, text_dropout,
        text_kernel_sizes, text_embeddings, vocabulary, freeze_embeddings,
        text_preset, hub_handle, freeze_text_tower: the towers' arguments,
            as in `mmzoo.build_model`. `freeze_image_tower=True` with a
            pretrained image tower is LiT (a locked image tower, a tuned
            text tower).
        embed_dim: width of the shared space. Default 128.
        projection: `"linear"` (one Dense) or `"mlp"` (Dense, GELU, Dense)
            after each tower.
        share_projection: one projection for both towers (their features
            must then have the same width); default one each.
        loss: a name of `mmzoo.losses.LOSSES` (`"clip"`, `"soft_clip"`,
            `"siglip"`, `"margin"`, `"triplet"`, `"alignment"`, `"dcca"`:
            Deep CCA, `mmzoo.cca.DeepCCALoss`, whose embeddings are not
            normalised) or a loss object. Default `"clip"`.
        loss_arguments: keyword arguments for a loss given by name, e.g.
            `{"margin": 0.5}`.
        logit_scale: the temperature's initial log scale. Default: log(1/0.07)
            (CLIP), log 10 for SigLIP; ignored by losses without one.
        logit_bias: the initial bias of the losses that take one (SigLIP:
            -10 by default).
        learn_temperature: learn the scale and bias (default) or keep them.
        gather_negatives: under a tf.distribute strategy, gather every
            replica's embeddings (with their gradients) so that the loss
            sees the global batch, as on one device (default); `False`:
            each replica's loss sees its own batch only.
        local_loss: with `gather_negatives`, each replica computes the loss
            of its own rows against the whole gathered batch (open_clip's
            `local_loss`: `local x global` logits instead of `global x
            global`); equal to the global loss when the replicas' batches
            are equal. CLIP loss only (`ClipLoss.rows_loss`).
        compile: compile with Adam at `learning_rate`.
        learning_rate: Adam's learning rate when compiling. Default 1e-3.
        name: the model's name. Default `"<image>_<text>_dual_encoder"`.

    Returns:
        A `DualEncoder`.

    Example:

    >>> model = mmzoo.build_dual_encoder(
    ...     image_tower="small_cnn", text_tower="bow", image_size=32,
    ...     max_tokens=8, vocab_size=100, embed_dim=16, loss="siglip")
    >>> sorted(model.output)
    ['image_embedding', 'text_embedding']
    >>> model.fit(x, epochs=1)  # x = {"image": ..., "tokens": ...}
    """
    config = _resolve(arguments)
    loss = _make_loss(config)  # an unknown loss fails before anything is built
    text_spec = registry.text_tower(config["text_tower"])
    context = {
        **config,
        "trainable_embeddings": not config["freeze_embeddings"],
        "trainable_text_tower": not config["freeze_text_tower"],
    }

    # === Inputs ===
    size = config["image_size"]
    inputs = {"image": keras.Input((size, size, 3), name="image")}
    if text_spec.takes == "tokens":
        text = keras.Input((config["max_tokens"],), dtype="int32", name="tokens")
        inputs["tokens"] = text
    else:
        text = keras.Input((), dtype="string", name="text")
        inputs["text"] = text

    # === Towers ===
    image_tower = build_image_tower(
        config["image_tower"],
        image_size=size,
        weights=config["image_weights"],
        pooling="avg",
        trainable=not config["freeze_image_tower"],
        trainable_layers=config["image_trainable_layers"],
        filters=config["image_filters"],
    )
    image_features = image_tower(inputs["image"])
    builder = registry.resolve(text_spec.build)
    with in_build_terms(text_spec.arguments):
        text_tower = builder(**arguments_for(text_spec.arguments, context))
    text_features = text_tower(text)["pooled"]

    # === Projections ===
    if config["share_projection"]:
        widths = (image_features.shape[-1], text_features.shape[-1])
        if widths[0] != widths[1]:
            raise ValueError(
                "`share_projection=True` applies one projection to both towers' "
                "features, so they must have the same width. Received: image "
                f"features of width {widths[0]}, text features of width "
                f"{widths[1]}"
            )
        shared = _projection(config, "projection")
        image_projection = text_projection = shared
    else:
        image_projection = _projection(config, "image_projection")
        text_projection = _projection(config, "text_projection")
    normalize = getattr(loss, "normalized_embeddings", True)
    image_embedding = _embedding(
        image_projection(image_features), "image_embedding", normalize
    )
    text_embedding = _embedding(
        text_projection(text_features), "text_embedding", normalize
    )
    outputs = {"image_embedding": image_embedding, "text_embedding": text_embedding}

    # === Model ===
    name = config["name"] or (
        f"{config['image_tower']}_{config['text_tower']}_dual_encoder"
    )
    model = DualEncoder(
        inputs, outputs, name=name, build_arguments=plain_data(_recipe(config))
    )
    if config["compile"]:
        model.compile(optimizer=keras.optimizers.Adam(config["learning_rate"]))
    return model


def _resolve(arguments):
    unknown = sorted(set(arguments) - set(DEFAULTS))
    if unknown:
        raise TypeError(
            f"build_dual_encoder() got unexpected keyword argument(s): {unknown}. "
            f"Valid arguments: {sorted(DEFAULTS)}"
        )
    config = {**DEFAULTS, **arguments}
    registry.image_tower(config["image_tower"])
    registry.text_tower(config["text_tower"])
    check_image_size(config["image_size"])
    check_choice("projection", config["projection"], PROJECTIONS)
    embed_dim = config["embed_dim"]
    if not isinstance(embed_dim, int) or isinstance(embed_dim, bool) or embed_dim < 1:
        raise ValueError(
            f"`embed_dim` must be a positive integer. Received: embed_dim={embed_dim!r}"
        )
    loss = config["loss"]
    if config["local_loss"] and not (loss == "clip" or hasattr(loss, "rows_loss")):
        raise ValueError(
            "`local_loss=True` computes each replica's rows of the CLIP loss "
            "against the global batch; it applies to loss='clip'. Received: "
            f"loss={loss if isinstance(loss, str) else type(loss).__name__!r}"
        )
    if config["loss_arguments"] is not None and not isinstance(
        config["loss_arguments"], dict
    ):
        raise ValueError(
            "`loss_arguments` must be a dict of the loss's keyword arguments. "
            f"Received: loss_arguments={config['loss_arguments']!r}"
        )
    return config


def _recipe(config):
    """The arguments as data; a loss object is kept as its serialized config."""
    recipe = dict(config)
    if not isinstance(recipe["loss"], str):
        recipe["loss"] = keras.saving.serialize_keras_object(recipe["loss"])
    return recipe


def _make_loss(config):
    from mmzoo.losses import get_loss

    loss = config.get("loss", DEFAULTS["loss"])
    if isinstance(loss, dict):
        return keras.saving.deserialize_keras_object(loss)
    return get_loss(loss, **(config.get("loss_arguments") or {}))


def _initial_scale(config, loss):
    if not getattr(loss, "needs_scale", False):
        return None
    if config["logit_scale"] is not None:
        return float(config["logit_scale"])
    return (
        SIGLIP_LOGIT_SCALE if getattr(loss, "needs_bias", False) else CLIP_LOGIT_SCALE
    )


def _initial_bias(config, loss):
    if not getattr(loss, "needs_bias", False):
        return None
    if config["logit_bias"] is not None:
        return float(config["logit_bias"])
    return SIGLIP_LOGIT_BIAS


def _projection(config, name):
    """The projection head to the shared space."""
    if config["projection"] == "linear":
        return keras.layers.Dense(config["embed_dim"], name=name)
    return keras.Sequential(
        [
            keras.layers.Dense(config["embed_dim"], activation="gelu"),
            keras.layers.Dense(config["embed_dim"]),
        ],
        name=name,
    )


def _embedding(features, name, normalize):
    # float32: cosine similarities of float16 vectors lose the ranking.
    if normalize:
        layer = keras.layers.UnitNormalization(axis=-1, name=name, dtype="float32")
    else:
        # Deep CCA whitens each view itself: the embedding stays as it is
        # until `fit_canonical_projection` maps it to canonical coordinates.
        layer = CanonicalProjection(name=name, dtype="float32")
    return layer(features)


def _replicas():
    """The replicas computing this step together (1 outside tf.distribute)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def _local_rows(embedding):
    """`(start, size)` of this replica's rows in the gathered batch."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    size = tf.shape(embedding)[0]
    sizes = context.all_gather(size[tf.newaxis], axis=0)
    replica = context.replica_id_in_sync_group
    return tf.reduce_sum(sizes[:replica]), size


def _gather(value):
    """`value` of every replica, in replica order, along the batch axis.

    TensorFlow's `all_gather` is differentiable (its gradient sums the
    replicas' gradients and hands each replica its own rows), so every
    replica's loss over the global batch sends gradients to every
    replica's towers; replicas may hold batches of different sizes.
    """
    import tensorflow as tf

    return tf.distribute.get_replica_context().all_gather(value, axis=0)
