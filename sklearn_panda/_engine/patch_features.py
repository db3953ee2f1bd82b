"""Patch features for local defects: mid-level feature maps of a split backbone, aggregated.

A local detector describes every small region of an image instead of the
whole image: the outputs of two mid-level stages (PatchCore's choice, Roth et
al. CVPR 2022: ResNet ``layer2`` and ``layer3``, at strides 8 and 16), each
averaged over a small neighbourhood of positions so that a feature sees a
little context, the deeper map upsampled to the finer grid, and both
concatenated: one feature vector per position of a stride-8 grid.

The network split at the layers is :mod:`.patch_net`'s; the maps' smoothing
and resizing :mod:`.maps`'. An image larger than ``TILE_PIXELS`` goes
through the backbone in overlapping tiles (:mod:`.tiles`), its maps
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

from .data import Preprocessor
from .folding import folded
from .patch_net import LAYERS_HINT, normalized_stage_outputs
from .tiles import measure_reach, run_in_tiles, tile_layout

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
# How a neighbourhood average treats the positions past a map's border (see aggregate).
BORDERS = frozenset({"zeros", "inside"})


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
    >>> from sklearn_panda._engine.patch_features import tiled_stage_outputs
    >>> from sklearn_panda._engine.patch_net import normalized_stage_outputs, split_patch_net
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
    # Mixed sizes are allowed: image_batches groups the images of one size.
    preprocessor = Preprocessor(checked, resize=None, crop_size=None, device=device, normalize=False, one_size=False)
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
