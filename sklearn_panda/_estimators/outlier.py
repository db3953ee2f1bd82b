"""scikit-learn's outlier contract on top of ``score_samples``, ``offset_`` and ``training_scores_``.

Written once for every detector of the package: ``decision_function`` is
``score_samples - offset_`` (negative for outliers), ``predict`` gives +1 / -1,
and ``fit_predict`` labels the training samples by their (leave-one-out)
training scores.
"""

import numpy as np
from sklearn.base import OutlierMixin


class OutlierContractMixin(OutlierMixin):
    """``decision_function``, ``predict`` and ``fit_predict`` of a fitted detector.

    The detector defines ``fit``, ``score_samples`` and the fitted ``offset_``
    and ``training_scores_``.
    """

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for outliers.

        Parameters
        ----------
        X : array-like or list of paths / PIL images
            Samples in the layout seen in ``fit``.

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
        X : array-like or list of paths / PIL images
            Samples in the layout seen in ``fit``.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            -1 where ``decision_function`` is negative, +1 elsewhere.
        """
        return np.where(self.decision_function(X) < 0, -1, 1)

    def fit_predict(self, X, y=None, **kwargs):
        """Fit, then label each training sample by its training score.

        ``training_scores_`` are leave-one-out with the package's scorers (a
        training sample is not its own neighbour, nor a training image's
        patches in its own memory bank), so a float ``contamination`` is the
        fraction of training samples flagged.

        Parameters
        ----------
        X : array-like or list of paths / PIL images
            Normal training samples, as in ``fit``.
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
