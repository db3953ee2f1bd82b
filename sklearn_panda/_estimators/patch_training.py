"""What a fitted patch detector does with normal images beyond its fit: adds more of them
(``partial_fit``) and labels its own training images (``fit_predict``)."""

import numpy as np
from sklearn import get_config

from .._sklearn_compat import _fit_context, validate_parameter_constraints
from ..scorers._contract import warn_if_anomalies_in_y
from .base import draw_seed
from .patch_memory import BankAssembly, leave_one_out_scores
from .validation import check_input, check_new_input


# What partial_fit on a fitted detector reads of its parameters (BankAssembly's, and those of the
# features' batches, progress and seed); the others were fixed at fit.
PARTIAL_FIT_PARAMETERS = (*BankAssembly.__dataclass_fields__, "batch_size", "random_state")


class TrainingImagesMixin:
    """``partial_fit`` and ``fit_predict`` of :class:`~sklearn_panda.PandaPatchDetector` (its ``_fit``,
    ``_spec``, ``_embeddings``, banks and calibration images)."""

    def partial_fit(self, X, y=None):
        """Add normal images to the fitted memory banks; on an unfitted detector, :meth:`fit`.

        The new images' patches go through the same two-stage coreset
        selection as in :meth:`fit`, and the greedy selection goes on from
        the banks' rows (all kept) until the banks hold ``coreset_ratio`` of
        all the patches seen. The calibration images are drawn again among
        all the images seen (a uniform random sample, as in :meth:`fit`) and
        ``offset_``, ``pixel_offset_`` and ``score_scales_`` measured again
        against the grown banks. With ``coreset_ratio=1.0`` (every patch
        kept) and at most ``CALIBRATION_IMAGES`` images, the result is that
        of :meth:`fit` on all the images at once. The features are made as
        at the first fit (``patch_spec_``, ``net_``); ``coreset_ratio``,
        ``projection_dim``, ``n_neighbors``, ``algorithm``,
        ``contamination``, ``pixel_contamination``, ``batch_size``,
        ``random_state`` and ``verbose`` are read (and checked) now, the
        others not. Nothing changes when it fails.

        Parameters
        ----------
        X : array-like or list of paths / PIL images
            Normal images, of the kind seen in :meth:`fit` (same number of
            channels; vectors of the same length).
        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        self : object
            The updated detector.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_panda import PandaPatchDetector
        >>> rng = np.random.default_rng(0)
        >>> normal = rng.normal(0.5, 0.02, size=(8, 32, 32, 3)).clip(0, 1)
        >>> detector = PandaPatchDetector(backbone="resnet18", weights=None, random_state=0).fit(normal[:4])
        >>> detector.partial_fit(normal[4:]).n_samples_seen_
        8
        """
        warn_if_anomalies_in_y(y, type(self).__name__)
        return self._partial_fit(X)

    def _partial_fit(self, X):
        if not hasattr(self, "memory_bank_"):
            return self._first_partial_fit(X)
        if not hasattr(self, "calibration_maps_"):
            raise ValueError(
                "This detector was fitted by an older version of sklearn-panda, which kept no calibration "
                "images: partial_fit cannot measure its offsets again. Fit it again on all its images."
            )
        # Only the parameters it reads: those fixed at fit (set_params(neighbourhood=4) after it,
        # say) change nothing here, so they do not make it fail. scikit-learn's _fit_context would
        # check every parameter, and only on an unfitted estimator.
        if not get_config()["skip_parameter_validation"]:
            constraints = {name: self._parameter_constraints[name] for name in PARTIAL_FIT_PARAMETERS}
            validate_parameter_constraints(
                constraints, {name: getattr(self, name) for name in constraints}, caller_name=type(self).__name__
            )
        checked = check_new_input(self, X)
        seed = draw_seed(self.random_state)
        stream = self._embeddings(self.net_, checked, self.device_, self._spec(), "patch features")
        fitted = BankAssembly.of(self).learn(stream, len(checked), self._spec(), seed, previous=self)
        for name, value in fitted.items():
            setattr(self, name, value)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def _first_partial_fit(self, X):
        """``partial_fit`` on an unfitted detector: :meth:`fit`, every parameter checked."""
        return self._fit(X)

    def fit_predict(self, X, y=None):
        """Fit on normal images ``X`` and label each of them by its leave-one-out score.

        An image's leave-one-out score is measured against the memory banks
        without its own patches, as ``training_scores_`` are for the
        calibration images, so that a float ``contamination`` is about the
        fraction of the images flagged. With more than ``CALIBRATION_IMAGES``
        images, the others are passed through the network again and measured
        the same way (about the cost of scoring them).

        Parameters
        ----------
        X : array-like or list of paths / PIL images
            Normal training images, as in :meth:`fit`.
        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            -1 for the images whose leave-one-out score is below ``offset_``,
            +1 for the others, in the order of ``X``.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_panda import PandaPatchDetector
        >>> normal = np.random.default_rng(0).normal(0.5, 0.02, size=(6, 32, 32, 3)).clip(0, 1)
        >>> PandaPatchDetector(backbone="resnet18", weights=None, random_state=0).fit_predict(normal).shape
        (6,)
        """
        self.fit(X, y)
        if len(self.calibration_maps_) == self.n_samples_seen_:
            # Every image is a calibration image: training_scores_ are the scores, in the sample's order.
            order = np.argsort([entry["image"] for entry in self.calibration_maps_])
            scores = self.training_scores_[order]
        else:
            spec = self._spec()
            banks = [(self.memory_bank_, self.memory_bank_images_, self.scorer_)]
            if spec["image_score"] == "patch+fine":
                banks.append((self.fine_bank_, self.fine_bank_images_, self.fine_scorer_))
            stream = self._embeddings(self.net_, check_input(X), self.device_, spec, "training scores")
            scores = leave_one_out_scores(
                stream, banks, spec, getattr(self, "score_scales_", None), self.calibration_maps_
            )
        return np.where(scores < self.offset_, -1, 1)
