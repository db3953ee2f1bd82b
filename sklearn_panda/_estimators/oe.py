"""PandaOE: outlier exposure, a linear head trained normal vs exposure images."""

import numbers
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils import column_or_1d
from torch import nn

from .._engine.data import shuffled_batches
from ..callbacks import check_callbacks, step_hooks, training_indices
from .._engine.device import ON_DEVICE, seeded_cpu_generator
from .._sklearn_compat import Interval, _fit_context
from ..scorers import KNNScorer, offset_from_training_scores
from ..scorers._contract import _l2_normalize
from .base import BasePandaDetector, draw_seed
from .docstrings import fill_doc


def normal_mask(y, n_samples, normal_label):
    """Which samples are normal: ``y == normal_label``; every other label marks exposure.

    Both kinds must be present.
    """
    if y is None:
        raise ValueError(
            f"PandaOE requires y to be passed, but the target y is None: y == normal_label "
            f"({normal_label!r}) for normal images, any other label for exposure images (images "
            "that resemble anomalies)."
        )
    # As objects first: numpy would turn a NaN among strings into the string "nan".
    labels = y.tolist() if isinstance(y, np.ndarray) else list(np.asarray(y, dtype=object).ravel())
    y = np.asarray(y)
    if y.shape == (n_samples, 1):
        # A column vector, as scikit-learn's classifiers take it: with their warning.
        y = column_or_1d(y, warn=True)
        labels = [row[0] if isinstance(row, list) else row for row in labels]
    if y.shape != (n_samples,):
        raise ValueError(f"y must have shape ({n_samples},), one label per image; got {y.shape}.")
    missing = [i for i, label in enumerate(labels) if label is None or label != label]  # None, NaN
    if missing:
        raise ValueError(
            f"y has {len(missing)} missing label(s) (NaN or None; first at index {missing[0]}), which would "
            "make those images exposure images: label every image, or leave the unlabelled ones out."
        )
    normal = y == normal_label
    if normal_label == 1 and not isinstance(normal_label, (bool, np.bool_)) and y.dtype != bool and set(
        np.unique(y).tolist()
    ) == {0, 1}:
        warnings.warn(
            "y holds 0 and 1, and normal_label=1 takes the images labelled 1 as normal, those labelled 0 as "
            "exposure. Where 1 marks anomalies (PyOD's labels, most 0/1 labels), set normal_label=0; "
            "labels +1 (normal) and -1 (exposure) say it without this warning.",
            UserWarning,
        )
    if normal.all() or not normal.any():
        found = sorted(set(np.unique(y).tolist()))
        raise ValueError(
            f"PandaOE needs both normal and exposure images; y holds one class only, "
            f"{'the normal label' if normal.any() else 'no normal label'} (normal_label="
            f"{normal_label!r}; labels found: {found[:5]}{' ...' if len(found) > 5 else ''})."
        )
    return normal


@fill_doc
class PandaOE(BasePandaDetector):
    """PANDA with outlier exposure: fine-tune with a linear head, normal vs exposure.

    When images that resemble the anomalies are available at training time
    (an "exposure" set: other objects, other textures, defects of other
    products), the last stage of the pretrained network is fine-tuned together
    with a linear head that separates normal from exposure images, with the
    logistic loss of the paper's Eq. 5. ``score_samples`` is the head's logit,
    higher for normal images. It helps when the exposure set resembles the
    real anomalies, and can hurt when it does not (the paper: Fashion-MNIST
    with 80M Tiny Images as exposure, 91.8 vs 95.6 without).

    Parameters
    ----------
    %(backbone)s

    %(weights)s

    n_steps : int, default=300
        Mini-batches of fine-tuning; each holds ``batch_size // 2`` normal and
        ``batch_size - batch_size // 2`` exposure images (balanced). At least
        1: the head starts from random weights.

    learning_rate : float, default=0.1
        SGD learning rate. With ``momentum`` and ``weight_decay`` at their
        defaults and ``clip_norm``, the paper's OE settings: lr 0.1, momentum
        0.9, no weight decay, gradient clipping.

    momentum, weight_decay : float, default=0.9, 0.0
        SGD momentum and weight decay (the paper's OE settings).

    clip_norm : float or None, default=1e-3
        Gradient-norm clipping (the paper: 1e-3).

    combine_knn : bool, default=False
        Score by the head's logit plus the (negated) distance to the 2
        nearest normal training images in the fine-tuned, L2-normalised
        features, each standardised by its mean and standard deviation over
        the normal training images (leave-one-out for the kNN part): it needs
        at least 3 normal training images. False: the head alone, as in the
        paper. See ``benchmarks/RESULTS.md`` for what it gave.

    normal_label : int, float, bool or str, default=1
        The label of the normal images in ``y``; every other label marks an
        exposure image (one label, or several, such as the classes of another
        data set). The default takes ``y`` as ``predict`` returns labels, 1
        normal and -1 anomalous, so that ``GridSearchCV(..., scoring="roc_auc")``
        works unchanged; for PyOD's labels (0 normal, 1 anomalous) set
        ``normal_label=0``.

    n_trainable_stages : int, default=1
        How many final stages train together with the head; by default only
        the last (ResNet ``layer4``), as in the paper. The stages of each
        family are in :ref:`choosing-a-backbone`.

    %(stage_ends)s

    feature_node : str or None, default=None
        The node whose output gives the features; a feature map
        ``(n, C, H, W)`` is average-pooled. ``None``: the input of the
        network's classifier (its last Linear, or convolution), that is the
        pooled penultimate features, the class token of a ViT.

    %(resize)s

    %(crop_size)s

    normalize_features : bool, default=False
        L2-normalise the pooled features that the head reads. False by
        default: the head reads the raw pooled features, as in the paper
        (``combine_knn``'s distances use L2-normalised features either way).

    contamination : "auto" or float in (0, 0.5], default="auto"
        Sets ``offset_`` from the scores of the normal training images (the
        logits, or the combined scores with ``combine_knn``): a float flags
        that fraction of them, ``"auto"`` 1%. These are training scores, so
        expect new normal images to be flagged somewhat more often.

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
    net_ : FeatureNet
        The fine-tuned network.
    head_ : torch.nn.Linear
        The trained linear head (features -> one logit).
    history_ : dict of lists
        ``"loss"`` per step.
    %(preprocessing_)s
    knn_scorer_ : KNNScorer or None
        With ``combine_knn``: fitted on the normal training images' features.
    score_scales_ : ndarray of shape (2, 2) or None
        With ``combine_knn``: mean and standard deviation (columns) of the
        head's logits and of the kNN scores (rows) on the normal training
        images.
    training_scores_ : ndarray of shape (n_normal,)
        Scores of the normal training images (the logits, or the combined
        scores with ``combine_knn``).
    %(offset_)s
    %(n_features_in_)s

    See Also
    --------
    PandaDetector : No exposure images needed.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sklearn_panda import PandaOE
    >>> def tiny_mlp():
    ...     return nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 4))
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(size=(30, 5)), rng.normal(size=(30, 5)) + 3])
    >>> y = np.r_[np.ones(30, dtype=int), -np.ones(30, dtype=int)]
    >>> oe = PandaOE(backbone=tiny_mlp, weights=None, n_steps=20, random_state=0).fit(X, y)
    >>> oe.predict(X[:2]).shape
    (2,)
    """

    _parameter_constraints = {
        **BasePandaDetector._parameter_constraints,
        "n_steps": [Interval(numbers.Integral, 1, None, closed="left")],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "momentum": [Interval(numbers.Real, 0, 1, closed="left")],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
        "clip_norm": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "combine_knn": ["boolean"],
        "normal_label": [numbers.Real, str],
    }

    _torch_attributes = {**BasePandaDetector._torch_attributes, "net_": ON_DEVICE, "head_": ON_DEVICE}

    def __init__(
        self,
        *,
        backbone="resnet152",
        weights="imagenet",
        n_steps=300,
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=0.0,
        clip_norm=1e-3,
        combine_knn=False,
        normal_label=1,
        n_trainable_stages=1,
        stage_ends=None,
        feature_node=None,
        resize="auto",
        crop_size="auto",
        normalize_features=False,
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
            n_trainable_stages=n_trainable_stages,
            stage_ends=stage_ends,
            feature_node=feature_node,
            resize=resize,
            crop_size=crop_size,
            normalize_features=normalize_features,
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
        self.n_steps = n_steps
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.clip_norm = clip_norm
        self.combine_knn = combine_knn
        self.normal_label = normal_label

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, callbacks=None):
        """Fine-tune on normal (``y == normal_label``) against exposure (any other label) images.

        Parameters
        ----------
        X : array-like or list of paths / PIL images
            Normal and exposure samples together.
        y : array-like of shape (n_samples,)
            ``normal_label`` (default 1) for normal images, any other label
            (such as -1, the label ``predict`` gives anomalies) for exposure
            images.
        callbacks : list of TrainingCallback, default=None
            Hooks called before the fine-tuning, after every step (``details``
            is empty; returning ``True`` ends it) and after it, as
            :meth:`PandaFeatures.fit` calls them
            (:mod:`sklearn_panda.callbacks`). Every sample trains here: a
            callback that chooses the samples to train on is an error.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        self._fit(X, y, callbacks=check_callbacks(callbacks))
        return self

    def _fit_checked(self, X, checked, is_normal, callbacks=()):
        run = self._start_fit(checked)
        if training_indices(callbacks, run.net, len(run.preprocessor), run.generator) is not None:
            raise ValueError(
                "PandaOE fine-tunes on every sample it is given, normal against exposure: a callback cannot "
                "choose the samples to train on (on_train_begin must return None). Pass the samples to fit."
            )
        fitted = self._adapt(run.net, run.preprocessor, run.hidden, run.generator, is_normal, callbacks)
        for callback in callbacks:
            callback.on_train_end(run.net, training_inputs=run.preprocessor, trunk_outputs=run.hidden)
        fitted.update(self._fit_scoring(fitted, run.preprocessor, run.hidden))
        fitted.update(input_spec_=checked.spec, device_=run.device)
        return fitted, run

    def _check_target(self, y, n_samples):
        is_normal = normal_mask(y, n_samples, self.normal_label)
        if self.combine_knn and is_normal.sum() < 3:
            # Two images are each other's nearest neighbour, at one distance: no spread to divide by.
            raise ValueError(
                f"combine_knn needs at least 3 normal training images (y == {self.normal_label!r}): their "
                f"leave-one-out kNN distances are standardised by their spread; got {int(is_normal.sum())}."
            )
        return is_normal

    def fit_predict(self, X, y, callbacks=None):
        """Fit, then label the training samples with ``predict``.

        Parameters
        ----------
        X : array-like or list of paths / PIL images
            Training samples, normal and exposure, as in ``fit``.
        y : array-like of shape (n_samples,)
            ``normal_label`` for normal images, any other label for exposure images.
        callbacks : list of TrainingCallback, default=None
            As in ``fit``.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            ``predict(X)`` after ``fit(X, y)``: -1 for outliers, +1 for inliers.
        """
        return self.fit(X, y, callbacks=callbacks).predict(X)

    def _adapt(self, net, preprocessor, hidden, generator, is_normal, callbacks=()):
        """Fine-tune ``net`` with a new head, normal samples (the mask ``is_normal``) against the others;
        each callback's ``on_step_end`` after every step."""
        device = preprocessor.device
        n_features = self._feature_width(net, preprocessor, hidden)
        with seeded_cpu_generator(int(torch.randint(2**31 - 1, (1,), generator=generator))):
            head = nn.Linear(n_features, 1).to(device)
        normal, exposure = np.flatnonzero(is_normal), np.flatnonzero(~is_normal)
        n_normal = max(1, self.batch_size // 2)
        normal_batches = shuffled_batches(len(normal), n_normal, generator)
        exposure_batches = shuffled_batches(len(exposure), max(1, self.batch_size - n_normal), generator)
        parameters = net.trainable_parameters() + list(head.parameters())
        history = {"loss": []}

        def step_loss(step):
            indices = np.concatenate([normal[next(normal_batches)], exposure[next(exposure_batches)]])
            targets = torch.as_tensor(is_normal[indices].astype(np.float32), device=device)
            trunk_output = self._trunk_batch(net, preprocessor, hidden, indices)
            with self._autocast(device):
                logits = head(self._project(net.stages(trunk_output))).squeeze(1).float()
            # Eq. 5: logistic regression, normal images towards high logits.
            return F.binary_cross_entropy_with_logits(logits, targets), {}

        def record(step, loss, details):
            history["loss"].append(loss)

        self._optimize(
            parameters,
            step_loss,
            "outlier exposure",
            n_steps=self.n_steps,
            learning_rate=self.learning_rate,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            clip_norm=self.clip_norm,
            callbacks=[record, *step_hooks(callbacks, net)],
        )
        return {"net_": net, "head_": head, "history_": history, "normal_indices_": normal}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags

    def _feature_width(self, net, preprocessor, hidden):
        """Width of the pooled features: one sample through the stages."""
        trunk_output = self._trunk_batch(net, preprocessor, hidden, np.arange(1))
        # Under autocast, as the trunk outputs were computed (bfloat16 ones need it).
        with torch.inference_mode(), self._autocast(preprocessor.device):
            return net.stages(trunk_output).shape[1]

    def _fit_scoring(self, fitted, preprocessor, hidden):
        normal = fitted.pop("normal_indices_")
        features = self._embed(fitted["net_"], preprocessor, hidden)[normal]
        scores = self._head_scores(fitted["head_"], features, preprocessor.device)
        knn_scorer = scales = None
        if self.combine_knn:
            # Seeded as PandaDetector's scorer: an approximate index (algorithm="auto") is then reproducible.
            knn_scorer = KNNScorer(n_neighbors=2, random_state=draw_seed(self.random_state)).fit(_l2_normalize(features))
            raw = np.stack([scores, knn_scorer.training_scores_], axis=1)
            spread = raw.std(axis=0)
            if not (spread > 0).all():
                # Dividing by a floor instead would blow any new image's deviation up to ~1e300.
                constant = " and ".join(name for name, value in zip(("the logits", "the kNN distances"), spread) if not value > 0)
                raise ValueError(
                    f"combine_knn standardises the logits and the kNN distances by their spread over the normal "
                    f"training images, and {constant} do not vary there: fit on more (or more varied) normal "
                    "images, or set combine_knn=False."
                )
            scales = np.stack([raw.mean(axis=0), spread], axis=1)
            scores = _standardised_sum(raw, scales)
        return {
            "knn_scorer_": knn_scorer,
            "score_scales_": scales,
            "training_scores_": scores,
            "offset_": offset_from_training_scores(scores, self.contamination),
        }

    @staticmethod
    def _head_scores(head, features, device):
        """The head's logit for each row of ``features`` (as ``_embed`` projects them)."""
        with torch.inference_mode():
            logits = head(torch.from_numpy(features).to(device)).squeeze(1)
        return logits.float().cpu().numpy().astype(np.float64)

    def _score_checked(self, checked):
        features = self._embed(self.net_, self._preprocessor(checked, self.device_))
        scores = self._head_scores(self.head_, features, self.device_)
        if self.knn_scorer_ is None:
            return scores
        raw = np.stack([scores, self.knn_scorer_.score_samples(_l2_normalize(features))], axis=1)
        return _standardised_sum(raw, self.score_scales_)


def _standardised_sum(raw, scales):
    """Sum over columns of ``(raw - mean) / std``, with ``scales`` rows ``(mean, std)`` per column."""
    return ((raw - scales[:, 0]) / scales[:, 1]).sum(axis=1)
