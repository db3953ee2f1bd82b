"""PandaFeatures: the adaptation alone, as a scikit-learn transformer."""

import numbers
import os
import warnings
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .._engine.augment import ViewMaker
from .._engine.data import shuffled_batches
from .._engine.device import ON_CPU, ON_DEVICE
from .._engine.losses import compactness_loss, ewc_penalty, fisher_diagonal, mean_shifted_contrastive_loss
from .._sklearn_compat import Interval, StrOptions, _fit_context
from ..callbacks import check_callbacks, step_hooks, training_indices
from .base import BasePanda
from .docstrings import fill_doc
from .recipes import AUTO, resolve


@fill_doc
class PandaFeatures(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BasePanda):
    """Pretrained features adapted to the normal images, as a transformer.

    ``fit`` fine-tunes the last stages of an ImageNet-pretrained network so
    that the features of the normal training images move towards their
    (fixed) mean, the compactness loss of the paper's Eq. 1. Collapse (every
    image mapped to one point) is held off by stopping after ``n_steps``
    mini-batches ("early stopping") or by elastic weight consolidation
    (``regularization="ewc"``, Eq. 4). ``transform`` returns the adapted
    pooled features, as :class:`PandaDetector` scores them, so that any
    scikit-learn estimator can take them from there: an outlier detector
    (``make_pipeline(PandaFeatures(), LocalOutlierFactor(novelty=True))``),
    a projection, a classifier.

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
        The adapted network.
    center_ : ndarray of shape (n_features_out,) or None
        Mean pretrained training feature, the fixed target of the loss
        (``None`` when ``n_steps=0``).
    history_ : dict of lists
        Per step: ``"loss"``, ``"compactness"`` (the batch's mean squared
        distance to the centre), ``"compactness_ratio"`` (that divided by the
        training set's value before adaptation; values falling towards 0 warn
        of collapse) and ``"ewc_penalty"``; one entry a step taken (fewer
        than ``n_steps`` where a callback ended the adaptation early).
    fisher_ : dict or None
        The Fisher diagonal used with EWC, on the CPU.
    recipe_ : dict
        The values used for ``n_steps``, ``learning_rate``, ``loss`` and
        ``clip_norm`` (``"auto"`` resolved by the backbone's recipe).
    %(preprocessing_)s
    %(n_features_in_)s
    feature_names_in_ : ndarray of shape (``n_features_in_``,)
        Only for 2-D vector input with string column names.

    See Also
    --------
    PandaDetector : These features scored by kNN (or another scorer) in one estimator.

    References
    ----------
    Reiss, Cohen, Bergman, Hoshen. "PANDA: Adapting Pretrained Features for
    Anomaly Detection and Segmentation", CVPR 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sklearn.neighbors import LocalOutlierFactor
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn_panda import PandaFeatures
    >>> def tiny_mlp():
    ...     return nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 4))
    >>> rng = np.random.default_rng(0)
    >>> features = PandaFeatures(backbone=tiny_mlp, weights=None, n_steps=5, random_state=0)
    >>> features.fit_transform(rng.normal(size=(50, 6))).shape
    (50, 4)
    >>> features.get_feature_names_out()
    array(['pandafeatures0', 'pandafeatures1', 'pandafeatures2', 'pandafeatures3'],
          dtype=object)
    >>> detector = make_pipeline(features, LocalOutlierFactor(novelty=True)).fit(rng.normal(size=(50, 6)))
    >>> detector.score_samples(rng.normal(size=(3, 6))).shape
    (3,)
    """

    _parameter_constraints = {
        **BasePanda._parameter_constraints,
        "n_steps": [Interval(numbers.Integral, 0, None, closed="left"), StrOptions({AUTO})],
        "loss": [StrOptions({"compactness", "mean_shifted", AUTO})],
        "temperature": [Interval(numbers.Real, 0, None, closed="neither")],
        "regularization": [StrOptions({"ewc"}), None],
        "ewc_lambda": [Interval(numbers.Real, 0, None, closed="left")],
        "fisher": [Mapping, str, os.PathLike, None],
        "n_fisher_batches": [Interval(numbers.Integral, 1, None, closed="left")],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither"), StrOptions({AUTO})],
        "momentum": [Interval(numbers.Real, 0, 1, closed="left")],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
        "clip_norm": [Interval(numbers.Real, 0, None, closed="neither"), None, StrOptions({AUTO})],
        "average_mirror": ["boolean"],
    }

    _torch_attributes = {**BasePanda._torch_attributes, "net_": ON_DEVICE, "fisher_": ON_CPU}
    _frozen_parameters = (*BasePanda._frozen_parameters, "average_mirror")

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
        self.average_mirror = average_mirror

    @property
    def _averages_mirror(self):
        return self._fitted_value("average_mirror")

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, callbacks=None):
        """Adapt the backbone to the normal images ``X``.

        Parameters
        ----------
        X : array-like or list of paths / PIL images
            Normal training samples: images ``(n, H, W)``, ``(n, H, W, C)`` or
            ``(n, C, H, W)`` (uint8 in [0, 255], uint16 in [0, 65535] or float in [0, 1]), a list of
            image files / PIL images, or vectors ``(n, d)`` for a vector backbone.

        y : Ignored
            Not used, present for API consistency by convention.

        callbacks : list of TrainingCallback, default=None
            Code of one's own that takes part in the adaptation: hooks called
            before training, after every step and after training
            (:mod:`sklearn_panda.callbacks`).

        Returns
        -------
        self : object
            The fitted transformer.
        """
        self._fit(X, callbacks=check_callbacks(callbacks))
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_transform(self, X, y=None, callbacks=None):
        """Adapt the backbone to ``X`` and return the adapted features of ``X``.

        The same features as ``fit(X).transform(X)`` (up to float rounding),
        without running the frozen trunk on ``X`` a second time: its outputs
        are kept from the adaptation (``trunk_cache_mb``).

        Parameters
        ----------
        X : array-like or list of paths / PIL images
            Normal training samples, as in ``fit``.

        y : Ignored
            Not used, present for API consistency by convention.

        callbacks : list of TrainingCallback, default=None
            As in ``fit``.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features_out), float32
            The adapted features of the training samples, as ``transform``
            gives them.
        """
        run = self._fit(X, callbacks=check_callbacks(callbacks))
        return self._embed(self.net_, run.preprocessor, run.hidden, mirror=self._averages_mirror)

    def transform(self, X):
        """Adapted features of ``X``: the pooled features of the fitted ``net_``.

        With ``normalize_features=True`` each row has unit length (before
        the average with the mirror image's, with ``average_mirror=True``).

        Parameters
        ----------
        X : array-like or list of paths / PIL images
            Samples in the layout seen in ``fit``.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features_out), float32
            One row of pooled features of the fitted ``net_`` per sample.
        """
        return self._embed_new(X)

    def _fit_checked(self, X, checked, y, callbacks=()):
        run = self._start_fit(checked)
        if self.average_mirror and not run.net.expects_images:
            raise ValueError(
                "average_mirror=True averages each image's features with its mirror image's; this "
                "backbone takes vectors, which have no mirror image. Set average_mirror=False."
            )
        fitted = self._adapt(run.net, run.preprocessor, run.hidden, run.generator, callbacks)
        for callback in callbacks:
            callback.on_train_end(run.net, training_inputs=run.preprocessor, trunk_outputs=run.hidden)
        # The network's input shape, for _n_features_out: preprocessing one sample runs no network.
        fitted.update(
            input_spec_=checked.spec, device_=run.device, _sample_shape=tuple(run.preprocessor(np.arange(1)).shape[1:])
        )
        return fitted, run

    def _adapts(self, attributes):
        recipe = attributes.get("recipe_") or {"n_steps": resolve(self, "n_steps")}
        return recipe["n_steps"] > 0

    @property
    def _n_features_out(self):
        """Width of ``transform``'s output (for ``get_feature_names_out``).

        Measured when asked, on one zero sample, so that ``fit`` runs no
        network pass beyond those it needs.
        """
        check_is_fitted(self)
        with torch.inference_mode(), self._autocast(self.device_):
            return int(self.net_(torch.zeros((1, *self._sample_shape), device=self.device_)).shape[1])

    def _adapt(self, net, preprocessor, hidden, generator, callbacks=()):
        """Fine-tune ``net`` in place; return the fitted ``net_``, ``center_``, ``history_``, ``fisher_``.

        ``callbacks`` (:class:`~sklearn_panda.callbacks.TrainingCallback`) may
        choose the samples to train on and see every step.
        """
        indices = training_indices(callbacks, net, len(preprocessor), generator)
        return self._train(net, preprocessor, hidden, generator, step_hooks(callbacks, net), indices)

    def _train(self, net, preprocessor, hidden, generator, callbacks=(), indices=None):
        """Fine-tuning of ``net`` in place with ``loss``; ``callbacks`` run after each step.

        ``indices`` selects the samples to train on (default: all of them).
        """
        if self.fisher is not None and self.regularization != "ewc":
            warnings.warn(
                "fisher is not used: it weights the EWC penalty, and regularization is "
                f"{self.regularization!r}. Set regularization='ewc' to use it, or leave fisher=None.",
                UserWarning,
            )
        history = {"loss": [], "compactness": [], "compactness_ratio": [], "ewc_penalty": []}
        recipe = {name: resolve(self, name) for name in ("n_steps", "learning_rate", "loss", "clip_norm")}
        n_steps, learning_rate = recipe["n_steps"], recipe["learning_rate"]
        if n_steps == 0:
            return {"net_": net, "center_": None, "history_": history, "fisher_": None, "recipe_": recipe}
        device = preprocessor.device
        if indices is None:
            indices = np.arange(len(preprocessor))
        pretrained = self._embed(net, preprocessor, hidden, label="pretrained features")[indices]
        center = torch.from_numpy(pretrained.mean(axis=0)).to(device)
        initial_compactness = float(((pretrained - pretrained.mean(axis=0)) ** 2).sum(axis=1).mean())
        parameters = net.trainable_parameters()
        # The Fisher estimate draws from its own generator, so that estimating
        # it or passing it in leaves the training batches the same.
        fisher_generator = torch.Generator().manual_seed(
            int(torch.randint(2**31 - 1, (1,), generator=generator))
        )
        batches = (indices[batch] for batch in shuffled_batches(len(indices), self.batch_size, generator))
        regularizer = None
        fisher = None
        if self.regularization == "ewc":
            fisher = self._fisher(net, preprocessor, hidden, parameters, fisher_generator, indices)
            anchors = [p.detach().clone() for p in parameters]
            fisher_tensors = [fisher[name].to(device) for name, _ in net.stages.named_parameters()]

            def regularizer():
                return ewc_penalty(parameters, anchors, fisher_tensors)

        if recipe["loss"] == "mean_shifted":
            objective = self._mean_shifted_objective(net, preprocessor, pretrained, center, generator)
        else:

            def objective(batch):
                trunk_output = self._trunk_batch(net, preprocessor, hidden, batch)
                with self._autocast(device):
                    features = self._project(net.stages(trunk_output)).float()
                compactness = compactness_loss(features, center)
                return compactness, compactness

        def step_loss(step):
            loss, compactness = objective(next(batches))
            penalty = regularizer() if regularizer is not None else loss.new_zeros(())
            loss = loss + 0.5 * self.ewc_lambda * penalty
            return loss, {"compactness": compactness.item(), "ewc_penalty": penalty.item()}

        def record(step, loss, details):
            history["loss"].append(loss)
            history["compactness"].append(details["compactness"])
            history["compactness_ratio"].append(details["compactness"] / max(initial_compactness, 1e-12))
            history["ewc_penalty"].append(details["ewc_penalty"])

        self._optimize(
            parameters,
            step_loss,
            "adaptation",
            n_steps=n_steps,
            learning_rate=learning_rate,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            clip_norm=recipe["clip_norm"],
            callbacks=[record, *callbacks],
        )
        return {
            "net_": net,
            "center_": center.cpu().numpy(),
            "history_": history,
            "fisher_": fisher,
            "recipe_": recipe,
        }

    def _mean_shifted_objective(self, net, preprocessor, pretrained, center, generator):
        """``batch -> (loss, compactness)`` of the mean-shifted contrastive loss.

        Both augmented views of a batch run through the trunk together; the
        trunk cache cannot serve them, since every view is new.
        """
        if not net.expects_images:
            raise ValueError(
                "loss='mean_shifted' contrasts augmented views of images; this backbone takes "
                "vectors. Use loss='compactness'."
            )
        if min(self.batch_size, len(pretrained)) < 2:
            raise ValueError(
                f"loss='mean_shifted' contrasts each image's views with the other images of its batch; batches "
                f"of {min(self.batch_size, len(pretrained))} image hold no other (batch_size={self.batch_size}, "
                f"{len(pretrained)} training images): give batch_size >= 2 and at least 2 images."
            )
        device = preprocessor.device
        # Drawn only for this loss, so that the compactness loss's batches stay as they were.
        views = ViewMaker(torch.Generator().manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator))))
        unit_center = F.normalize(F.normalize(torch.from_numpy(pretrained), dim=1).mean(dim=0), dim=0).to(device)

        def objective(batch):
            trunk_output = self._view_trunk_outputs(net, preprocessor, views, batch)
            with self._autocast(device):
                features = net.stages(trunk_output).float()
            first_features, second_features = features.chunk(2)
            loss = mean_shifted_contrastive_loss(first_features, second_features, unit_center, self.temperature)
            return loss, compactness_loss(self._project(first_features.detach()), center)

        return objective

    def _view_trunk_outputs(self, net, preprocessor, views, batch):
        """The frozen trunk's outputs of two augmented views of ``batch``, stacked: ``(2 n, ...)``.

        The first ``n`` rows are the first views. Both run through the trunk
        together, without gradients.
        """
        first, second = views(preprocessor(batch))
        with torch.no_grad(), self._autocast(preprocessor.device):
            return net.trunk(torch.cat([first, second]))

    def _fisher(self, net, preprocessor, hidden, parameters, generator, indices):
        names = [name for name, _ in net.stages.named_parameters()]
        if self.fisher is None:
            batches = shuffled_batches(len(indices), self.batch_size, generator)
            trunk_outputs = (
                self._trunk_batch(net, preprocessor, hidden, indices[next(batches)])
                for _ in range(self.n_fisher_batches)
            )
            with self._autocast(preprocessor.device):
                values = fisher_diagonal(net, trunk_outputs, parameters, generator)
            return {name: value.detach().cpu() for name, value in zip(names, values)}
        given = self.fisher
        if not isinstance(given, Mapping):
            given = torch.load(given, map_location="cpu", weights_only=True)
        missing = [name for name in names if name not in given]
        if missing:
            raise ValueError(
                f"The given fisher lacks {len(missing)} trainable parameters, e.g. {missing[:3]}; "
                "its keys must be the names of net_.stages.named_parameters()."
            )
        fisher = {name: _float32_on_cpu(given[name]) for name in names}
        for name, parameter in zip(names, parameters):
            if tuple(fisher[name].shape) != tuple(parameter.shape):
                raise ValueError(
                    f"fisher[{name!r}] has shape {tuple(fisher[name].shape)}; the parameter "
                    f"has shape {tuple(parameter.shape)}."
                )
        return fisher

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # The features are float32 whatever the input's dtype.
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


def _float32_on_cpu(values):
    """A given Fisher tensor (any dtype or device, requiring grad or not) or array, as a float32 CPU tensor."""
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float32)
    return torch.as_tensor(np.asarray(values), dtype=torch.float32)
