"""Patch features for local defects: mid-level feature maps of a split backbone, aggregated.

A local detector describes every small region of an image instead of the
whole image: the outputs of two mid-level stages (PatchCore's choice, Roth et
al. CVPR 2022: ResNet ``layer2`` and ``layer3``, at strides 8 and 16), each
averaged over a small neighbourhood of positions so that a feature sees a
little context, the deeper map upsampled to the finer grid, and both
concatenated: one feature vector per position of a stride-8 grid.

The backbone is split by node name (:func:`~sklearn_panda._engine.stages.split_model`)
with the chosen layers as its stage ends, so that the same network can be
saved, moved and adapted as the image-level detectors' are. Default layers
come from the family's stage ends: the last one at stride 8 and the last at
stride 16, measured on a blank image. An image larger than ``TILE_PIXELS``
goes through the backbone in overlapping tiles (:mod:`.tiles`), its maps
assembled exactly, so that a photo of any size is scored at its own
resolution with the memory of one tile. No estimator code here.
"""

import functools
import numbers
import warnings
import weakref

import numpy as np

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .backbones import build_feature_net, build_model
from .data import IMAGENET_MEAN, IMAGENET_STD, Preprocessor
from .device import seeded_cpu_generator
from .folding import folded
from .families import family_stage_ends
from .stages import split_model
from .tiles import measure_reach, run_in_tiles, tile_layout

# The strides of the default layers: the finest maps that still carry mid-level meaning.
DEFAULT_STRIDES = (8, 16)
# Side of the blank image the stage ends' strides are measured on.
PROBE_SIZE = 224
# "auto" resolution: images keep their size between these shorter sides.
SMALLEST_SIDE = 224
LARGEST_SIDE = 1024
# ... and the longer side at most this; a strip whose shorter side would then end below
# NARROWEST_SIDE is refused.
LONGEST_SIDE = 4096
NARROWEST_SIDE = 32

# At most this many pixels (at the scored size) go through the backbone in one batch: a CPU
# runs a large image fastest one at a time (EfficientNet-Lite0 on 640 x 640 boards, 2 cores:
# 10.7 images/s one at a time against 3.9 in batches of 8; at 224 x 224, 87 images/s in batches of 8).
PIXELS_PER_BATCH = 2**19
# At most this many pixels, margins included, go through the backbone at once: a larger image goes
# through in overlapping tiles whose maps are assembled exactly (tiles.py), so that the memory
# does not grow with the photo. EfficientNet-Lite0 up to its stride-16 block holds about 220 bytes
# of activations a pixel (0.9 GB for this 2,048 x 2,048 tile); its tiles reach 176 pixels past their
# cores, so smaller tiles would compute much of the image twice (benchmarks/RESULTS.md, "Photos of any size").
TILE_PIXELS = 2**22
# Each split network's reach (tiles.Reach, or None where tiling would not be exact), measured once.
_REACHES = weakref.WeakKeyDictionary()
# Pixels of a map smoothed at once (see convolve_lines).
SMOOTHING_PIXELS = 2**20
# Positions along a line that one banded matrix of the smoothing produces (see convolve_lines).
SMOOTHING_BLOCK = 128
# How a neighbourhood average treats the positions past a map's border (see aggregate).
BORDERS = frozenset({"zeros", "inside"})

LAYERS_HINT = (
    "Set layers to the names of two nodes or modules whose outputs are feature maps (n, C, H, W), "
    "such as the ends of whole blocks (torchvision.models.feature_extraction.get_graph_node_names "
    "lists them)."
)


def stage_outputs(net, images):
    """The output of every stage of a split network for ``images``, in order.

    The last entry of ``net.stages`` (the pooling to vectors) is not run.

    Examples
    --------
    >>> import torch, torchvision
    >>> from sklearn_panda._engine.patch_features import split_patch_net, stage_outputs
    >>> net = split_patch_net(torchvision.models.resnet18(), ["layer1", "layer2"])
    >>> [tuple(output.shape) for output in stage_outputs(net, torch.zeros(1, 3, 64, 64))]
    [(1, 64, 16, 16), (1, 128, 8, 8)]
    """
    outputs = []
    for stage in (*net.trunk, *list(net.stages)[:-1]):
        images = stage(images)
        outputs.append(images)
    return outputs


def normalized_stage_outputs(net, images):
    """:func:`stage_outputs` of ``images`` in [0, 1], normalised with the ImageNet mean and standard deviation."""
    images = TF.normalize(images, list(IMAGENET_MEAN), list(IMAGENET_STD))
    return stage_outputs(net, images.contiguous(memory_format=torch.channels_last))


def tiled_stage_outputs(net, images, *, tile_pixels=None):
    """:func:`normalized_stage_outputs`, tile by tile where ``images`` hold more than ``tile_pixels`` pixels.

    Tiles overlap by the network's reach (:func:`network_reach`), so that
    the assembled maps equal the untiled ones up to float rounding while the
    backbone's activations, and the normalised copy of the images, stay
    those of one tile. A network that cannot be tiled exactly runs on the
    whole images.

    Parameters
    ----------
    net : FeatureNet
        Split by :func:`split_patch_net`.
    images : Tensor (n, 3, H, W)
        In [0, 1], not yet normalised.
    tile_pixels : int or None, default=None
        Pixels, margins included, that go through ``net`` at once;
        ``None``: ``TILE_PIXELS``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sklearn_panda._engine.patch_features import (
    ...     normalized_stage_outputs, split_patch_net, tiled_stage_outputs)
    >>> strided = [nn.Conv2d(3 if first else 8, 8, 3, stride=2, padding=1) for first in (1, 0, 0, 0)]
    >>> net = split_patch_net(nn.Sequential(*strided), ["2", "3"])   # maps at strides 8 and 16
    >>> images = torch.rand(1, 3, 480, 360)
    >>> with torch.inference_mode():
    ...     tiled = tiled_stage_outputs(net, images, tile_pixels=200**2)
    ...     whole = normalized_stage_outputs(net, images)
    >>> [bool(torch.allclose(one, other, atol=1e-5)) for one, other in zip(tiled, whole)]
    [True, True]
    """
    tile_pixels = TILE_PIXELS if tile_pixels is None else tile_pixels
    n_images, _, height, width = images.shape
    reach = network_reach(net, images) if n_images * height * width > tile_pixels else None
    run = functools.partial(normalized_stage_outputs, net)
    if reach is None:
        return run(images)
    return run_in_tiles(run, images, reach, *tile_layout(height, width, tile_pixels // n_images, reach))


def network_reach(net, images):
    """``net``'s :class:`~sklearn_panda._engine.tiles.Reach`, measured once on probes like ``images``;
    ``None`` (with a warning) where tiling it would not be exact."""
    if net not in _REACHES:
        reach = measure_reach(
            functools.partial(normalized_stage_outputs, net), images.shape[1], device=images.device, dtype=images.dtype
        )
        if reach is None:
            warnings.warn(
                "The patch network's feature maps cannot be computed in tiles exactly (a position's "
                "features depend on pixels far away, as with squeeze-and-excitation blocks, or its "
                "maps are not at integer strides): large images go through it whole, and its memory "
                "grows with them.",
                UserWarning,
            )
        _REACHES[net] = reach
    return _REACHES[net]


def default_layers(model):
    """The family's stage ends at strides 8 and 16 (the last of each), for ``model``.

    Examples
    --------
    >>> import torchvision
    >>> from sklearn_panda._engine.patch_features import default_layers
    >>> default_layers(torchvision.models.resnet18())
    ['layer2', 'layer3']
    >>> default_layers(torchvision.models.mobilenet_v2())
    ['features.6', 'features.13']
    """
    family = family_stage_ends(model)
    if family is None:
        raise ValueError(
            f"{type(model).__name__} is not a network whose stages are known (torchvision's classifiers, "
            f"EfficientNet-Lite), so there are no default layers. {LAYERS_HINT}"
        )
    net = split_model(model, 1, stage_ends=family.ends, feature_node=family.ends[-1])
    with torch.no_grad():
        outputs = stage_outputs(net, torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE))
    strides = {
        name: PROBE_SIZE // output.shape[-1]
        for name, output in zip(family.ends, outputs)
        if output.ndim == 4 and output.shape[-1] == output.shape[-2]
    }
    layers = []
    for stride in DEFAULT_STRIDES:
        at_stride = [name for name, found in strides.items() if found == stride]
        if not at_stride:
            raise ValueError(
                f"{type(model).__name__} has no stage ending in a feature map at stride {stride} "
                f"(found {strides or 'none'}). {LAYERS_HINT}"
            )
        layers.append(at_stride[-1])
    return layers


def build_patch_net(backbone, weights, layers, *, vector_length=None, seed=0, device="cpu"):
    """The backbone split at ``layers`` (``"auto"``: :func:`default_layers`), and the layers.

    The first layer's stage is frozen (the trunk), the last stage ends at the
    last layer; nothing after it is kept. With ``vector_length`` (inputs are
    vectors of that length) the whole backbone is one stage and ``layers``
    is ``[]``. Random initialisation (``weights=None``) is seeded with
    ``seed`` without touching torch's global generator. The network comes
    frozen, in eval mode, on ``device`` (image networks channels-last).

    Returns
    -------
    net : FeatureNet
    layers : list of str

    Examples
    --------
    >>> from sklearn_panda._engine.patch_features import build_patch_net
    >>> net, layers = build_patch_net("resnet18", None, "auto")
    >>> layers
    ['layer2', 'layer3']
    """
    with seeded_cpu_generator(seed):
        if vector_length is not None:
            if layers != "auto":
                raise ValueError("layers names feature maps of images; with vectors (n, d) leave it 'auto'.")
            net = build_feature_net(backbone, weights, 1, torch.zeros(1, vector_length))
            if net.expects_images:
                raise ValueError(
                    f"The backbone {backbone!r} expects images of shape (n, H, W), (n, H, W, C) or "
                    f"(n, C, H, W); got a 2-D array, which is read as vectors (n_samples, n_features)."
                )
            layers = []
        else:
            model = build_model(backbone, weights)
            layers = default_layers(model) if layers == "auto" else list(layers)
            net = split_patch_net(model, layers)
            net.built_from = {"backbone": backbone, "weights": weights}
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    if net.expects_images:
        net = net.to(memory_format=torch.channels_last)
    return net.to(device).eval(), layers


def split_patch_net(model, layers):
    """``model`` split with ``layers`` as its stage ends; every parameter frozen."""
    if isinstance(layers, str) or not layers or not all(isinstance(name, str) for name in layers):
        raise ValueError(
            f"layers must be 'auto' or a non-empty list of node or module names, in forward order "
            f"(their maps are combined); got {layers!r}."
        )
    try:
        net = split_model(model, 0, stage_ends=layers, feature_node=layers[-1])
    except ValueError as error:
        # split_model's words are its own (stage ends, feature node): here they are the layers.
        raise ValueError(
            f"layers={layers!r} cannot split {type(model).__name__} (each layer ends a stage, in forward "
            f"order; the last ends the network): {error}"
        ) from None
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net.eval()


def aggregate(maps, neighbourhood, n_features=None, *, border="zeros"):
    """One feature map from several: local averages, on the first map's grid, concatenated.

    Parameters
    ----------
    maps : list of Tensor (n, C_i, H_i, W_i)
        The finest first.
    neighbourhood : int
        Odd side of the square each position is averaged over (1: none).
    n_features : int or None
        Average adjacent channels down to this many (PatchCore's projection);
        ``None`` keeps all of them.
    border : {"zeros", "inside"}, default="zeros"
        How a window that reaches past the map's border is averaged:
        ``"zeros"`` counts the missing positions as zeros (PatchCore's
        ``AvgPool2d(3, 1, 1)``, torch's default), so that border patches
        shrink towards zero and are matched with other images' border
        patches; ``"inside"`` averages the positions inside the map only.

    Returns
    -------
    Tensor (n, D, H_0, W_0), float32

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.patch_features import aggregate
    >>> aggregate([torch.ones(2, 4, 8, 8), torch.ones(2, 6, 4, 4)], 3).shape
    torch.Size([2, 10, 8, 8])
    >>> aggregate([torch.ones(2, 4, 8, 8), torch.ones(2, 6, 4, 4)], 3, n_features=5).shape
    torch.Size([2, 5, 8, 8])
    >>> corner = aggregate([torch.ones(1, 1, 4, 4)], 3)[0, 0, 0, 0]
    >>> float(corner), float(aggregate([torch.ones(1, 1, 4, 4)], 3, border="inside")[0, 0, 0, 0])
    (0.4444444477558136, 1.0)
    """
    if border not in BORDERS:
        raise ValueError(f"border must be one of {sorted(BORDERS)}; got {border!r}.")
    grid = maps[0].shape[-2:]
    parts = []
    for feature_map in maps:
        feature_map = feature_map.float()
        if neighbourhood > 1:
            feature_map = F.avg_pool2d(
                feature_map,
                neighbourhood,
                stride=1,
                padding=neighbourhood // 2,
                count_include_pad=border == "zeros",
            )
        if feature_map.shape[-2:] != grid:
            feature_map = F.interpolate(feature_map, size=grid, mode="bilinear", align_corners=False)
        parts.append(feature_map)
    features = torch.cat(parts, dim=1)
    n_images, n_channels, height, width = features.shape
    if n_features is not None and n_features < n_channels:
        pooling = channel_pooling(n_channels, n_features).to(features.device)
        features = torch.einsum("nchw,cd->ndhw", features, pooling)
    return features.contiguous()


def channel_pooling(n_channels, n_features):
    """The ``(n_channels, n_features)`` matrix that averages adjacent channels down to ``n_features``.

    Column ``j`` averages channels ``floor(j C / d)`` to ``ceil((j + 1) C / d)``,
    the bins of ``torch.nn.functional.adaptive_avg_pool1d`` (PatchCore's
    projection); as a matrix it exports to ONNX as one product.

    Examples
    --------
    >>> from sklearn_panda._engine.patch_features import channel_pooling
    >>> channel_pooling(4, 2).T.tolist()
    [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]
    """
    # Built without a loop over the columns: an exported graph would hold one slice and one
    # scatter per column (seconds of export each hundred), where these few operations fold into
    # one constant.
    columns = torch.arange(n_features)
    starts = (columns * n_channels) // n_features
    stops = -((-(columns + 1) * n_channels) // n_features)
    rows = torch.arange(n_channels)[:, None]
    inside = (rows >= starts) & (rows < stops)
    return inside / (stops - starts).to(torch.float32)


def working_size(height, width, resize):
    """The ``(height, width)`` an image is scored at.

    ``None`` keeps it; an integer is the new shorter side (the aspect ratio
    kept); a pair is the size itself; ``"auto"`` keeps the size when the
    shorter side is between 224 and 1024 pixels and the longer side at most
    4096, and otherwise scales the image (aspect ratio kept) by the factor
    that brings the shorter side to the nearer of 224 and 1024, or the
    longer side to 4096 where that factor is smaller (a stride-8 grid of a
    smaller image is too coarse to place a defect; a larger one costs time and
    memory out of proportion). A long strip whose shorter side would end below
    32 pixels is refused with ``"auto"``.

    Examples
    --------
    >>> from sklearn_panda._engine.patch_features import working_size
    >>> working_size(640, 640, "auto"), working_size(28, 56, "auto"), working_size(2048, 1024, "auto")
    ((640, 640), (224, 448), (2048, 1024))
    >>> working_size(50, 2000, "auto"), working_size(800, 8000, "auto")
    ((102, 4096), (410, 4096))
    >>> working_size(100, 200, None), working_size(100, 200, 50), working_size(100, 200, (32, 48))
    ((100, 200), (50, 100), (32, 48))
    """
    if resize is None:
        return height, width
    if resize == "auto":
        shorter, longer = min(height, width), max(height, width)
        scale = min(max(shorter, SMALLEST_SIDE), LARGEST_SIDE) / shorter
        scale = min(scale, LONGEST_SIDE / longer)
        if scale == 1:
            return height, width
        size = max(1, round(height * scale)), max(1, round(width * scale))
        if min(size) < NARROWEST_SIDE:
            raise ValueError(
                f"A {height} x {width} image is too narrow to score with resize='auto': its longer side "
                f"is brought to {LONGEST_SIDE} pixels, leaving {min(size)} for the shorter, fewer than "
                f"{NARROWEST_SIDE}. Crop it into pieces, or pass resize=(height, width)."
            )
        return size
    if isinstance(resize, numbers.Integral):
        scale = resize / min(height, width)
        return (resize, round(width * scale)) if height <= width else (round(height * scale), resize)
    return int(resize[0]), int(resize[1])


def gaussian_smoothing(maps, sigma):
    """Maps ``(n, 1, H, W)`` blurred by a Gaussian of ``sigma`` pixels (0: unchanged).

    The kernel reaches 4 sigma on each side (at most to the map's border),
    with mirrored borders: ``scipy.ndimage.gaussian_filter(..., mode="mirror")``
    to float rounding (PatchCore smooths with scipy's default, ``"reflect"``,
    which repeats the border pixel; the two differ near the border only).
    Separable: a pass along each axis (:func:`convolve_lines`), so that the
    cost grows with the kernel's width, not its area.

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.patch_features import gaussian_smoothing
    >>> spike = torch.zeros(1, 1, 21, 21); spike[0, 0, 10, 10] = 1
    >>> smoothed = gaussian_smoothing(spike, 1.0)
    >>> round(float(smoothed.sum()), 6), divmod(int(smoothed.argmax()), 21)
    (1.0, (10, 10))
    """
    if sigma <= 0:
        return maps
    radius = int(4 * sigma + 0.5)
    for axis in (-1, -2):
        length = maps.shape[axis]
        # Reflection needs the pixels it mirrors: the kernel stops at the map's border.
        reach = min(radius, length - 1)
        if reach < 1:
            continue
        offsets = torch.arange(-reach, reach + 1, dtype=torch.float32, device=maps.device)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = (kernel / kernel.sum()).to(maps.dtype)
        maps = convolve_lines(maps, kernel, axis)
    return maps


def convolve_lines(maps, kernel, axis):
    """Maps ``(n, 1, H, W)`` convolved along ``axis`` (-1 or -2) with an odd 1-D ``kernel``, mirrored at the border.

    As matrix products: each run of ``SMOOTHING_BLOCK`` positions along
    ``axis`` is the product of the padded positions that reach it with a
    banded matrix holding the kernel (:func:`kernel_band`). A convolution of
    one channel runs far slower (a 640 x 640 map at sigma 4 on 2 cores of an
    Intel Xeon: 5 to 24 ms through ``conv2d``, about 2 ms as products), and would
    unfold its input into a copy per kernel tap. Lines go through in blocks
    of about ``SMOOTHING_PIXELS`` pixels per map, so that the memory beyond
    the maps stays that of a block; each line needs no other.

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.patch_features import convolve_lines
    >>> convolve_lines(torch.tensor([[[[0.0, 3.0, 0.0, 0.0]]]]), torch.tensor([1.0, 1.0, 1.0]), -1)
    tensor([[[[6., 3., 3., 0.]]]])
    """
    reach = len(kernel) // 2
    length = maps.shape[axis]
    block = min(SMOOTHING_BLOCK, length)
    band = kernel_band(kernel, block)
    padding, lines_axis = ((reach, reach, 0, 0), -2) if axis == -1 else ((0, 0, reach, reach), -1)
    lines_per_block = max(1, SMOOTHING_PIXELS // length)
    blocks = []
    for lines in maps.split(lines_per_block, lines_axis):
        padded = F.pad(lines, padding, mode="reflect")
        runs = []
        for start in range(0, length, block):
            size = min(block, length - start)
            window, weights = padded.narrow(axis, start, size + 2 * reach), band[: size + 2 * reach, :size]
            runs.append(window @ weights if axis == -1 else weights.T @ window)
        blocks.append(runs[0] if len(runs) == 1 else torch.cat(runs, dim=axis))
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=lines_axis)


def kernel_band(kernel, length):
    """The ``(length + len(kernel) - 1, length)`` matrix whose column ``j`` holds ``kernel`` from row ``j``:
    a run of padded positions times it is their convolution with ``kernel``.

    Built from a gather, without a loop over the taps, so that an exported graph folds it into one constant.

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.patch_features import kernel_band
    >>> kernel_band(torch.tensor([1.0, 2.0, 3.0]), 2).T.tolist()
    [[1.0, 2.0, 3.0, 0.0], [0.0, 1.0, 2.0, 3.0]]
    """
    taps = len(kernel)
    offsets = torch.arange(length + taps - 1, device=kernel.device)[:, None] - torch.arange(length, device=kernel.device)
    inside = (offsets >= 0) & (offsets < taps)
    return torch.where(inside, kernel[offsets.clamp(0, taps - 1)], torch.zeros((), dtype=kernel.dtype, device=kernel.device))


def resize_maps(maps, size):
    """Maps ``(n, 1, h, w)`` resized (bilinear) to ``size``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return TF.resize(maps, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)


def image_batches(checked, resize, batch_size):
    """Index batches: at most ``batch_size`` images and ``PIXELS_PER_BATCH`` pixels at the
    scored size (large images one at a time); files one at a time (their sizes may differ)."""
    size = 1 if checked.spec.kind == "file_images" else batch_size
    if checked.spec.kind == "array_images":
        height, width = working_size(*checked.data.shape[1:3], resize)
        size = max(1, min(size, PIXELS_PER_BATCH // (height * width)))
    for start in range(0, len(checked), size):
        yield np.arange(start, min(start + size, len(checked)))


def patch_features(maps, spec):
    """The patch grids a detector's ``spec`` asks for, from its stage outputs ``maps``.

    The :func:`aggregate` of the maps (``neighbourhood``, ``n_features``,
    ``border``), and with ``spec["image_score"] == "patch+fine"`` the first
    layer's own map too; vectors (no ``layers``: one map ``(n, d, 1, 1)``)
    are their own patch.

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.patch_features import patch_features
    >>> spec = {"layers": ["a", "b"], "neighbourhood": 3, "n_features": None, "border": "zeros",
    ...         "image_score": "patch+fine"}
    >>> grids = patch_features([torch.ones(1, 4, 8, 8), torch.ones(1, 6, 4, 4)], spec)
    >>> [tuple(grid.shape) for grid in grids]
    [(1, 10, 8, 8), (1, 4, 8, 8)]
    """
    if not spec["layers"]:
        return [maps[0].float()]
    for name, feature_map in zip(spec["layers"], maps):
        if feature_map.dim() != 4:
            raise ValueError(
                f"layers must name feature maps (n, C, H, W); {name!r} gives an output of shape "
                f"{tuple(feature_map.shape)}. {LAYERS_HINT}"
            )
    grids = [aggregate(maps, spec["neighbourhood"], spec["n_features"], border=spec["border"])]
    if spec["image_score"] == "patch+fine":
        grids.append(maps[0].float())
    return grids


def patch_grids(net, checked, device, spec, *, batch_size, progress):
    """``(indices, grids, scored size, original size, stage outputs)`` batch by batch for a patch detector.

    ``grids`` holds the patch features of :func:`patch_features` (``(n, D,
    h, w)`` each), the stage outputs the maps they were made from; vectors
    ``(n, d)`` give ``(n, d, 1, 1)``. ``checked`` is a validated input,
    ``progress`` a :class:`~sklearn_panda._engine.progress.ProgressBar`.
    Images go through ``net`` with its BatchNorm folded into the
    convolutions (:func:`~sklearn_panda._engine.folding.folded`).
    """
    preprocessor = Preprocessor(checked, resize=None, crop_size=None, device=device, normalize=False)
    if net.expects_images:
        net = folded(net)
    for indices in image_batches(checked, spec["resize"], batch_size):
        with torch.inference_mode():
            if checked.spec.kind == "vectors":
                maps = [net.stages(preprocessor(indices)).float()[:, :, None, None]]
                yield indices, patch_features(maps, spec), (1, 1), (1, 1), maps
            else:
                # The images are freed before the grids are handed on: only the grids grow with them.
                yield indices, *image_grids(net, preprocessor(indices), spec)
        progress.update(int(indices[-1]) + 1)


# Images whose shorter side is below this many pixels may be too small for a backbone's windows.
SMALL_IMAGE = 64


def image_grids(net, images, spec):
    """``(grids, scored size, original size, stage outputs)`` of images ``(n, 3, H, W)`` in [0, 1],
    as :func:`patch_grids`."""
    original = tuple(images.shape[-2:])
    size = working_size(*original, spec["resize"])
    if size != original:
        images = TF.resize(images, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    try:
        maps = tiled_stage_outputs(net, images)
    except RuntimeError as error:
        # A convolution or pooling window larger than what is left of a small image.
        if min(size) >= SMALL_IMAGE or "size" not in str(error).lower():
            raise
        raise ValueError(
            f"The backbone cannot take images of {size[0]} x {size[1]} pixels ({error}). Score them larger: "
            "resize='auto' (images shorter than 224 pixels are scaled up) or a larger integer resize."
        ) from error
    return patch_features(maps, spec), size, original, maps
