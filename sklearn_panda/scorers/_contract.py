"""The outlier contract every scorer shares: fit on normal features, higher scores are more normal.

:class:`_BaseScorer` validates the input, normalises it for the metric, keeps
leave-one-out training scores and sets ``offset_`` from them
(:func:`offset_from_training_scores`); a scorer supplies the distances.
"""

import numbers
import warnings
from abc import ABCMeta, abstractmethod
from typing import NamedTuple

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .._io.inputs import tensor_as_array
from .._sklearn_compat import Interval, StrOptions, _fit_context

METRICS = ("sqeuclidean", "euclidean", "cosine")


class GallerySearch(NamedTuple):
    """What reproduces a fitted scorer's distances as a search: what an exported graph needs.

    A scorer whose distances are those of new features to their
    ``n_neighbors`` nearest rows of ``gallery`` (their mean, under ``metric``)
    gives one from ``_gallery_search()``; ``exact`` is False where the scorer
    itself searches approximately, so that an exact search of ``gallery``
    can find other neighbours.
    """

    gallery: np.ndarray
    n_neighbors: int
    metric: str
    exact: bool

# Distances have no natural scale to set a threshold from, so "auto" fixes a
# small false-alarm rate on normal data instead.
AUTO_CONTAMINATION = 0.01


def offset_from_training_scores(training_scores, contamination):
    """The ``offset_`` that flags ``contamination`` of the training scores ("auto": 1%).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda.scorers import offset_from_training_scores
    >>> offset_from_training_scores(np.arange(101.0), 0.1)
    10.0
    """
    rate = AUTO_CONTAMINATION if contamination == "auto" else contamination
    return float(np.percentile(training_scores, 100.0 * rate))


# A float64 or integer feature whose values keep fewer than this many float32 steps across their
# spread (large values that vary little, such as raw timestamps) loses its ranking in float32: fit warns.
FLOAT32_STEPS = 1_000


def _check_float32(X, name, *, at_fit):
    """Refuse values (float64 or float32) whose float32 squared distances would overflow; at fit,
    warn where float64 values lose their spread in float32. The scorers compute in float32 (the
    features of a network are float32); integers arrive here as float64 (validated with float64 first).

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from sklearn_panda.scorers._contract import _check_float32
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _check_float32(1e7 + np.arange(6.0).reshape(3, 2), "KNNScorer", at_fit=True)
    >>> "centre or scale them first" in str(caught[0].message)
    True
    """
    if X.dtype.kind != "f" or X.size == 0:
        return
    largest, smallest = X.max(axis=0).astype(np.float64), X.min(axis=0).astype(np.float64)  # no copy of X
    magnitude = np.maximum(largest, -smallest)
    # A squared distance sums n_features squared differences of up to twice the largest value.
    limit = np.sqrt(np.finfo(np.float32).max / (4 * X.shape[1]))
    if not (magnitude <= limit).all():
        raise ValueError(
            f"{name} computes in float32, and the features hold values too large for its squared "
            f"distances (largest {np.nanmax(magnitude):.3g}; at most {limit:.3g} for {X.shape[1]} "
            "features): scale them first (e.g. a StandardScaler before it in a Pipeline)."
        )
    if not at_fit or X.dtype != np.float64:
        return
    spread = largest - smallest
    # float32 steps of about magnitude * 2**-23 near the largest values.
    coarse = np.flatnonzero((spread > 0) & (magnitude * np.finfo(np.float32).eps * FLOAT32_STEPS > spread))
    if coarse.size:
        j = int(coarse[0])
        warnings.warn(
            f"{name} computes in float32, which resolves fewer than {FLOAT32_STEPS:,} steps across the "
            f"spread of {coarse.size} feature(s) (feature {j}: values up to {magnitude[j]:.3g} that vary "
            f"by {spread[j]:.3g}), so their scores lose precision: centre or scale them first (e.g. a "
            "StandardScaler before it in a Pipeline).",
            UserWarning,
        )


def _as_float32(X, copy=False):
    # The fitted model keeps its own writable copy: a caller's later edits or a
    # read-only memmap must not reach the index.
    return np.array(X, dtype=np.float32, order="C", copy=True if copy else None)


def _l2_normalize(X):
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    # An all-zero row has no direction; leave it at the origin rather than divide by zero.
    norms[norms == 0] = 1.0
    return X / norms


def _finish_distance(squared, metric):
    """Turn squared Euclidean distances into distances in ``metric``.

    For ``"cosine"`` the rows were L2-normalised beforehand, so half the squared
    Euclidean distance equals ``1 - cos``.
    """
    squared = np.maximum(squared, 0.0)
    if metric == "euclidean":
        return np.sqrt(squared)
    if metric == "cosine":
        return squared / 2.0
    return squared


def _rowwise_squared_distances(A, B):
    """Squared Euclidean distance between row ``i`` of ``A`` and row ``i`` of ``B``."""
    diff = A - B
    return np.einsum("ij,ij->i", diff, diff)


def warn_if_anomalies_in_y(y, name):
    """Warn where a one-class fit, which ignores ``y``, is given labels marking anomalies (-1 among +1).

    They are fitted as normal samples: the trap of ``GridSearchCV(refit=True)`` with
    :class:`~sklearn_panda.NormalOnlySplit`, whose final fit gets every sample and its label.

    Examples
    --------
    >>> import warnings
    >>> from sklearn_panda.scorers._contract import warn_if_anomalies_in_y
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_if_anomalies_in_y([1, 1, -1], "KNNScorer")
    >>> "1 of the 3 samples" in str(caught[0].message)
    True
    """
    if y is None:
        return
    labels = np.asarray(y)
    if labels.ndim != 1 or labels.dtype.kind not in "iuf" or set(np.unique(labels).tolist()) != {-1, 1}:
        return
    warnings.warn(
        f"{name}.fit ignores y, which labels {int(np.sum(labels == -1))} of the {len(labels)} samples -1 "
        "(anomalies): they are fitted as normal samples. Fit on the normal samples only (X[y == 1]); "
        "with GridSearchCV and NormalOnlySplit, pass refit=False and refit the best parameters on them.",
        UserWarning,
        stacklevel=3,
    )


class OutlierDecisions:
    """``decision_function`` and ``predict`` from ``score_samples`` and ``offset_``: the outlier
    contract's one decision, written once for the scorers, the estimators and ONNX files."""

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for outliers.

        Parameters
        ----------
        X : array-like
            Samples in the layout ``score_samples`` takes.

        Returns
        -------
        decision : ndarray of shape (n_samples,)
            Shifted scores: negative for outliers, positive for inliers.
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """+1 for inliers, -1 for outliers.

        Parameters
        ----------
        X : array-like
            Samples in the layout ``score_samples`` takes.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            -1 where ``decision_function`` is negative, +1 elsewhere.
        """
        return np.where(self.decision_function(X) < 0, -1, 1)


class OutlierContractMixin(OutlierDecisions, OutlierMixin):
    """scikit-learn's outlier contract of a fitted detector: ``decision_function``, ``predict`` and
    ``fit_predict``. The detector defines ``fit``, ``score_samples`` and the fitted ``offset_`` and
    ``training_scores_``."""

    def fit_predict(self, X, y=None, **kwargs):
        """Fit, then label each training sample by its training score.

        Unlike ``fit(X).predict(X)``, a training sample is scored leaving
        itself out (``training_scores_``: it is not its own neighbour, nor part
        of its own centroid or Gaussian, nor a training image's patches in its
        own memory bank), so that a float ``contamination`` is the fraction of
        training samples flagged, as in
        :class:`~sklearn.neighbors.LocalOutlierFactor`.

        Parameters
        ----------
        X : array-like
            Training samples, as in ``fit``.
        y : Ignored
            Not used, present for API consistency by convention.
        **kwargs : dict
            Passed on to ``fit`` (such as ``callbacks``), as scikit-learn's
            ``OutlierMixin.fit_predict`` does.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            -1 for the training samples whose training score is below
            ``offset_``, +1 for the others.
        """
        self.fit(X, y, **kwargs)
        return np.where(self.training_scores_ < self.offset_, -1, 1)


class _BaseScorer(OutlierContractMixin, BaseEstimator, metaclass=ABCMeta):
    """Shared outlier contract: validation, ``offset_``, scores and labels.

    Subclasses implement ``_fit_distances(X)`` (fit and return the leave-one-out
    distances of the training points) and ``_distances(X)`` (distances of new
    points to the fitted model).

    :func:`sklearn_panda.save` stores what ``_saved_state()`` returns and
    :func:`sklearn_panda.load` gives it back to ``_restore_saved_state``: the
    scorer alone decides what its fitted state is and how to rebuild the rest.
    """

    _parameter_constraints = {
        "metric": [StrOptions(set(METRICS))],
        "contamination": [
            StrOptions({"auto"}),
            Interval(numbers.Real, 0, 0.5, closed="right"),
        ],
    }

    @abstractmethod
    def __init__(self, *, metric="sqeuclidean", contamination="auto"):
        self.metric = metric
        self.contamination = contamination

    @property
    def _fitted_metric(self):
        """The metric the scorer was fitted with (``metric_``): ``set_params`` after fit changes
        no score. Scorers saved before that attribute existed hold the parameter."""
        return self.__dict__.get("metric_", self.metric)

    def _prepare(self, X, copy=False):
        X = _as_float32(X, copy=copy)
        return _l2_normalize(X) if self._fitted_metric == "cosine" else X

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the scorer on the normal training features.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features of normal training samples.

        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        self : object
            The fitted scorer.
        """
        # float32 stays float32; integers become float64, so that the check sees what float32 loses.
        warn_if_anomalies_in_y(y, type(self).__name__)
        X = validate_data(self, tensor_as_array(X), dtype=[np.float64, np.float32], ensure_min_samples=1)
        _check_float32(X, type(self).__name__, at_fit=True)
        if X.shape[0] < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 samples to leave one out; "
                f"got {X.shape[0]} sample."
            )
        if "metric" in self._get_param_names():
            # Fixed at fit (scorers with a distance of their own have none).
            self.metric_ = self.metric
        loo_distances = self._fit_distances(self._prepare(X, copy=True))
        self.training_scores_ = -loo_distances.astype(np.float64)
        self.offset_ = offset_from_training_scores(self.training_scores_, self.contamination)
        return self

    def _validate_new(self, X):
        check_is_fitted(self)
        X = validate_data(self, tensor_as_array(X), dtype=[np.float64, np.float32], reset=False)
        _check_float32(X, type(self).__name__, at_fit=False)
        return self._prepare(X)

    def score_samples(self, X):
        """Negated anomaly distance: higher means more normal.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features to score.

        Returns
        -------
        scores : ndarray of shape (n_samples,)
            Negated distance of each sample to the fitted normal data.
        """
        return -self._distances(self._validate_new(X)).astype(np.float64)

    def _saved_state(self):
        """The fitted attributes, for :func:`sklearn_panda.save`: numbers, strings and arrays only.

        A file must hold nothing whose loading runs code, so a scorer that
        keeps anything else (a search index) leaves it out here and rebuilds
        it in ``_restore_saved_state``.
        """
        params = self.get_params(deep=False)
        return {name: value for name, value in vars(self).items() if name not in params}

    def _restore_saved_state(self, state):
        """Make this unfitted scorer, built with the saved parameters, the fitted one of ``state``.

        ``state`` is what ``_saved_state`` returned, read back by :func:`sklearn_panda.load`.
        """
        self.__dict__.update(state)

    @abstractmethod
    def _fit_distances(self, X):
        """Fit on prepared ``X``; return leave-one-out training distances."""

    @abstractmethod
    def _distances(self, X):
        """Distances of prepared ``X`` to the fitted model."""
