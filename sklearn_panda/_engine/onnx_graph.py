"""A fitted detector's whole scoring as one torch module, and its export to ONNX.

:class:`ScoringGraph` maps a batch of uint8 images ``(n, H, W, C)`` of one
fixed size to ``score_samples``: the preprocessing of :mod:`._data`, the
adapted network, the feature normalisation and the scorer's distance
(:class:`GalleryDistance`: a nearest-neighbour search against a stored
gallery; :class:`GaussianDistance`: a Mahalanobis distance). :class:`PatchScoringGraph` does the same for a patch
detector and gives its anomaly maps too. :func:`export_scoring_graph` exports
either with torch's ONNX exporter.

The resize is torch's uint8 one, reproduced exactly: torch (like PIL)
resamples an axis with integer weights and ``p`` fraction bits,
``out = (sum_i w_i x_i + 2**(p-1)) >> p`` clipped to [0, 255], the width
first, then the height. For a fixed input size each pass is a matrix
product with a constant matrix, and the centre crop keeps some of its
columns. The sums reach ``2**30``, beyond float32's exact integers, so the
weights are split into their high and low bytes: each half's products sum to
integers below ``2**24``, exact in float32 in any order, and the two halves
are joined in int32.

This module is torch code: it reads a network and arrays, never an estimator.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .data import IMAGENET_MEAN, IMAGENET_STD, resized_shape
from .maps import gaussian_smoothing
from .patch_features import aggregate

# ONNX files are protocol buffers, which cannot exceed 2 GiB.
ONNX_FILE_LIMIT_BYTES = 2**31
OPSET = 18
# Gallery rows a search compares the features with at once: its largest block is
# n_features x GALLERY_CHUNK float32 (6,400 patches of a 640 x 640 image: 26 MB), whatever the gallery's size.
GALLERY_CHUNK = 1024
# A pass's low-byte sums, 255 * 255 * taps, stay exact in float32 up to this many taps
# (a downscale by up to about 128 times).
_MAX_TAPS = 2**24 // (255 * 255)


def resampling_weights(n_in, n_out):
    """torch's integer weights of an antialiased bilinear uint8 resize of one axis.

    The float weights are torchvision's own (the resize of an identity
    matrix); they are rounded to integers as torch rounds them, with as many
    fraction bits (at most 22) as keep the largest below ``2**15``.

    Parameters
    ----------
    n_in, n_out : int
        Axis length before and after.

    Returns
    -------
    weights : ndarray of shape (n_in, n_out), integer-valued float64
        ``out[j] = (sum_i weights[i, j] * x[i] + 2**(bits - 1)) >> bits``.
    bits : int

    Examples
    --------
    >>> from sklearn_panda._engine.onnx_graph import resampling_weights
    >>> weights, bits = resampling_weights(4, 2)
    >>> weights.shape, bits, bool((weights.sum(axis=0) == 2**bits).all())
    ((4, 2), 16, True)
    """
    identity = torch.eye(n_in, dtype=torch.float64)[None, None]
    resized = TF.resize(identity, size=[n_in, n_out], interpolation=InterpolationMode.BILINEAR, antialias=True)
    weights = resized[0, 0].numpy()
    largest = weights.max()
    bits = next((b for b in range(22) if int(0.5 + largest * 2 ** (b + 1)) >= 2**15), 22)
    return np.floor(weights * 2**bits + 0.5), bits


def _crop_window(height, width, crop_size):
    """Rows and columns that torchvision's centre crop keeps of a ``height`` x ``width`` image."""
    positions = torch.arange(height * width).reshape(1, height, width)
    kept = TF.center_crop(positions, [crop_size, crop_size])[0]
    return (kept[:, 0] // width).numpy(), (kept[0, :] % width).numpy()


class _AxisResample(nn.Module):
    """One exact uint8 resampling pass along the last axis (integer-valued float32 in and out)."""

    def __init__(self, weights, bits):
        super().__init__()
        if int((weights > 0).sum(axis=0).max()) > _MAX_TAPS:
            raise ValueError(
                f"A downscale this large ({weights.shape[0]} to {weights.shape[1]} pixels) cannot be "
                "reproduced exactly in float32; resize the images nearer to the model's size first."
            )
        weights = weights.astype(np.int64)
        self.register_buffer("high", torch.from_numpy((weights >> 8).astype(np.float32)))
        self.register_buffer("low", torch.from_numpy((weights & 255).astype(np.float32)))
        self.bits = bits

    def forward(self, x):
        total = (x @ self.high).to(torch.int32) * 256 + (x @ self.low).to(torch.int32)
        rounded = torch.div(total + 2 ** (self.bits - 1), 2**self.bits, rounding_mode="trunc")
        return rounded.to(torch.float32).clamp(0.0, 255.0)


class _AxisSelect(nn.Module):
    """The kept positions of the last axis (a crop without a resize)."""

    def __init__(self, positions):
        super().__init__()
        self.start, self.stop = int(positions[0]), int(positions[-1]) + 1

    def forward(self, x):
        return x[..., self.start : self.stop]


def _axis_steps(n_in, resize_to, kept):
    """The pass for one axis: a resize (crop folded in), a crop alone, or nothing."""
    if resize_to != n_in:
        weights, bits = resampling_weights(n_in, resize_to)
        return _AxisResample(weights if kept is None else weights[:, kept], bits)
    if kept is not None and len(kept) != n_in:
        return _AxisSelect(kept)
    return nn.Identity()


class GalleryDistance(nn.Module):
    """Features ``(n, d)`` -> mean distance to their ``n_neighbors`` nearest rows of ``gallery``.

    The distances of :class:`~sklearn_panda.KNNScorer` (exact search),
    :class:`~sklearn_panda.KMeansScorer` (the centres) and
    :class:`~sklearn_panda.CenterScorer` (one centre).

    The gallery is searched in pieces of ``chunk_size`` rows, keeping each
    feature's ``n_neighbors`` nearest so far: the largest block held is
    ``(n, chunk_size)``, not ``(n, n_gallery)``, in torch and in the exported
    graph alike (the loop over the pieces is unrolled there).

    Parameters
    ----------
    gallery : ndarray of shape (n_gallery, d), float32
        The scorer's reference points (kNN: the training features; k-means: the centres).
    n_neighbors : int
        The distance is the mean distance to this many nearest gallery points.
    metric : {"sqeuclidean", "euclidean", "cosine"}
    chunk_size : int or None, default=None
        Gallery rows compared with the features at once (at least
        ``n_neighbors`` are); ``None``: ``GALLERY_CHUNK``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn_panda._engine.onnx_graph import GalleryDistance
    >>> gallery = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]], dtype=np.float32)
    >>> distance = GalleryDistance(gallery, 2, "euclidean", chunk_size=2)
    >>> distance(torch.tensor([[0.0, 1.0]])).tolist()  # (1 + sqrt(2)) / 2
    [1.2071068286895752]
    """

    def __init__(self, gallery, n_neighbors, metric, chunk_size=None):
        super().__init__()
        gallery = np.ascontiguousarray(gallery, dtype=np.float32)
        self.register_buffer("gallery", torch.from_numpy(gallery))
        # As the package's brute-force search: rank by ||g||^2 / 2 - q.g, then
        # recompute the distances of the k found from the differences.
        self.register_buffer("half_norms", torch.from_numpy(0.5 * np.einsum("ij,ij->i", gallery, gallery)))
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.chunk_size = max(GALLERY_CHUNK if chunk_size is None else int(chunk_size), n_neighbors)

    def forward(self, features):
        if self.metric == "cosine":
            features = features / features.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        nearest = self._nearest(features)
        differences = self.gallery[nearest] - features[:, None, :]
        squared = (differences * differences).sum(dim=2).clamp_min(0.0)
        if self.metric == "euclidean":
            squared = squared.sqrt()
        elif self.metric == "cosine":
            squared = squared / 2.0
        return squared.mean(dim=1)

    def _nearest(self, features):
        """Indices ``(n, n_neighbors)`` of each feature's nearest gallery rows, one piece of the gallery at a time."""
        best_ranks = best = None
        for start in range(0, len(self.gallery), self.chunk_size):
            stop = min(start + self.chunk_size, len(self.gallery))
            ranking = self.half_norms[start:stop] - features @ self.gallery[start:stop].T
            ranks, found = torch.topk(ranking, min(self.n_neighbors, stop - start), dim=1, largest=False)
            found = found + start
            if best is not None:
                # The nearest so far and this piece's nearest: keep the n_neighbors nearest of both.
                both = torch.cat([best_ranks, ranks], dim=1)
                ranks, order = torch.topk(both, self.n_neighbors, dim=1, largest=False)
                found = torch.gather(torch.cat([best, found], dim=1), 1, order)
            best_ranks, best = ranks, found
        return best


class GaussianDistance(nn.Module):
    """Features ``(n, d)`` -> squared Mahalanobis distance, as :class:`~sklearn_panda.MahalanobisScorer` computes it.

    Parameters
    ----------
    location : ndarray of shape (d,)
    components : ndarray of shape (k, d)
        Principal axes (rows).
    variances : ndarray of shape (k,)
        Variances along ``components``.
    residual_variance : float or None
        Variance in every direction outside ``components``; ``None``: those
        directions do not count.
    """

    def __init__(self, location, components, variances, residual_variance):
        super().__init__()
        as_buffer = lambda values: torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))  # noqa: E731
        self.register_buffer("location", as_buffer(location))
        self.register_buffer("components", as_buffer(components))
        self.register_buffer("inverse_variances", as_buffer(1.0 / np.asarray(variances, dtype=np.float64)))
        self.inverse_residual = None if residual_variance is None else float(1.0 / residual_variance)

    def forward(self, features):
        centered = features - self.location
        projected = centered @ self.components.T
        distances = (projected * projected * self.inverse_variances).sum(dim=1)
        if self.inverse_residual is not None:
            # The part outside the axes, formed before squaring: no difference of two
            # nearly equal norms, which float32 would round away.
            outside = centered - projected @ self.components
            distances = distances + (outside * outside).sum(dim=1) * self.inverse_residual
        return distances


class ScoringGraph(nn.Module):
    """uint8 images ``(n, H, W, C)`` -> ``score_samples``, as the fitted detector computes it.

    Parameters
    ----------
    net : nn.Module
        The adapted network: ``(n, 3, h, w)`` normalised images -> ``(n, d)`` features.
    image_size : tuple of int
        ``(H, W)`` of the input images.
    channels : {1, 3}
    resize : int, (int, int) or None
    crop_size : int or None
        The detector's geometry (see :func:`sklearn_panda._engine.data.resize_and_crop`).
    normalize_features : bool
        L2-normalise the features, as the detector does.
    average_mirror : bool, default=False
        Average the features with those of the mirror image (the network's
        input flipped left to right), as the detector does.
    distance : nn.Module
        The scorer's anomaly distance of the features: a :class:`GalleryDistance`
        or a :class:`GaussianDistance`. The score is its negative.
    """

    def __init__(self, net, *, image_size, channels, resize, crop_size, normalize_features, distance,
                 average_mirror=False):
        super().__init__()
        height, width = image_size
        new_height, new_width = resized_shape(height, width, resize)
        rows = columns = None
        if crop_size is not None:
            if crop_size > min(new_height, new_width):
                raise ValueError(
                    f"crop_size={crop_size} is larger than the resized image ({new_height}x{new_width})."
                )
            rows, columns = _crop_window(new_height, new_width, crop_size)
        self.width_pass = _axis_steps(width, new_width, columns)
        self.height_pass = _axis_steps(height, new_height, rows)
        self.channels = channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.net = net
        self.normalize_features = normalize_features
        self.average_mirror = average_mirror
        self.distance = distance

    def preprocess(self, images):
        """uint8 ``(n, H, W, C)`` -> the network's input, equal to the package's preprocessing."""
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        x = self.width_pass(x)
        x = self.height_pass(x.transpose(-1, -2)).transpose(-1, -2)
        # The same operations as the package's preprocessing, so the same float32 results.
        x = x / 255.0
        if self.channels == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def forward(self, images):
        inputs = self.preprocess(images)
        features = self._features(inputs)
        if self.average_mirror:
            features = (features + self._features(inputs.flip(-1))) / 2
        return -self.distance(features)

    def _features(self, inputs):
        features = self.net(inputs)
        return F.normalize(features, dim=1) if self.normalize_features else features


def export_scoring_graph(graph, image_size, channels, output_names=("scores",)):
    """Export a :class:`ScoringGraph` (or :class:`PatchScoringGraph`) to an ONNX model (any batch size, fixed image size).

    Parameters
    ----------
    graph : ScoringGraph or PatchScoringGraph
    image_size : tuple of int
    channels : int
    output_names : tuple of str
        The graph's outputs: ``("scores",)``, or ``("scores", "maps")`` for a patch graph.

    Returns
    -------
    model : onnx.ModelProto
        Input ``"images"`` uint8 ``(n, H, W, C)``; output ``"scores"`` float32 ``(n,)`` (and
        ``"maps"`` float32 ``(n, H, W)``).
    """
    graph = graph.eval()
    example = torch.zeros((2, *image_size, channels), dtype=torch.uint8)
    with torch.no_grad():
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=list(output_names),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            opset_version=OPSET,
            verbose=False,
        )
    return program.model_proto


class PatchScoringGraph(nn.Module):
    """uint8 images ``(n, H, W, C)`` -> ``(score_samples, anomaly_maps)``, as a fitted patch detector computes them.

    The images are scored at their own size: the graph holds no resize.

    Parameters
    ----------
    net : FeatureNet
        The patch detector's split network (every stage up to its last layer).
    channels : {1, 3}
    spec : dict
        The detector's fitted ``patch_spec_``: ``neighbourhood``, ``border``,
        ``n_features``, ``sigma``, ``image_score`` and ``n_worst_patches`` are read.
    bank : ndarray of shape (n_bank, d), float32
        The memory bank.
    n_neighbors : int
    fine_bank : ndarray of shape (n_fine, c), float32, or None
        With ``image_score="patch+fine"``: the bank of the first layer's own features.
    scales : (float, float) or None
        With ``image_score="patch+fine"``: what each bank's worst-patch mean is divided by.
    """

    def __init__(self, net, *, channels, spec, bank, n_neighbors, fine_bank=None, scales=None):
        super().__init__()
        self.stages = nn.ModuleList([*net.trunk, *list(net.stages)[:-1]])
        self.channels = channels
        self.neighbourhood = spec["neighbourhood"]
        self.border = spec["border"]
        self.n_features = spec["n_features"]
        self.sigma = spec["sigma"]
        self.image_score = spec["image_score"]
        self.n_worst = spec["n_worst_patches"]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.distance = GalleryDistance(bank, n_neighbors, "euclidean")
        self.fine_distance = None if fine_bank is None else GalleryDistance(fine_bank, n_neighbors, "euclidean")
        self.scales = None if scales is None else [float(scale) for scale in scales]

    def forward(self, images):
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        if self.channels == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        features = aggregate(maps, self.neighbourhood, self.n_features, border=self.border)
        n_images, n_channels, height, width = features.shape
        rows = features.permute(0, 2, 3, 1).reshape(-1, n_channels)
        patch_map = self.distance(rows).reshape(n_images, 1, height, width)
        size = images.shape[1:3]
        upsampled = patch_map
        if (height, width) != tuple(size):
            upsampled = F.interpolate(patch_map, size=size, mode="bilinear", align_corners=False)
        smoothed = gaussian_smoothing(upsampled, self.sigma)
        if self.image_score == "map":
            worst = smoothed.amax(dim=(1, 2, 3))
        else:
            worst = self._worst_patches(patch_map.reshape(n_images, -1))
        if self.image_score == "patch+fine":
            fine_rows = maps[0].permute(0, 2, 3, 1).reshape(n_images * height * width, -1)
            fine_worst = self._worst_patches(self.fine_distance(fine_rows).reshape(n_images, -1))
            worst = worst / self.scales[0] + fine_worst / self.scales[1]
        return -worst, smoothed[:, 0]

    def _worst_patches(self, distances):
        """Each image's mean of its ``n_worst_patches`` largest patch distances ``(n, m)`` -> ``(n,)``."""
        return distances.topk(min(self.n_worst, distances.shape[1]), dim=1).values.mean(dim=1)
