"""Canonical correlation analysis: Deep CCA's objective and linear CCA.

`total_correlation` and `DeepCCALoss` compute the objective of Deep CCA
(Andrew, Arora, Bilmes and Livescu, ICML 2013) exactly as the authors' MATLAB
code does. For a batch of `m` paired rows `H1` (m x d1) and `H2` (m x d2):

    H1, H2 centred over the batch
    S11 = H1' H1 / (m - 1) + r1 I       S22 = H2' H2 / (m - 1) + r2 I
    S12 = H1' H2 / (m - 1)
    T   = S11^-1/2 S12 S22^-1/2
    correlation = the sum of the top k singular values of T (all when k=None)

and the loss is `-correlation`. This is the trace (nuclear) norm of `T`: the
sum of the canonical correlations. Two popular Python ports compute something
else (the Frobenius norm `sqrt(trace(T'T))`, or an elementwise square root of
`T'T`); neither is the objective of the paper.

How it is computed, in float32 whatever the inputs' dtype:

- The inverse square roots come from a symmetric eigendecomposition, with
  the eigenvalues floored at `epsilon` (the authors' code drops eigenvalues
  under 1e-12 instead; with a ridge `r > 0` no eigenvalue comes near either).
- The singular values of `T` come from `keras.ops.svd`.
- The gradient is the authors' closed form (their appendix and MATLAB code),
  given to Keras with `keras.ops.custom_gradient`, not automatic
  differentiation through the decompositions. Differentiating `eigh` divides
  by differences of eigenvalues, and the eigenvalues of `S11` are equal
  (all `r1`) in every direction a batch does not span: with a batch of
  fewer rows than features, or a dead unit, JAX's `eigh` gradient is NaN
  (seen with JAX 0.10); TensorFlow's, which zeroes the terms of exact ties,
  stayed finite there, but divides by near ties. (Gradients through
  the singular values alone, `keras.ops.svd` or `eigh` of `T'T`, were fine
  on both backends, even at repeated values.) The closed form needs only
  `S^-1/2` and the top-k singular vectors `U_k`, `V_k` of `T`:

      D12 = S11^-1/2 U_k V_k' S22^-1/2
      D11 = -1/2 S11^-1/2 U_k diag(s_k) U_k' S11^-1/2   (D22 likewise with V)
      dcorr/dH1 = (2 H1 D11 + H2 D12') / (m - 1)
      dcorr/dH2 = (2 H2 D22 + H1 D12) / (m - 1)

  It is exact wherever the objective is differentiable (for `k=None`: `T` of
  full rank; for a top-k sum: the k-th singular value above the next one).
  The tests check it against central finite differences.

`LinearCCA` is classical CCA in closed form, in NumPy: the baseline Deep CCA
is measured against.
"""

import keras
import numpy as np
from keras import ops

# === Deep CCA's objective (keras.ops) ===


def _check_hyperparameters(k, r1, r2, epsilon):
    if k is not None and (
        isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1
    ):
        raise ValueError(f"`k` must be None or an integer >= 1. Received: k={k!r}")
    for name, value in (("r1", r1), ("r2", r2)):
        if not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(
                f"`{name}` must be a number >= 0. Received: {name}={value!r}"
            )
    if not isinstance(epsilon, (int, float)) or not epsilon > 0:
        raise ValueError(
            f"`epsilon` must be a number > 0. Received: epsilon={epsilon!r}"
        )


def _feature_dims(h1, h2, k):
    """The static feature sizes; checks ranks, sizes and `k` against them."""
    if len(h1.shape) != 2 or len(h2.shape) != 2:
        raise ValueError(
            "Both views must be 2-D (batch, features). Received: "
            f"h1.shape={tuple(h1.shape)}, h2.shape={tuple(h2.shape)}"
        )
    d1, d2 = h1.shape[1], h2.shape[1]
    if d1 is None or d2 is None:
        raise ValueError(
            "The feature sizes of both views must be known. Received: "
            f"h1.shape={tuple(h1.shape)}, h2.shape={tuple(h2.shape)}"
        )
    m1, m2 = h1.shape[0], h2.shape[0]
    if m1 is not None and m2 is not None and m1 != m2:
        raise ValueError(
            "Both views must hold the same number of rows (pairs). Received: "
            f"h1.shape={tuple(h1.shape)}, h2.shape={tuple(h2.shape)}"
        )
    if m1 is not None and m1 < 2:
        raise ValueError(
            "A batch needs at least 2 rows to estimate covariances. "
            f"Received: h1.shape={tuple(h1.shape)}"
        )
    if k is not None and k > min(d1, d2):
        raise ValueError(
            f"`k` must be at most min(d1, d2) = {min(d1, d2)}, the number of "
            f"canonical correlations. Received: k={k} for h1.shape="
            f"{tuple(h1.shape)}, h2.shape={tuple(h2.shape)}"
        )
    return d1, d2


def _inverse_sqrt(matrix, epsilon):
    """`matrix^-1/2` of a symmetric matrix, eigenvalues floored at `epsilon`."""
    values, vectors = ops.eigh(matrix)
    scale = ops.rsqrt(ops.maximum(values, epsilon))
    return ops.matmul(vectors * scale[None, :], ops.transpose(vectors))


def total_correlation(h1, h2, k=None, r1=1e-3, r2=1e-3, epsilon=1e-9):
    """Deep CCA's total canonical correlation of two views of one batch.

    The sum of the top `k` singular values of `T = S11^-1/2 S12 S22^-1/2`,
    with the batch covariances regularised by `r1 I` and `r2 I`, as in the
    MATLAB code of Andrew et al. (2013); see the module docstring. Computed
    in float32, differentiable with respect to both views (by the closed-form
    gradient of the paper, not through the decompositions).

    Args:
        h1: the first view, shape `(m, d1)`, `m >= 2` paired rows.
        h2: the second view, shape `(m, d2)`, row `i` paired with `h1`'s.
        k: how many canonical correlations to sum: an integer from 1 to
            `min(d1, d2)`, or `None` for all of them.
        r1: the ridge added to the diagonal of the first view's covariance.
        r2: the same for the second view.
        epsilon: the floor for the covariances' eigenvalues before their
            inverse square roots are taken (matters only when `r1` or `r2`
            is 0).

    Returns:
        A float32 scalar tensor between 0 and `k` (or `min(d1, d2)`); the
        ridge terms keep it a little under the unregularised value.

    Example:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(256, 4))
    >>> float(total_correlation(x, x @ np.diag([1.0, 2.0, 3.0, 4.0])))  # ~ 4
    3.99...
    >>> y = np.random.default_rng(1).normal(size=(256, 4))
    >>> float(total_correlation(x, y, k=1)) < 0.4  # independent views
    True
    """
    _check_hyperparameters(k, r1, r2, epsilon)
    h1 = ops.cast(ops.convert_to_tensor(h1), "float32")
    h2 = ops.cast(ops.convert_to_tensor(h2), "float32")
    d1, d2 = _feature_dims(h1, h2, k)
    top = min(d1, d2) if k is None else int(k)
    r1, r2, epsilon = float(r1), float(r2), float(epsilon)

    @ops.custom_gradient
    def correlation(h1, h2):
        scale = 1.0 / (ops.cast(ops.shape(h1)[0], "float32") - 1.0)
        h1 = h1 - ops.mean(h1, axis=0, keepdims=True)
        h2 = h2 - ops.mean(h2, axis=0, keepdims=True)
        s11 = scale * ops.matmul(ops.transpose(h1), h1) + r1 * ops.eye(d1)
        s22 = scale * ops.matmul(ops.transpose(h2), h2) + r2 * ops.eye(d2)
        s12 = scale * ops.matmul(ops.transpose(h1), h2)
        k11 = _inverse_sqrt(s11, epsilon)
        k22 = _inverse_sqrt(s22, epsilon)
        t = ops.matmul(ops.matmul(k11, s12), k22)
        u, s, vt = ops.svd(t, full_matrices=False)
        u, s, v = u[:, :top], s[:top], ops.transpose(vt[:top])

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            k11_u = ops.matmul(k11, u)
            k22_v = ops.matmul(k22, v)
            d12 = ops.matmul(k11_u, ops.transpose(k22_v))
            d11 = -0.5 * ops.matmul(k11_u * s[None, :], ops.transpose(k11_u))
            d22 = -0.5 * ops.matmul(k22_v * s[None, :], ops.transpose(k22_v))
            g1 = 2.0 * ops.matmul(h1, d11) + ops.matmul(h2, ops.transpose(d12))
            g2 = 2.0 * ops.matmul(h2, d22) + ops.matmul(h1, d12)
            # h1 and h2 are centred, so g1 and g2 already have zero column
            # means: the centring's own gradient changes nothing.
            factor = upstream * scale
            return g1 * factor, g2 * factor

        return ops.sum(s), grad

    return correlation(h1, h2)


@keras.saving.register_keras_serializable(package="mmzoo")
class DeepCCALoss:
    """Deep CCA's loss: minus the total canonical correlation of the batch.

    The objective of Andrew et al. (2013) as in the authors' MATLAB code:
    `-total_correlation(image_embedding, text_embedding, k, r1, r2,
    epsilon)` (see `total_correlation` and the module docstring). The
    embeddings should not be L2-normalised or bounded by the model: CCA
    whitens each view itself, and its correlations do not depend on scale.

    It is called like mmzoo's other cross-modal losses; the logit scale and
    bias and the duplicate ids are accepted and ignored (the objective has
    no temperature, and a repeated pair is just one more sample of the
    joint distribution, not a false negative). The batch should be large
    against the embedding sizes: the covariances are estimated from it, and
    with fewer rows than features the correlation is inflated (the ridge
    terms bound it).

    Args:
        k: how many canonical correlations to sum (the top ones), from 1 to
            the smaller embedding size, or `None` for all of them.
        r1: ridge added to the image embedding's covariance diagonal.
        r2: ridge added to the text embedding's covariance diagonal.
        epsilon: floor for the covariances' eigenvalues before their inverse
            square roots (matters only when a ridge is 0).

    Call arguments:
        image_embedding: shape `(batch, d1)`.
        text_embedding: shape `(batch, d2)`, row `i` paired with row `i` of
            `image_embedding`.
        logit_scale, logit_bias, image_ids, text_ids: ignored.

    Returns:
        A float32 scalar, `-correlation`, between `-min(d1, d2)` (or `-k`)
        and 0.

    Example:

    >>> import numpy as np
    >>> loss = DeepCCALoss(k=2)
    >>> x = np.random.default_rng(0).normal(size=(128, 3))
    >>> float(loss(x, 2.0 * x + 1.0))  # two perfectly correlated directions
    -1.99...

    Reference:
        Andrew, Arora, Bilmes, Livescu. Deep Canonical Correlation Analysis.
        ICML 2013.
    """

    name = "dcca"
    needs_scale = False
    needs_bias = False
    # A dual encoder leaves its embeddings as the projections give them.
    normalized_embeddings = False

    def __init__(self, k=None, r1=1e-3, r2=1e-3, epsilon=1e-9):
        _check_hyperparameters(k, r1, r2, epsilon)
        self.k = None if k is None else int(k)
        self.r1 = float(r1)
        self.r2 = float(r2)
        self.epsilon = float(epsilon)

    def __call__(
        self,
        image_embedding,
        text_embedding,
        logit_scale=None,
        logit_bias=None,
        image_ids=None,
        text_ids=None,
    ):
        del logit_scale, logit_bias, image_ids, text_ids  # see the docstring
        return -total_correlation(
            image_embedding,
            text_embedding,
            k=self.k,
            r1=self.r1,
            r2=self.r2,
            epsilon=self.epsilon,
        )

    def get_config(self):
        return {"k": self.k, "r1": self.r1, "r2": self.r2, "epsilon": self.epsilon}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return (
            f"DeepCCALoss(k={self.k}, r1={self.r1}, r2={self.r2}, "
            f"epsilon={self.epsilon})"
        )


# === Linear CCA (NumPy) ===


def _inverse_sqrt_np(matrix, epsilon):
    values, vectors = np.linalg.eigh(matrix)
    return (vectors / np.sqrt(np.maximum(values, epsilon))) @ vectors.T


def _pearson(a, b):
    """Pearson correlation of each column of `a` with the same column of `b`."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    norms = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, (a * b).sum(axis=0) / norms, 0.0)


class LinearCCA:
    """Classical (linear) CCA in closed form, with ridge terms.

    Fits on training pairs what Deep CCA's objective computes on a batch,
    in float64: `S11^-1/2`, `S22^-1/2` and the SVD of `T = S11^-1/2 S12
    S22^-1/2` (see the module docstring); the canonical directions are
    `S11^-1/2 U_k` and `S22^-1/2 V_k`, the canonical correlations the top
    singular values. It is the baseline of Deep CCA, and what Andrew et al.
    fit on a trained Deep CCA's outputs to read its correlations.

    scikit-learn's `CCA` is not used: it is PLS's iterative NIPALS algorithm
    (one component at a time, power iterations and deflation, to a
    tolerance), not the closed form, it has no ridge and no total-correlation
    score, and it would make scikit-learn a dependency of mmzoo for a few
    lines of NumPy. The tests check this class against it.

    Args:
        n_components: how many canonical pairs to keep, from 1 to the
            smaller number of features.
        r1: ridge added to the diagonal of `x`'s covariance (in `x`'s
            units squared); it also makes constant features harmless.
        r2: the same for `y`.

    Attributes (after `fit`):
        correlations_: the canonical correlations on the training data,
            descending, shape `(n_components,)`.
        weights_x_, weights_y_: the canonical directions, shapes
            `(d1, n_components)` and `(d2, n_components)`.
        mean_x_, mean_y_: the training means, subtracted by `transform`.

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> shared = rng.normal(size=(500, 2))
    >>> x = np.hstack([shared, rng.normal(size=(500, 3))])
    >>> y = np.hstack([shared @ [[1.0, 1.0], [0.0, 2.0]], rng.normal(size=(500, 2))])
    >>> cca = LinearCCA(n_components=2).fit(x, y)
    >>> cca.correlations_.round(2)
    array([1., 1.])
    >>> x_c, y_c = cca.transform(x, y)
    >>> x_c.shape, y_c.shape
    ((500, 2), (500, 2))
    >>> round(cca.score(x, y), 2)
    2.0
    """

    def __init__(self, n_components, r1=1e-4, r2=1e-4):
        if (
            isinstance(n_components, bool)
            or not isinstance(n_components, (int, np.integer))
            or n_components < 1
        ):
            raise ValueError(
                "`n_components` must be an integer >= 1. "
                f"Received: n_components={n_components!r}"
            )
        _check_hyperparameters(None, r1, r2, 1.0)
        self.n_components = int(n_components)
        self.r1 = float(r1)
        self.r2 = float(r2)

    def _check_pair(self, x, y):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
            raise ValueError(
                "`x` and `y` must be 2-D with one row per pair. Received: "
                f"x.shape={x.shape}, y.shape={y.shape}"
            )
        return x, y

    def fit(self, x, y):
        """Fit the canonical directions on paired rows `x` (n x d1), `y` (n x d2).

        Returns:
            The fitted `LinearCCA` itself.
        """
        x, y = self._check_pair(x, y)
        if len(x) < 2:
            raise ValueError(
                f"`fit` needs at least 2 rows. Received: x.shape={x.shape}"
            )
        if self.n_components > min(x.shape[1], y.shape[1]):
            raise ValueError(
                "`n_components` must be at most the smaller number of "
                f"features, {min(x.shape[1], y.shape[1])}. Received: "
                f"n_components={self.n_components} for x.shape={x.shape}, "
                f"y.shape={y.shape}"
            )
        self.mean_x_, self.mean_y_ = x.mean(axis=0), y.mean(axis=0)
        x, y = x - self.mean_x_, y - self.mean_y_
        scale = 1.0 / (len(x) - 1)
        s11 = scale * x.T @ x + self.r1 * np.eye(x.shape[1])
        s22 = scale * y.T @ y + self.r2 * np.eye(y.shape[1])
        s12 = scale * x.T @ y
        # With r = 0 a constant feature has a zero eigenvalue; floor it the
        # way total_correlation does.
        k11 = _inverse_sqrt_np(s11, 1e-12)
        k22 = _inverse_sqrt_np(s22, 1e-12)
        u, s, vt = np.linalg.svd(k11 @ s12 @ k22)
        top = self.n_components
        self.weights_x_ = k11 @ u[:, :top]
        self.weights_y_ = k22 @ vt[:top].T
        self.correlations_ = s[:top]
        return self

    def transform(self, x, y):
        """Project both views on their canonical directions.

        Returns:
            The pair `(x_c, y_c)`, shapes `(n, n_components)` each: column
            `j` of `x_c` and of `y_c` is the j-th canonical pair.
        """
        if not hasattr(self, "correlations_"):
            raise ValueError(
                "This LinearCCA is not fitted yet: call `fit(x, y)` first."
            )
        x, y = self._check_pair(x, y)
        if x.shape[1] != len(self.mean_x_) or y.shape[1] != len(self.mean_y_):
            raise ValueError(
                f"Fitted on {len(self.mean_x_)} and {len(self.mean_y_)} features. "
                f"Received: x.shape={x.shape}, y.shape={y.shape}"
            )
        return (x - self.mean_x_) @ self.weights_x_, (
            y - self.mean_y_
        ) @ self.weights_y_

    def fit_transform(self, x, y):
        """`fit(x, y)`, then `transform(x, y)`."""
        return self.fit(x, y).transform(x, y)

    def score(self, x, y):
        """Total correlation of the canonical pairs on `x`, `y` (e.g. held out).

        The sum over the `n_components` pairs of the Pearson correlation of
        `x`'s and `y`'s projections. On the training data it is close to
        `correlations_.sum()` (the ridge makes it differ slightly); on held-out
        data it measures what the directions generalise.

        Returns:
            A Python float, at most `n_components`.
        """
        x_c, y_c = self.transform(x, y)
        return float(_pearson(x_c, y_c).sum())
