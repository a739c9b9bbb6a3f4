"""Contrastive losses for dual encoders: one image and one text embedding per row.

Every loss here is called the same way, so a dual-encoder model can take any
of them:

```python
loss = mmzoo.losses.get_loss("clip")
value = loss(
    image_embedding,  # (batch, dim)
    text_embedding,  # (batch, dim)
    logit_scale=None,  # the *log* of the temperature multiplier, a scalar
    logit_bias=None,  # SigLIP's bias, a scalar
    image_ids=None,  # optional int (batch,): equal ids, the same image
    text_ids=None,  # optional int (batch,): equal ids, the same text
)  # a float32 scalar
```

Row `i` of both embeddings is a matched pair. The cosine losses (CLIP, soft
CLIP, SigLIP) expect L2-normalised embeddings, as the model outputs them, and
assume nothing more. A loss's class attributes `needs_scale` and `needs_bias`
say which learnable scalars the model should create; a loss that uses a
temperature and receives `logit_scale=None` uses its own `temperature`.

**False negatives.** With several captions per image, or one caption shared by
several images, a batch can hold a pair (i, j), i != j, that shows the same
image (`image_ids[i] == image_ids[j]`) or the same text
(`text_ids[i] == text_ids[j]`). Such a pair is a *duplicate*, never a
negative. The rule, one for each kind of loss:

- The softmax losses (`ClipLoss`, `SoftClipLoss`) *exclude* duplicates from
  the softmax: row i is a choice among its own pair and its true negatives
  only. The duplicate is neither pushed away nor pulled in, each row keeps a
  single target, and a perfect embedding still has a loss of zero.
- The pairwise losses (`SigLipLoss`, `MarginLoss`) label every pair, so a
  duplicate is labelled *positive*: two captions of one image both belong
  with it.
- `TripletLoss` keeps the matched pair as the positive and removes
  duplicates from the negatives it mines.
- `AlignmentLoss` has no negatives, so it has nothing to mask: ids are
  accepted and ignored.

With `image_ids` and `text_ids` both `None`, every off-diagonal pair is a
negative. Everything is computed in float32, whatever the inputs' dtype, in
`keras.ops` only, so the same code runs on the TensorFlow and JAX backends.
"""

import math
import numbers
import types

import keras
from keras import ops

from mmzoo.cca import DeepCCALoss
from mmzoo.checks import check_choice

# open_clip clamps the learned logit scale at log(100): beyond that, training
# is unstable (Radford et al. 2021, section 2.5).
MAX_LOGIT_SCALE = math.log(100.0)

TRIPLET_MINING = ("batch_hard", "semi_hard")
TRIPLET_DISTANCES = ("cosine", "euclidean")
ALIGNMENT_MODES = ("mse", "kl")

# Stands in for -inf in masked logits: exp() of it is exactly 0 in float32,
# and unlike -inf it never meets a zero in a product (0 * -inf is NaN).
_MASKED_LOGIT = -1e9


class ContrastiveLoss:
    """The base class: the calling convention, float32 inputs, duplicate masks.

    A subclass sets `name`, `needs_scale` and `needs_bias`, and implements
    `call(image, text, logit_scale, logit_bias, duplicates)`, where `image`
    and `text` are float32, `logit_scale` and `logit_bias` float32 scalars or
    `None`, and `duplicates` a boolean `(batch, batch)` matrix, `True` at
    (i, j), i != j, when rows i and j show the same image or the same text.
    """

    name = None
    needs_scale = False
    needs_bias = False
    # A dual encoder L2-normalises its embeddings for these losses.
    normalized_embeddings = True

    def __call__(
        self,
        image_embedding,
        text_embedding,
        logit_scale=None,
        logit_bias=None,
        image_ids=None,
        text_ids=None,
    ):
        """The loss of a batch of matched pairs, a float32 scalar.

        Args:
            image_embedding: `(batch, dim)` image embeddings.
            text_embedding: `(batch, dim)` text embeddings; row i is the text
                of image i.
            logit_scale: the log of the temperature multiplier, a scalar, or
                `None`. Ignored by the losses whose `needs_scale` is False.
            logit_bias: SigLIP's bias, a scalar, or `None`. Ignored by the
                losses whose `needs_bias` is False.
            image_ids: optional int `(batch,)`; equal ids mark the same image.
            text_ids: optional int `(batch,)`; equal ids mark the same text.

        Returns:
            A float32 scalar.
        """
        return self.call(
            *_prepared(
                image_embedding,
                text_embedding,
                logit_scale,
                logit_bias,
                image_ids,
                text_ids,
            )
        )

    def call(self, image, text, logit_scale, logit_bias, duplicates):
        raise NotImplementedError(f"{type(self).__name__} must implement `call`.")

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({arguments})"


def duplicate_mask(batch_size, image_ids=None, text_ids=None):
    """`True` at (i, j), i != j, where rows i and j share an image or a text.

    Args:
        batch_size: the number of rows (an int, or a scalar tensor).
        image_ids: optional int `(batch,)`; equal ids mark the same image.
        text_ids: optional int `(batch,)`; equal ids mark the same text.

    Returns:
        A boolean `(batch, batch)` tensor, all `False` when both ids are
        `None`, always `False` on the diagonal.

    Example:

    >>> mask = duplicate_mask(3, image_ids=[7, 7, 8])
    >>> keras.ops.convert_to_numpy(mask).astype(int).tolist()
    [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    """
    rows = ops.arange(batch_size)
    diagonal = ops.equal(rows[:, None], rows[None, :])
    duplicates = ops.zeros_like(diagonal)
    for argument, ids in (("image_ids", image_ids), ("text_ids", text_ids)):
        if ids is None:
            continue
        ids = ops.reshape(ops.convert_to_tensor(ids), (-1,))
        if ids.shape[0] is not None and isinstance(batch_size, int):
            if ids.shape[0] != batch_size:
                raise ValueError(
                    f"`{argument}` must hold one id per row, {batch_size}. "
                    f"Received: {argument} of shape {tuple(ids.shape)}"
                )
        same = ops.equal(ids[:, None], ids[None, :])
        duplicates = ops.logical_or(duplicates, same)
    return ops.logical_and(duplicates, ops.logical_not(diagonal))


@keras.saving.register_keras_serializable(package="mmzoo")
class ClipLoss(ContrastiveLoss):
    """Symmetric InfoNCE, CLIP's loss (Radford et al. 2021).

    The logits are `scale * image @ text.T`; the loss is the mean of the
    cross-entropy of each image against all texts (its own text is the
    target) and of each text against all images. `scale` is
    `exp(min(logit_scale, log(100)))`, clamped at 100 as in open_clip, or
    `1 / temperature` when `logit_scale` is `None`.

    Duplicates (the same image or the same text in two rows, by
    `image_ids` / `text_ids`) are excluded from the softmax. Label smoothing
    spreads its `label_smoothing` mass evenly over the columns left in a row.

    Args:
        temperature: the temperature used when `logit_scale` is `None`.
        label_smoothing: in `[0, 1)`; 0 is plain cross-entropy.

    Example:

    ```python
    image = keras.ops.normalize(keras.random.normal((8, 16)), axis=-1)
    text = keras.ops.normalize(keras.random.normal((8, 16)), axis=-1)
    loss = ClipLoss()
    loss(image, text, logit_scale=math.log(1 / 0.07))
    ```

    Reference:
        Radford et al., Learning Transferable Visual Models From Natural
        Language Supervision, 2021.
    """

    name = "clip"
    needs_scale = True
    needs_bias = False

    def __init__(self, temperature=0.07, label_smoothing=0.0):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                "`label_smoothing` must be in [0, 1). "
                f"Received: label_smoothing={label_smoothing!r}"
            )
        self.temperature = _check_positive("temperature", temperature)
        self.label_smoothing = float(label_smoothing)

    def call(self, image, text, logit_scale, logit_bias, duplicates):
        return self._rows(
            image, text, logit_scale, duplicates, ops.arange(ops.shape(image)[0])
        )

    def rows_loss(
        self,
        image_embedding,
        text_embedding,
        start,
        size,
        logit_scale=None,
        image_ids=None,
        text_ids=None,
    ):
        """The loss of rows `start:start + size` against every column.

        open_clip's `local_loss`: under tf.distribute, a replica holding
        rows `start:start + size` of the gathered global batch computes the
        cross-entropy of its own images against all texts and of its own
        texts against all images, `size x batch` logits instead of
        `batch x batch`. With equal replica batches, the replicas' mean is
        the global loss.

        Args:
            image_embedding, text_embedding: the global batch, `(batch, dim)`.
            start, size: the rows to compute (ints or scalar tensors).
            logit_scale, image_ids, text_ids: as in `__call__`.

        Returns:
            A float32 scalar: the mean over the rows.
        """
        image, text, logit_scale, _, duplicates = _prepared(
            image_embedding, text_embedding, logit_scale, None, image_ids, text_ids
        )
        rows = ops.cast(start, "int32") + ops.arange(size)
        return self._rows(image, text, logit_scale, duplicates, rows)

    def _rows(self, image, text, logit_scale, duplicates, rows):
        scale = _clamped_scale(logit_scale, self.temperature)
        # `duplicates` is symmetric: its rows serve both directions.
        logits = scale * ops.matmul(ops.take(image, rows, axis=0), ops.transpose(text))
        transposed = scale * ops.matmul(
            ops.take(text, rows, axis=0), ops.transpose(image)
        )
        keep = ops.logical_not(ops.take(duplicates, rows, axis=0))
        columns = ops.arange(ops.shape(image)[0])
        targets = ops.cast(ops.equal(rows[:, None], columns[None, :]), "float32")
        if self.label_smoothing:
            kept = ops.cast(keep, "float32")
            spread = kept / ops.sum(kept, axis=-1, keepdims=True)
            targets = (
                1.0 - self.label_smoothing
            ) * targets + self.label_smoothing * spread
        image_to_text = _masked_cross_entropy(targets, logits, keep)
        text_to_image = _masked_cross_entropy(targets, transposed, keep)
        return (image_to_text + text_to_image) / 2.0

    def get_config(self):
        return {
            "temperature": self.temperature,
            "label_smoothing": self.label_smoothing,
        }


@keras.saving.register_keras_serializable(package="mmzoo")
class SoftClipLoss(ContrastiveLoss):
    """InfoNCE with soft targets taken from each modality's own similarities.

    The idea of the keras-io example "Natural language image search with a
    Dual Encoder": an image and a text that are not a pair may still match
    (two photos of dogs), so rather than a one-hot target, row i's target is
    `softmax(scale * (image @ image.T + text @ text.T) / 2)`, the rows that
    look like row i in both modalities. The loss is the cross-entropy of those
    targets against `scale * image @ text.T`, image->text and text->image,
    averaged. `scale` is clamped as in `ClipLoss`.

    The in-modality similarity matrix is symmetric, so both directions use
    the same row-normalised targets (the keras-io code transposes the
    row-softmax for its second direction, whose rows then no longer sum to
    one). Gradients flow through the targets, as in that example. Duplicates
    are excluded from both softmaxes, the targets' and the logits'.

    Args:
        temperature: the temperature used when `logit_scale` is `None`.

    Example:

    ```python
    image = keras.ops.normalize(keras.random.normal((8, 16)), axis=-1)
    text = keras.ops.normalize(keras.random.normal((8, 16)), axis=-1)
    SoftClipLoss()(image, text, logit_scale=math.log(1 / 0.07))
    ```
    """

    name = "soft_clip"
    needs_scale = True
    needs_bias = False

    def __init__(self, temperature=0.07):
        self.temperature = _check_positive("temperature", temperature)

    def call(self, image, text, logit_scale, logit_bias, duplicates):
        scale = _clamped_scale(logit_scale, self.temperature)
        logits = scale * ops.matmul(image, ops.transpose(text))
        similarity = (
            ops.matmul(image, ops.transpose(image))
            + ops.matmul(text, ops.transpose(text))
        ) / 2.0
        keep = ops.logical_not(duplicates)
        # exp(log_softmax) rather than softmax, which warns on a batch of one.
        targets = ops.exp(_masked_log_softmax(scale * similarity, keep))
        image_to_text = _masked_cross_entropy(targets, logits, keep)
        text_to_image = _masked_cross_entropy(targets, ops.transpose(logits), keep)
        return (image_to_text + text_to_image) / 2.0

    def get_config(self):
        return {"temperature": self.temperature}


@keras.saving.register_keras_serializable(package="mmzoo")
class SigLipLoss(ContrastiveLoss):
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023).

    Every (image i, text j) pair is a binary problem: the logit is
    `scale * image_i . text_j + bias`, the label +1 for a positive (i == j,
    or a duplicate: the same image or the same text) and -1 otherwise. The
    loss is `-sum(log_sigmoid(label * logit)) / batch`, the paper's and
    open_clip's normalisation. `scale` is `exp(logit_scale)` (no clamp) and
    `bias` is `logit_bias`; when they are `None`, `1 / temperature` and
    `bias`.

    Args:
        temperature: the temperature used when `logit_scale` is `None`; the
            paper initialises the scale at 10.
        bias: the bias used when `logit_bias` is `None`; the paper
            initialises it at -10.

    Example:

    ```python
    image = keras.ops.normalize(keras.random.normal((8, 16)), axis=-1)
    text = keras.ops.normalize(keras.random.normal((8, 16)), axis=-1)
    SigLipLoss()(image, text, logit_scale=math.log(10.0), logit_bias=-10.0)
    ```

    Reference:
        Zhai et al., Sigmoid Loss for Language Image Pre-Training, 2023.
    """

    name = "siglip"
    needs_scale = True
    needs_bias = True

    def __init__(self, temperature=0.1, bias=-10.0):
        self.temperature = _check_positive("temperature", temperature)
        self.bias = float(bias)

    def call(self, image, text, logit_scale, logit_bias, duplicates):
        if logit_scale is None:
            scale = 1.0 / self.temperature
        else:
            scale = ops.exp(logit_scale)
        bias = self.bias if logit_bias is None else logit_bias
        logits = scale * ops.matmul(image, ops.transpose(text)) + bias
        positives = _positive_mask(duplicates)
        labels = ops.cast(ops.where(positives, 1.0, -1.0), "float32")
        batch_size = ops.cast(ops.shape(logits)[0], "float32")
        return -ops.sum(ops.log_sigmoid(labels * logits)) / batch_size

    def get_config(self):
        return {"temperature": self.temperature, "bias": self.bias}


@keras.saving.register_keras_serializable(package="mmzoo")
class MarginLoss(ContrastiveLoss):
    """The margin contrastive loss of Hadsell, Chopra and LeCun (2006).

    For every (image i, text j) at Euclidean distance `d`, a positive pair
    (i == j, or a duplicate) costs `d**2` and a negative pair
    `max(0, margin - d)**2`. A batch of `n` rows has `n` positives and about
    `n**2` negatives, so the two are balanced: the loss is half the mean over
    positive pairs plus half the mean over negative pairs (the paper's 1/2
    factors, each applied to a mean rather than a sum).

    Args:
        margin: the distance beyond which a negative pair costs nothing. For
            unit vectors distances lie in [0, 2]; orthogonal ones are
            `sqrt(2)` apart.

    Example:

    ```python
    image = keras.ops.normalize(keras.random.normal((8, 16)), axis=-1)
    text = keras.ops.normalize(keras.random.normal((8, 16)), axis=-1)
    MarginLoss(margin=1.0)(image, text)
    ```

    Reference:
        Hadsell, Chopra and LeCun, Dimensionality Reduction by Learning an
        Invariant Mapping, CVPR 2006.
    """

    name = "margin"
    needs_scale = False
    needs_bias = False

    def __init__(self, margin=1.0):
        self.margin = _check_positive("margin", margin)

    def call(self, image, text, logit_scale, logit_bias, duplicates):
        squared = _squared_distances(image, text)
        positives = _positive_mask(duplicates)
        negatives = ops.logical_not(positives)
        pull = _masked_mean(squared, positives)
        push = ops.square(ops.relu(self.margin - _safe_sqrt(squared)))
        return 0.5 * pull + 0.5 * _masked_mean(push, negatives)

    def get_config(self):
        return {"margin": self.margin}


@keras.saving.register_keras_serializable(package="mmzoo")
class TripletLoss(ContrastiveLoss):
    """The triplet loss with negatives mined in the batch, both directions.

    Each image is an anchor whose positive is its own text and whose
    negatives are the other texts, duplicates left out; each text likewise
    against the images. An anchor costs
    `max(0, d(anchor, positive) - d(anchor, negative) + margin)`, for one
    negative chosen per anchor:

    - `"batch_hard"`: the hardest, the closest negative.
    - `"semi_hard"` (FaceNet): the closest negative that is farther than
      the positive; where none is, the hardest negative. (tensorflow-addons'
      `TripletSemiHardLoss` falls back to the farthest negative instead,
      which costs nothing once the margin is met.)

    The loss is the mean over anchors that have a negative, of both
    directions. Written here rather than taken from tensorflow-addons, whose
    `TripletSemiHardLoss` is unmaintained (the project reached its end of
    life in 2024) and built on tf.keras, not Keras 3 and its JAX backend; it
    is also single-modality (anchors and negatives from one set of
    embeddings, grouped by class label), so it cannot mine texts for an
    image.

    Args:
        margin: the margin between positive and negative distances.
        mining: `"batch_hard"` or `"semi_hard"`.
        distance: `"cosine"` (`1 - cos`) or `"euclidean"`.

    Example:

    ```python
    image = keras.ops.normalize(keras.random.normal((8, 16)), axis=-1)
    text = keras.ops.normalize(keras.random.normal((8, 16)), axis=-1)
    TripletLoss(margin=0.2, mining="semi_hard")(image, text)
    ```

    Reference:
        Schroff, Kalenichenko and Philbin, FaceNet, CVPR 2015 (semi-hard);
        Hermans, Beyer and Leibe, In Defense of the Triplet Loss for Person
        Re-Identification, 2017 (batch-hard).
    """

    name = "triplet"
    needs_scale = False
    needs_bias = False

    def __init__(self, margin=0.2, mining="batch_hard", distance="cosine"):
        check_choice("mining", mining, TRIPLET_MINING)
        check_choice("distance", distance, TRIPLET_DISTANCES)
        self.margin = _check_positive("margin", margin)
        self.mining = mining
        self.distance = distance

    def call(self, image, text, logit_scale, logit_bias, duplicates):
        if self.distance == "cosine":
            image = ops.normalize(image, axis=-1)
            text = ops.normalize(text, axis=-1)
            distances = 1.0 - ops.matmul(image, ops.transpose(text))
        else:
            distances = _safe_sqrt(_squared_distances(image, text))
        negatives = ops.logical_not(_positive_mask(duplicates))
        image_anchors = self._anchor_losses(distances, negatives)
        text_anchors = self._anchor_losses(ops.transpose(distances), negatives)
        return (image_anchors + text_anchors) / 2.0

    def _anchor_losses(self, distances, negatives):
        """The mean loss of the anchors (rows) of `distances` that have a
        negative."""
        positive = ops.diagonal(distances)[:, None]
        # Stands in for "no such negative"; farther than any real distance.
        far = ops.stop_gradient(ops.max(distances)) + self.margin + 1.0
        hardest = ops.min(ops.where(negatives, distances, far), axis=-1)
        if self.mining == "semi_hard":
            farther = ops.logical_and(negatives, distances > positive)
            semi_hard = ops.min(ops.where(farther, distances, far), axis=-1)
            negative = ops.where(ops.any(farther, axis=-1), semi_hard, hardest)
        else:
            negative = hardest
        losses = ops.relu(positive[:, 0] - negative + self.margin)
        return _masked_mean(losses, ops.any(negatives, axis=-1))

    def get_config(self):
        return {
            "margin": self.margin,
            "mining": self.mining,
            "distance": self.distance,
        }


@keras.saving.register_keras_serializable(package="mmzoo")
class AlignmentLoss(ContrastiveLoss):
    """Pull the two modalities into one space, with no negatives.

    - `mode="mse"`: the mean, over pairs, of the squared Euclidean distance
      between an image and its text.
    - `mode="kl"`: for each row, the softmax over the *other* rows of its
      image-image similarities, `image @ image.T / temperature`, and the same
      for texts; the loss is the symmetric KL divergence between the two,
      `(KL(p_image || p_text) + KL(p_text || p_image)) / 2`, averaged over
      rows. A row's similarity with itself is left out: for unit vectors it
      is 1 in both modalities and says nothing. The temperature is fixed,
      not learned: at a high enough temperature both distributions are
      uniform and the divergence is zero for any embedding, so a learned one
      would only learn that.

    On its own this objective can collapse (all embeddings equal give zero
    MSE); it is the baseline a contrastive loss should beat, or a term beside
    one. It has no negatives, so `image_ids` and `text_ids` change nothing.

    Args:
        mode: `"mse"` or `"kl"`.
        temperature: the temperature of the `"kl"` similarity softmax.

    Example:

    ```python
    image = keras.ops.normalize(keras.random.normal((8, 16)), axis=-1)
    text = keras.ops.normalize(keras.random.normal((8, 16)), axis=-1)
    AlignmentLoss(mode="kl")(image, text)
    ```
    """

    name = "alignment"
    needs_scale = False
    needs_bias = False

    def __init__(self, mode="mse", temperature=0.1):
        check_choice("mode", mode, ALIGNMENT_MODES)
        self.mode = mode
        self.temperature = _check_positive("temperature", temperature)

    def call(self, image, text, logit_scale, logit_bias, duplicates):
        if self.mode == "mse":
            return ops.mean(ops.sum(ops.square(image - text), axis=-1))
        rows = ops.arange(ops.shape(image)[0])
        others = ops.not_equal(rows[:, None], rows[None, :])
        log_p = _masked_log_softmax(
            ops.matmul(image, ops.transpose(image)) / self.temperature, others
        )
        log_q = _masked_log_softmax(
            ops.matmul(text, ops.transpose(text)) / self.temperature, others
        )
        p, q = ops.exp(log_p), ops.exp(log_q)
        divergence = ops.where(others, (p - q) * (log_p - log_q), 0.0)
        # KL(p||q) + KL(q||p) = sum (p - q)(log p - log q); halved, averaged.
        return ops.mean(ops.sum(divergence, axis=-1)) / 2.0

    def get_config(self):
        return {"mode": self.mode, "temperature": self.temperature}


# The registry. mmzoo.cca's Deep CCA loss has the same calling convention and
# class attributes, so a dual encoder trains with it like the others.
_LOSS_CLASSES = (
    ClipLoss,
    SoftClipLoss,
    SigLipLoss,
    MarginLoss,
    TripletLoss,
    AlignmentLoss,
    DeepCCALoss,
)
LOSSES = types.MappingProxyType({cls.name: cls for cls in _LOSS_CLASSES})


def get_loss(name_or_instance, **kwargs):
    """A contrastive loss by name, with its options, or a loss as given.

    Args:
        name_or_instance: a name in `LOSSES` (`"clip"`, `"soft_clip"`,
            `"siglip"`, `"margin"`, `"triplet"`, `"alignment"`, `"dcca"`),
            or a loss instance, returned unchanged.
        **kwargs: the named loss's constructor arguments.

    Returns:
        A loss instance.

    Raises:
        ValueError: for an unknown name (the message lists the valid names
            and the closest), or options given with an instance.

    Example:

    >>> get_loss("triplet", mining="semi_hard")
    TripletLoss(margin=0.2, mining='semi_hard', distance='cosine')
    """
    if isinstance(name_or_instance, _LOSS_CLASSES):
        if kwargs:
            raise ValueError(
                "Options apply to a loss given by name, not to an instance. "
                f"Received: loss={name_or_instance!r} with {sorted(kwargs)}"
            )
        return name_or_instance
    check_choice("loss", name_or_instance, LOSSES)
    return LOSSES[name_or_instance](**kwargs)


def _prepared(image, text, logit_scale, logit_bias, image_ids, text_ids):
    """A loss's arguments in float32, checked, and the duplicate mask."""
    image = ops.cast(image, "float32")
    text = ops.cast(text, "float32")
    _check_embeddings(image, text)
    if logit_scale is not None:
        logit_scale = ops.cast(logit_scale, "float32")
    if logit_bias is not None:
        logit_bias = ops.cast(logit_bias, "float32")
    duplicates = duplicate_mask(ops.shape(image)[0], image_ids, text_ids)
    return image, text, logit_scale, logit_bias, duplicates


def _check_embeddings(image, text):
    if len(image.shape) != 2 or len(text.shape) != 2:
        raise ValueError(
            "`image_embedding` and `text_embedding` must be (batch, dim). "
            f"Received: shapes {tuple(image.shape)} and {tuple(text.shape)}"
        )
    for axis in (0, 1):
        a, b = image.shape[axis], text.shape[axis]
        if a is not None and b is not None and a != b:
            raise ValueError(
                "`image_embedding` and `text_embedding` must have the same "
                f"shape. Received: shapes {tuple(image.shape)} and "
                f"{tuple(text.shape)}"
            )


def _check_positive(argument, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value <= 0:
        raise ValueError(f"`{argument}` must be > 0. Received: {argument}={value!r}")
    return float(value)


def _clamped_scale(logit_scale, temperature):
    """CLIP's multiplier: exp(logit_scale) clamped at 100, or 1/temperature."""
    if logit_scale is None:
        return 1.0 / temperature
    return ops.exp(ops.minimum(logit_scale, MAX_LOGIT_SCALE))


def _positive_mask(duplicates):
    """The diagonal and the duplicates: the pairs a pairwise loss pulls in."""
    rows = ops.arange(ops.shape(duplicates)[0])
    diagonal = ops.equal(rows[:, None], rows[None, :])
    return ops.logical_or(diagonal, duplicates)


def _masked(logits, keep):
    return ops.where(keep, logits, _MASKED_LOGIT)


def _masked_log_softmax(logits, keep):
    return ops.log_softmax(_masked(logits, keep), axis=-1)


def _masked_cross_entropy(targets, logits, keep):
    """Mean over rows of the cross-entropy, the columns out of `keep` left out
    of the softmax. `targets` must be zero outside `keep`."""
    log_probs = ops.where(keep, _masked_log_softmax(logits, keep), 0.0)
    return -ops.mean(ops.sum(targets * log_probs, axis=-1))


def _masked_mean(values, mask):
    """The mean of `values` where `mask` holds; 0 where it never does."""
    mask = ops.cast(mask, "float32")
    return ops.sum(values * mask) / ops.maximum(ops.sum(mask), 1.0)


def _squared_distances(image, text):
    """`(batch, batch)` squared Euclidean distances, image i to text j."""
    squared = (
        ops.sum(ops.square(image), axis=-1)[:, None]
        + ops.sum(ops.square(text), axis=-1)[None, :]
        - 2.0 * ops.matmul(image, ops.transpose(text))
    )
    # The expansion can round a little below zero, and it loses small
    # distances to rounding (the square root of a 1e-7 error is 3e-4). The
    # matched pairs are the small ones in a trained model: take the diagonal
    # from the differences, exactly.
    rows = ops.arange(ops.shape(image)[0])
    diagonal = ops.equal(rows[:, None], rows[None, :])
    paired = ops.sum(ops.square(image - text), axis=-1)
    return ops.where(diagonal, paired[None, :], ops.maximum(squared, 0.0))


def _safe_sqrt(squared):
    # The gradient of sqrt is infinite at 0; below the floor it is zero.
    return ops.sqrt(ops.maximum(squared, 1e-12))
