"""Cross-validation for one-class detectors: anomalies never reach a training fold."""

import numbers

import numpy as np
from sklearn.model_selection import KFold

from ._sklearn_compat import Interval, validate_params


class NormalOnlySplit:
    """K-fold over the normal samples; every test fold also gets all anomalies.

    One-class detectors must be fitted on normal data only, while a score such
    as ROC AUC needs anomalies in each test fold. Labels follow ``predict``:
    ``y == 1`` normal, ``y == -1`` anomaly. The normal samples are split in
    ``n_splits`` folds as by :class:`~sklearn.model_selection.KFold`; each
    split trains on the other folds' normal samples and tests on its fold plus
    every anomaly (anomalies are never fitted on, so reusing them is fair).

    With ``GridSearchCV``, pass ``refit=False`` (or refit the best parameters
    on the normal samples yourself): ``refit=True`` would fit the final model
    on all of ``X``, anomalies included (``examples/grid_search.py``); the
    detectors and scorers warn when ``fit`` is given a ``y`` that marks
    anomalies, which they ignore.

    Parameters
    ----------
    n_splits : int, default=3
        Number of folds of the normal samples (at least 2).
    shuffle : bool, default=False
        Shuffle the normal samples before cutting them into folds (otherwise
        the folds follow the order of ``X``).
    random_state : int, RandomState instance or None, default=None
        Used when ``shuffle=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda import NormalOnlySplit
    >>> y = np.array([1, 1, 1, -1, 1, -1])
    >>> for train, test in NormalOnlySplit(n_splits=2).split(np.zeros((6, 1)), y):
    ...     print(train.tolist(), test.tolist())
    [2, 4] [0, 1, 3, 5]
    [0, 1] [2, 4, 3, 5]
    """

    @validate_params(
        {"n_splits": [Interval(numbers.Integral, 2, None, closed="left")], "shuffle": ["boolean"], "random_state": ["random_state"]},
        prefer_skip_nested_validation=True,
    )
    def __init__(self, n_splits=3, *, shuffle=False, random_state=None):
        self.n_splits = n_splits
        self.shuffle = shuffle
        self.random_state = random_state

    def __repr__(self):
        # As scikit-learn's splitters print: every parameter, by name.
        return f"NormalOnlySplit(n_splits={self.n_splits}, random_state={self.random_state!r}, shuffle={self.shuffle})"

    def split(self, X, y=None, groups=None):
        """Yield ``(train, test)`` index arrays.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Only its length is used.
        y : array-like of shape (n_samples,)
            +1 normal, -1 anomaly. Required (``None`` is an error that says so).
        groups : Ignored
            Not used, present for API consistency by convention.

        Yields
        ------
        train, test : ndarray
        """
        if y is None:
            raise ValueError(
                "NormalOnlySplit needs y (+1 normal, -1 anomaly): it trains on normal samples only and tests "
                "on both. With cross_val_score or GridSearchCV, pass y to it."
            )
        y = np.asarray(y)
        if len(y) != len(X):
            raise ValueError(f"X has {len(X)} samples but y has {len(y)}.")
        unexpected = set(np.unique(y).tolist()) - {1, -1}
        if unexpected:
            raise ValueError(f"y must hold 1 (normal) and -1 (anomaly); got also {sorted(unexpected)}.")
        normal = np.flatnonzero(y == 1)
        anomalies = np.flatnonzero(y == -1)
        # As given: KFold refuses a random_state without shuffle, which would have no effect.
        kfold = KFold(self.n_splits, shuffle=self.shuffle, random_state=self.random_state)
        for train, test in kfold.split(normal):
            yield normal[train], np.concatenate([normal[test], anomalies])

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of splits.

        Parameters
        ----------
        X, y, groups : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        n_splits : int
            ``n_splits``: one split per fold of the normal samples.
        """
        return self.n_splits
