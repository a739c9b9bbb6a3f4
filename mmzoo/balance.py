"""Modality balance: unimodal heads and on-the-fly gradient modulation.

A jointly trained fusion can lose to its best single modality: the stronger
modality is learned first and the weaker one stays under-trained
("modality competition": Wang, Tran & Feiszli 2020, "What makes training
multi-modal classification networks hard?"; Peng et al. 2022, "Balanced
multimodal learning via on-the-fly gradient modulation"). Two
`build_model` options counter it:

- `unimodal_heads=w`: each tower's features also predict the label alone,
  through a Dense head of their own (`image_only`, `text_only`), and their
  losses are added to the fused one with weight `w`. So each tower learns
  to answer by itself whatever the other does. The heads exist only in
  training: the model's outputs, its `.keras` config and both exports are
  those of the model without them (their small weights ride along in the
  `.keras` file, so that a resumed run keeps them).
- `balance="ogm"` or `"ogm_ge"`: on-the-fly gradient modulation (Peng et
  al., CVPR 2022). Each training step scores each modality by its unimodal
  head's probability of the right answer, summed over the batch. When the
  ratio of one modality's score to the other's, rho, is above 1, the
  gradient reaching the dominant tower is scaled by `1 - tanh(alpha *
  rho)`; the other's is left alone. `ogm_ge` also adds Gaussian noise of
  the gradient's own spread to both towers' gradients (the paper's
  generalisation enhancement). Here the scale and the noise act on the
  gradient of the tower's output features, which reaches every weight of
  the tower through the chain rule; the paper scales each weight's
  gradient and draws the noise per weight tensor. The scores come from
  the unimodal heads: with `unimodal_heads=0` they are trained on the
  towers' features with the gradient stopped, so they measure the towers
  without shaping them.

No maintained Keras or TensorFlow library implements either (the OGM-GE
authors' code is PyTorch), hence this module. The pieces: the layers
`GradientModulation` and `UnimodalHead`, and `UnimodalHeads`, which
`mmzoo.builder.MultimodalModel` uses to add the heads' losses and set the
coefficients in `compute_loss`.
"""

import keras
from keras import ops

from mmzoo.checks import check_choice
from mmzoo.layers import MaskedPooling

BALANCES = ("ogm", "ogm_ge")

# The unimodal heads' outputs, present only in training (`MultimodalModel`).
UNIMODAL_OUTPUTS = {"image": "image_only", "text": "text_only"}

# The layer each tower's features pass through (identity forward) when a
# model has unimodal heads: the heads read its input, the fusion its output.
FEATURE_LAYERS = {"image": "image_features", "text": "text_features"}


def check_balance_arguments(unimodal_heads, balance, balance_alpha, task, fusion):
    """Refuse balance options that cannot work, naming the argument."""
    if (
        not isinstance(unimodal_heads, (int, float))
        or isinstance(unimodal_heads, bool)
        or not unimodal_heads >= 0
    ):
        raise ValueError(
            "`unimodal_heads` is the weight of the unimodal heads' losses, a "
            f"number >= 0 (0: none). Received: unimodal_heads={unimodal_heads!r}"
        )
    if balance is not None:
        check_choice("balance", balance, BALANCES)
        if not task.classes:
            raise ValueError(
                f"`balance={balance!r}` scores each modality by its probability "
                f"of the right class; a {task.name} task has no classes. Use "
                "`unimodal_heads` alone."
            )
    if (
        not isinstance(balance_alpha, (int, float))
        or isinstance(balance_alpha, bool)
        or not balance_alpha > 0
    ):
        raise ValueError(
            "`balance_alpha` scales the modulation, a positive number. "
            f"Received: balance_alpha={balance_alpha!r}"
        )
    if (unimodal_heads or balance) and len(fusion.modalities) < 2:
        raise ValueError(
            f"`unimodal_heads` and `balance` weigh two modalities; "
            f"fusion={fusion.name!r} uses only {list(fusion.modalities)}. "
            f"Received: unimodal_heads={unimodal_heads!r}, balance={balance!r}"
        )


def trains_unimodal_heads(arguments):
    """Whether `build_model` arguments ask for unimodal heads (the heads
    exist for `balance` too, to score the modalities)."""
    return bool(arguments.get("unimodal_heads")) or bool(arguments.get("balance"))


@keras.saving.register_keras_serializable(package="mmzoo")
class GradientModulation(keras.layers.Layer):
    """The identity, whose gradient is scaled by `coefficient` in training.

    `coefficient` is a non-trainable weight (1 until something sets it:
    `UnimodalHeads` sets it each step under `balance`). With `noise`, the
    gradient also gets Gaussian noise with the gradient's own standard
    deviation (OGM-GE's generalisation enhancement). At inference, and on
    the forward pass always, the layer returns its input unchanged.

    Args:
        active: modulate in training (`False`: the identity always, a
            named point in the graph).
        noise: add the noise in training.
        seed: the noise's seed.
    """

    def __init__(self, active=True, noise=False, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.active = active
        self.noise = noise
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if noise else None
        self.supports_masking = True

    def build(self, input_shape):
        # "mean": each replica sets it from its own batch (`UnimodalHeads`),
        # which a mirrored variable takes only with an aggregation.
        self.coefficient = self.add_weight(
            shape=(),
            initializer="ones",
            trainable=False,
            aggregation="mean",
            name="coefficient",
        )

    def call(self, inputs, training=None):
        if not training or not self.active:
            return inputs

        @ops.custom_gradient
        def modulated(features):
            def gradient(*upstream, **kwargs):
                # TensorFlow passes the upstream gradient positionally,
                # JAX as `upstream=`.
                (grad,) = upstream or (kwargs["upstream"],)
                scaled = grad * ops.cast(self.coefficient, grad.dtype)
                if self.noise:
                    spread = ops.std(ops.cast(grad, "float32"))
                    noise = keras.random.normal(
                        ops.shape(grad), stddev=1.0, seed=self.seed_generator
                    )
                    scaled = scaled + ops.cast(noise * spread, grad.dtype)
                return scaled

            return features, gradient

        return modulated(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "active": self.active,
            "noise": self.noise,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="mmzoo")
class UnimodalHead(keras.layers.Layer):
    """One tower's own prediction: pool its features, then a Dense layer
    with the task's activation (float32 under mixed precision).

    Args:
        units: the output's width (the task's output layer's).
        activation: the task's activation.
        stop_gradient: read the features without sending gradient back
            (the head then only measures the tower).

    Call arguments:
        features: `(batch, D)`, or a sequence `(batch, steps, D)` (text
            tokens, image cells), averaged over its unmasked steps.
        mask: the sequence's `(batch, steps)` mask, or `None`.
    """

    def __init__(self, units, activation, stop_gradient=False, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = activation
        self.stop_gradient = stop_gradient
        self.pooling = MaskedPooling("mean", dtype=self.dtype_policy, name="pool")
        self.dense = keras.layers.Dense(units, dtype=self.dtype_policy, name="logits")
        self.output_activation = keras.layers.Activation(
            activation, dtype="float32", name="activation"
        )
        # It takes the mask as an argument and returns none.
        self.supports_masking = True

    def build(self, features_shape, mask_shape=None):
        self.dense.build((features_shape[0], features_shape[-1]))

    def call(self, features, mask=None):
        if self.stop_gradient:
            features = ops.stop_gradient(features)
        if len(features.shape) == 3:
            features = self.pooling(features, mask=mask)
        return self.output_activation(self.dense(features))

    def compute_output_shape(self, features_shape, mask_shape=None):
        return (features_shape[0], self.units)

    def compute_mask(self, features, mask=None):
        return None

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": self.activation,
            "stop_gradient": self.stop_gradient,
        }


class UnimodalHeads:
    """A zoo model's unimodal heads in training: their losses and OGM.

    Built by `MultimodalModel` from its `build_model` arguments; not a
    layer (the heads are, and the model tracks them).

    Args:
        task: the model's `mmzoo.tasks.Task`.
        weight: `unimodal_heads`, the weight of the heads' losses (0: the
            heads only score the modalities for `balance`; their loss then
            counts fully, but reaches the heads alone).
        balance: `None`, `"ogm"` or `"ogm_ge"`.
        alpha: `balance_alpha`, OGM's alpha.
        modulations: `{"image": GradientModulation, "text": ...}`.
    """

    def __init__(self, task, weight, balance, alpha, modulations):
        self.task = task
        self.weight = float(weight) if weight else 1.0
        self.balance = balance
        self.alpha = float(alpha)
        self.modulations = modulations
        # The task's loss as a `Loss` object ("binary_crossentropy" ->
        # `BinaryCrossentropy`), which reduces as `compile` does: over the
        # batch, scaled for distribution.
        self.loss = getattr(keras.losses, _class_name(task.loss))()
        # Per example and unscaled, for the logs (under a strategy `loss`
        # is each replica's share).
        self.per_example = keras.losses.get(task.loss)
        self.trackers = {
            modality: keras.metrics.Mean(name=f"{output}_loss")
            for modality, output in UNIMODAL_OUTPUTS.items()
        }
        if balance:
            self.trackers.update(
                {
                    f"{modality}_coefficient": keras.metrics.Mean(
                        name=f"{modality}_coefficient"
                    )
                    for modality in UNIMODAL_OUTPUTS
                }
            )

    def split(self, y_pred):
        """`(the model's own outputs, the heads' outputs)` of a training
        call's outputs (`None` for the heads' outside training)."""
        if not isinstance(y_pred, dict) or UNIMODAL_OUTPUTS["image"] not in y_pred:
            return y_pred, None
        heads = {m: y_pred[name] for m, name in UNIMODAL_OUTPUTS.items()}
        own = {k: v for k, v in y_pred.items() if k not in UNIMODAL_OUTPUTS.values()}
        return own, heads

    def loss_of(self, y, heads, sample_weight=None):
        """The heads' weighted loss; sets the OGM coefficients under
        `balance`."""
        target = y[self.task.output_name] if isinstance(y, dict) else y
        total = 0.0
        for modality, prediction in heads.items():
            total = total + self.loss(target, prediction, sample_weight=sample_weight)
            self.trackers[modality].update_state(
                self.per_example(target, prediction), sample_weight=sample_weight
            )
        if self.balance:
            self.modulate(target, heads)
        return self.weight * total

    def modulate(self, target, heads):
        """Set each tower's gradient coefficient from the heads' scores."""
        scores = {m: self.score(target, p) for m, p in heads.items()}
        tiny = keras.config.epsilon()
        ratio = scores["image"] / ops.maximum(scores["text"], tiny)
        inverse = scores["text"] / ops.maximum(scores["image"], tiny)
        # Peng et al. (2022), eq. 10: only the dominant modality (rho > 1)
        # is slowed down.
        for modality, rho in (("image", ratio), ("text", inverse)):
            coefficient = ops.where(
                rho > 1.0, 1.0 - ops.tanh(self.alpha * rho), ops.ones_like(rho)
            )
            self.modulations[modality].coefficient.assign(coefficient)
            self.trackers[f"{modality}_coefficient"].update_state(coefficient)

    def score(self, target, probabilities):
        """The batch's summed probability of the right answers."""
        probabilities = ops.cast(probabilities, "float32")
        if self.task.multilabel or probabilities.shape[-1] == 1:
            # Sigmoids: the probability of each label's right side.
            target = ops.cast(ops.reshape(target, ops.shape(probabilities)), "float32")
            right = target * probabilities + (1.0 - target) * (1.0 - probabilities)
            return ops.sum(ops.mean(right, axis=-1))
        target = ops.cast(ops.reshape(target, (-1, 1)), "int32")
        return ops.sum(ops.take_along_axis(probabilities, target, axis=-1))


def _class_name(name):
    return "".join(part.capitalize() for part in name.split("_"))
