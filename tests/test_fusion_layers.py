"""Unit tests for the fusion layers in `mmzoo.fusion`, on tiny shapes."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from harness import TINY
from harness import run_layer_test
from keras import ops

from mmzoo import registry
from mmzoo.builder import DEFAULTS
from mmzoo.builder import _fusion_layer
from mmzoo.fusion import BilinearFusion
from mmzoo.fusion import ConcatFusion
from mmzoo.fusion import CrossAttentionFusion
from mmzoo.fusion import FiLMFusion
from mmzoo.fusion import GatedFusion
from mmzoo.fusion import LateFusion
from mmzoo.fusion import ModalityAttentionFusion
from mmzoo.fusion import WeightedSumFusion

BATCH = 4
WIDTHS = (8, 5, 3)  # feature width of modality 0, 1 and (when used) 2
UNITS = 6
CLASSES = 3
CELLS, STEPS = 6, 5  # image grid cells and text tokens for cross-attention


def pooled_inputs(count=2, seed=0, batch=BATCH):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(batch, width)).astype("float32") for width in WIDTHS[:count]
    ]


def sequence_inputs(seed=0, batch=BATCH):
    """`[image_cells, tokens]` and a text mask with a different length per row."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(batch, CELLS, 8)).astype("float32")
    text = rng.normal(size=(batch, STEPS, 7)).astype("float32")
    lengths = 1 + np.arange(batch) % STEPS
    text_mask = np.arange(STEPS)[None, :] < lengths[:, None]
    return [image, text], [None, text_mask]


def numpy_of(value):
    return keras.tree.map_structure(
        lambda t: np.asarray(ops.convert_to_numpy(t)), value
    )


def dense_of(layer, x):
    """A built Dense layer applied by hand: x @ kernel + bias (no activation)."""
    kernel, bias = (np.asarray(w) for w in layer.get_weights())
    return x @ kernel + bias


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(0)


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


# === Cases ===
# id -> (factory, output width, returns weights). Factories build a fresh layer
# each time, so a test can build one under a different dtype policy.
POOLED = {
    "concat": (lambda: ConcatFusion(units=None), sum(WIDTHS[:2]), False),
    "concat_units": (lambda: ConcatFusion(units=UNITS), UNITS, False),
    "weighted_sum": (lambda: WeightedSumFusion(units=UNITS), UNITS, True),
    "weighted_sum_fixed": (
        lambda: WeightedSumFusion(units=UNITS, modality_weights=[0.7, 0.3]),
        UNITS,
        True,
    ),
    "gated": (lambda: GatedFusion(units=UNITS), UNITS, True),
    "modality_attention": (lambda: ModalityAttentionFusion(units=UNITS), UNITS, True),
    "bilinear": (lambda: BilinearFusion(units=UNITS, rank=3), UNITS, False),
    "late_average": (lambda: LateFusion(CLASSES, "average", units=5), CLASSES, False),
    "late_learned": (lambda: LateFusion(CLASSES, "learned", units=5), CLASSES, True),
    "late_stacking": (lambda: LateFusion(CLASSES, "stacking"), CLASSES, False),
}
# Pooled fusions that take any number of modalities (fixed λ has exactly 2).
MULTI = [key for key in POOLED if key not in ("concat", "weighted_sum_fixed")]


def cross_attention():
    return CrossAttentionFusion(units=UNITS, num_heads=2, num_layers=2, dropout=0.1)


def film():
    return FiLMFusion(units=UNITS, dropout=0.0)


def film_inputs(seed=0, batch=BATCH):
    """`[image_cells, pooled_text]`."""
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(batch, CELLS, 8)).astype("float32"),
        rng.normal(size=(batch, 7)).astype("float32"),
    ]


def case_inputs(key):
    """Layer, positional inputs and call kwargs for any case, pooled or sequence."""
    if key == "cross_attention":
        inputs, masks = sequence_inputs()
        return cross_attention(), inputs, {"masks": masks}
    if key == "film":
        return film(), film_inputs(), {}
    return POOLED[key][0](), pooled_inputs(), {}


ALL_CASES = [*POOLED, "cross_attention", "film"]


# === Shapes and modality weights ===


@pytest.mark.parametrize("key", list(POOLED))
def test_pooled_output_shapes(key):
    factory, width, returns_weights = POOLED[key]
    layer = factory()
    output = layer(pooled_inputs())
    assert layer.returns_weights is returns_weights
    if returns_weights:
        fused, weights = output
        assert tuple(fused.shape) == (BATCH, width)
        assert tuple(weights.shape) == (BATCH, 2)
    else:
        assert tuple(output.shape) == (BATCH, width)
    # The symbolic path (compute_output_shape / spec) agrees with eager.
    symbolic = layer([keras.Input((w,)) for w in WIDTHS[:2]])
    eager_shapes = [tuple(t.shape)[1:] for t in keras.tree.flatten(output)]
    assert [tuple(t.shape)[1:] for t in keras.tree.flatten(symbolic)] == eager_shapes


@pytest.mark.parametrize("key", MULTI)
def test_pooled_three_modalities(key):
    factory, width, returns_weights = POOLED[key]
    layer = factory()
    output = layer(pooled_inputs(count=3))
    if returns_weights:
        fused, weights = output
        assert tuple(weights.shape) == (BATCH, 3)
    else:
        fused = output
    assert tuple(fused.shape) == (BATCH, width)


def test_concat_without_units_is_the_concatenation():
    inputs = pooled_inputs()
    np.testing.assert_array_equal(
        numpy_of(ConcatFusion(units=None)(inputs)), np.concatenate(inputs, axis=-1)
    )


def test_concat_with_units_is_a_relu_projection():
    inputs = pooled_inputs()
    layer = ConcatFusion(units=UNITS)
    fused = numpy_of(layer(inputs))
    expected = np.maximum(dense_of(layer.projection, np.concatenate(inputs, -1)), 0)
    np.testing.assert_allclose(fused, expected, atol=1e-5)


def _randomise_learned_logits(layer):
    """Learned λ start at softmax(0) = uniform; move them so checks can fail."""
    if getattr(layer, "logits", None) is not None:
        layer.logits.assign(np.linspace(-1.0, 1.5, layer.logits.shape[0]))


@pytest.mark.parametrize(
    ("key", "count"),
    [
        (key, count)
        for key, (_, _, weights) in POOLED.items()
        for count in (2, 3)
        if weights and (count == 2 or key in MULTI)
    ],
)
def test_modality_weights_are_a_distribution_per_example(key, count):
    layer = POOLED[key][0]()
    inputs = pooled_inputs(count=count)
    layer(inputs)
    _randomise_learned_logits(layer)
    _, weights = numpy_of(layer(inputs))
    assert weights.shape == (BATCH, count)
    assert (weights >= 0).all()
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-6)
    if key in ("weighted_sum", "late_learned"):
        # One λ per modality, the same for every example: softmax of the logits.
        expected = softmax(np.asarray(layer.logits))
        np.testing.assert_allclose(weights, np.broadcast_to(expected, weights.shape))


def test_weighted_sum_fixed_lambdas_by_hand():
    inputs = pooled_inputs()
    layer = WeightedSumFusion(units=UNITS, modality_weights=[0.7, 0.3])
    fused, weights = numpy_of(layer(inputs))
    first, second = (
        dense_of(p, x) for p, x in zip(layer.projections, inputs, strict=True)
    )
    np.testing.assert_allclose(fused, 0.7 * first + 0.3 * second, atol=1e-5)
    np.testing.assert_allclose(weights, np.tile([0.7, 0.3], (BATCH, 1)), atol=1e-7)
    assert not any(w.path.endswith("modality_logits") for w in layer.weights)


def test_weighted_sum_learned_lambdas_by_hand():
    inputs = pooled_inputs()
    layer = WeightedSumFusion(units=UNITS)
    layer(inputs)
    layer.logits.assign([0.4, -0.9])
    fused, _ = numpy_of(layer(inputs))
    lam = softmax(np.array([0.4, -0.9]))
    first, second = (
        dense_of(p, x) for p, x in zip(layer.projections, inputs, strict=True)
    )
    np.testing.assert_allclose(fused, lam[0] * first + lam[1] * second, atol=1e-5)


def test_gated_fusion_matches_the_gmu_formula():
    """Arevalo et al.: h = z * h_v + (1 - z) * h_t, z = sigmoid(a - b)."""
    image, text = inputs = pooled_inputs()
    layer = GatedFusion(units=UNITS)
    fused, weights = numpy_of(layer(inputs))
    h_v = np.tanh(dense_of(layer.projections[0], image))
    h_t = np.tanh(dense_of(layer.projections[1], text))
    gate_logits = dense_of(layer.gate, np.concatenate(inputs, axis=-1))
    a, b = gate_logits[:, :UNITS], gate_logits[:, UNITS:]
    z = sigmoid(a - b)
    np.testing.assert_allclose(fused, z * h_v + (1 - z) * h_t, atol=1e-5)
    # Reported modality weights are the gates averaged over the units.
    expected = np.stack([z.mean(-1), (1 - z).mean(-1)], axis=-1)
    np.testing.assert_allclose(weights, expected, atol=1e-5)
    # The gate depends on the example: a real per-example mix, not a constant.
    assert np.ptp(weights[:, 0]) > 1e-4


def test_modality_attention_by_hand():
    inputs = pooled_inputs()
    layer = ModalityAttentionFusion(units=UNITS)
    fused, weights = numpy_of(layer(inputs))
    hidden = np.stack(
        [
            np.tanh(dense_of(p, x))
            for p, x in zip(layer.projections, inputs, strict=True)
        ],
        axis=1,
    )
    kernel = np.asarray(layer.score.get_weights()[0])
    scores = (np.tanh(dense_of(layer.score_hidden, hidden)) @ kernel)[..., 0]
    expected_weights = softmax(scores)
    np.testing.assert_allclose(weights, expected_weights, atol=1e-5)
    np.testing.assert_allclose(
        fused, (hidden * expected_weights[..., None]).sum(1), atol=1e-5
    )


def test_bilinear_fusion_by_hand():
    inputs = pooled_inputs()
    layer = BilinearFusion(units=UNITS, rank=3)
    fused = numpy_of(layer(inputs))
    product = dense_of(layer.projections[0], inputs[0]) * dense_of(
        layer.projections[1], inputs[1]
    )
    pooled = product.reshape(BATCH, UNITS, 3).sum(-1)
    pooled = np.sign(pooled) * np.sqrt(np.abs(pooled) + 1e-8)
    expected = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    np.testing.assert_allclose(fused, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=-1), 1.0, atol=1e-5)


def test_film_matches_the_formula():
    """Perez et al.: relu((1 + W_g t) * W x + W_b t), averaged over cells."""
    (cells, text), layer = film_inputs(), film()
    fused = numpy_of(layer([cells, text]))
    gamma = 1.0 + dense_of(layer.scale, text)[:, None, :]
    beta = dense_of(layer.shift, text)[:, None, :]
    expected = np.maximum(gamma * dense_of(layer.projection, cells) + beta, 0).mean(1)
    np.testing.assert_allclose(fused, expected, atol=1e-5)


@pytest.mark.parametrize("combine", ["average", "learned", "stacking"])
def test_late_fusion_combines_per_modality_logits(combine):
    inputs = pooled_inputs()
    layer = LateFusion(CLASSES, combine, units=5)
    layer(inputs)
    _randomise_learned_logits(layer)
    output = numpy_of(layer(inputs))
    logits = [
        dense_of(head, np.maximum(dense_of(hidden, x), 0))
        for hidden, head, x in zip(layer.hidden, layer.heads, inputs, strict=True)
    ]
    if combine == "average":
        expected = (logits[0] + logits[1]) / 2
    elif combine == "learned":
        lam = softmax(np.asarray(layer.logits))
        expected = lam[0] * logits[0] + lam[1] * logits[1]
        output = output[0]
    else:
        expected = dense_of(layer.stack, np.concatenate(logits, axis=-1))
    np.testing.assert_allclose(output, expected, atol=1e-5)


def test_cross_attention_output_shape():
    layer = cross_attention()
    inputs, masks = sequence_inputs()
    fused = layer(inputs, masks=masks)
    assert layer.returns_weights is False
    assert tuple(fused.shape) == (BATCH, 2 * UNITS)
    symbolic = layer([keras.Input((None, 8)), keras.Input((None, 7))])
    assert tuple(symbolic.shape) == (None, 2 * UNITS)
    # Without masks every step counts.
    assert tuple(layer(inputs).shape) == (BATCH, 2 * UNITS)


# === The layer contract (harness.run_layer_test) ===


def _factory(key):
    return lambda: case_inputs(key)[0]


@pytest.mark.parametrize("key", ALL_CASES)
def test_layer_contract(key):
    _, inputs, kwargs = case_inputs(key)
    padded = {}
    if key == "cross_attention":
        rng = np.random.default_rng(3)
        (image, text), (_, text_mask) = inputs, kwargs["masks"]
        noisy = _pad(_garbage_in_masked_steps(text, text_mask, rng), 4, rng)
        mask = np.concatenate([text_mask, np.zeros((BATCH, 4), bool)], axis=1)
        padded = {"padded_inputs": [image, noisy], "padded_masks": [None, mask]}
    run_layer_test(_factory(key), inputs, masks=kwargs.get("masks"), **padded)


def _registered_case(name):
    """A registered fusion built as build_model builds it, and its inputs."""
    spec = registry.FUSIONS[name]
    context = {**DEFAULTS, **TINY, "num_outputs": CLASSES}
    rng = np.random.default_rng(0)
    image_shape = (BATCH, CELLS, 8) if spec.image_grid else (BATCH, 8)
    text_shape = (BATCH, STEPS, 7) if spec.text_sequence else (BATCH, 7)
    inputs = [
        rng.normal(size=image_shape).astype("float32"),
        rng.normal(size=text_shape).astype("float32"),
    ]
    masks = None
    if spec.text_sequence:
        masks = [
            None,
            np.arange(STEPS)[None, :] < (1 + np.arange(BATCH) % STEPS)[:, None],
        ]
    return (lambda: _fusion_layer(spec, context)), inputs, masks


@pytest.mark.parametrize(
    "name", [name for name, spec in registry.FUSIONS.items() if spec.layer]
)
def test_every_registered_fusion_keeps_the_layer_contract(name):
    factory, inputs, masks = _registered_case(name)
    layer = factory()
    assert layer.name == "fusion"
    output = run_layer_test(factory, inputs, masks=masks)
    spec = registry.FUSIONS[name]
    fused = output[0] if layer.returns_weights else output
    width = CLASSES if spec.returns_logits else None
    assert fused.shape[0] == BATCH and (width is None or fused.shape[1] == width)
    if layer.returns_weights:
        assert spec.modality_weights
        assert tuple(output[1].shape) == (BATCH, 2)


def test_fixed_weights_survive_the_config():
    layer = WeightedSumFusion(units=UNITS, modality_weights=[0.7, 0.3])
    clone = WeightedSumFusion.from_config(layer.get_config())
    assert clone.modality_weights == [0.7, 0.3]
    _, weights = numpy_of(clone(pooled_inputs()))
    np.testing.assert_allclose(weights[0], [0.7, 0.3], atol=1e-7)


# === Masking (cross-attention) ===


def _pad(array, steps, rng):
    """Append `steps` steps of non-zero random garbage along axis 1."""
    garbage = rng.uniform(5.0, 50.0, size=(array.shape[0], steps, array.shape[2]))
    garbage *= rng.choice([-1.0, 1.0], size=garbage.shape)
    return np.concatenate([array, garbage.astype("float32")], axis=1)


def _garbage_in_masked_steps(array, mask, rng):
    array = array.copy()
    hidden = ~mask
    array[hidden] = rng.uniform(-40.0, 40.0, size=(hidden.sum(), array.shape[-1]))
    return array


def test_cross_attention_padded_text_does_not_change_the_output():
    rng = np.random.default_rng(3)
    layer = cross_attention()
    (image, text), (_, text_mask) = sequence_inputs()
    reference = numpy_of(layer([image, text], masks=[None, text_mask]))

    noisy = _garbage_in_masked_steps(text, text_mask, rng)
    padded = _pad(noisy, 4, rng)
    padded_mask = np.concatenate([text_mask, np.zeros((BATCH, 4), bool)], axis=1)
    output = numpy_of(layer([image, padded], masks=[None, padded_mask]))
    np.testing.assert_allclose(output, reference, atol=1e-5)

    # The mask is what makes it so: without it, the garbage does change things.
    unmasked = numpy_of(layer([image, padded]))
    assert np.abs(unmasked - reference).max() > 1e-3


def test_cross_attention_masked_image_cells_do_not_change_the_output():
    rng = np.random.default_rng(4)
    layer = cross_attention()
    (image, text), (_, text_mask) = sequence_inputs()
    image_mask = np.ones((BATCH, CELLS), bool)
    image_mask[0, 4:] = False
    image_mask[2, 2:] = False
    reference = numpy_of(layer([image, text], masks=[image_mask, text_mask]))

    noisy = _garbage_in_masked_steps(image, image_mask, rng)
    padded = _pad(noisy, 3, rng)
    padded_mask = np.concatenate([image_mask, np.zeros((BATCH, 3), bool)], axis=1)
    output = numpy_of(layer([padded, text], masks=[padded_mask, text_mask]))
    np.testing.assert_allclose(output, reference, atol=1e-5)

    # Dropping the masked cells altogether gives the same answer for row 2.
    kept = numpy_of(layer([image[2:3, :2], text[2:3]], masks=[None, text_mask[2:3]]))
    np.testing.assert_allclose(output[2:3], kept, atol=1e-5)


def test_cross_attention_all_masked_text_is_finite():
    layer = cross_attention()
    (image, text), _ = sequence_inputs()
    empty = np.zeros((BATCH, STEPS), bool)
    fused = numpy_of(layer([image, text], masks=[None, empty]))
    assert np.isfinite(fused).all()
    # The text stream pools to zeros; the image stream is still informative.
    np.testing.assert_array_equal(fused[:, UNITS:], 0.0)
    assert np.abs(fused[:, :UNITS]).max() > 0
    # No token is attended to, so what the masked tokens hold cannot matter.
    other = numpy_of(layer([image, 10.0 * text[::-1] + 3.0], masks=[None, empty]))
    np.testing.assert_allclose(other, fused, atol=1e-5)


# === Mixed precision ===


@pytest.mark.parametrize("scale", [1e-4, 1e-8, 0.0])
def test_bilinear_fusion_finite_with_near_zero_inputs_in_float16(scale, mixed_float16):
    layer = BilinearFusion(units=UNITS, rank=3)
    inputs = [x * scale for x in pooled_inputs()]
    fused = layer(inputs)
    assert keras.backend.standardize_dtype(fused.dtype) == "float16"
    assert np.isfinite(numpy_of(fused)).all()
    # The gradient of the signed square root must stay finite too.
    tensors = [tf.constant(x) for x in inputs]
    with tf.GradientTape() as tape:
        for x in tensors:
            tape.watch(x)
        total = tf.reduce_sum(tf.cast(layer(tensors, training=True), "float32"))
    for gradient in tape.gradient(total, tensors):
        assert np.isfinite(gradient.numpy()).all()


def test_cross_attention_all_masked_text_finite_in_float16(mixed_float16):
    layer = cross_attention()
    (image, text), _ = sequence_inputs()
    fused = layer([image, text], masks=[None, np.zeros((BATCH, STEPS), bool)])
    assert np.isfinite(numpy_of(fused)).all()


# === Errors ===


@pytest.mark.parametrize("key", ["concat", "gated", "late_average", "cross_attention"])
def test_dict_input_is_refused(key):
    layer, inputs, _ = case_inputs(key)
    with pytest.raises(
        ValueError, match="take a list of modality features, not a dict"
    ):
        layer({"image": inputs[0], "text": inputs[1]})


@pytest.mark.parametrize("key", ALL_CASES)
def test_single_input_is_refused(key):
    layer, inputs, _ = case_inputs(key)
    name = type(layer).__name__
    pattern = rf"{name} fuses between 2 and .* Received: 1 input\(s\)"
    with pytest.raises(ValueError, match=pattern):
        layer([inputs[0]])
    with pytest.raises(ValueError, match=pattern):
        case_inputs(key)[0](inputs[0])


def test_wrong_rank_to_a_pooled_fusion():
    image, text = pooled_inputs()
    with pytest.raises(
        ValueError,
        match=r"ConcatFusion expects every modality as \(batch, features\)\. "
        r"Received: input 1 of shape \(4, 1, 5\)",
    ):
        ConcatFusion()([image, text[:, None, :]])


def test_wrong_rank_to_cross_attention():
    (image, text), _ = sequence_inputs()
    with pytest.raises(
        ValueError,
        match=r"expects every modality as \(batch, steps, features\)\. "
        r"Received: input 0 of shape \(4, 8\)",
    ):
        cross_attention()([image[:, 0], text])


def test_three_inputs_to_cross_attention():
    (image, text), _ = sequence_inputs()
    with pytest.raises(
        ValueError, match=r"between 2 and 2 modalities.*Received: 3 input\(s\)"
    ):
        cross_attention()([image, text, text])


@pytest.mark.parametrize("weights", [[1.0], [0.5, 0.3, 0.2]])
def test_fixed_weights_of_the_wrong_length(weights):
    layer = WeightedSumFusion(units=UNITS, modality_weights=weights)
    with pytest.raises(ValueError, match=r"one λ per modality \(2\)"):
        layer(pooled_inputs())


def test_late_fusion_unknown_combine_lists_names_and_suggests():
    valid = re.escape("must be one of ['average', 'learned', 'stacking']")
    with pytest.raises(
        ValueError,
        match=rf"{valid}\. Received: \w*combine='avg'\. Did you mean 'average'\?",
    ):
        LateFusion(CLASSES, combine="avg")


def test_cross_attention_units_not_divisible_by_heads():
    with pytest.raises(
        ValueError,
        match=r"`units` must be divisible by `num_heads`\. "
        r"Received: units=10, num_heads=4",
    ):
        CrossAttentionFusion(units=10, num_heads=4)
