"""Squared Mahalanobis distance to a Gaussian with a shrinkage covariance."""

import numbers
import warnings

import numpy as np
from sklearn.covariance import ledoit_wolf_shrinkage, oas

from .._sklearn_compat import Interval, StrOptions
from ._contract import _as_float32, _BaseScorer


def _shrinkage_coefficient(X, shrinkage):
    """The shrinkage towards ``trace(S) / p * I`` of the (biased) covariance ``S`` of ``X``."""
    if shrinkage == "ledoit_wolf":
        return float(ledoit_wolf_shrinkage(X))
    if shrinkage == "oas":
        return float(oas(X)[1])
    return float(shrinkage)


class MahalanobisScorer(_BaseScorer):
    """Squared Mahalanobis distance to a Gaussian fitted to the normal features.

    The mean and a *shrinkage* covariance of the normal training features
    define a Gaussian; a sample's anomaly distance is its squared Mahalanobis
    distance ``(x - mean)^T Sigma^-1 (x - mean)`` (as in scikit-learn's
    :class:`~sklearn.covariance.EllipticEnvelope`, whose ``score_samples`` it
    matches up to the covariance estimate). Pooled CNN features have more
    dimensions than a one-class training set has images, so the plain sample
    covariance is singular; shrinking it towards a multiple of the identity,
    ``(1 - a) S + a trace(S) / p I``, makes it invertible (Rippel, Mertens and
    Merhof, 2020, score pretrained features this way).

    Parameters
    ----------
    shrinkage : {"ledoit_wolf", "oas"} or float in (0, 1], default="ledoit_wolf"
        The shrinkage coefficient ``a``: estimated by Ledoit-Wolf or OAS
        (:func:`sklearn.covariance.ledoit_wolf_shrinkage`,
        :func:`sklearn.covariance.oas`), or given. ``fit`` needs at least 3
        samples (each is scored against the Gaussian of the others).

    n_components : int or None, default=None
        Fit the Gaussian on the first ``n_components`` principal components of
        the training features only (``None``: all features). Capped, with a
        warning, at ``min(n_samples, n_features)``.

    contamination : "auto" or float in (0, 0.5], default="auto"
        As in :class:`KNNScorer`. The leave-one-out training distances are
        exact for the mean, the covariance and its trace (a rank-one update of
        the inverse in the covariance's eigenbasis); the shrinkage coefficient
        and the principal axes are those of the whole training set, since one
        sample barely moves them.

    Attributes
    ----------
    location_ : ndarray of shape (n_features,)
        Mean of the training features.
    components_ : ndarray of shape (``n_components_``, n_features)
        Eigenvectors of the training covariance (the principal axes), rows.
    variances_ : ndarray of shape (``n_components_``,)
        Variances of the shrunk covariance along ``components_``.
    residual_variance_ : float or None
        Variance of the shrunk covariance in every direction outside
        ``components_`` (where the training data have none); ``None`` when
        ``components_`` span the whole space or ``n_components`` is set.
    shrinkage_ : float
        The shrinkage coefficient used.
    n_components_ : int
        Number of axes kept.
    offset_ : float
        Threshold on ``score_samples``.
    training_scores_ : ndarray of shape (n_samples,)
        Leave-one-out ``score_samples`` of the training points.
    n_features_in_ : int
        Number of features seen in ``fit``.

    See Also
    --------
    sklearn.covariance.EllipticEnvelope : The same idea with a robust (MCD) covariance.
    KNNScorer : The paper's default scorer.

    References
    ----------
    Rippel, Mertens, Merhof. "Modeling the Distribution of Normal Data in
    Pre-Trained Deep Features for Anomaly Detection", ICPR 2020.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda import MahalanobisScorer
    >>> rng = np.random.default_rng(0)
    >>> normal = rng.normal(size=(300, 2)) * [1.0, 0.1]
    >>> scorer = MahalanobisScorer().fit(normal)
    >>> scorer.predict(np.array([[2.0, 0.0], [0.0, 2.0]]))  # the same Euclidean distance
    array([ 1, -1])
    """

    _parameter_constraints = {
        "shrinkage": [StrOptions({"ledoit_wolf", "oas"}), Interval(numbers.Real, 0, 1, closed="right")],
        "n_components": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "contamination": _BaseScorer._parameter_constraints["contamination"],
    }

    def __init__(self, *, shrinkage="ledoit_wolf", n_components=None, contamination="auto"):
        self.shrinkage = shrinkage
        self.n_components = n_components
        self.contamination = contamination

    def _prepare(self, X, copy=False):
        return _as_float32(X, copy=copy)

    def _fit_distances(self, X):
        n_samples, n_features = X.shape
        if n_samples < 3:
            # Left out of two, a sample would be scored against one point: a Gaussian of no width.
            raise ValueError(
                f"MahalanobisScorer needs at least 3 samples: each one's leave-one-out score is its "
                f"distance to the Gaussian of the others, and one point defines none; got {n_samples}."
            )
        X = X.astype(np.float64)
        self.location_ = X.mean(axis=0)
        centered = X - self.location_
        # Eigenvectors of the biased sample covariance S from an SVD of the
        # centred data: no p x p matrix is formed when n < p.
        _, singular_values, axes = np.linalg.svd(centered, full_matrices=False)
        kept = len(singular_values)
        if self.n_components is not None:
            if self.n_components > kept:
                warnings.warn(
                    f"n_components ({self.n_components}) is greater than min(n_samples, "
                    f"n_features) ({kept}); using n_components={kept}."
                )
            kept = min(self.n_components, kept)
        self.n_components_ = kept
        self.components_ = axes[:kept]
        sample_variances = singular_values[:kept] ** 2 / n_samples
        if not sample_variances.sum() > 0:
            # The Gaussian would have no width: every distance 0 / 0.
            raise ValueError(
                "MahalanobisScorer: the training features do not vary (every row is the same), so "
                "they define no Gaussian. After PANDA's adaptation this is collapse: adapt with "
                "fewer steps or a lower learning rate, use EWC, or score with the kNN scorer."
            )
        projected = centered @ self.components_.T
        # The Gaussian lives in the kept principal subspace (all of feature
        # space without n_components); the shrinkage target is that space's
        # mean variance.
        whole_space = self.n_components is None
        dimension = n_features if whole_space else kept
        self.shrinkage_ = _shrinkage_coefficient(X if whole_space else projected, self.shrinkage)
        floor = self.shrinkage_ * sample_variances.sum() / dimension
        # A shrinkage estimate of 0, or rounding noise about it (Ledoit-Wolf's, on a few repeated rows),
        # below float32's resolution of the features, leaves a singular covariance.
        resolution = float(np.finfo(np.float32).eps)
        if self.shrinkage_ < resolution and (
            kept < dimension or sample_variances.min() <= 1e-12 * sample_variances.max()
        ):
            given = f"the {self.shrinkage} shrinkage estimate" if isinstance(self.shrinkage, str) else "the shrinkage"
            raise ValueError(
                f"MahalanobisScorer: {given} ({self.shrinkage_:.2g}) is below "
                f"float32's resolution ({resolution:.2g}) and the training features vary along fewer "
                f"directions than the Gaussian has ({dimension}), so it has no width along some of them "
                "(distances infinite or undefined). Give a shrinkage in (0, 1], such as "
                f"shrinkage=0.1{', or shrinkage=' + repr('oas') if self.shrinkage == 'ledoit_wolf' else ''}."
            )
        self.variances_ = (1.0 - self.shrinkage_) * sample_variances + floor
        # Directions beyond the data's span carry no sample variance: only the floor.
        self.residual_variance_ = floor if whole_space and kept < n_features else None
        return self._leave_one_out(projected, sample_variances, dimension)

    def _leave_one_out(self, projected, sample_variances, dimension):
        """Each training point's distance to the Gaussian fitted without it.

        Without point ``i`` (centred ``y``; ``n`` points, ``m = n - 1``) the
        mean moves by ``-y / m``, so the point lies at ``n / m * y`` from it;
        the biased covariance becomes ``n / m * S - n / m**2 * y y^T`` and its
        trace drops accordingly. With the shrinkage ``a`` fixed, the shrunk
        covariance is ``A_i - c y y^T``, ``A_i`` diagonal in ``S``'s
        eigenbasis, and Sherman-Morrison gives
        ``y^T (A_i - c y y^T)^-1 y = q / (1 - c q)`` with ``q = y^T A_i^-1 y``.
        A training point lies in the span of the centred data, so only the
        kept axes contribute.
        """
        n_samples = projected.shape[0]
        m = n_samples - 1
        a = self.shrinkage_
        squared_norms = np.einsum("ij,ij->i", projected, projected)
        loo_trace = (n_samples / m) * sample_variances.sum() - (n_samples / m**2) * squared_norms
        loo_floor = a * loo_trace / dimension
        loo_variances = (1.0 - a) * (n_samples / m) * sample_variances[None, :] + loo_floor[:, None]
        q = (projected**2 / loo_variances).sum(axis=1)
        c = (1.0 - a) * n_samples / m**2
        return (n_samples / m) ** 2 * q / (1.0 - c * q)

    def _distances(self, X):
        centered = X.astype(np.float64) - self.location_
        projected = centered @ self.components_.T
        distances = (projected**2 / self.variances_).sum(axis=1)
        if self.residual_variance_ is not None:
            outside = np.einsum("ij,ij->i", centered, centered) - np.einsum("ij,ij->i", projected, projected)
            distances = distances + np.maximum(outside, 0.0) / self.residual_variance_
        return distances
