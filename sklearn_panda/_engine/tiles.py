"""Feature maps of a large image, tile by tile, equal to those of the whole image.

A convolutional network's output at one position depends on the input pixels
within its receptive field only. An image too large to go through a network
at once can therefore go through it in overlapping tiles: each tile reaches
past the part of the map it is kept for (its *core*) by at least that reach
(its *margin*), so the kept part sees exactly the pixels it would have seen
in the whole image, and the kept parts, put side by side, are the maps of the
whole image, up to float rounding. Two things make that exact, not only
close:

* every tile starts at a multiple of the network's largest stride (its
  *period*), so that each tile's grids fall on the whole image's grids;
* every tile ends at a multiple of the period before the image's end, so
  that each tile's size leaves the same remainder as the image's: networks
  that pad "same" as TensorFlow does (EfficientNet-Lite) pad by an amount
  that depends on the input's size, and so shift their grids with it.

The reach is measured, not derived from the layers (:func:`measure_reach`):
one input pixel of a random probe is changed and the outputs that change are
found; a probe of each tile's layout is then checked against the untiled
outputs, so that a network that is not translation-equivariant (one that
pools the whole image for squeeze-and-excitation, or crops as it goes) is
never tiled. Torch only; no estimator code.
"""

from typing import NamedTuple

import torch

# The reach is measured on square random probes of this side, doubled until the changes stay
# inside the maps; a network whose changes reach the border of the largest is not tiled.
FIRST_PROBE = 512
LARGEST_PROBE = 2048
# Tiled and untiled probe outputs may differ by float rounding (TF32 convolutions on a GPU round
# to about 1e-3); a misplaced grid or an unseen pixel changes them by their own size.
PROBE_TOLERANCE = 1e-2


class Reach(NamedTuple):
    """How a network's feature maps depend on its input, as tiling needs it.

    Attributes
    ----------
    strides : tuple of int
        Each output map's stride: its position ``i`` lies at input pixel ``i * stride``.
    period : int
        The largest stride: tiles start at multiples of it.
    margin : int
        Input pixels a tile needs beyond its core on each side, a multiple
        of ``period``: no output of the core depends on a pixel further away.
    """

    strides: tuple
    period: int
    margin: int


class Span(NamedTuple):
    """One tile along one axis, in input pixels: it covers ``[start, stop)`` and keeps ``[core_start, core_stop)``."""

    start: int
    stop: int
    core_start: int
    core_stop: int


def measure_reach(run, channels, *, device, dtype=torch.float32):
    """The :class:`Reach` of ``run``'s output maps, or ``None`` when tiling them would not be exact.

    ``run`` maps images ``(n, channels, H, W)`` to a list of feature maps
    ``(n, C_i, H_i, W_i)``. One pixel in the middle of a random square probe
    is changed; every output position that changes bounds how far an output
    reaches into the input (the grid's own step is added, since one pixel
    tells where a receptive field ends only to within a step). The probe
    grows until no change reaches its border. The reach is then checked:
    the probe, run in four tiles, gives its untiled outputs, or ``None`` is
    returned.

    Parameters
    ----------
    run : callable
        Images to a list of feature maps; called under ``torch.inference_mode``.
    channels : int
        The images' channels.
    device : torch.device
    dtype : torch.dtype, default=torch.float32

    Returns
    -------
    Reach or None
        ``None`` for a network whose maps are not at integer strides, or
        whose outputs depend on pixels beyond ``LARGEST_PROBE / 2`` (a
        global pooling inside, as squeeze-and-excitation blocks have), or
        whose tiled outputs differ from the untiled ones.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sklearn_panda._engine.tiles import measure_reach
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1))
    >>> measure_reach(lambda images: [net(images)], 3, device=torch.device("cpu"))
    Reach(strides=(4,), period=4, margin=4)
    """
    generator = torch.Generator().manual_seed(0)
    side = FIRST_PROBE
    with torch.inference_mode():
        while side <= LARGEST_PROBE:
            probe = torch.randn(1, channels, side, side, generator=generator).to(device, dtype)
            probe = probe.contiguous(memory_format=torch.channels_last)
            outputs = run(probe)
            strides = _strides(side, outputs)
            if strides is None:
                return None
            margin = _changed_reach(run, probe, outputs, strides)
            if margin is not None:
                period = max(strides)
                reach = Reach(strides, period, -(-margin // period) * period)
                return reach if _tiles_agree(run, probe, outputs, reach) else None
            side *= 2
    return None


def _strides(side, outputs):
    """Each output's stride on a square probe of ``side`` pixels; ``None`` where one is not an integer
    that divides the largest."""
    strides = []
    for output in outputs:
        height, width = output.shape[-2:]
        if output.ndim != 4 or height != width or side % height:
            return None
        strides.append(side // height)
    if any(max(strides) % stride for stride in strides):
        return None
    return tuple(strides)


def _changed_reach(run, probe, outputs, strides):
    """Input pixels an output reaches from its own, from the outputs that one changed pixel changes;
    ``None`` when a change reaches a map's border (the probe is too small to tell)."""
    centre = probe.shape[-1] // 2
    changed_probe = probe.clone()
    changed_probe[..., centre, centre] += 3.0
    reach = 0
    for before, after, stride in zip(outputs, run(changed_probe), strides):
        changed = (before != after).flatten(0, 1).any(dim=0)
        for axis in (0, 1):
            found = torch.nonzero(changed.any(dim=1 - axis)).flatten().tolist()
            if not found:
                continue
            first, last = found[0], found[-1]
            if first == 0 or last == changed.shape[axis] - 1:
                return None
            # Output i depends on pixels [i * stride + low, i * stride + high]: the first and last
            # changed outputs bound low and high to within a stride.
            reach = max(reach, centre - first * stride, (last + 1) * stride - 1 - centre)
    return reach


def _tiles_agree(run, probe, outputs, reach):
    """Whether ``probe`` run in two by two tiles gives ``outputs``, to float rounding."""
    spans = tile_spans(probe.shape[-1], 2, reach)
    tiled = run_in_tiles(run, probe, reach, spans, spans)
    return all(
        float((one - other).abs().max()) <= PROBE_TOLERANCE * float(one.abs().max()) + 1e-6
        for one, other in zip(outputs, tiled)
    )


def tile_spans(length, n_cores, reach):
    """The tiles along an axis of ``length`` pixels: ``n_cores`` cores (at most one a period), each with its margin.

    Cores start at multiples of ``reach.period`` and share the axis about
    evenly; a tile reaches ``reach.margin`` pixels past its core (or to the
    image's border), and its far end lies a multiple of the period before
    the axis' end, so that its length leaves the same remainder as the axis'.

    Parameters
    ----------
    length : int
    n_cores : int
    reach : Reach

    Returns
    -------
    list of Span

    Examples
    --------
    >>> from sklearn_panda._engine.tiles import Reach, tile_spans
    >>> for span in tile_spans(100, 3, Reach((8, 16), 16, 16)):
    ...     print(span)
    Span(start=0, stop=52, core_start=0, core_stop=32)
    Span(start=16, stop=84, core_start=32, core_stop=64)
    Span(start=48, stop=100, core_start=64, core_stop=112)
    """
    period, margin = reach.period, reach.margin
    periods = _periods(length, reach)
    n_cores = min(n_cores, periods)
    bounds = [number * periods // n_cores * period for number in range(n_cores + 1)]
    spans = []
    for core_start, core_stop in zip(bounds, bounds[1:]):
        stop = core_stop + margin
        stop = length if stop >= length else length - (length - stop) // period * period
        spans.append(Span(max(0, core_start - margin), stop, core_start, core_stop))
    return spans


def tile_layout(height, width, tile_pixels, reach):
    """The tiles of an image: row and column spans whose tiles hold at most ``tile_pixels`` pixels,
    margins included, and compute the fewest pixels in all.

    Tiles need not be square: a strip is cut across its length only, which
    computes fewer margins. Where no tile fits the budget, every core is one
    period.

    Parameters
    ----------
    height, width : int
    tile_pixels : int
    reach : Reach

    Returns
    -------
    rows, columns : list of Span
        :func:`tile_spans` of each axis; the tiles are their products.

    Examples
    --------
    >>> from sklearn_panda._engine.tiles import Reach, tile_layout
    >>> reach = Reach((8, 16), 16, 176)
    >>> [(len(rows), len(columns)) for rows, columns in (
    ...     tile_layout(3000, 4096, 2**22, reach), tile_layout(2000, 8000, 2**22, reach))]
    [(2, 2), (1, 5)]
    """
    best = None
    for n_rows in range(1, _periods(height, reach) + 1):
        rows = tile_spans(height, n_rows, reach)
        computed_rows = sum(span.stop - span.start for span in rows)
        if best is not None and computed_rows * width >= best[0]:
            # More rows only add margins.
            break
        n_columns = _fewest_cores(width, tile_pixels // max(span.stop - span.start for span in rows), reach)
        if n_columns is None:
            continue
        columns = tile_spans(width, n_columns, reach)
        computed = computed_rows * sum(span.stop - span.start for span in columns)
        if best is None or computed < best[0]:
            best = (computed, rows, columns)
    if best is None:
        return tile_spans(height, _periods(height, reach), reach), tile_spans(width, _periods(width, reach), reach)
    return best[1], best[2]


def _periods(length, reach):
    return -(-length // reach.period)


def _fewest_cores(length, longest, reach):
    """The fewest cores along an axis whose tiles are at most ``longest`` pixels long; ``None`` where
    even cores of one period make longer ones."""

    def fits(n_cores):
        return max(span.stop - span.start for span in tile_spans(length, n_cores, reach)) <= longest

    most = _periods(length, reach)
    if longest < 1 or not fits(most):
        return None
    # Not bisected: a middle tile may reach both borders of a short axis while two tiles fit.
    return next(n_cores for n_cores in range(-(-length // longest), most + 1) if fits(n_cores))


def run_in_tiles(run, images, reach, rows, columns):
    """``run(images)``, computed tile by tile: the outputs assembled from each tile's core.

    Parameters
    ----------
    run : callable
        Images ``(n, C, H, W)`` to a list of feature maps, at ``reach.strides``.
    images : Tensor (n, C, H, W)
    reach : Reach
        ``run``'s, from :func:`measure_reach`.
    rows, columns : list of Span
        The tiles (:func:`tile_layout`, :func:`tile_spans`).

    Returns
    -------
    list of Tensor
        Equal to ``run(images)`` up to float rounding.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sklearn_panda._engine.tiles import measure_reach, run_in_tiles, tile_spans
    >>> torch.manual_seed(0) and None
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1))
    >>> run = lambda images: [net(images)]
    >>> reach = measure_reach(run, 3, device=torch.device("cpu"))
    >>> images = torch.rand(1, 3, 100, 70)
    >>> rows, columns = tile_spans(100, 3, reach), tile_spans(70, 2, reach)
    >>> with torch.no_grad():
    ...     (tiled,), (whole,) = run_in_tiles(run, images, reach, rows, columns), run(images)
    >>> tiled.shape, bool(torch.allclose(tiled, whole, atol=1e-6))
    (torch.Size([1, 4, 25, 18]), True)
    """
    assembled_rows = []
    for row in rows:
        pieces = []
        for column in columns:
            tile = images[..., row.start : row.stop, column.start : column.stop]
            outputs = run(tile.contiguous(memory_format=torch.channels_last))
            pieces.append([_core_of(output, stride, row, column) for output, stride in zip(outputs, reach.strides)])
        assembled_rows.append([torch.cat(parts, dim=-1) for parts in zip(*pieces)])
    return [torch.cat(parts, dim=-2) for parts in zip(*assembled_rows)]


def _core_of(output, stride, row, column):
    """The part of a tile's ``output`` (at ``stride``) that lies in its core."""
    top, bottom = (row.core_start - row.start) // stride, (row.core_stop - row.start) // stride
    left, right = (column.core_start - column.start) // stride, (column.core_stop - column.start) // stride
    return output[..., top:bottom, left:right]
