"""PandaDetector: adapted features (PandaFeatures) and a scorer on them."""

import warnings
from abc import abstractmethod

import numpy as np
from sklearn.base import clone

from .._sklearn_compat import HasMethods, StrOptions, _fit_context
from ..callbacks import check_callbacks
from ..scorers import CenterScorer, KMeansScorer, KNNScorer, MahalanobisScorer
from ..scorers._contract import _BaseScorer, warn_if_anomalies_in_y
from .base import BasePandaDetector, draw_seed
from .docstrings import fill_doc
from .features import PandaFeatures
from .recipes import AUTO, resolve

SCORERS = {"knn", "kmeans", "center", "mahalanobis"}


class _FromFeatures:
    """A fitted attribute of a detector that is its ``features_``' attribute of the same name."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, detector, owner=None):
        if detector is None:
            return self
        # Before fit there is no features_: AttributeError, so hasattr is False.
        return getattr(detector.features_, self.name)

    def __set__(self, detector, value):
        # A value set on the detector would hide the fitted features' own.
        raise AttributeError(f"{self.name} is features_.{self.name}; set it there.")


def _offset_of(scorer, training_features, training_scores):
    """The fitted scorer's ``offset_`` as a float (OneClassSVM keeps it in an array of one).

    A scorer without one (a scikit-learn ``Pipeline`` ending in an outlier
    detector) gives it by its ``decision_function``, when that is
    ``score_samples`` less one constant on the training features.
    """
    offset = np.asarray(getattr(scorer, "offset_", np.nan), dtype=np.float64)
    if offset.size == 1 and not np.isnan(offset).all():
        return float(offset.reshape(()))
    if hasattr(scorer, "decision_function"):
        shift = training_scores - np.asarray(scorer.decision_function(training_features), dtype=np.float64)
        if np.allclose(shift, shift[0], rtol=1e-6, atol=1e-9 * max(1.0, float(np.abs(training_scores).max()))):
            return float(shift[0])
    raise ValueError(
        f"The scorer {type(scorer).__name__} has no single offset_ after fit, nor a decision_function that is "
        "score_samples less a constant; a scorer must follow scikit-learn's outlier contract, "
        "decision_function = score_samples - offset_."
    )


class FeatureDetectorBase(BasePandaDetector):
    """What :class:`PandaDetector` and :class:`~sklearn_panda.PandaSES` share: a fitted
    :class:`PandaFeatures` (``features_``, adapted with the detector's own
    parameters) and scoring fitted on its features.

    ``fit`` builds the ``PandaFeatures`` and hands it to the subclass's
    ``_fit_features_and_scoring``, which fits it through its public ``fit``
    or ``fit_transform`` (``PandaSES`` passes a training callback that keeps
    its checkpoints) and fits the scoring on its adapted network. The
    network's fitted attributes are those of ``features_``.
    """

    _frozen_parameters = (*BasePandaDetector._frozen_parameters, "average_mirror")

    _parameter_constraints = {
        **BasePandaDetector._parameter_constraints,
        **PandaFeatures._parameter_constraints,
        "scorer": [StrOptions(SCORERS | {AUTO}), HasMethods(["fit", "score_samples", "decision_function"])],
    }

    net_ = _FromFeatures()
    center_ = _FromFeatures()
    history_ = _FromFeatures()
    fisher_ = _FromFeatures()
    # Where the network runs and what input it was fitted on: read by the shared input checks.
    device_ = _FromFeatures()
    input_spec_ = _FromFeatures()

    def __init__(
        self,
        *,
        scorer,
        n_steps,
        loss,
        temperature,
        regularization,
        ewc_lambda,
        fisher,
        n_fisher_batches,
        learning_rate,
        momentum,
        weight_decay,
        clip_norm,
        average_mirror,
        contamination,
        **network_parameters,
    ):
        super().__init__(contamination=contamination, **network_parameters)
        self.scorer = scorer
        self.average_mirror = average_mirror
        self.n_steps = n_steps
        self.loss = loss
        self.temperature = temperature
        self.regularization = regularization
        self.ewc_lambda = ewc_lambda
        self.fisher = fisher
        self.n_fisher_batches = n_fisher_batches
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.clip_norm = clip_norm

    @property
    def _averages_mirror(self):
        return self._fitted_value("average_mirror")

    # The scorer is an estimator parameter: its own fit validates its parameters.
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, callbacks=None):
        """Adapt the backbone to the normal images ``X`` and fit the scorer.

        Parameters
        ----------
        X : array-like or list of paths / PIL images
            Normal training samples: images ``(n, H, W)``, ``(n, H, W, C)`` or
            ``(n, C, H, W)`` (uint8 in [0, 255], uint16 in [0, 65535] or float in [0, 1]), a list of
            image files / PIL images, or vectors ``(n, d)`` for a vector backbone.

        y : Ignored
            Not used, present for API consistency by convention.

        callbacks : list of TrainingCallback, default=None
            Code of one's own that takes part in the adaptation, as in
            :meth:`PandaFeatures.fit` (:mod:`sklearn_panda.callbacks`).
            :class:`PandaSES` holds out its validation images itself: there
            no callback may choose the samples to train on.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        warn_if_anomalies_in_y(y, type(self).__name__)
        self._fit(X, y, callbacks=check_callbacks(callbacks))
        return self

    def _fit_checked(self, X, checked, y, callbacks=()):
        self._check_scorer()
        self._check_enough_samples(len(checked))
        features = self._make_features()
        fitted = self._fit_features_and_scoring(features, X, callbacks)
        fitted["features_"] = features
        fitted["recipe_"] = {**features.recipe_, "scorer": resolve(self, "scorer")}
        # No FitRun of its own: the features' fit built the network and kept the trunk outputs.
        return fitted, None

    def _check_scorer(self):
        if not isinstance(self.scorer, str) and self.contamination != "auto":
            warnings.warn(
                f"contamination={self.contamination!r} is not used: the scorer "
                f"{type(self.scorer).__name__} sets its own threshold. Set it on the scorer "
                "(e.g. its contamination), or give the scorer by name.",
                UserWarning,
            )

    def _check_enough_samples(self, n_samples):
        """Before the adaptation: a named scorer scores each training sample leaving it out."""
        scorer = resolve(self, "scorer")
        if isinstance(scorer, str):
            needed = {"mahalanobis": 3}.get(scorer, 2)
        else:  # the package's own scorers say how many they need; another detector, itself
            needed = 3 if isinstance(scorer, MahalanobisScorer) else 2 if isinstance(scorer, _BaseScorer) else 1
        if n_samples < needed:
            raise ValueError(
                f"{type(self).__name__} needs at least {needed} training samples: its scorer ({scorer!r}) scores "
                f"each one leaving it out, against the others; got {n_samples} sample{'s' * (n_samples != 1)}."
            )

    def _make_features(self):
        """An unfitted :class:`PandaFeatures` with this detector's adaptation parameters."""
        return PandaFeatures(**{name: getattr(self, name) for name in PandaFeatures._get_param_names()})

    def _make_scorer(self):
        """An unfitted scorer: built from its name with this detector's
        ``contamination`` (seeded by ``random_state``: with an integer, the
        seed the adaptation drew), or a clone of the given one, unchanged."""
        seed = draw_seed(self.random_state)
        scorer = resolve(self, "scorer")
        if scorer == "knn":
            # The seed reaches an approximate index (algorithm="auto" on large galleries).
            return KNNScorer(n_neighbors=2, contamination=self.contamination, random_state=seed)
        if scorer == "kmeans":
            return KMeansScorer(n_clusters=10, random_state=seed, contamination=self.contamination)
        if scorer == "center":
            return CenterScorer(contamination=self.contamination)
        if scorer == "mahalanobis":
            return MahalanobisScorer(contamination=self.contamination)
        return clone(scorer)

    @abstractmethod
    def _fit_features_and_scoring(self, features, X, callbacks):
        """Fit the unfitted :class:`PandaFeatures` ``features`` on ``X`` (with the user's
        ``callbacks``); return the fitted scoring attributes (``offset_``,
        ``training_scores_``, ...) on its adapted network."""


@fill_doc
class PandaDetector(FeatureDetectorBase):
    """PANDA: adapt pretrained features to the normal images, score by their distance to them.

    Fine-tunes the last stages of an ImageNet-pretrained network so that the
    features of the normal training images move towards their (fixed) mean,
    the compactness loss of the paper's Eq. 1. Collapse (every image mapped to
    one point) is held off by stopping after ``n_steps`` mini-batches
    ("early stopping") or by elastic weight consolidation
    (``regularization="ewc"``, Eq. 4). A new image is then scored by its
    distance to its nearest normal training features (kNN, k=2), or, with
    EfficientNet-Lite0's recipe, by its Mahalanobis distance to them.

    The detector is :class:`PandaFeatures` (the adaptation, fitted with this
    detector's own parameters, in ``features_``) followed by a scorer fitted
    on the adapted training features (``scorer_``): the same as
    ``make_pipeline(PandaFeatures(...), scorer)`` with the recipe's scorer
    (``KNNScorer()``; ``MahalanobisScorer()`` for EfficientNet-Lite0), with
    the scorer's leave-one-out training scores and threshold at hand.

    Parameters
    ----------
    %(backbone)s

    %(weights)s

    %(n_steps)s

    %(loss)s

    %(temperature)s

    %(regularization)s

    %(ewc_lambda)s

    %(fisher)s

    %(n_fisher_batches)s

    %(learning_rate)s

    momentum, weight_decay : float, default=0.9, 5e-5
        SGD settings of the paper.

    %(clip_norm)s

    %(n_trainable_stages)s

    %(stage_ends)s

    %(feature_node)s

    %(resize)s

    %(crop_size)s

    %(normalize_features)s

    %(average_mirror)s

    scorer : {"auto", "knn", "kmeans", "center", "mahalanobis"} or estimator, default="auto"
        What scores the adapted features. ``"auto"``: the backbone's recipe,
        ``"mahalanobis"`` for EfficientNet-Lite0 (chosen on two kinds of images,
        worst class first: ``benchmarks/RESULTS.md``, defaults study) and
        ``"knn"`` for every other backbone (the value used is in ``recipe_``). ``"knn"``: :class:`KNNScorer` with
        k=2, the paper's choice; ``"kmeans"``: :class:`KMeansScorer` with 10
        means (seeded by ``random_state``); ``"center"``: :class:`CenterScorer`; ``"mahalanobis"``:
        :class:`MahalanobisScorer` (a Gaussian with a Ledoit-Wolf
        covariance), which needs no neighbour search. Or an outlier detector
        with ``fit``, ``score_samples`` and ``decision_function``: one of the
        package's scorers with other settings, or scikit-learn's
        :class:`~sklearn.neighbors.LocalOutlierFactor` (``novelty=True``),
        :class:`~sklearn.ensemble.IsolationForest`,
        :class:`~sklearn.covariance.EllipticEnvelope`,
        :class:`~sklearn.svm.OneClassSVM`. It is cloned, never changed: the
        fitted copy is ``scorer_``.

    contamination : "auto" or float in (0, 0.5], default="auto"
        The share of normal training samples to flag, with a scorer given by
        name: passed to the scorer, which sets ``offset_`` from the
        leave-one-out training scores; ``"auto"`` flags about 1% of normal
        data (see :class:`KNNScorer`). Not used with a scorer instance, which
        brings its own threshold (its ``contamination``, ``nu``, ...): set it
        there; a value other than ``"auto"`` then warns.

    %(batch_size)s

    %(inference_batch_size)s

    %(precision)s

    %(trunk_cache_mb)s

    %(compile)s

    %(device)s

    %(random_state)s

    %(verbose)s

    Attributes
    ----------
    features_ : PandaFeatures
        The fitted adaptation; ``features_.transform(X)`` gives the features
        the scorer sees (as does ``extract_features``).
    net_ : FeatureNet
        The adapted network (``features_.net_``).
    center_ : ndarray of shape (n_features_out,) or None
        Mean pretrained training feature, the fixed target of the loss
        (``None`` when ``n_steps=0``; ``features_.center_``).
    history_ : dict of lists
        Per step: ``"loss"``, ``"compactness"``, ``"compactness_ratio"``
        (values falling towards 0 warn of collapse) and ``"ewc_penalty"``
        (``features_.history_``, documented in :class:`PandaFeatures`).
    fisher_ : dict or None
        The Fisher diagonal used with EWC, on the CPU (``features_.fisher_``).
    scorer_ : estimator
        The fitted clone of ``scorer`` on the adapted training features.
    recipe_ : dict
        The values used for ``n_steps``, ``learning_rate``, ``loss``,
        ``clip_norm`` and ``scorer`` (``"auto"`` resolved by the backbone's
        recipe).
    %(preprocessing_)s
    offset_ : float
        Threshold of ``decision_function``: ``scorer_.offset_``, so that
        ``decision_function(X)`` is ``scorer_.decision_function`` of the
        features of ``X`` and ``predict`` follows the scorer's threshold.
    training_scores_ : ndarray of shape (n_samples,)
        ``score_samples`` of the training samples: leave-one-out for the
        package's scorers (a training sample is not its own neighbour), the
        scorer's ``score_samples`` of the training features for other
        scorers (in-sample: normal training samples score as more normal
        than new normal samples would).
    %(n_features_in_)s

    See Also
    --------
    PandaFeatures : The adaptation alone, as a transformer.
    KNNScorer : The scorer alone, for features from any model.

    References
    ----------
    Reiss, Cohen, Bergman, Hoshen. "PANDA: Adapting Pretrained Features for
    Anomaly Detection and Segmentation", CVPR 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sklearn.ensemble import IsolationForest
    >>> from sklearn_panda import PandaDetector
    >>> def tiny_mlp():
    ...     return nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 4))
    >>> rng = np.random.default_rng(0)
    >>> det = PandaDetector(backbone=tiny_mlp, weights=None, n_steps=5, random_state=0)
    >>> det = det.fit(rng.normal(size=(50, 6)))
    >>> det.score_samples(rng.normal(size=(3, 6))).shape
    (3,)
    >>> forest = IsolationForest(contamination=0.1, random_state=0)
    >>> det = PandaDetector(backbone=tiny_mlp, weights=None, n_steps=5, scorer=forest, random_state=0)
    >>> int((det.fit_predict(rng.normal(size=(50, 6))) == -1).sum())
    5
    """

    def __init__(
        self,
        *,
        backbone="resnet152",
        weights="imagenet",
        n_steps="auto",
        loss="auto",
        temperature=0.25,
        regularization=None,
        ewc_lambda=1e4,
        fisher=None,
        n_fisher_batches=100,
        learning_rate="auto",
        momentum=0.9,
        weight_decay=5e-5,
        clip_norm="auto",
        n_trainable_stages=2,
        stage_ends=None,
        feature_node=None,
        resize="auto",
        crop_size="auto",
        normalize_features=True,
        average_mirror=False,
        scorer="auto",
        contamination="auto",
        batch_size=32,
        inference_batch_size="auto",
        precision="float32",
        trunk_cache_mb=2048,
        compile=False,
        device="auto",
        random_state=None,
        verbose=0,
    ):
        super().__init__(
            backbone=backbone,
            weights=weights,
            n_steps=n_steps,
            loss=loss,
            temperature=temperature,
            regularization=regularization,
            ewc_lambda=ewc_lambda,
            fisher=fisher,
            n_fisher_batches=n_fisher_batches,
            learning_rate=learning_rate,
            momentum=momentum,
            weight_decay=weight_decay,
            clip_norm=clip_norm,
            n_trainable_stages=n_trainable_stages,
            stage_ends=stage_ends,
            feature_node=feature_node,
            resize=resize,
            crop_size=crop_size,
            normalize_features=normalize_features,
            average_mirror=average_mirror,
            scorer=scorer,
            contamination=contamination,
            batch_size=batch_size,
            inference_batch_size=inference_batch_size,
            precision=precision,
            trunk_cache_mb=trunk_cache_mb,
            compile=compile,
            device=device,
            random_state=random_state,
            verbose=verbose,
        )

    def _fit_features_and_scoring(self, features, X, callbacks):
        """The scorer fitted on the adapted training features (``fit_transform``
        reuses the trunk outputs of the adaptation), its ``offset_`` and ``training_scores_``."""
        training_features = features.fit_transform(X, callbacks=callbacks)
        scorer = self._make_scorer().fit(training_features)
        if isinstance(scorer, _BaseScorer):
            training_scores = scorer.training_scores_
        else:
            training_scores = np.asarray(scorer.score_samples(training_features), dtype=np.float64)
        offset = _offset_of(scorer, training_features, training_scores)
        return {"scorer_": scorer, "offset_": offset, "training_scores_": training_scores}

    def _score_checked(self, checked):
        features = self._embed(self.net_, self._preprocessor(checked, self.device_), mirror=self._averages_mirror)
        return np.asarray(self.scorer_.score_samples(features), dtype=np.float64)
