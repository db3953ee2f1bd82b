"""The skeleton every PANDA estimator shares, and the outlier contract of the detectors.

:class:`BasePanda` holds the network's parameters and passes: build the
backbone, keep the frozen trunk's outputs, embed, run SGD; a ``fit`` that
validates the input, lets the estimator's ``_fit_checked`` do its own work
(PandaFeatures adapts the network, the detectors add a scorer, PandaOE trains
a head) and assigns the fitted attributes only at the very end, so that an
exception or KeyboardInterrupt during ``fit`` leaves the estimator as it was;
input checks for new samples, pickling and ``save``.

Pickling and ``save`` come from :class:`~sklearn_panda._estimators.torch_state.TorchStateMixin`,
driven by each estimator's ``_torch_attributes``.

:class:`BasePandaDetector` adds ``contamination`` and scikit-learn's outlier
contract (``score_samples``, ``decision_function``, ``predict``, ``fit_predict``).
"""

import numbers
import os
import weakref
from abc import ABCMeta, abstractmethod
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from .._engine.backbones import build_feature_net
from .._engine.compilation import compiled
from .._engine.data import Mirrored, Preprocessor
from .._engine.device import resolve_device, seeded_cpu_generator
from .._engine.inference import cache_sized_batch, cache_trunk_outputs, extract_features, peak_activation_bytes
from .._engine.progress import ProgressBar
from .._engine.training import run_sgd
from .._sklearn_compat import Interval, StrOptions
from ..scorers._contract import OutlierContractMixin
from .recipes import AUTO, resolve
from .torch_state import TorchStateMixin
from .validation import check_geometry, check_input, check_new_input

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Largest activation of one sample, per network and (input shape, precision):
# measured once by inference_batch_size="auto" on the CPU.
_PEAK_ACTIVATION_BYTES = weakref.WeakKeyDictionary()
# Set by validate_data(reset=True) as soon as fit starts.
INPUT_ATTRIBUTES = ("n_features_in_", "feature_names_in_")


class FitRun(NamedTuple):
    """What a ``fit`` builds before the estimator's own work: the device, a
    generator seeded with the seed drawn from ``random_state``, the training
    input as a preprocessor, the network, and ``hidden``, the trunk's outputs
    for every training sample (``None`` when they did not fit in
    ``trunk_cache_mb``)."""

    device: torch.device
    generator: torch.Generator
    preprocessor: Preprocessor
    net: torch.nn.Module
    hidden: torch.Tensor | None


def draw_seed(random_state):
    """The integer seed a fit draws from ``random_state`` (the same for the same integer)."""
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


class BasePanda(TorchStateMixin, BaseEstimator, metaclass=ABCMeta):
    """The network's parameters and passes, the guarded ``fit``, pickling and ``save``."""

    # Parameters that define how the fitted model computes its outputs, beyond the network and
    # the geometry (preprocessing_): fit keeps each one's value in the fitted attribute of its
    # name and an underscore, which every later method reads (_fitted_value), so that
    # set_params after fit cannot change a score, a feature or an export.
    _frozen_parameters = ("normalize_features", "precision")

    _parameter_constraints = {
        "backbone": [str, callable],
        "weights": [str, os.PathLike, None],
        "n_trainable_stages": [Interval(numbers.Integral, 1, None, closed="left")],
        "stage_ends": [list, tuple, None],
        "feature_node": [str, None],
        "resize": [Interval(numbers.Integral, 1, None, closed="left"), tuple, list, None, StrOptions({AUTO})],
        "crop_size": [Interval(numbers.Integral, 1, None, closed="left"), None, StrOptions({AUTO})],
        "normalize_features": ["boolean"],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "inference_batch_size": [Interval(numbers.Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "precision": [StrOptions(set(PRECISIONS))],
        "trunk_cache_mb": [Interval(numbers.Real, 0, None, closed="left")],
        "compile": ["boolean"],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    @abstractmethod
    def __init__(
        self,
        *,
        backbone,
        weights,
        n_trainable_stages,
        stage_ends,
        feature_node,
        resize,
        crop_size,
        normalize_features,
        batch_size,
        inference_batch_size,
        precision,
        trunk_cache_mb,
        compile,
        device,
        random_state,
        verbose,
    ):
        self.backbone = backbone
        self.weights = weights
        self.n_trainable_stages = n_trainable_stages
        self.stage_ends = stage_ends
        self.feature_node = feature_node
        self.resize = resize
        self.crop_size = crop_size
        self.normalize_features = normalize_features
        self.batch_size = batch_size
        self.inference_batch_size = inference_batch_size
        self.precision = precision
        self.trunk_cache_mb = trunk_cache_mb
        self.compile = compile
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit

    def _fit(self, X, y=None, **options):
        """Validate, ``_fit_checked``, assign; return the :class:`FitRun`.

        ``validate_data(reset=True)`` sets ``n_features_in_`` /
        ``feature_names_in_`` at once; a fit that does not complete puts
        back what was there.
        """
        # What fit changes before it completes, put back when it does not.
        fit_time_attributes = (*INPUT_ATTRIBUTES, *(f"{name}_" for name in self._frozen_parameters))
        previous = {name: self.__dict__[name] for name in fit_time_attributes if name in self.__dict__}
        # A new fit works with the parameters, not with what an earlier fit kept.
        for name in self._frozen_parameters:
            self.__dict__.pop(f"{name}_", None)
        try:
            return self._fit_unguarded(X, y, **options)
        except BaseException:
            for name in fit_time_attributes:
                self.__dict__.pop(name, None)
            self.__dict__.update(previous)
            raise

    def _fit_unguarded(self, X, y, **options):
        checked = self._check_fit_input(X)
        y = self._check_target(y, len(checked))
        fitted, run = self._fit_checked(X, checked, y, **options)
        fitted["preprocessing_"] = self._preprocessing()
        fitted.update({f"{name}_": getattr(self, name) for name in self._frozen_parameters})
        # Assign only now: an interrupted fit leaves the estimator untouched.
        self._reset_input_attributes(checked)
        for name, value in fitted.items():
            setattr(self, name, value)
        return run

    @abstractmethod
    def _fit_checked(self, X, checked, y, **options):
        """The estimator's own fit of validated input ``checked`` (``X`` as given).

        Returns the fitted attributes as a dict, assigned by the caller, and
        the :class:`FitRun` whose trunk outputs the caller may embed from
        (``None`` for an estimator that fits through another's public ``fit``).
        """

    def _start_fit(self, checked):
        """Device, seed, network and trunk cache of a fit on ``checked``: a :class:`FitRun`."""
        device = resolve_device(self.device)
        seed = draw_seed(self.random_state)
        preprocessor = Preprocessor(checked, **self._preprocessing(), device=device)
        net = self._build_net(seed, device, preprocessor)
        if net.expects_images and checked.spec.kind == "vectors":
            raise ValueError(
                f"The backbone {self._backbone_name()} expects images of shape (n, H, W), "
                f"(n, H, W, C) or (n, C, H, W); got a 2-D array of shape "
                f"{np.shape(checked.data)}, which is read as vectors (n_samples, n_features)."
            )
        generator = torch.Generator().manual_seed(seed)
        inference_batch = self._inference_batch_size(net, preprocessor)
        hidden = cache_trunk_outputs(
            self._inference_trunk(net, inference_batch),
            preprocessor,
            inference_batch,
            self.trunk_cache_mb,
            lambda: self._autocast(device),
            verbose=self.verbose,
        )
        return FitRun(device, generator, preprocessor, net, hidden)

    def _split_arguments(self, attributes):
        """How ``fit`` splits the backbone, and :func:`sklearn_panda.load` the rebuilt one
        (``attributes``: the fitted attributes read from the file; empty in ``fit``)."""
        return {
            "n_trainable_stages": self.n_trainable_stages,
            "stage_ends": self.stage_ends,
            "feature_node": self.feature_node,
            "adapt": self._adapts(attributes),
        }

    def _adapts(self, attributes):
        """Whether ``fit`` trains any stage (a network of no known family then needs no ``stage_ends``)."""
        return True

    def _check_fit_input(self, X):
        checked = check_input(X)
        if checked.spec.kind == "vectors":
            validate_data(self, X, dtype=None, ensure_min_samples=1)
        return checked

    def _check_target(self, y, n_samples):
        """Validate ``y`` after ``X``; unsupervised estimators ignore it."""
        return None

    def _reset_input_attributes(self, checked):
        if checked.spec.kind != "vectors":
            for name in INPUT_ATTRIBUTES:
                if name in self.__dict__:
                    delattr(self, name)

    def _backbone_name(self):
        return repr(self.backbone) if isinstance(self.backbone, str) else "factory"

    def _build_net(self, seed, device, preprocessor):
        # Random initialisation (weights=None, lazy modules) is seeded without
        # touching the global generators.
        example = None
        if preprocessor.checked.spec.kind == "vectors":
            example = preprocessor(np.arange(1)).cpu()
        with seeded_cpu_generator(seed):
            net = build_feature_net(self.backbone, self.weights, example=example, **self._split_arguments({}))
        if net.expects_images:
            # Convolutions run markedly faster on channels-last tensors (oneDNN, cuDNN).
            net = net.to(memory_format=torch.channels_last)
        return net.to(device)

    # ------------------------------------------------------- network passes

    def _preprocessing(self):
        """``resize`` and ``crop_size`` for a fit, ``"auto"`` resolved by the backbone's recipe."""
        resize, crop_size = check_geometry(resolve(self, "resize"), resolve(self, "crop_size"))
        return {"resize": resize, "crop_size": crop_size}

    def _fitted_preprocessing(self):
        """The ``resize`` and ``crop_size`` the estimator was fitted with.

        ``preprocessing_`` keeps them, so that a model scores as it was fitted
        even where a later release changes a recipe; estimators pickled before
        that attribute existed hold explicit values.
        """
        return getattr(self, "preprocessing_", None) or self._preprocessing()

    def _preprocessor(self, checked, device):
        """Preprocessing of new samples, with the fitted geometry."""
        return Preprocessor(checked, **self._fitted_preprocessing(), device=device)

    def _fitted_value(self, name):
        """A parameter of ``_frozen_parameters`` as fitted (its ``name_``); the parameter itself
        during ``fit``, and in models saved before that attribute existed."""
        return self.__dict__.get(f"{name}_", getattr(self, name))

    def _autocast(self, device):
        dtype = PRECISIONS[self._fitted_value("precision")]
        return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)

    def _project(self, features):
        """Features as the scorer and the compactness loss see them."""
        return F.normalize(features, dim=1) if self._fitted_value("normalize_features") else features

    def _inference_batch_size(self, net, preprocessor):
        """Samples per pass without gradients: ``inference_batch_size``, resolving ``"auto"``."""
        if self.inference_batch_size != "auto":
            return self.inference_batch_size
        if preprocessor.device.type != "cpu":
            return self.batch_size
        sample = preprocessor(np.arange(1))
        key = (tuple(sample.shape[1:]), self._fitted_value("precision"))
        per_sample = _PEAK_ACTIVATION_BYTES.setdefault(net, {}).get(key)
        if per_sample is None:

            def run():
                with torch.inference_mode(), self._autocast(preprocessor.device):
                    net.stages(net.trunk(sample))

            per_sample = _PEAK_ACTIVATION_BYTES[net][key] = peak_activation_bytes([net.trunk, net.stages], run)
        return cache_sized_batch(per_sample, largest=self.batch_size)

    def _inference_trunk(self, net, batch_size):
        """``net.trunk`` for passes without gradients; compiled when ``compile=True``."""
        return compiled(net.trunk, batch_size) if self.compile else net.trunk

    def _inference_stages(self, net, batch_size):
        """``net.stages`` for passes without gradients; compiled when ``compile=True``."""
        return compiled(net.stages, batch_size) if self.compile else net.stages

    @property
    def _averages_mirror(self):
        """Whether the output features average each image's with its mirror image's."""
        return False

    def _embed(self, net, preprocessor, hidden=None, label="embedding", mirror=False):
        """Projected features of every sample; from cached trunk outputs ``hidden`` when given.

        With ``mirror``, each row is averaged with the features of the sample's
        mirror image (its preprocessed input flipped left to right).
        """
        features = self._embed_view(net, preprocessor, hidden, label)
        if mirror:
            features += self._embed_view(net, Mirrored(preprocessor), None, f"{label} (mirror images)")
            features /= 2
        return features

    def _embed_view(self, net, preprocessor, hidden, label):
        device = preprocessor.device
        batch_size = self._inference_batch_size(net, preprocessor)
        trunk, stages = self._inference_trunk(net, batch_size), self._inference_stages(net, batch_size)
        module = (lambda batch: stages(trunk(batch))) if hidden is None else stages
        source = preprocessor if hidden is None else (lambda indices: hidden[torch.as_tensor(indices, device=device)])

        def embed(batch):
            with self._autocast(device):
                return self._project(module(batch))

        return extract_features(
            embed, source, len(preprocessor), batch_size, verbose=self.verbose, label=label
        )

    def _trunk_batch(self, net, preprocessor, hidden, indices):
        """Trunk output for ``indices``: from the cache, or computed without a graph."""
        if hidden is not None:
            return hidden[torch.as_tensor(indices, device=preprocessor.device)]
        with torch.no_grad(), self._autocast(preprocessor.device):
            return net.trunk(preprocessor(indices))

    def _optimize(
        self, parameters, step_loss, label, *, n_steps, learning_rate, momentum, weight_decay, clip_norm, callbacks=()
    ):
        """``n_steps`` of SGD on ``parameters`` under a progress bar labelled
        ``label``; afterwards the parameters stop requiring gradients.
        ``step_loss``, the SGD settings and ``callbacks`` are as in :func:`run_sgd`."""
        progress = ProgressBar(n_steps, label, self.verbose > 0)

        def show(step, loss, details):
            progress.update(step + 1, loss=loss)

        run_sgd(
            parameters,
            step_loss,
            n_steps,
            learning_rate=learning_rate,
            momentum=momentum,
            weight_decay=weight_decay,
            clip_norm=clip_norm,
            callbacks=[*callbacks, show],
            scale_gradients=self._fitted_value("precision") == "float16",
        )
        for parameter in parameters:
            parameter.requires_grad_(False)

    # ------------------------------------------------------------ new input

    def _check_new_input(self, X):
        check_is_fitted(self)
        checked = check_new_input(self, X)
        return checked

    def _embed_new(self, X):
        """Projected features of new samples ``X`` under the fitted ``net_``."""
        checked = self._check_new_input(X)
        return self._embed(self.net_, self._preprocessor(checked, self.device_), mirror=self._averages_mirror)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        if isinstance(self.backbone, str):
            # A named backbone is an image network: images (n, H, W) and (n, H, W, C), not vectors.
            # (A factory may build a vector network: scikit-learn's default tags then hold.)
            tags.input_tags.two_d_array = False
            tags.input_tags.three_d_array = True
        return tags


class BasePandaDetector(OutlierContractMixin, BasePanda):
    """``contamination`` and the outlier contract shared by the detectors."""

    _parameter_constraints = {
        **BasePanda._parameter_constraints,
        "contamination": [StrOptions({"auto"}), Interval(numbers.Real, 0, 0.5, closed="right")],
    }

    @abstractmethod
    def __init__(self, *, contamination, **network_parameters):
        super().__init__(**network_parameters)
        self.contamination = contamination

    @abstractmethod
    def _score_checked(self, checked):
        """``score_samples`` of validated input."""

    def extract_features(self, X):
        """Adapted features of ``X``: those of the fitted network ``net_``.

        Parameters
        ----------
        X : array-like or list of paths / PIL images
            Samples in the layout seen in ``fit``.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features_out)
            The pooled features of ``X`` under the fitted ``net_``,
            L2-normalised when ``normalize_features=True``.

        Examples
        --------
        >>> import numpy as np
        >>> from torch import nn
        >>> from sklearn_panda import PandaDetector
        >>> def tiny_mlp():
        ...     return nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 4))
        >>> rng = np.random.default_rng(0)
        >>> det = PandaDetector(backbone=tiny_mlp, weights=None, n_steps=5, random_state=0)
        >>> det = det.fit(rng.normal(size=(50, 6)))
        >>> det.extract_features(rng.normal(size=(3, 6))).shape
        (3, 4)
        """
        return self._embed_new(X)

    def score_samples(self, X):
        """Negated anomaly distance: higher means more normal.

        Parameters
        ----------
        X : array-like or list of paths / PIL images
            Samples in the layout seen in ``fit``.

        Returns
        -------
        scores : ndarray of shape (n_samples,)
            The scorer's score of each sample's adapted features; the lower,
            the more abnormal.
        """
        return self._score_checked(self._check_new_input(X))
