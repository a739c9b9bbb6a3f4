"""The contrastive losses of `mmzoo.losses`, each against a NumPy computation
written here from the definition (loops over rows and pairs, direct distances),
independently of the module's matrix formulation."""

import doctest
import json
import math
import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from mmzoo import losses
from mmzoo.losses import AlignmentLoss
from mmzoo.losses import ClipLoss
from mmzoo.losses import MarginLoss
from mmzoo.losses import SigLipLoss
from mmzoo.losses import SoftClipLoss
from mmzoo.losses import TripletLoss

BATCH, DIM = 6, 5
# Rows 0 and 1 show the same image (two captions); rows 2 and 5 the same text.
IMAGE_IDS = np.array([0, 0, 1, 2, 3, 4])
TEXT_IDS = np.array([0, 1, 2, 3, 4, 2])
LOGIT_SCALE = math.log(10.0)
LOGIT_BIAS = -5.0


def unit_rows(seed, batch=BATCH, dim=DIM):
    rows = np.random.default_rng(seed).normal(size=(batch, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype("float32")


@pytest.fixture
def pair():
    return unit_rows(1), unit_rows(2)


# === NumPy references ===


def is_duplicate(i, j, image_ids, text_ids):
    if i == j or image_ids is None:
        return False
    return bool(image_ids[i] == image_ids[j] or text_ids[i] == text_ids[j])


def logsumexp(values):
    values = np.asarray(values, dtype="float64")
    top = values.max()
    return top + math.log(np.exp(values - top).sum())


def reference_clip(image, text, scale, ids, label_smoothing=0.0):
    image, text = image.astype("float64"), text.astype("float64")
    logits = scale * image @ text.T
    total = 0.0
    for matrix in (logits, logits.T):
        for i in range(len(matrix)):
            kept = [j for j in range(len(matrix)) if not is_duplicate(i, j, *ids)]
            log_z = logsumexp(matrix[i, kept])
            target = {j: label_smoothing / len(kept) for j in kept}
            target[i] += 1.0 - label_smoothing
            total -= sum(p * (matrix[i, j] - log_z) for j, p in target.items())
    return total / (2 * len(logits))


def reference_soft_clip(image, text, scale, ids):
    image, text = image.astype("float64"), text.astype("float64")
    logits = scale * image @ text.T
    similarity = scale * (image @ image.T + text @ text.T) / 2
    total = 0.0
    for matrix in (logits, logits.T):
        for i in range(len(matrix)):
            kept = [j for j in range(len(matrix)) if not is_duplicate(i, j, *ids)]
            targets = np.exp(similarity[i, kept] - logsumexp(similarity[i, kept]))
            log_probs = matrix[i, kept] - logsumexp(matrix[i, kept])
            total -= float(targets @ log_probs)
    return total / (2 * len(logits))


def reference_siglip(image, text, scale, bias, ids):
    image, text = image.astype("float64"), text.astype("float64")
    total = 0.0
    for i in range(len(image)):
        for j in range(len(text)):
            positive = i == j or is_duplicate(i, j, *ids)
            label = 1.0 if positive else -1.0
            logit = scale * float(image[i] @ text[j]) + bias
            total += np.logaddexp(0.0, -label * logit)  # -log sigmoid(z)
    return total / len(image)


def reference_margin(image, text, margin, ids):
    image, text = image.astype("float64"), text.astype("float64")
    pulls, pushes = [], []
    for i in range(len(image)):
        for j in range(len(text)):
            d = np.linalg.norm(image[i] - text[j])
            if i == j or is_duplicate(i, j, *ids):
                pulls.append(d**2)
            else:
                pushes.append(max(0.0, margin - d) ** 2)
    return 0.5 * np.mean(pulls) + 0.5 * np.mean(pushes)


def distance(a, b, kind):
    if kind == "euclidean":
        return np.linalg.norm(a - b)
    return 1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def reference_triplet(image, text, margin, mining, kind, ids):
    image, text = image.astype("float64"), text.astype("float64")
    directions = []
    for anchors, others in ((image, text), (text, image)):
        costs = []
        for i in range(len(anchors)):
            positive = distance(anchors[i], others[i], kind)
            negatives = [
                distance(anchors[i], others[j], kind)
                for j in range(len(others))
                if j != i and not is_duplicate(i, j, *ids)
            ]
            if not negatives:
                continue
            farther = [d for d in negatives if d > positive]
            if mining == "semi_hard" and farther:
                negative = min(farther)
            else:
                negative = min(negatives)
            costs.append(max(0.0, positive - negative + margin))
        directions.append(np.mean(costs))
    return np.mean(directions)


def reference_alignment(image, text, mode, temperature):
    image, text = image.astype("float64"), text.astype("float64")
    if mode == "mse":
        return np.mean([np.sum((image[i] - text[i]) ** 2) for i in range(len(image))])
    total = 0.0
    for i in range(len(image)):
        others = [j for j in range(len(image)) if j != i]
        p_logits = np.array([image[i] @ image[j] for j in others]) / temperature
        q_logits = np.array([text[i] @ text[j] for j in others]) / temperature
        log_p = p_logits - logsumexp(p_logits)
        log_q = q_logits - logsumexp(q_logits)
        kl_pq = np.sum(np.exp(log_p) * (log_p - log_q))
        kl_qp = np.sum(np.exp(log_q) * (log_q - log_p))
        total += (kl_pq + kl_qp) / 2
    return total / len(image)


# (loss, reference(image, text, ids)), the scale and bias as the model would
# pass them: exp(LOGIT_SCALE) and LOGIT_BIAS.
CASES = {
    "clip": (
        ClipLoss(),
        lambda i, t, ids: reference_clip(i, t, 10.0, ids),
    ),
    "clip_smoothed": (
        ClipLoss(label_smoothing=0.1),
        lambda i, t, ids: reference_clip(i, t, 10.0, ids, label_smoothing=0.1),
    ),
    "soft_clip": (
        SoftClipLoss(),
        lambda i, t, ids: reference_soft_clip(i, t, 10.0, ids),
    ),
    "siglip": (
        SigLipLoss(),
        lambda i, t, ids: reference_siglip(i, t, 10.0, LOGIT_BIAS, ids),
    ),
    "margin": (
        MarginLoss(margin=1.2),
        lambda i, t, ids: reference_margin(i, t, 1.2, ids),
    ),
    "triplet_hard_cosine": (
        TripletLoss(margin=0.3),
        lambda i, t, ids: reference_triplet(i, t, 0.3, "batch_hard", "cosine", ids),
    ),
    "triplet_semi_euclidean": (
        TripletLoss(margin=0.3, mining="semi_hard", distance="euclidean"),
        lambda i, t, ids: reference_triplet(i, t, 0.3, "semi_hard", "euclidean", ids),
    ),
    "triplet_semi_cosine": (
        TripletLoss(margin=0.3, mining="semi_hard"),
        lambda i, t, ids: reference_triplet(i, t, 0.3, "semi_hard", "cosine", ids),
    ),
    "alignment_mse": (
        AlignmentLoss(),
        lambda i, t, ids: reference_alignment(i, t, "mse", 0.1),
    ),
    "alignment_kl": (
        AlignmentLoss(mode="kl", temperature=0.5),
        lambda i, t, ids: reference_alignment(i, t, "kl", 0.5),
    ),
}


def call(loss, image, text, ids=(None, None), **kwargs):
    return loss(
        image,
        text,
        logit_scale=kwargs.get("logit_scale", LOGIT_SCALE),
        logit_bias=kwargs.get("logit_bias", LOGIT_BIAS),
        image_ids=ids[0],
        text_ids=ids[1],
    )


# === Values ===


@pytest.mark.parametrize("with_ids", [False, True], ids=["no_ids", "duplicates"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_equals_numpy(case, with_ids, pair):
    loss, reference = CASES[case]
    ids = (IMAGE_IDS, TEXT_IDS) if with_ids else (None, None)
    value = call(loss, *pair, ids=ids)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    assert tuple(value.shape) == ()
    np.testing.assert_allclose(
        float(value), reference(*pair, ids), rtol=1e-5, atol=1e-6
    )


# Semi-hard mining picks one negative per anchor and skips those closer than
# the positive, so whether it meets a duplicate depends on the data: its own
# test below builds one that it meets.
@pytest.mark.parametrize(
    "case", sorted(set(CASES) - {"triplet_semi_cosine", "triplet_semi_euclidean"})
)
def test_duplicate_ids_change_every_loss_with_negatives(case, pair):
    loss, _ = CASES[case]
    plain = float(call(loss, *pair))
    masked = float(call(loss, *pair, ids=(IMAGE_IDS, TEXT_IDS)))
    if isinstance(loss, AlignmentLoss):
        assert masked == plain  # no negatives, nothing to mask
    else:
        assert abs(masked - plain) > 1e-4


def test_clip_duplicate_pair_is_not_a_negative():
    # A perfectly aligned batch holding the same pair twice (rows 0 and 1).
    # Unmasked, rows 0 and 1 each see two equal best logits, so each costs
    # log(2) in both directions; masked, the batch is perfect: zero.
    image = unit_rows(3, batch=4, dim=16)
    image[1] = image[0]
    ids = np.array([0, 0, 1, 2])
    loss = ClipLoss()
    scale = math.log(100.0)
    masked = float(loss(image, image, logit_scale=scale, image_ids=ids, text_ids=ids))
    unmasked = float(loss(image, image, logit_scale=scale))
    assert masked < 1e-6
    np.testing.assert_allclose(unmasked, math.log(2.0) / 2, rtol=1e-4)


def test_triplet_duplicate_pair_is_not_a_negative():
    image = unit_rows(3, batch=4, dim=16)
    image[1] = image[0]
    ids = np.array([0, 0, 1, 2])
    loss = TripletLoss(margin=0.2)
    masked = float(loss(image, image, image_ids=ids, text_ids=ids))
    unmasked = float(loss(image, image))
    # Unmasked, anchors 0 and 1 meet a "negative" as close as their
    # positive: each costs the margin, in both directions.
    assert masked < 1e-6
    np.testing.assert_allclose(unmasked, 2 * 0.2 / 4, rtol=1e-5)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_semi_hard_skips_a_false_negative_just_beyond_the_positive(distance):
    # Rows 0 and 1 show one image (two augmented views, close together) with
    # two captions: text 0 exactly on view 0, text 1 just beyond. Unmasked,
    # text 1 is anchor image 0's semi-hard negative (the closest one farther
    # than the positive) and costs nearly the margin. The other rows are
    # perfect pairs, far apart.
    image = unit_rows(8, batch=4, dim=16)
    text = image.copy()
    noise = unit_rows(9, batch=2, dim=16)
    image[1] = image[0] + 0.05 * noise[0]
    text[1] = image[0] + 0.1 * noise[1]
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    ids = np.array([0, 0, 1, 2]), np.array([0, 1, 2, 3])
    loss = TripletLoss(margin=0.2, mining="semi_hard", distance=distance)
    masked = float(loss(image, text, image_ids=ids[0], text_ids=ids[1]))
    unmasked = float(loss(image, text))
    assert masked < 1e-6
    assert unmasked > 0.01
    expected = reference_triplet(image, text, 0.2, "semi_hard", distance, (None,) * 2)
    assert unmasked == pytest.approx(expected, rel=1e-5)


def test_clip_scale_is_clamped_at_100(pair):
    loss = ClipLoss()
    at_100 = float(loss(*pair, logit_scale=math.log(100.0)))
    beyond = float(loss(*pair, logit_scale=math.log(1000.0)))
    assert at_100 == pytest.approx(beyond, rel=1e-6)
    assert at_100 == pytest.approx(reference_clip(*pair, 100.0, (None, None)))


def test_temperature_is_used_without_a_logit_scale(pair):
    value = float(ClipLoss(temperature=0.25)(*pair))
    assert value == pytest.approx(reference_clip(*pair, 4.0, (None, None)), rel=1e-5)
    value = float(SigLipLoss(temperature=0.5, bias=-2.0)(*pair))
    assert value == pytest.approx(
        reference_siglip(*pair, 2.0, -2.0, (None, None)), rel=1e-5
    )


def test_siglip_matches_open_clip_on_a_hand_computed_example():
    # open_clip: loss = -logsigmoid(labels * logits).sum() / batch, labels
    # 2 * eye - 1, logits = exp(logit_scale) * I @ T.T + logit_bias.
    image = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    text = np.array([[0.6, 0.8], [0.8, -0.6]], "float32")
    # I @ T.T = [[0.6, 0.8], [0.8, -0.6]]; scale 10, bias -10:
    # logits [[-4, -2], [-2, -16]], labels [[1, -1], [-1, 1]], and
    # -log sigmoid(z) = log(1 + exp(-z)).
    expected = (
        math.log(1 + math.exp(4))
        + 2 * math.log(1 + math.exp(-2))
        + math.log(1 + math.exp(16))
    ) / 2
    value = SigLipLoss()(image, text, logit_scale=math.log(10.0), logit_bias=-10.0)
    assert float(value) == pytest.approx(expected, rel=1e-6)
    assert float(value) == pytest.approx(10.136, abs=1e-3)


def test_semi_hard_mining_and_its_fallback():
    # 1-D embeddings, Euclidean distance |I_i - T_j|:
    #            T0=3  T1=2  T2=9
    #   I0 = 0     3     2     9   positive 3: hardest 2, semi-hard 9
    #   I1 = 1     2     1     8   positive 1: hardest = semi-hard = 2
    #   I2 = 5     2     3     4   positive 4: nothing farther -> hardest 2
    # As text anchors (columns): T0 positive 3, negatives 2 and 2, nothing
    # farther -> 2; T1 positive 1 -> 2; T2 positive 4 -> semi-hard 8.
    image = np.array([[0.0], [1.0], [5.0]], "float32")
    text = np.array([[3.0], [2.0], [9.0]], "float32")
    margin = 0.5

    def cost(positive, negative):
        return max(0.0, positive - negative + margin)

    semi = TripletLoss(margin=margin, mining="semi_hard", distance="euclidean")
    expected = (
        (cost(3, 9) + cost(1, 2) + cost(4, 2)) / 3
        + (cost(3, 2) + cost(1, 2) + cost(4, 8)) / 3
    ) / 2
    assert float(semi(image, text)) == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(2 / 3)
    # tensorflow-addons' fallback, the farthest negative, would give 1/2.
    farthest = ((cost(4, 3)) / 3 + cost(3, 2) / 3) / 2
    assert float(semi(image, text)) != pytest.approx(farthest)

    hard = TripletLoss(margin=margin, mining="batch_hard", distance="euclidean")
    expected = (
        (cost(3, 2) + cost(1, 2) + cost(4, 2)) / 3
        + (cost(3, 2) + cost(1, 2) + cost(4, 8)) / 3
    ) / 2
    assert float(hard(image, text)) == pytest.approx(expected, rel=1e-5)


def test_perfect_alignment_gives_a_near_zero_clip_loss():
    image = unit_rows(4, batch=8, dim=32)
    loss = ClipLoss()
    perfect = float(loss(image, image, logit_scale=math.log(100.0)))
    random = float(loss(image, unit_rows(5, 8, 32), logit_scale=math.log(100.0)))
    assert perfect < 1e-6
    assert random > 1.0


def test_a_single_row_batch_is_finite():
    image, text = unit_rows(6, batch=1), unit_rows(7, batch=1)
    for loss in [case[0] for case in CASES.values()]:
        assert np.isfinite(float(call(loss, image, text))), loss


# === Gradients, dtypes, graphs ===


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_are_finite_and_nonzero(case, pair):
    loss, _ = CASES[case]
    image, text = tf.Variable(pair[0]), tf.Variable(pair[1])
    scale, bias = tf.Variable(LOGIT_SCALE), tf.Variable(LOGIT_BIAS)
    with tf.GradientTape() as tape:
        value = loss(
            image,
            text,
            logit_scale=scale,
            logit_bias=bias,
            image_ids=IMAGE_IDS,
            text_ids=TEXT_IDS,
        )
    wanted = [image, text]
    wanted += [scale] if loss.needs_scale else []
    wanted += [bias] if loss.needs_bias else []
    gradients = tape.gradient(value, wanted)
    for variable, gradient in zip(wanted, gradients, strict=True):
        assert gradient is not None, variable.name
        gradient = gradient.numpy()
        assert np.all(np.isfinite(gradient)), variable.name
        assert np.abs(gradient).max() > 1e-6, variable.name


@pytest.mark.parametrize("case", sorted(CASES))
def test_float16_inputs_give_a_float32_result(case, pair):
    loss, _ = CASES[case]
    expected = float(call(loss, *pair))
    keras.config.set_dtype_policy("mixed_float16")
    half = call(loss, *(tf.constant(x, tf.float16) for x in pair))
    assert keras.backend.standardize_dtype(half.dtype) == "float32"
    np.testing.assert_allclose(float(half), expected, rtol=1e-2, atol=1e-3)


def test_losses_trace_with_an_unknown_batch_size(pair):
    signature = [
        tf.TensorSpec((None, DIM), tf.float32),
        tf.TensorSpec((None, DIM), tf.float32),
        tf.TensorSpec((None,), tf.int64),
        tf.TensorSpec((None,), tf.int64),
    ]
    for loss, _ in CASES.values():
        traced = tf.function(
            lambda i, t, a, b, loss=loss: call(loss, i, t, ids=(a, b)),
            input_signature=signature,
        )
        value = traced(*pair, IMAGE_IDS, TEXT_IDS)
        expected = call(loss, *pair, ids=(IMAGE_IDS, TEXT_IDS))
        np.testing.assert_allclose(float(value), float(expected), rtol=1e-6)


# === Configs, registry, errors ===


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_and_serialization_round_trip(case, pair):
    loss, _ = CASES[case]
    config = loss.get_config()
    rebuilt = type(loss).from_config(config)
    assert rebuilt.get_config() == config

    serialized = keras.saving.serialize_keras_object(loss)
    assert serialized["registered_name"] == f"mmzoo>{type(loss).__name__}"
    serialized = json.loads(json.dumps(serialized))
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(loss)
    assert restored.get_config() == config
    ids = (IMAGE_IDS, TEXT_IDS)
    assert float(call(restored, *pair, ids=ids)) == float(call(loss, *pair, ids=ids))


def test_registry_names_classes_and_flags():
    assert set(losses.LOSSES) >= {
        "clip",
        "soft_clip",
        "siglip",
        "margin",
        "triplet",
        "alignment",
    }
    for name, cls in losses.LOSSES.items():
        assert cls.name == name
        assert isinstance(cls.needs_scale, bool)
        assert isinstance(cls.needs_bias, bool)
    assert (ClipLoss.needs_scale, ClipLoss.needs_bias) == (True, False)
    assert (SigLipLoss.needs_scale, SigLipLoss.needs_bias) == (True, True)
    assert not MarginLoss.needs_scale and not TripletLoss.needs_scale
    with pytest.raises(TypeError):
        losses.LOSSES["clip"] = MarginLoss


def test_get_loss():
    loss = losses.get_loss("triplet", mining="semi_hard", margin=0.5)
    assert isinstance(loss, TripletLoss)
    assert loss.get_config()["mining"] == "semi_hard"
    assert losses.get_loss(loss) is loss
    with pytest.raises(ValueError, match="not to an instance"):
        losses.get_loss(loss, margin=1.0)
    with pytest.raises(ValueError) as error:
        losses.get_loss("sigclip")
    message = str(error.value)
    assert "`loss` must be one of ['alignment', 'clip'," in message
    assert "Received: loss='sigclip'." in message
    assert "Did you mean" in message and "'siglip'" in message


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: TripletLoss(mining="semi-hard"), "Did you mean 'semi_hard'?"),
        (lambda: TripletLoss(distance="cos"), "Received: distance='cos'"),
        (lambda: AlignmentLoss(mode="kld"), "Did you mean 'kl'?"),
        (lambda: ClipLoss(label_smoothing=1.0), "Received: label_smoothing=1.0"),
        (lambda: ClipLoss(temperature=0), "Received: temperature=0"),
        (lambda: MarginLoss(margin=-1.0), "Received: margin=-1.0"),
    ],
)
def test_bad_options_are_refused(build, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build()


def test_bad_shapes_are_refused(pair):
    image, text = pair
    with pytest.raises(ValueError, match="same shape"):
        ClipLoss()(image, text[:4])
    with pytest.raises(ValueError, match=r"\(batch, dim\)"):
        ClipLoss()(image[0], text[0])
    with pytest.raises(ValueError, match="one id per row, 6"):
        ClipLoss()(image, text, image_ids=IMAGE_IDS[:5], text_ids=TEXT_IDS)


def test_docstring_examples_run():
    results = doctest.testmod(losses, raise_on_error=False, verbose=False)
    assert results.attempted >= 2
    assert results.failed == 0
    for name, cls in losses.LOSSES.items():
        if not issubclass(cls, losses.ContrastiveLoss):
            continue  # Deep CCA (mmzoo.cca) is tests/test_cca.py's
        example = re.search(r"```python\n(.*?)```", cls.__doc__, re.S)
        namespace = {"keras": keras, "math": math, **vars(losses)}
        *setup, last = textwrap.dedent(example.group(1)).strip().splitlines()
        exec("\n".join(setup), namespace)
        assert np.isfinite(float(eval(last, namespace))), name


# === JAX ===

JAX_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    import numpy as np
    import keras
    from mmzoo import losses

    data = json.loads(sys.stdin.read())
    image = np.array(data["image"], "float32")
    text = np.array(data["text"], "float32")
    ids = np.array(data["image_ids"]), np.array(data["text_ids"])

    def value(name, i, t, s):
        loss = losses.get_loss(name)
        return loss(i, t, logit_scale=s, logit_bias=-5.0,
                    image_ids=ids[0], text_ids=ids[1])

    results = {}
    for name in sorted(losses.LOSSES):
        jitted = jax.jit(lambda i, t, s, name=name: value(name, i, t, s))
        results[name] = float(jitted(image, text, np.float32(data["scale"])))
    gradient = jax.grad(lambda s: value("clip", image, text, s))(
        np.float32(data["scale"]))
    print(json.dumps({
        "backend": keras.backend.backend(),
        "tensorflow_imported": "tensorflow" in sys.modules,
        "values": results,
        "scale_gradient": float(gradient),
    }))
    """
)


def test_losses_run_on_the_jax_backend(pair):
    pytest.importorskip("jax", reason="jax is not installed")
    image, text = pair
    payload = {
        "image": image.tolist(),
        "text": text.tolist(),
        "image_ids": IMAGE_IDS.tolist(),
        "text_ids": TEXT_IDS.tolist(),
        "scale": LOGIT_SCALE,
    }
    done = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT],
        input=json.dumps(payload),
        env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax"
    assert report["tensorflow_imported"] is False
    ids = (IMAGE_IDS, TEXT_IDS)
    for name, jax_value in report["values"].items():
        tf_value = float(call(losses.get_loss(name), image, text, ids=ids))
        np.testing.assert_allclose(jax_value, tf_value, rtol=1e-5, err_msg=name)

    scale = tf.Variable(LOGIT_SCALE)
    with tf.GradientTape() as tape:
        value = call(ClipLoss(), image, text, ids=ids, logit_scale=scale)
    tf_gradient = float(tape.gradient(value, scale))
    np.testing.assert_allclose(report["scale_gradient"], tf_gradient, rtol=1e-4)


def test_clip_rows_loss_is_open_clips_local_loss():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(8, 5)).astype("float32")
    text = (image + rng.normal(size=(8, 5))).astype("float32")
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    ids = {"image_ids": np.array([0, 1, 2, 0, 4, 5, 6, 7]), "text_ids": np.arange(8)}
    for loss in (ClipLoss(), ClipLoss(label_smoothing=0.1)):
        whole = float(loss(image, text, logit_scale=2.0, **ids))
        # All the rows: the loss itself.
        assert float(loss.rows_loss(image, text, 0, 8, 2.0, **ids)) == pytest.approx(
            whole, rel=1e-6
        )
        # Two replicas of four rows each: their mean is the global loss.
        halves = [float(loss.rows_loss(image, text, s, 4, 2.0, **ids)) for s in (0, 4)]
        assert np.mean(halves) == pytest.approx(whole, rel=1e-6)
        assert halves[0] != pytest.approx(halves[1])
