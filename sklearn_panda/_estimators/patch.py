"""PandaPatchDetector: local defects, a memory bank of normal patch features and anomaly maps."""

import numbers
import os
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted, validate_data

from .._engine.device import ON_DEVICE, resolve_device
from .._engine.patch_net import build_patch_net
from .._engine.maps import resize_maps
from .._engine.patch_features import patch_grids
from .._engine.progress import ProgressBar
from .._sklearn_compat import Interval, StrOptions, _fit_context
from ..scorers._contract import OutlierContractMixin, warn_if_anomalies_in_y
from .base import draw_seed
from .patch_bank import patch_distances, worst_patches
from .patch_calibration import smoothed_maps
from .patch_training import TrainingImagesMixin
from .patch_memory import BankAssembly, first_batch_checked, image_scores
from .regions import DefectMasksMixin
from .torch_state import TorchStateMixin
from .validation import check_geometry, check_input, check_new_input


class PandaPatchDetector(DefectMasksMixin, TrainingImagesMixin, TorchStateMixin, OutlierContractMixin, BaseEstimator):
    """Local defects: nearest normal patch features, an anomaly map per image.

    Where :class:`PandaDetector` pools a whole image into one feature vector
    (and finds a different *kind* of object), this detector describes every
    small region of an image and compares it with the regions of the normal
    training images (and finds a *defect on a known object*: a scratch, a
    crack, a missing solder joint), as PatchCore does (Roth et al., CVPR
    2022) and as PANDA's authors extended PANDA to segmentation with SPADE:

    1. the feature maps of two mid-level stages of a pretrained backbone
       (``layers``), each averaged over a ``neighbourhood`` x ``neighbourhood``
       window (the window's part past the border counted as zeros, as
       PatchCore does: ``border``), the deeper one upsampled to the finer
       grid, concatenated: one feature per position of a stride-8 grid;
    2. a memory bank of the training images' patch features, subsampled by
       PatchCore's greedy k-center coreset (``coreset_ratio``) on a random
       projection, in two stages as the images pass (each chunk of patches
       keeps its own coreset, then one is chosen from those), so that the fit
       grows linearly with the number of patches and never holds them all;
    3. for a new image, each patch's distance to its nearest bank patches
       (the package's kNN engine, :class:`KNNScorer`), upsampled to the image,
       smoothed by a Gaussian of ``sigma`` pixels: the anomaly map
       (:meth:`anomaly_maps`);
    4. the image's anomaly score (``image_score``): by default the sum of its
       worst patches' mean distance (its ``n_worst_patches`` largest) and the
       same for the first layer's own features (no averaging; a second,
       "fine" bank), each divided by its median over the training images.
       The averaged features see a region whose texture changed, the fine
       ones a defect of a few pixels.

    The defaults were chosen on two kinds of surface at once, printed-circuit
    boards (DeepPCB: line art, defects a few pixels wide) and ball-screw
    drives (BSData: textured metal, small pits), by the worse of the two
    (``benchmarks/patch_study.py``; ``benchmarks/RESULTS.md``).

    Resolution decides what can be found: a defect a few pixels wide is
    averaged away in a map of a downsized image. ``resize="auto"`` therefore
    keeps each image at its own size (within 224 to 1024 pixels on the
    shorter side, at most 4096 on the longer); the cost grows with the
    number of pixels.

    Parameters
    ----------
    backbone : str or callable, default="efficientnet_lite0"
        A torchvision classification model's name (ResNet, Wide ResNet,
        EfficientNet, MobileNet, RegNet, ConvNeXt, DenseNet, ...),
        ``"efficientnet_lite0"`` (extra ``lite``; its ImageNet weights work
        offline and it runs fast on a CPU: the default), or a callable
        returning an ``nn.Module`` (then give ``layers``). For ``(n, d)``
        vectors, a network that maps them to features: each sample is one
        "patch" and the detector is a kNN detector with a coreset bank.

    weights : "imagenet", str, path or None, default="imagenet"
        As in :class:`PandaDetector`: ``"imagenet"`` pretrained weights,
        another torchvision weights name, a state dict file, or ``None``
        (random; for tests).

    layers : list of str or "auto", default="auto"
        The nodes (or modules, for their last node) whose feature maps make
        the patch features, in forward order, one or more. ``"auto"``: the
        family's last stage ends at strides 8 and 16 (ResNet ``layer2`` and
        ``layer3``, EfficientNet-Lite0 ``_blocks.4`` and ``_blocks.10``). The
        values used are in ``layers_``. The patches lie on the first layer's
        grid: a layer whose output is 1 x 1 (``"avgpool"``) gives one patch
        per image and a map of one value (fit warns).

    resize : int, (int, int), None or "auto", default="auto"
        The size images are scored at: an integer is the new shorter side,
        a pair the new ``(height, width)``, ``None`` each image's own size.
        ``"auto"``: the image's own size when its shorter side is between 224
        and 1024 pixels, otherwise scaled to the nearer bound, and in any
        case no longer than 4,096 pixels (an image too narrow to keep 32
        pixels then is refused). Maps always come back at each input image's
        size.

    neighbourhood : int, default=3
        Odd side of the window each feature map is averaged over (PatchCore's
        patch size 3); 1 averages nothing.

    border : {"zeros", "inside"}, default="zeros"
        How a window reaching past a feature map's border is averaged:
        ``"zeros"`` counts the missing positions as zeros (PatchCore's
        ``AvgPool2d(3, 1, 1)``), so that border patches are matched with other
        images' border patches; ``"inside"`` averages the positions inside the
        map only (measured on DeepPCB's validation boards: 53.4 image ROC AUC
        against 75.1 with ``"zeros"``).

    n_features : int or None, default=None
        Average adjacent channels of the patch features down to this many
        (PatchCore's projection, for wide backbones); ``None`` keeps all (152
        for EfficientNet-Lite0, 1,536 for ``wide_resnet50_2``).

    coreset_ratio : float in (0, 1], default=0.01
        Fraction of the training patches kept in the memory bank (and in the
        fine bank), chosen by greedy k-center selection in two stages: each
        chunk of 16,384 patches keeps four times this fraction, then the
        final selection is made among those (exact greedy selection where
        four times the fraction is 1 or more; 1 keeps every patch). On the
        validation splits of both development sets 0.02 gained 0.2 to 0.6
        points (within the seeds' spread on BSData's image score) and cost
        a fifth to two fifths of the scoring speed; 0.05 fitted DeepPCB's
        400 photos in 445 s against 55 s (``benchmarks/RESULTS.md``).

    projection_dim : int or None, default=128
        Dimension of the random projection the coreset selection measures
        distances on (PatchCore's 128); ``None`` measures on the features.

    n_neighbors : int, default=1
        A patch's anomaly is its mean distance to this many nearest bank
        patches (PatchCore: 1).

    sigma : float, default=6.0
        Standard deviation in pixels, at the scored size, of the Gaussian
        that smooths the maps; 0 does not smooth. Chosen on the validation
        splits of DeepPCB and BSData by the worse set's pixel ROC AUC among
        1, 2, 3, 4 (PatchCore's), 6 and 8 (DeepPCB 88.30 at 6 against 88.14
        at 4, PRO 67.16 against 67.37; BSData 98.08 against 98.09). With
        ``image_score`` ``"patch+fine"`` or ``"patch"`` it moves the map
        alone (the image score comes from the patch distances before
        smoothing); with ``"map"`` the image score is the smoothed map's
        maximum, so it moves that too.

    image_score : {"patch+fine", "patch", "map"}, default="patch+fine"
        An image's anomaly score (``-score_samples``): ``"patch"`` the mean
        of its ``n_worst_patches`` largest patch distances, before upsampling
        and smoothing (with ``n_worst_patches=1``, PatchCore's); ``"map"`` its
        smoothed map's maximum; ``"patch+fine"`` that mean plus the same mean
        of the distances of the first layer's own features (stride 8, no
        neighbourhood averaging) to a second bank of those (``fine_bank_``),
        each divided by its median over the calibration images' leave-one-out
        scores (``score_scales_``). For vectors, which have one scale,
        ``"patch+fine"`` is ``"patch"``.

    n_worst_patches : int, default=4
        How many of an image's largest patch distances (in each bank) its
        image score averages, with ``image_score="patch"`` or
        ``"patch+fine"``: 1 ranks images by their single worst patch, more
        by a worst region (measured on the validation splits of both
        development sets: DeepPCB 91.1 / 88.8 / 82.8 image ROC AUC at 1 / 4 /
        16, BSData 86.6 / 88.1 / 89.7; 4 has the better worse set). Raise it
        where defects spread over many patches (wear, soiling, a changed
        texture); keep it low for defects of a few pixels.

    algorithm : {"auto", "brute", "faiss", "nndescent"}, default="auto"
        The bank's search, as ``KNNScorer``'s (``"faiss"``: its exact
        ``"Flat"`` index). ``"auto"``: a faiss HNSW graph (``"HNSW16"``,
        efSearch 4, one candidate a patch) for banks of
        2,000 rows or more where faiss is installed, exact float32 search
        otherwise. The leave-one-out training scores go through the same
        search (exact with an exact one). With an approximate search (a
        graph), each image's largest patch distances are searched again
        exactly until its ``n_worst_patches`` largest are certain, so that the ``"patch"`` and
        ``"patch+fine"`` image scores and ``offset_`` are the exact
        search's; elsewhere a map value may lie a little above the exact one.

    contamination : "auto" or float in (0, 0.5], default="auto"
        Sets ``offset_`` from the leave-one-out image scores of the
        calibration images (each scored against banks without its own
        patches): that fraction of them is flagged (``"auto"``: 1%). The
        calibration images are the training images, or 64 of them at random
        where there are more.

    pixel_contamination : "auto" or float in (0, 0.5], default="auto"
        Sets ``pixel_offset_``, the map value above which a pixel is
        defective (:meth:`predict_masks`, :meth:`defect_regions`): the
        calibration images' leave-one-out maps exceed it somewhere in that
        fraction of them (``"auto"``: 1%), so about that share of new normal
        images gets a false defect region.

    batch_size : int, default=8
        At most this many images per forward pass, and at most 2**19 pixels
        at the scored size (a CPU runs large images fastest one at a time);
        files of different sizes go one at a time.

    device : str or torch.device, default="auto"
        ``"auto"``: CUDA when available, else the CPU.

    random_state : int, RandomState instance or None, default=None
        Seeds the coreset's projection and first pick (and random
        initialisation with ``weights=None``), through local generators only.

    verbose : int, default=0
        Progress bars on stderr when > 0.

    Attributes
    ----------
    net_ : FeatureNet
        The backbone up to the last layer, frozen.
    layers_ : list of str
        The layers used (``"auto"`` resolved); empty for vectors.
    patch_spec_ : dict
        What the features, maps and scores are made of, fixed at fit
        (``layers``, ``resize``, ``neighbourhood``, ``border``,
        ``n_features``, ``sigma``, ``image_score``, ``n_worst_patches``): scoring and export read
        these, never the parameters, so a later ``set_params`` changes
        nothing until the next fit.
    memory_bank_ : ndarray of shape (n_bank, n_features_out), float32
        The coreset of the training patch features.
    memory_bank_images_ : ndarray of shape (n_bank,), int64
        The training image each bank row came from (numbered in the order
        seen, across ``fit`` and ``partial_fit``).
    scorer_ : KNNScorer
        The nearest-neighbour search over ``memory_bank_``.
    fine_bank_ : ndarray of shape (n_fine, n_channels), float32
        Only with ``image_score="patch+fine"``: the coreset of the first
        layer's own features.
    fine_bank_images_ : ndarray of shape (n_fine,), int64
        Only with ``image_score="patch+fine"``: the image each row came from.
    fine_scorer_ : KNNScorer
        Only with ``image_score="patch+fine"``: the search over ``fine_bank_``.
    score_scales_ : ndarray of shape (2,)
        Only with ``image_score="patch+fine"``: the medians the two banks'
        worst-patch means are divided by.
    n_training_patches_ : int
        How many patch features the training images gave before the coreset.
    n_samples_seen_ : int
        How many training images ``fit`` and ``partial_fit`` have seen.
    calibration_maps_ : list of dict
        The calibration images (a uniform random sample of at most 64 of the
        training images): each one's number (``image``), random ``key``,
        scored ``size``, input size (``original``) and stage outputs (``maps``,
        float16 where they fit),
        kept so that :meth:`partial_fit` measures the offsets again. They are
        most of a saved model's size with large images: 64 photos of 640 x
        640 pixels take about 55 MB with the default backbone.
    training_scores_ : ndarray of shape (n_calibration_images,)
        Leave-one-out ``score_samples`` of the calibration images.
    offset_ : float
        ``decision_function = score_samples - offset_``.
    training_map_maxima_ : ndarray of shape (n_calibration_images,)
        The maxima of the calibration images' leave-one-out maps, at their
        input size (as :meth:`predict_masks` compares maps with
        ``pixel_offset_``).
    pixel_offset_ : float
        The map value above which a pixel is defective.
    input_spec_ : InputSpec
        What kind of input ``fit`` saw.
    device_ : torch.device
    n_features_in_ : int
        Only for 2-D vector input.

    See Also
    --------
    PandaDetector : Whole images: a different kind of object.
    sklearn_panda.metrics.pixel_roc_auc, sklearn_panda.metrics.pro_score :
        Evaluate the maps against defect masks.

    References
    ----------
    Roth, Pemula, Zepeda, Schölkopf, Brox, Gehler. "Towards Total Recall in
    Industrial Anomaly Detection", CVPR 2022.
    Cohen, Hoshen. "Sub-Image Anomaly Detection with Deep Pyramid
    Correspondences" (SPADE), 2020.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda import PandaPatchDetector
    >>> rng = np.random.default_rng(0)
    >>> normal = rng.normal(0.5, 0.02, size=(6, 32, 32, 3)).clip(0, 1)
    >>> detector = PandaPatchDetector(backbone="resnet18", weights=None, random_state=0).fit(normal)
    >>> defective = normal[:2].copy()
    >>> defective[:, 10:14, 10:14] = 1.0   # a bright square
    >>> maps = detector.anomaly_maps(defective)
    >>> maps.shape, maps.dtype
    ((2, 32, 32), dtype('float32'))
    >>> bool(detector.score_samples(defective).max() < detector.score_samples(normal).min())
    True
    """

    _torch_attributes = {"net_": ON_DEVICE}

    _parameter_constraints = {
        "backbone": [str, callable],
        "weights": [str, os.PathLike, None],
        "layers": [list, tuple, StrOptions({"auto"})],
        "resize": [Interval(numbers.Integral, 1, None, closed="left"), tuple, list, None, StrOptions({"auto"})],
        "neighbourhood": [Interval(numbers.Integral, 1, None, closed="left")],
        "border": [StrOptions({"zeros", "inside"})],
        "n_features": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "coreset_ratio": [Interval(numbers.Real, 0, 1, closed="right")],
        "projection_dim": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "n_neighbors": [Interval(numbers.Integral, 1, None, closed="left")],
        "sigma": [Interval(numbers.Real, 0, None, closed="left")],
        "image_score": [StrOptions({"patch+fine", "patch", "map"})],
        "n_worst_patches": [Interval(numbers.Integral, 1, None, closed="left")],
        "algorithm": [StrOptions({"auto", "brute", "faiss", "nndescent"})],
        "contamination": [StrOptions({"auto"}), Interval(numbers.Real, 0, 0.5, closed="right")],
        "pixel_contamination": [StrOptions({"auto"}), Interval(numbers.Real, 0, 0.5, closed="right")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        backbone="efficientnet_lite0",
        weights="imagenet",
        layers="auto",
        resize="auto",
        neighbourhood=3,
        border="zeros",
        n_features=None,
        coreset_ratio=0.01,
        projection_dim=128,
        n_neighbors=1,
        sigma=6.0,
        image_score="patch+fine",
        n_worst_patches=4,
        algorithm="auto",
        contamination="auto",
        pixel_contamination="auto",
        batch_size=8,
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.weights = weights
        self.layers = layers
        self.resize = resize
        self.neighbourhood = neighbourhood
        self.border = border
        self.n_features = n_features
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.n_neighbors = n_neighbors
        self.sigma = sigma
        self.image_score = image_score
        self.n_worst_patches = n_worst_patches
        self.algorithm = algorithm
        self.contamination = contamination
        self.pixel_contamination = pixel_contamination
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Build the memory bank of the normal images' patch features.

        The images pass through the backbone a batch at a time; each batch's
        patch features go straight into a two-stage coreset selection
        (:class:`~sklearn_panda._engine.coreset.StreamingCoreset`), so that
        only the selected patches and the stage outputs of the calibration
        images (up to 64, for the offsets) are kept.

        Parameters
        ----------
        X : array-like or list of paths / PIL images
            Normal training images: ``(n, H, W)``, ``(n, H, W, C)`` or
            ``(n, C, H, W)`` (uint8 in [0, 255], uint16 in [0, 65535] or float
            in [0, 1]), or a list of image files / PIL images of any sizes
            (8- or 16-bit); or vectors ``(n, d)``
            for a vector backbone.

        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        self : object
            The fitted detector.
        """
        warn_if_anomalies_in_y(y, type(self).__name__)
        return self._fit(X)

    def _fit(self, X):
        self._check_parameters()
        checked = check_input(X)
        if checked.spec.kind == "vectors":
            validate_data(self, X, dtype=None, ensure_min_samples=1)
        if len(checked) < 2:
            raise ValueError(
                "PandaPatchDetector needs at least 2 training images (got 1 sample): each image's "
                "leave-one-out score is measured against the patches of the others."
            )
        device = resolve_device(self.device)
        seed = draw_seed(self.random_state)
        vector_length = checked.spec.channels if checked.spec.kind == "vectors" else None
        net, layers = build_patch_net(
            self.backbone, self.weights, self.layers, vector_length=vector_length, seed=seed, device=device
        )
        spec = self._fitted_spec(layers)
        stream = first_batch_checked(self._embeddings(net, checked, device, spec, "patch features"), spec)
        fitted = BankAssembly.of(self).learn(stream, len(checked), spec, seed)
        fitted.update(net_=net, layers_=layers, input_spec_=checked.spec, device_=device)
        for name in ("fine_bank_", "fine_scorer_", "fine_bank_images_", "score_scales_"):
            self.__dict__.pop(name, None)
        if checked.spec.kind != "vectors":
            for name in ("n_features_in_", "feature_names_in_"):
                self.__dict__.pop(name, None)
        for name, value in fitted.items():
            setattr(self, name, value)
        return self

    def _check_parameters(self):
        if self.neighbourhood % 2 == 0:
            raise ValueError(f"neighbourhood must be odd (a window centred on each position); got {self.neighbourhood}.")
        check_geometry(self.resize)

    def _fitted_spec(self, layers):
        """What the features, maps and scores are made of: fixed at fit, read by every later method.

        Vectors have one scale: their ``"patch+fine"`` is ``"patch"``."""
        image_score = "patch" if not layers and self.image_score == "patch+fine" else self.image_score
        return {
            "layers": list(layers),
            "resize": list(self.resize) if isinstance(self.resize, (tuple, list)) else self.resize,
            "neighbourhood": int(self.neighbourhood),
            "border": self.border,
            "n_features": None if self.n_features is None else int(self.n_features),
            "sigma": float(self.sigma),
            "image_score": image_score,
            "n_worst_patches": int(self.n_worst_patches),
        }

    def _spec(self):
        """The fitted spec; a model fitted before ``patch_spec_`` (or a key of it) existed made its
        features and scores as then."""
        spec = getattr(self, "patch_spec_", None)
        if spec is None:
            spec = {**self._fitted_spec(self.layers_), "border": "inside", "image_score": "map"}
        return {"n_worst_patches": 1, **spec}

    def _split_arguments(self, attributes):
        """How :func:`sklearn_panda.load` splits the rebuilt backbone: as ``fit`` did."""
        if attributes["input_spec_"].kind == "vectors":
            return {"n_trainable_stages": 1}
        layers = attributes["layers_"]
        return {"n_trainable_stages": 0, "stage_ends": layers, "feature_node": layers[-1]}

    # --------------------------------------------------------- patch features

    def _embeddings(self, net, checked, device, spec, label):
        """:func:`~sklearn_panda._engine.patch_features.patch_grids` with this detector's batches and progress."""
        progress = ProgressBar(len(checked), label, self.verbose > 0)
        return patch_grids(net, checked, device, spec, batch_size=self.batch_size, progress=progress)

    # ----------------------------------------------------------------- maps

    def _maps_and_scores(self, X, *, at_input_size):
        check_is_fitted(self)
        checked = check_new_input(self, X)
        spec = self._spec()
        scores = np.empty(len(checked))
        maps = [None] * len(checked)
        searches = [(self.memory_bank_, self.scorer_)]
        if spec["image_score"] == "patch+fine":
            searches.append((self.fine_bank_, self.fine_scorer_))
        n_worst = spec["n_worst_patches"]
        # Images that give one patch each (too small for resize=None) where the training images gave several.
        flat = set() if checked.spec.kind != "vectors" and self.n_training_patches_ > self.n_samples_seen_ else None
        for indices, grids, size, original, _ in self._embeddings(self.net_, checked, self.device_, spec, "anomaly maps"):
            if flat is not None and grids[0].shape[-2:] == (1, 1):
                flat.add(size)
            distances = [patch_distances(grid, bank, scorer, n_worst) for grid, (bank, scorer) in zip(grids, searches)]
            smoothed = smoothed_maps(distances[0], grids[0].shape[-2:], size, spec["sigma"])
            map_maxima = smoothed.amax(dim=(1, 2, 3)).numpy()
            worst = [worst_patches(found, n_worst) for found in distances]
            scores[indices] = -image_scores(worst, map_maxima, spec, getattr(self, "score_scales_", None))
            if at_input_size:
                resized = resize_maps(smoothed, original)
                for offset, index in enumerate(indices):
                    maps[index] = resized[offset, 0].numpy().astype(np.float32, copy=False)
        if flat:
            warnings.warn(
                f"Images scored at {' or '.join(f'{h} x {w}' for h, w in sorted(flat))} pixels give one patch each: "
                "their anomaly maps have a single value and their scores compare whole images. Score them "
                "larger (resize='auto' scales images shorter than 224 pixels up).",
                UserWarning,
                stacklevel=3,
            )
        return checked, maps, scores

    # ------------------------------------------------------------ new input

    def anomaly_maps(self, X, *, return_scores=False):
        """One anomaly map per image, at the image's own size: higher = more anomalous.

        Each pixel's value is the distance of its patch features to the
        nearest normal patches in the memory bank, upsampled from the
        stride-8 grid and smoothed (``sigma``). The maps are computed at the
        scored size (``resize``) and then resized (bilinear) to each input
        image's size. ``-score_samples`` comes from the same patch distances
        (``image_score``); with ``image_score="map"`` it is the maximum of the
        map at the scored size.

        Parameters
        ----------
        X : array-like or list of paths / PIL images
            Images in the layout seen in ``fit``.
        return_scores : bool, default=False
            Also return ``score_samples(X)``, computed in the same pass.

        Returns
        -------
        maps : ndarray of shape (n_images, H, W), float32, or list of ndarrays
            An array for array input (all images share a size); a list of 2-D
            float32 arrays, each of its image's size, for a list of files or
            PIL images.
        scores : ndarray of shape (n_images,)
            Only with ``return_scores=True``: the images' ``score_samples``.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_panda import PandaPatchDetector
        >>> rng = np.random.default_rng(0)
        >>> normal = (rng.random((4, 40, 60)) * 255).astype(np.uint8)
        >>> detector = PandaPatchDetector(backbone="resnet18", weights=None, resize=None).fit(normal)
        >>> maps, scores = detector.anomaly_maps(normal[:2], return_scores=True)
        >>> maps.shape, scores.shape
        ((2, 40, 60), (2,))
        """
        check_is_fitted(self)
        if self.input_spec_.kind == "vectors":
            raise ValueError("anomaly_maps needs images; this detector was fitted on vectors (n, d).")
        checked, maps, scores = self._maps_and_scores(X, at_input_size=True)
        maps = np.stack(maps) if checked.spec.kind == "array_images" else maps
        return (maps, scores) if return_scores else maps

    def score_samples(self, X):
        """Score each image by its worst patches: higher means more normal.

        Parameters
        ----------
        X : array-like or list of paths / PIL images
            Images in the layout seen in ``fit``.

        Returns
        -------
        scores : ndarray of shape (n_images,)
            Minus each image's anomaly score (``image_score``: by default the
            mean distance of its ``n_worst_patches`` worst patches plus that of
            its worst fine patches, each divided by its median over the
            training images); the lower, the more anomalous its worst region.
        """
        return self._maps_and_scores(X, at_input_size=False)[2]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        if isinstance(self.backbone, str):
            # A named backbone is an image network: images (n, H, W) and (n, H, W, C), not vectors.
            # (A factory may build a vector network: scikit-learn's default tags then hold.)
            tags.input_tags.two_d_array = False
            tags.input_tags.three_d_array = True
        return tags
