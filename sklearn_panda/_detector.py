"""PandaDetector: compactness fine-tuning with fixed-step early stopping or EWC."""

import numbers
import os
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ._augment import ViewMaker
from ._base import BasePanda
from ._data import shuffled_batches
from ._losses import compactness_loss, ewc_penalty, fisher_diagonal, mean_shifted_contrastive_loss
from ._sklearn_compat import HasMethods, Interval, StrOptions


class PandaDetector(BasePanda):
    """PANDA: adapt pretrained features to the normal images, score by kNN.

    Fine-tunes the last stages of an ImageNet-pretrained network so that the
    features of the normal training images move towards their (fixed) mean,
    the compactness loss of the paper's Eq. 1. Collapse (every image mapped to
    one point) is held off by stopping after ``n_steps`` mini-batches
    ("early stopping") or by elastic weight consolidation
    (``regularization="ewc"``, Eq. 4). A new image is then scored by its
    distance to its nearest normal training features (kNN, k=2).

    Parameters
    ----------
    backbone : str or callable, default="resnet152"
        A torchvision ResNet / EfficientNet / MobileNet name,
        ``"efficientnet_lite0"`` (extra ``lite``; works offline), or a callable
        returning an ``nn.Module``. A module that is not one of these families
        is used whole as a trainable vector backbone (for ``(n, d)`` input).

    weights : "imagenet", str, path or None, default="imagenet"
        ``"imagenet"``: pretrained ImageNet weights (ResNets: torchvision's
        ``IMAGENET1K_V1``, as in the paper). Another string: a torchvision
        weights name. A path: a state dict. ``None``: random (for tests). When
        the weights cannot be found or downloaded the error says where to put
        them; random weights are never used silently.

    n_steps : int, default=300
        Mini-batches of adaptation. ``0`` gives the unadapted pretrained
        features, the paper's baseline. The paper uses 2,300 (7,800 with EWC)
        with ResNet152 on a GPU; the default here is what helped on
        Fashion-MNIST with EfficientNet-Lite0 on a CPU (``benchmarks/RESULTS.md``).

    loss : {"compactness", "mean_shifted"}, default="compactness"
        ``"compactness"``: the paper's Eq. 1, the mean squared distance of the
        (projected) features to the fixed centre. ``"mean_shifted"``: the
        mean-shifted contrastive loss of the paper's follow-up (Reiss and
        Hoshen, AAAI 2023): two random views of each image (resized crop,
        flip, colour jitter, greyscale), L2-normalised features shifted by
        the fixed unit centre, and a contrastive loss between the views. It
        does not collapse, but each step runs the frozen trunk on both views
        (the trunk cache serves only the centre and the gallery), so a step
        costs far more; images only.

    temperature : float, default=0.25
        Temperature of ``loss="mean_shifted"`` (the follow-up paper's value).

    regularization : {None, "ewc"}, default=None
        ``"ewc"`` adds ``ewc_lambda / 2 * sum F_i (theta_i - theta*_i)^2``.

    ewc_lambda : float, default=1e4
        EWC strength (the paper always uses 1e4).

    fisher : mapping, path or None, default=None
        The diagonal Fisher for EWC, keyed by the names of
        ``net_.stages.named_parameters()`` (as in a fitted ``fisher_``), or a
        file of such a mapping (``torch.save``; loaded with
        ``weights_only=True``). ``None``: estimated on the training images with
        labels sampled from the pretrained classifier's own predictions (no
        labels needed; the paper used labelled ImageNet batches instead).

    n_fisher_batches : int, default=100
        Mini-batches for the Fisher estimate (the paper: 100).

    learning_rate, momentum, weight_decay : float, default=1e-2, 0.9, 5e-5
        SGD settings of the paper.

    clip_norm : float or None, default=1e-3
        Gradient-norm clipping (the paper: 1e-3).

    n_trainable_stages : int, default=2
        How many final stages train: ResNet ``layer3`` + ``layer4`` (the
        paper's recommendation), EfficientNet-Lite0's last 5 blocks + head.

    resize, crop_size : int or None, default=256, 224
        Resize the shorter image side, then centre-crop (the paper's pipeline).

    normalize_features : bool, default=True
        L2-normalise the pooled features for both the compactness loss (an
        angular centre loss) and the scorer. On Fashion-MNIST with
        EfficientNet-Lite0 this was several ROC AUC points better than raw
        features, and adaptation then helped instead of hurting.

    scorer : {"knn", "kmeans", "center", "mahalanobis"} or scorer instance, default="knn"
        ``"knn"``: :class:`KNNScorer` with k=2, the paper's choice.
        ``"mahalanobis"``: :class:`MahalanobisScorer` (a Gaussian with a
        Ledoit-Wolf covariance), which needs no neighbour search.

    contamination : "auto" or float in (0, 0.5], default="auto"
        Sets ``offset_`` from the leave-one-out training scores; ``"auto"``
        flags about 1% of normal data (see :class:`KNNScorer`).

    batch_size : int, default=32
        Mini-batch size of adaptation (the paper: 32).

    inference_batch_size : int or "auto", default="auto"
        Samples per forward pass without gradients (the trunk cache, the
        gallery, ``score_samples``, ``extract_features``). ``"auto"``:
        ``batch_size`` on a GPU; on the CPU, the most samples (up to
        ``batch_size``) whose largest activation fills at most half the
        CPU's last-level cache, measured on one sample once per fitted model
        (read from Linux's ``/sys``; 32 MiB assumed elsewhere). On a 2-core
        CPU with 32 MiB of L3 that is 5 images for ResNet152 and 3 for
        EfficientNet-Lite0 in float32, which ran 1.1-1.3x and 3.4-3.6x
        faster than batches of 32 (``benchmarks/RESULTS.md``). Features
        differ between batch sizes only by floating-point rounding.

    precision : {"float32", "bfloat16", "float16"}, default="float32"
        Autocast precision of the network's forward passes; the stem and
        the first block group always run in float32 (where rounding costs
        the most accuracy). ``"bfloat16"`` needs native support to be fast
        (recent x86 CPUs with AVX512-BF16 or AMX, Ampere or later GPUs). On
        a 2-core Zen 5 CPU it made extraction 1.5-1.7x (ResNet152) and 2.0-2.7x
        (EfficientNet-Lite0) faster than float32 and moved ROC AUC by +0.05
        to +0.11 points on four Fashion-MNIST classes (EfficientNet-Lite0,
        ``benchmarks/RESULTS.md``);
        float32 stays the default for results that do not depend on the
        hardware.

    trunk_cache_mb : float, default=2048
        The frozen trunk's outputs for the training images are computed once
        and kept (on the device) when they fit in this many megabytes, instead
        of once per step; results are identical. 0 turns the cache off.

    compile : bool, default=False
        Run the forward passes without gradients (feature extraction, the
        trunk cache, scoring) through ``torch.compile`` with weight freezing.
        On a 2-core CPU, with cache-sized batches, this made float32
        extraction 1.02-1.16x (ResNet152) and 1.2-2.0x (EfficientNet-Lite0,
        whose many small operations it fuses) faster than eager, with the
        same ROC AUC (``benchmarks/RESULTS.md``), after a one-off compilation
        of 10-30 s per fitted model and process: it pays off for thousands of
        images, not for a few. Needs a C++ compiler (CPU) or
        Triton (CUDA). Partial batches are zero-padded to the inference batch
        size so that one compilation serves every call; for the same reason,
        the halving of batches after a GPU out-of-memory error does not help
        here: choose an ``inference_batch_size`` that fits.

    device : str or torch.device, default="auto"
        ``"auto"``: CUDA when available, else the CPU.

    random_state : int, RandomState instance or None, default=None
        Seeds the mini-batch order, the Fisher's label sampling and random
        initialisation, through local generators only.

    verbose : int, default=0
        Progress bars on stderr when > 0.

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
        of collapse) and ``"ewc_penalty"``.
    fisher_ : dict or None
        The Fisher diagonal used with EWC, on the CPU.
    scorer_ : scorer
        The fitted scorer on the adapted training features.
    offset_ : float
        Threshold of ``decision_function``.
    training_scores_ : ndarray of shape (n_samples,)
        Leave-one-out ``score_samples`` of the training samples.
    n_features_in_ : int
        Only for 2-D vector input.

    See Also
    --------
    KNNScorer : The scorer alone, for features from any model.

    References
    ----------
    Reiss, Cohen, Bergman, Hoshen. "PANDA: Adapting Pretrained Features for
    Anomaly Detection and Segmentation", CVPR 2021.

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
    >>> det.score_samples(rng.normal(size=(3, 6))).shape
    (3,)
    """

    _parameter_constraints = {
        **BasePanda._parameter_constraints,
        "scorer": [StrOptions({"knn", "kmeans", "center", "mahalanobis"}), HasMethods(["fit", "score_samples"])],
        "n_steps": [Interval(numbers.Integral, 0, None, closed="left")],
        "loss": [StrOptions({"compactness", "mean_shifted"})],
        "temperature": [Interval(numbers.Real, 0, None, closed="neither")],
        "regularization": [StrOptions({"ewc"}), None],
        "ewc_lambda": [Interval(numbers.Real, 0, None, closed="left")],
        "fisher": [Mapping, str, os.PathLike, None],
        "n_fisher_batches": [Interval(numbers.Integral, 1, None, closed="left")],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "momentum": [Interval(numbers.Real, 0, 1, closed="left")],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
        "clip_norm": [Interval(numbers.Real, 0, None, closed="neither"), None],
    }

    def __init__(
        self,
        *,
        backbone="resnet152",
        weights="imagenet",
        n_steps=300,
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
        resize=256,
        crop_size=224,
        normalize_features=True,
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
            n_trainable_stages=n_trainable_stages,
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
        self.scorer = scorer
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

    def _adapt(self, net, preprocessor, hidden, generator, y):
        return self._train(net, preprocessor, hidden, generator)

    def _train(self, net, preprocessor, hidden, generator, callbacks=(), indices=None):
        """Fine-tuning of ``net`` in place with ``loss``; ``callbacks`` run after each step.

        ``indices`` selects the samples to train on (default: all of them).
        """
        history = {"loss": [], "compactness": [], "compactness_ratio": [], "ewc_penalty": []}
        if self.n_steps == 0:
            return {"net_": net, "center_": None, "history_": history, "fisher_": None}
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

        if self.loss == "mean_shifted":
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

        self._optimize(parameters, step_loss, "adaptation", callbacks=[record, *callbacks])
        return {
            "net_": net,
            "center_": center.cpu().numpy(),
            "history_": history,
            "fisher_": fisher,
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
        device = preprocessor.device
        # Drawn only for this loss, so that the compactness loss's batches stay as they were.
        views = ViewMaker(torch.Generator().manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator))))
        unit_center = F.normalize(F.normalize(torch.from_numpy(pretrained), dim=1).mean(dim=0), dim=0).to(device)

        def objective(batch):
            first, second = views(preprocessor(batch))
            with torch.no_grad(), self._autocast(device):
                trunk_output = net.trunk(torch.cat([first, second]))
            with self._autocast(device):
                features = net.stages(trunk_output).float()
            first_features, second_features = features.chunk(2)
            loss = mean_shifted_contrastive_loss(first_features, second_features, unit_center, self.temperature)
            return loss, compactness_loss(self._project(first_features.detach()), center)

        return objective

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
        fisher = {name: torch.as_tensor(np.asarray(given[name]), dtype=torch.float32) for name in names}
        for name, parameter in zip(names, parameters):
            if tuple(fisher[name].shape) != tuple(parameter.shape):
                raise ValueError(
                    f"fisher[{name!r}] has shape {tuple(fisher[name].shape)}; the parameter "
                    f"has shape {tuple(parameter.shape)}."
                )
        return fisher
