"""PandaSES: sample-wise early stopping over checkpoints of the adaptation."""

import copy
import functools
import numbers
import warnings

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch.func import functional_call

from .._engine.data import Mirrored
from .._engine.device import ON_CPU
from .._engine.inference import rows_of, run_in_batches, trunk_output_chunks
from .._engine.progress import ProgressBar
from .._sklearn_compat import HasMethods, Interval, StrOptions
from ..callbacks import TrainingCallback
from ..scorers import offset_from_training_scores
from ..scorers._contract import _BaseScorer
from .detector import SCORERS, FeatureDetectorBase
from .docstrings import fill_doc

CHECKPOINT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@fill_doc
class PandaSES(FeatureDetectorBase):
    """PANDA with sample-wise early stopping: every checkpoint votes, normalised.

    The training images are split 90/10 into a gallery and a validation
    part. Adaptation runs like :class:`PandaDetector`'s on the gallery images
    only, keeping the trainable stages' parameters every ``checkpoint_every``
    steps (and the pretrained ones as checkpoint 0). For checkpoint ``t``,
    ``s_t`` is the mean anomaly distance of the validation features to the
    gallery features: the typical distance of a *normal image the network has
    not been trained on*, as a test image is. (The paper measures ``s_t`` on
    training images, whose distances can shrink faster than unseen ones' as
    adaptation over-fits; the effect of this choice alone has not been
    measured.) A sample's anomaly distance is
    ``max_t d_t(x) / s_t``, where ``d_t(x)`` is its distance to the
    checkpoint-``t`` gallery. When adaptation starts to collapse, normal and
    anomalous distances shrink together, ``s_t`` shrinks with them, and the
    earlier checkpoints that still separated well keep deciding.

    A checkpoint caught mid-way into a collapse can map normal images
    erratically: a few held-out normal images then lie far beyond ``s_t``,
    and the maximum over checkpoints would let that noise decide. Such
    checkpoints are recognised without any anomaly: their held-out normal
    distances have a coefficient of variation (``dispersions_``) more than
    ``max_dispersion`` times the pretrained network's, and they are left out of
    the maximum (``active_checkpoints_``). No test label is ever used.

    At scoring time the frozen trunk runs once per sample and only the
    trainable stages run once per checkpoint: the trunk's outputs are kept on
    the device for as many samples at a time as fit in ``trunk_cache_mb``, and
    the checkpoints are moved to the device one at a time to run over them.
    Each checkpoint holds only the trainable parameters, on the CPU: for
    ResNet152 (``layer3`` + ``layer4``, 55.6M parameters) 212 MiB in float32
    or 106 MiB in half precision; for EfficientNet-Lite0 (last 5 blocks +
    head, 2.67M parameters) 10.2 MiB / 5.1 MiB. Each checkpoint also keeps its
    gallery features (``0.9 * n_samples * n_features`` float32 values).

    Parameters
    ----------
    %(backbone)s

    %(weights)s

    n_steps : int, default=500
        Total adaptation steps; SES can afford to train longer than fixed-step
        early stopping because later, collapsed checkpoints are out-voted.

    checkpoint_every : int, default=50
        Steps between checkpoints; ``n_steps // checkpoint_every`` checkpoints
        are saved after the pretrained one. The paper saves one every 5 epochs,
        up to 150k training images seen. A training callback that stops the
        adaptation early (its ``on_step_end`` returns ``True``) makes the step it
        stopped at a checkpoint too, so that the network it chose votes.

    validation_fraction : float in (0, 1), default=0.1
        Share of the training images held out of adaptation and of the
        galleries to measure ``s_t``, drawn at random (seeded by
        ``random_state``; the paper: 0.1).

    checkpoint_dtype : {"float32", "float16", "bfloat16"}, default="float32"
        Storage precision of the saved parameters (half halves the memory).

    max_dispersion : float or None, default=3.0
        Leave a checkpoint out of the maximum when the coefficient of variation
        of its held-out normal distances exceeds this multiple of checkpoint
        0's (measured on at least 2 held-out images: with one, a warning
        says it is not applied). ``None`` keeps every checkpoint, as the paper does. In
        Fashion-MNIST forced collapses, checkpoints caught mid-collapse were
        4.5-27x the pretrained dispersion, and checkpoints of runs that did
        not collapse at most 1.3x (``benchmarks/RESULTS.md``).

    loss : {"compactness", "mean_shifted"}, default="compactness"
        ``"compactness"``: the paper's Eq. 1, the mean squared distance of the
        (projected) features to the fixed centre. ``"mean_shifted"``: the
        mean-shifted contrastive loss of the paper's follow-up (Reiss and
        Hoshen, AAAI 2023): two random views of each image (resized crop,
        flip, colour jitter, greyscale), L2-normalised features shifted by
        the fixed unit centre, and a contrastive loss between the views. It
        does not collapse, but each step runs the frozen trunk on both views
        (the trunk cache serves only the centre and the gallery), so a step
        costs far more; images only. SES takes no recipe.

    %(temperature)s

    %(regularization)s

    %(ewc_lambda)s

    %(fisher)s

    %(n_fisher_batches)s

    learning_rate : float, default=1e-2
        SGD learning rate, the paper's. SES takes no recipe: its checkpoints,
        not a fixed number of steps, decide how far adaptation goes.

    momentum, weight_decay : float, default=0.9, 5e-5
        SGD settings of the paper.

    clip_norm : float or None, default=1e-3
        Gradient-norm clipping (the paper: 1e-3). SES takes no recipe.

    %(n_trainable_stages)s

    %(stage_ends)s

    %(feature_node)s

    %(resize)s

    %(crop_size)s

    %(normalize_features)s

    %(average_mirror)s

    scorer : {"knn", "kmeans", "center", "mahalanobis"} or scorer instance, default="knn"
        One of the package's scorers, by name or as an instance (cloned): the
        normalisation needs anomaly distances (minus ``score_samples``) and
        leave-one-out training scores, which scikit-learn's detectors do not give.

    contamination : "auto" or float in (0, 0.5], default="auto"
        Sets ``offset_`` from ``training_scores_``, SES's own scores, with a
        scorer given by name or as an instance alike (the scorer's
        threshold does not apply to the normalised maximum); ``"auto"``:
        1%.

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
    checkpoints_ : list of dict
        Trainable parameters (name -> CPU tensor) per checkpoint, the
        pretrained ones first.
    checkpoint_steps_ : list of int
        The step after which each checkpoint was taken (0: pretrained).
    normalizers_ : ndarray of shape (n_checkpoints,)
        ``s_t``, the mean validation distance of each checkpoint.
    dispersions_ : ndarray of shape (n_checkpoints,)
        Coefficient of variation (std / mean) of the held-out normal
        distances at each checkpoint.
    active_checkpoints_ : ndarray of bool, shape (n_checkpoints,)
        The checkpoints ``score_samples`` takes the maximum over (see
        ``max_dispersion``); checkpoint 0 always is.
    scorers_ : list of scorers
        Each checkpoint's scorer, fitted on its gallery features.
    validation_indices_ : ndarray
        Training samples held out of adaptation and of the galleries, to
        measure ``s_t``.
    training_scores_ : ndarray of shape (n_samples,)
        Leave-one-out scores of the training samples (gallery samples leave
        themselves out; validation samples are scored against the gallery).
    %(offset_)s
    net_, center_, history_, fisher_, preprocessing_ : see :class:`PandaDetector`
        ``net_`` holds the parameters after all ``n_steps`` steps, which are
        a checkpoint only when ``n_steps`` is a multiple of
        ``checkpoint_every``. Scoring takes the trainable stages' parameters
        from ``checkpoints_`` and only the rest from ``net_``.

    See Also
    --------
    PandaDetector : Fixed-step early stopping or EWC.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sklearn_panda import PandaSES
    >>> def tiny_mlp():
    ...     return nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 4))
    >>> rng = np.random.default_rng(0)
    >>> ses = PandaSES(backbone=tiny_mlp, weights=None, n_steps=4, checkpoint_every=2, random_state=0)
    >>> ses = ses.fit(rng.normal(size=(40, 6)))
    >>> ses.checkpoint_distances(rng.normal(size=(3, 6))).shape
    (3, 3)
    """

    _parameter_constraints = {
        **FeatureDetectorBase._parameter_constraints,
        # SES keeps the paper's numbers: its checkpoints, not a recipe, choose when to stop.
        "n_steps": [Interval(numbers.Integral, 0, None, closed="left")],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "loss": [StrOptions({"compactness", "mean_shifted"})],
        "clip_norm": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "scorer": [StrOptions(SCORERS), HasMethods(["fit", "score_samples", "decision_function"])],
        "checkpoint_every": [Interval(numbers.Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
        "checkpoint_dtype": [StrOptions(set(CHECKPOINT_DTYPES))],
        "max_dispersion": [Interval(numbers.Real, 0, None, closed="neither"), None],
    }

    # Only the trainable parameters, on the CPU: scoring moves one checkpoint at a time to the device.
    _torch_attributes = {**FeatureDetectorBase._torch_attributes, "checkpoints_": ON_CPU}

    def __init__(
        self,
        *,
        backbone="resnet152",
        weights="imagenet",
        n_steps=500,
        checkpoint_every=50,
        validation_fraction=0.1,
        checkpoint_dtype="float32",
        max_dispersion=3.0,
        loss="compactness",
        temperature=0.25,
        regularization=None,
        ewc_lambda=1e4,
        fisher=None,
        n_fisher_batches=100,
        learning_rate=1e-2,
        momentum=0.9,
        weight_decay=5e-5,
        clip_norm=1e-3,
        n_trainable_stages=2,
        stage_ends=None,
        feature_node=None,
        resize="auto",
        crop_size="auto",
        normalize_features=True,
        average_mirror=False,
        scorer="knn",
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
        self.checkpoint_every = checkpoint_every
        self.validation_fraction = validation_fraction
        self.checkpoint_dtype = checkpoint_dtype
        self.max_dispersion = max_dispersion

    # ------------------------------------------------------------ training

    def _snapshot(self, net):
        dtype = CHECKPOINT_DTYPES[self.checkpoint_dtype]
        return {
            name: parameter.detach().to("cpu", dtype=dtype, copy=True)
            for name, parameter in net.stages.named_parameters()
        }

    def _validation_split(self, n_samples, generator):
        """(validation, gallery) index arrays, both sorted."""
        n_validation = min(max(1, round(self.validation_fraction * n_samples)), n_samples - 2)
        if n_validation < 1:
            raise ValueError(
                f"PandaSES needs at least 3 training samples (a validation sample and a "
                f"gallery of 2); got {n_samples} sample(s)."
            )
        order = torch.randperm(n_samples, generator=generator).numpy()
        return np.sort(order[:n_validation]), np.sort(order[n_validation:])

    def _check_scorer(self):
        if not isinstance(self.scorer, (str, _BaseScorer)):
            raise ValueError(
                f"PandaSES needs one of the package's scorers (KNNScorer, KMeansScorer, CenterScorer, "
                f"MahalanobisScorer, or their names); got {type(self.scorer).__name__}. It divides each "
                "checkpoint's anomaly distances (minus score_samples) by their typical value on held-out "
                "normal images, and needs leave-one-out training scores."
            )

    def _fit_features_and_scoring(self, features, X, callbacks):
        if 0 < self.n_steps < self.checkpoint_every:
            raise ValueError(
                f"n_steps={self.n_steps} is smaller than checkpoint_every={self.checkpoint_every}: no "
                "checkpoint would be kept during adaptation, only the pretrained one. Lower "
                "checkpoint_every, or set n_steps=0 for the unadapted features."
            )
        checkpoints = _Checkpoints(self)
        # The user's callbacks see the steps after the checkpoint is kept; one that chooses
        # the samples to train on is refused (the checkpoints hold out the validation images).
        features.fit(X, callbacks=[checkpoints, *callbacks])
        return self._fit_scoring(checkpoints)

    # ------------------------------------------------------------- scoring

    def _checkpoint_features(self, net, checkpoints, preprocessor, hidden, label):
        """Projected features of every sample under every checkpoint: a list of (n, d) arrays,
        each row averaged with the sample's mirror image's with ``average_mirror=True``."""
        features = self._checkpoint_view_features(net, checkpoints, preprocessor, hidden, label)
        if self._averages_mirror:
            mirror_features = self._checkpoint_view_features(
                net, checkpoints, Mirrored(preprocessor), None, f"{label} (mirror images)"
            )
            for own, mirror in zip(features, mirror_features):
                own += mirror
                own /= 2
        return features

    def _checkpoint_view_features(self, net, checkpoints, preprocessor, hidden, label):
        """Projected features of every sample under every checkpoint: a list of (n, d) arrays.

        The trunk runs once per sample: ``hidden`` holds its outputs for every
        sample already, or they are computed for one chunk of samples at a
        time (:func:`~sklearn_panda._engine.inference.trunk_output_chunks`). Over
        each chunk the checkpoints run in turn, each moved to the device on
        its own, so that the device never holds more than one of them. A batch
        that runs out of GPU memory is retried with half as many samples.
        """
        device = preprocessor.device
        n_samples = len(preprocessor)
        batch_size = self._inference_batch_size(net, preprocessor)
        trunk = self._inference_trunk(net, batch_size)
        if hidden is None:
            autocast = functools.partial(self._autocast, device)
            chunks = trunk_output_chunks(trunk, preprocessor, batch_size, self.trunk_cache_mb, autocast,
                                         verbose=self.verbose)
        else:
            chunks = [(np.arange(n_samples), functools.partial(rows_of, hidden))]
        outputs = [None] * len(checkpoints)
        # functional_call swaps each checkpoint's tensors into the module it runs while it runs:
        # a copy of the stages of this call's own, so that the shared net_ never changes (another
        # thread may be computing features with it) and concurrent calls need no lock.
        stages = copy.deepcopy(net.stages)
        progress = ProgressBar(n_samples * len(checkpoints), label, self.verbose > 0)
        done = 0
        for chunk, trunk_outputs in chunks:
            for t, checkpoint in enumerate(checkpoints):
                parameters = {name: value.to(device, dtype=torch.float32) for name, value in checkpoint.items()}

                def forward(indices):
                    hidden_batch = trunk_outputs(indices)
                    with self._autocast(device):
                        return self._project(functional_call(stages, parameters, (hidden_batch,))).float()

                def store(indices, features):
                    if outputs[t] is None:
                        outputs[t] = np.empty((n_samples, features.shape[1]), np.float32)
                    outputs[t][chunk[indices]] = features.cpu().numpy()

                with torch.inference_mode():
                    run_in_batches(forward, store, len(chunk), batch_size, progress, label, progress_offset=done)
                done += len(chunk)
                # Freed before the next checkpoint's copy is made.
                del parameters
        return outputs

    def _fit_scoring(self, checkpoints):
        """Each checkpoint's scorer on its gallery features and normaliser on
        its held-out ones, the active checkpoints, ``training_scores_`` and
        ``offset_``; with what the :class:`_Checkpoints` callback kept."""
        features, validation = checkpoints.features, checkpoints.validation
        n_samples = len(features[0])
        gallery = np.setdiff1d(np.arange(n_samples), validation)
        scorers, normalizers = [], []
        training_distances = np.empty((n_samples, len(features)))
        dispersions = np.empty(len(features))
        for t, checkpoint_features in enumerate(features):
            scorer = self._make_scorer().fit(checkpoint_features[gallery])
            validation_distances = -scorer.score_samples(checkpoint_features[validation])
            normalizer = max(float(validation_distances.mean()), np.finfo(np.float32).tiny)
            dispersions[t] = validation_distances.std() / normalizer
            training_distances[gallery, t] = -scorer.training_scores_ / normalizer
            training_distances[validation, t] = validation_distances / normalizer
            scorers.append(scorer)
            normalizers.append(normalizer)
        active = self._active_checkpoints(dispersions)
        training_scores = -training_distances[:, active].max(axis=1)
        return {
            "checkpoints_": checkpoints.checkpoints,
            "checkpoint_steps_": checkpoints.steps,
            "validation_indices_": validation,
            "scorers_": scorers,
            "normalizers_": np.asarray(normalizers),
            "dispersions_": dispersions,
            "active_checkpoints_": active,
            "training_scores_": training_scores,
            "offset_": offset_from_training_scores(training_scores, self.contamination),
        }

    def _active_checkpoints(self, dispersions):
        """Checkpoints the maximum runs over: not those whose held-out normal
        distances are ``max_dispersion`` times more dispersed than the pretrained ones'."""
        active = np.ones(len(dispersions), dtype=bool)
        if self.max_dispersion is not None and dispersions[0] > 0:
            active[1:] = dispersions[1:] <= self.max_dispersion * dispersions[0]
        elif self.max_dispersion is not None:
            warnings.warn(
                "max_dispersion is not applied: the held-out normal images' distances under the pretrained "
                "network do not vary (one validation image holds no spread), so every checkpoint is kept. "
                "Hold out at least 2 (more training images, or a larger validation_fraction).",
                UserWarning,
            )
        return active

    def _checked_distances(self, checked, selected):
        """Normalised distances of validated input at the ``selected`` checkpoints (a mask)."""
        chosen = np.flatnonzero(selected)
        features = self._checkpoint_features(
            self.net_,
            [self.checkpoints_[t] for t in chosen],
            self._preprocessor(checked, self.device_),
            None,
            "scoring checkpoints",
        )
        distances = [
            -self.scorers_[t].score_samples(feature) / self.normalizers_[t] for t, feature in zip(chosen, features)
        ]
        return np.stack(distances, axis=1)

    def checkpoint_distances(self, X):
        """Each sample's anomaly distance at each checkpoint, divided by ``s_t``.

        ``-score_samples(X)`` is the row-wise maximum over the columns in
        ``active_checkpoints_``; the column of the maximum tells which
        checkpoint decided.

        Parameters
        ----------
        X : array-like or list of paths / PIL images
            Samples in the layout seen in ``fit``.

        Returns
        -------
        distances : ndarray of shape (n_samples, n_checkpoints)
            ``d_t(x) / s_t`` for every checkpoint ``t``, the pretrained one
            first, whether active or not.

        Examples
        --------
        >>> import numpy as np
        >>> from torch import nn
        >>> from sklearn_panda import PandaSES
        >>> def tiny_mlp():
        ...     return nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 4))
        >>> rng = np.random.default_rng(0)
        >>> ses = PandaSES(backbone=tiny_mlp, weights=None, n_steps=4, checkpoint_every=2, random_state=0)
        >>> ses = ses.fit(rng.normal(size=(40, 6)))
        >>> X = rng.normal(size=(3, 6))
        >>> distances = ses.checkpoint_distances(X)
        >>> distances.shape
        (3, 3)
        >>> bool(np.allclose(-ses.score_samples(X), distances[:, ses.active_checkpoints_].max(axis=1)))
        True
        """
        check_is_fitted(self)
        return self._checked_distances(self._check_new_input(X), np.ones(len(self.checkpoints_), dtype=bool))

    def _score_checked(self, checked):
        return -self._checked_distances(checked, self.active_checkpoints_).max(axis=1)


class _Checkpoints(TrainingCallback):
    """PandaSES's part in its features' training, a training callback.

    Before training it holds out the validation samples and keeps the
    pretrained checkpoint; training then runs on the gallery only and keeps a
    checkpoint every ``checkpoint_every`` steps; after training it computes
    every training sample's features under every checkpoint, from the trunk
    outputs the adaptation kept. ``validation``, ``checkpoints``, ``steps``
    and ``features`` hold the result.
    """

    _chooser_name = "PandaSES itself (it trains on the images it does not hold out for validation)"

    def __init__(self, ses):
        self.ses = ses
        self.validation = None
        self.checkpoints = []
        self.steps = []
        self.steps_taken = 0
        self.features = None

    def on_train_begin(self, net, *, n_samples, generator, **kwargs):
        # The validation images are held out of adaptation: s_t is to be the
        # distance of a normal image the network has not been trained on, as
        # a test image is; trained-on images can look closer than they would
        # once the network over-fits.
        self.validation, gallery = self.ses._validation_split(n_samples, generator)
        self.checkpoints, self.steps = [self.ses._snapshot(net)], [0]
        self.steps_taken = 0
        return gallery

    def on_step_end(self, net, *, step, **kwargs):
        self.steps_taken = step + 1
        if (step + 1) % self.ses.checkpoint_every == 0:
            self.checkpoints.append(self.ses._snapshot(net))
            self.steps.append(step + 1)

    def on_train_end(self, net, *, training_inputs, trunk_outputs, **kwargs):
        if self.steps_taken < self.ses.n_steps and self.steps[-1] != self.steps_taken:
            # A callback stopped the adaptation between checkpoints: the network it stopped is kept.
            self.checkpoints.append(self.ses._snapshot(net))
            self.steps.append(self.steps_taken)
        self.features = self.ses._checkpoint_features(
            net, self.checkpoints, training_inputs, trunk_outputs, "checkpoint features"
        )
