"""Anomaly maps' smoothing and resizing: a separable Gaussian as banded matrix products, bilinear resizing.

The same functions serve the torch scoring path and the exported ONNX
graph (:mod:`.onnx_graph`). No estimator code here.
"""

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

# Pixels of a map smoothed at once (see convolve_lines).
SMOOTHING_PIXELS = 2**20
# Positions along a line that one banded matrix of the smoothing produces (see convolve_lines).
SMOOTHING_BLOCK = 128


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
    >>> from sklearn_panda._engine.maps import gaussian_smoothing
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
    >>> from sklearn_panda._engine.maps import convolve_lines
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
    >>> from sklearn_panda._engine.maps import kernel_band
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
