"""Deep CCA's objective and linear CCA, against independent computations.

The references: a float64 NumPy/SciPy transcription of the authors' MATLAB
objective (`scipy.linalg.sqrtm`, an explicit inverse, `np.linalg.svd`, no
shared code with mmzoo.cca), central finite differences of it, scikit-learn's
CCA, the Keras JAX backend, and a known ranking on real data (the digits'
left and right halves).
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from benchmarks.cca_digits import deep_cca_score
from benchmarks.cca_digits import digits_halves
from benchmarks.cca_digits import train_deep_cca
from mmzoo.cca import DeepCCALoss
from mmzoo.cca import LinearCCA
from mmzoo.cca import total_correlation


def reference_correlation(h1, h2, k=None, r1=1e-3, r2=1e-3):
    """The MATLAB objective in float64, written independently of mmzoo.cca."""
    h1 = np.asarray(h1, np.float64)
    h2 = np.asarray(h2, np.float64)
    m = len(h1)
    h1 = h1 - h1.mean(axis=0)
    h2 = h2 - h2.mean(axis=0)
    s11 = h1.T @ h1 / (m - 1) + r1 * np.eye(h1.shape[1])
    s22 = h2.T @ h2 / (m - 1) + r2 * np.eye(h2.shape[1])
    s12 = h1.T @ h2 / (m - 1)
    t = (
        np.linalg.inv(np.real(scipy.linalg.sqrtm(s11)))
        @ s12
        @ np.linalg.inv(np.real(scipy.linalg.sqrtm(s22)))
    )
    values = np.linalg.svd(t, compute_uv=False)
    return values[: k or len(values)].sum()


def finite_differences(function, h1, h2, step=1e-6):
    grads = []
    for which in (0, 1):
        point = [h1.copy(), h2.copy()]
        grad = np.zeros_like(point[which])
        for index in np.ndindex(grad.shape):
            up = [p.copy() for p in point]
            down = [p.copy() for p in point]
            up[which][index] += step
            down[which][index] -= step
            grad[index] = (function(*up) - function(*down)) / (2 * step)
        grads.append(grad)
    return grads


def loss_and_grads(loss, h1, h2):
    h1 = tf.constant(h1, tf.float32)
    h2 = tf.constant(h2, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([h1, h2])
        value = loss(h1, h2)
    g1, g2 = tape.gradient(value, [h1, h2])
    return float(value), g1.numpy(), g2.numpy()


def correlated_views(m=64, d1=5, d2=4, seed=0):
    """Two views sharing 3 latent directions, plus noise."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(m, 3))
    h1 = shared @ rng.normal(size=(3, d1)) + 0.7 * rng.normal(size=(m, d1))
    h2 = shared @ rng.normal(size=(3, d2)) + 0.7 * rng.normal(size=(m, d2)) + 5.0
    return h1, h2


# === The objective ===


@pytest.mark.parametrize(
    "k, r1, r2", [(None, 1e-3, 1e-3), (1, 1e-3, 1e-3), (3, 1e-2, 1e-4), (None, 0, 0)]
)
def test_total_correlation_matches_a_float64_reference(k, r1, r2):
    h1, h2 = correlated_views(m=200)
    expected = reference_correlation(h1, h2, k, r1, r2)
    value = total_correlation(h1, h2, k=k, r1=r1, r2=r2)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    assert value.shape == ()
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


@pytest.mark.parametrize("k", [None, 2])
def test_gradients_match_central_finite_differences(k):
    """Of the float64 reference: this checks the closed-form gradient (the
    paper's, given to Keras as a custom gradient) and the float32 work."""
    h1, h2 = correlated_views(m=32)
    _, g1, g2 = loss_and_grads(DeepCCALoss(k=k), h1, h2)
    f1, f2 = finite_differences(lambda a, b: -reference_correlation(a, b, k), h1, h2)
    for grad, expected in ((g1, f1), (g2, f2)):
        assert np.abs(expected).max() > 1e-2  # not a vacuous comparison
        np.testing.assert_allclose(grad, expected, atol=1e-4 * np.abs(expected).max())


def test_loss_is_minus_the_correlation_and_ignores_scale_bias_and_ids():
    h1, h2 = correlated_views()
    loss = DeepCCALoss(k=2)
    plain = loss(h1, h2)
    called = loss(
        image_embedding=h1,
        text_embedding=h2,
        logit_scale=np.float32(3.0),
        logit_bias=np.float32(-10.0),
        image_ids=np.zeros(len(h1), "int32"),
        text_ids=np.arange(len(h1)),
    )
    assert float(plain) == float(called) == -float(total_correlation(h1, h2, k=2))
    assert (DeepCCALoss.name, DeepCCALoss.needs_scale, DeepCCALoss.needs_bias) == (
        "dcca",
        False,
        False,
    )


def test_computes_in_float32_from_half_precision_inputs():
    h1, h2 = correlated_views(m=200)
    value = DeepCCALoss()(h1.astype("float16"), h2.astype("float16"))
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    np.testing.assert_allclose(
        -float(value),
        reference_correlation(h1.astype("float16"), h2.astype("float16")),
        rtol=1e-5,
    )


def test_invariant_to_rotations_and_shifts_of_each_view():
    """Exactly so with the ridge: (Q' S Q + r I) = Q' (S + r I) Q."""
    h1, h2 = correlated_views(m=100)
    rng = np.random.default_rng(1)
    q1, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    q2, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    moved = (h1 @ q1 - 3.0, h2 @ q2 + 7.0)
    for k in (None, 2):
        np.testing.assert_allclose(
            float(total_correlation(*moved, k=k)),
            float(total_correlation(h1, h2, k=k)),
            rtol=1e-5,
        )


def test_invariant_to_invertible_maps_only_without_ridge():
    """The ridge is in the views' units: it shrinks a small-scale view's
    correlations, and a general linear map changes the value a little."""
    h1, h2 = correlated_views(m=100)
    a = np.random.default_rng(2).normal(size=(5, 5))
    base = float(total_correlation(h1, h2, r1=0, r2=0))
    mapped = float(total_correlation(h1 @ a, 0.01 * h2, r1=0, r2=0))
    np.testing.assert_allclose(mapped, base, rtol=1e-4)
    ridged = float(total_correlation(h1, h2))
    assert float(total_correlation(h1, 0.01 * h2)) < ridged - 0.5
    assert abs(float(total_correlation(h1, 100.0 * h2)) - base) < 1e-3


def test_perfectly_correlated_views_give_min_d1_d2():
    rng = np.random.default_rng(0)
    h1 = rng.normal(size=(500, 4))
    h2 = np.hstack([h1 @ rng.normal(size=(4, 4)), rng.normal(size=(500, 2))])
    value = float(total_correlation(h1, h2))
    np.testing.assert_allclose(value, reference_correlation(h1, h2), rtol=1e-5)
    assert 4 - 0.01 < value < 4  # the ridge takes a little off each of the 4
    assert float(total_correlation(h1, h2, r1=0, r2=0)) == pytest.approx(4, abs=1e-4)
    assert float(total_correlation(h1, h2, k=2)) == pytest.approx(2, abs=0.01)


def test_independent_views_give_a_small_correlation():
    rng = np.random.default_rng(0)
    value = float(
        total_correlation(rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4)))
    )
    # Sample canonical correlations of independent views are O(sqrt(d / m)):
    # over 20 seeds the sum of the 4 ranged 0.07-0.22.
    assert 0 < value < 0.35


def test_ridge_keeps_a_rank_deficient_batch_finite_and_right():
    """8 rows, 16 features per view, a dead unit: S11 and S22 are singular.

    In exact arithmetic the unregularised answer is 7 (m - 1 perfect
    correlations, the overfitting a small batch invites); with the ridge it
    is just under 7, in float32 as in float64, with a finite gradient. With
    no ridge float32 has no meaningful answer (the floored eigenvalues are
    rounding noise); on this stack it is far outside [0, 16].
    """
    rng = np.random.default_rng(0)
    h1, h2 = rng.normal(size=(8, 16)), rng.normal(size=(8, 16))
    h1[:, 0] = 0.0
    value, g1, g2 = loss_and_grads(DeepCCALoss(), h1, h2)
    assert -7 < value < -6.9
    np.testing.assert_allclose(-value, reference_correlation(h1, h2), rtol=1e-4)
    assert np.isfinite(g1).all() and np.isfinite(g2).all()
    # float32 whitening of a covariance with condition number ~ 1e4 limits
    # the gradient's accuracy here; its direction is still right.
    f1, _ = finite_differences(lambda a, b: -reference_correlation(a, b), h1, h2)
    cosine = (g1 * f1).sum() / np.linalg.norm(g1) / np.linalg.norm(f1)
    assert cosine > 0.95
    unregularised = float(total_correlation(h1, h2, r1=0, r2=0))
    assert not 0 <= unregularised <= 16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "`k` must be None or an integer >= 1. Received: k=0"),
        ({"k": 2.5}, "Received: k=2.5"),
        ({"r1": -1.0}, "`r1` must be a number >= 0. Received: r1=-1.0"),
        ({"epsilon": 0}, "`epsilon` must be a number > 0. Received: epsilon=0"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        DeepCCALoss(**kwargs)


def test_bad_shapes_are_named():
    h1, h2 = correlated_views()
    with pytest.raises(ValueError, match=r"`k` must be at most min\(d1, d2\) = 4"):
        total_correlation(h1, h2, k=5)
    with pytest.raises(ValueError, match="same number of rows"):
        total_correlation(h1, h2[:-1])
    with pytest.raises(ValueError, match="must be 2-D"):
        total_correlation(h1[0], h2[0])


def test_serialization_round_trip():
    loss = DeepCCALoss(k=3, r1=1e-2, r2=1e-4, epsilon=1e-8)
    config = keras.saving.serialize_keras_object(loss)
    assert config["registered_name"] == "mmzoo>DeepCCALoss"
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(config)))
    assert isinstance(restored, DeepCCALoss)
    assert (
        restored.get_config()
        == loss.get_config()
        == {
            "k": 3,
            "r1": 1e-2,
            "r2": 1e-4,
            "epsilon": 1e-8,
        }
    )
    h1, h2 = correlated_views()
    assert float(restored(h1, h2)) == float(loss(h1, h2))
    assert DeepCCALoss.from_config(loss.get_config()).get_config() == loss.get_config()


# The loss on the JAX backend, with TensorFlow blocked as on the device
# machines: the value and gradients equal TensorFlow's, a rank-deficient
# batch's gradient is finite, and a tiny model trains with it under fit.
JAX_SCRIPT = textwrap.dedent(
    """
    import json, sys

    class NoTensorFlow:
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("tensorflow", "tf_keras", "keras_hub"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)")

    sys.meta_path.insert(0, NoTensorFlow())
    import jax
    import keras
    import numpy as np
    from mmzoo.cca import DeepCCALoss

    data = np.load(sys.argv[1])
    h1, h2 = data["h1"].astype("float32"), data["h2"].astype("float32")
    out = {"backend": keras.backend.backend()}
    for k in (None, 2):
        loss = DeepCCALoss(k=k)
        value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(h1, h2)
        out[str(k)] = [float(value), *(np.asarray(g).tolist() for g in grads)]
    deficient = jax.grad(DeepCCALoss(), argnums=(0, 1))(
        data["d1"].astype("float32"), data["d2"].astype("float32")
    )
    out["deficient_finite"] = bool(all(np.isfinite(g).all() for g in deficient))

    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Dense(8)(inputs))
    loss = DeepCCALoss(k=3)
    model.compile("adam", loss=lambda _, out: loss(out[:, :4], out[:, 4:]))
    history = model.fit(h1, h1[:, :1], batch_size=32, epochs=3, verbose=0)
    out["fit_losses"] = history.history["loss"]
    print(json.dumps(out))
    """
)


def test_jax_backend_gives_the_same_values_and_gradients(tmp_path):
    h1, h2 = correlated_views(m=32)
    rng = np.random.default_rng(0)
    d1, d2 = rng.normal(size=(8, 16)), rng.normal(size=(8, 16))
    d1[:, 0] = 0.0
    np.savez(tmp_path / "views.npz", h1=h1, h2=h2, d1=d1, d2=d2)
    done = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, str(tmp_path / "views.npz")],
        env={**os.environ, "KERAS_BACKEND": "jax"},
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax"
    for k in (None, 2):
        value, g1, g2 = loss_and_grads(DeepCCALoss(k=k), h1, h2)
        jax_value, jax_g1, jax_g2 = report[str(k)]
        np.testing.assert_allclose(jax_value, value, rtol=1e-5)
        np.testing.assert_allclose(jax_g1, g1, atol=1e-5 * np.abs(g1).max())
        np.testing.assert_allclose(jax_g2, g2, atol=1e-5 * np.abs(g2).max())
    assert report["deficient_finite"]
    losses = report["fit_losses"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


# === Linear CCA ===


@pytest.fixture(scope="module")
def digits():
    return digits_halves()


def test_linear_cca_matches_scikit_learn_on_the_digits_halves(digits):
    """scikit-learn's CCA (NIPALS, no ridge) against the closed form at r=0.

    scikit-learn iterates each pair until its weights move less than
    `tol=1e-6` and deflates; its correlations agree with the closed form to
    about 1e-5 here. 1e-3 leaves room for other BLAS builds without letting
    a wrong or mis-ordered pair through (the top pairs are 0.02-0.1 apart).
    """
    from sklearn.cross_decomposition import CCA

    (x, y), _ = digits
    ours = LinearCCA(3, r1=0, r2=0).fit(x, y)
    theirs = CCA(n_components=3).fit(x, y)
    x_theirs, y_theirs = theirs.transform(x, y)
    theirs_corr = [np.corrcoef(x_theirs[:, j], y_theirs[:, j])[0, 1] for j in range(3)]
    np.testing.assert_allclose(ours.correlations_, theirs_corr, atol=1e-3)
    assert np.all(np.diff(ours.correlations_) <= 0)
    # The same directions, up to sign (scikit-learn standardises the
    # features first; CCA's directions do not depend on that).
    x_ours, y_ours = ours.transform(x, y)
    for j in range(3):
        assert abs(np.corrcoef(x_ours[:, j], x_theirs[:, j])[0, 1]) > 0.999
        assert abs(np.corrcoef(y_ours[:, j], y_theirs[:, j])[0, 1]) > 0.999


def test_linear_cca_equals_total_correlation_with_the_same_ridge(digits):
    (x, y), _ = digits
    cca = LinearCCA(5, r1=1e-3, r2=1e-3).fit(x, y)
    np.testing.assert_allclose(
        cca.correlations_.sum(),
        float(total_correlation(x, y, k=5, r1=1e-3, r2=1e-3)),
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        cca.correlations_.sum(), reference_correlation(x, y, 5), rtol=1e-9
    )


def test_linear_cca_transform_and_score(digits):
    (x, y), (x_test, y_test) = digits
    exact = LinearCCA(4, r1=0, r2=0)
    x_c, y_c = exact.fit_transform(x, y)
    assert x_c.shape == y_c.shape == (len(x), 4)
    # The canonical variates: uncorrelated within a view, paired across.
    np.testing.assert_allclose(np.corrcoef(x_c.T), np.eye(4), atol=1e-6)
    cross = np.corrcoef(x_c.T, y_c.T)[:4, 4:]
    np.testing.assert_allclose(cross, np.diag(exact.correlations_), atol=1e-6)
    np.testing.assert_allclose(exact.score(x, y), exact.correlations_.sum())
    # With a ridge they are whitened for the ridged covariance instead, and
    # the training score sits a little above the (shrunk) correlations.
    cca = LinearCCA(4, r1=1e-3, r2=1e-3).fit(x, y)
    ridged = np.cov(x.T) + 1e-3 * np.eye(x.shape[1])
    np.testing.assert_allclose(
        cca.weights_x_.T @ ridged @ cca.weights_x_, np.eye(4), atol=1e-9
    )
    assert 0 < cca.score(x, y) - cca.correlations_.sum() < 0.05
    np.testing.assert_allclose(
        cca.transform(x_test, y_test)[0], (x_test - x.mean(axis=0)) @ cca.weights_x_
    )
    held_out = cca.score(x_test, y_test)
    assert 2.0 < held_out < cca.correlations_.sum()


def test_linear_cca_errors_are_named():
    with pytest.raises(ValueError, match="Received: n_components=0"):
        LinearCCA(0)
    x, y = correlated_views()
    with pytest.raises(ValueError, match="at most the smaller number of features, 4"):
        LinearCCA(5).fit(x, y)
    with pytest.raises(ValueError, match="not fitted yet"):
        LinearCCA(2).transform(x, y)
    with pytest.raises(ValueError, match=r"Fitted on 5 and 4 features"):
        LinearCCA(2).fit(x, y).transform(x[:, :3], y)


# === Deep CCA against linear CCA, on real data ===


def test_deep_cca_beats_linear_cca_on_held_out_digits(digits):
    """A two-layer MLP per view, 200 steps of batch 256, k = 5.

    Across seeds 0, 1, 2 Deep CCA reached 4.49, 4.45, 4.46 held-out against
    linear CCA's 3.35 (about 3 s each on 2 cores); one seed is tested.
    """
    train, test = digits
    linear = LinearCCA(5).fit(*train).score(*test)
    net_x, net_y, _ = train_deep_cca(
        *train,
        hidden=(64, 64),
        output_dim=5,
        steps=200,
        batch_size=256,
        learning_rate=1e-2,
        activation="relu",
        seed=0,
    )
    deep, deep_train = deep_cca_score(net_x, net_y, train, test, k=5)
    assert linear == pytest.approx(3.35, abs=0.01)
    assert deep > linear + 0.5
    assert deep < deep_train <= 5


def test_the_committed_benchmark_results_render_and_rank():
    """benchmarks/results/cca-digits: Deep CCA above linear CCA on every seed."""
    from benchmarks.cca_digits import markdown

    folder = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        "benchmarks",
        "results",
        "cca-digits",
    )
    with open(os.path.join(folder, "results.json")) as file:
        results = json.load(file)
    assert results["k"] == 10
    linear = results["linear_cca"]["chosen"]["held_out"]
    assert results["deep_cca"]["held_out_min"] > linear
    assert results["sklearn_cca"]["held_out"] <= linear
    text = markdown(results)
    assert "| Deep CCA (`DeepCCALoss`), median of 5 seeds |" in text
    with open(os.path.join(folder, "results.md")) as file:
        assert file.read() == text
