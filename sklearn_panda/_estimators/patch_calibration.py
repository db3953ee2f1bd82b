"""A patch detector's calibration images: the training images its offsets are measured on.

``offset_`` and ``pixel_offset_`` come from the leave-one-out scores and maps
of up to ``CALIBRATION_IMAGES`` training images, each measured against the
memory banks without its own patches. A uniform random sample of all the
images seen (by ``fit`` and every later ``partial_fit``) is kept for that,
with each one's stage outputs in half precision (about a third of the size
of its patch features), so that ``partial_fit`` measures them again against
the grown banks: the offsets an update gives are those a fit on all the
images would give.
"""

import numpy as np
import torch

from .._engine.maps import gaussian_smoothing, resize_maps

from .._engine.patch_features import patch_features
from .patch_bank import calibration_threshold, leave_one_out, patch_rows, worst_patches

# The largest magnitude a float16 holds; stage outputs beyond it are kept in float32.
FLOAT16_MAX = float(np.finfo(np.float16).max)


def smoothed_maps(distances, grid, size, sigma):
    """Patch distances ``(n * h * w,)`` -> maps ``(n, 1, H, W)``: upsampled to ``size``, smoothed.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda._estimators.patch_calibration import smoothed_maps
    >>> tuple(smoothed_maps(np.ones(4 * 6), (4, 6), (32, 48), 4.0).shape)
    (1, 1, 32, 48)
    """
    maps = torch.from_numpy(np.ascontiguousarray(distances, dtype=np.float32)).reshape(-1, 1, *grid)
    if tuple(grid) != tuple(size):
        maps = torch.nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return gaussian_smoothing(maps, sigma)


def compact(stage_output):
    """One image's stage output as a float16 array where it fits, float32 otherwise."""
    array = stage_output.detach().float().cpu().numpy()
    return array.astype(np.float16) if np.abs(array).max(initial=0.0) <= FLOAT16_MAX else array


class CalibrationSample:
    """The calibration images among those kept so far and those arriving.

    Parameters
    ----------
    kept : list of dict
        The calibration images of an earlier fit (``calibration_maps_``), or
        an empty list.
    n_new : int
        How many images arrive.
    rng : numpy.random.Generator
        Draws each arriving image's random key.

    Attributes
    ----------
    entries : list of dict
        One a calibration image: ``image`` (its number among all the images
        seen), ``key``, ``size`` (the scored size), ``original`` (its input
        size) and ``maps`` (its stage outputs, one array ``(C, h, w)`` a layer).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn_panda._estimators.patch_calibration import CalibrationSample
    >>> sample = CalibrationSample([], 3, np.random.default_rng(0))
    >>> for index in range(3):
    ...     sample.offer(index, image=index, maps=[torch.ones(4, 2, 2)], size=(16, 16), original=(16, 16))
    >>> [entry["image"] for entry in sample.entries], sample.entries[0]["maps"][0].dtype
    ([0, 1, 2], dtype('float16'))
    """

    def __init__(self, kept, n_new, rng):
        self.keys = rng.random(n_new)
        self.threshold = calibration_threshold(np.array([entry["key"] for entry in kept]), self.keys)
        self.entries = [entry for entry in kept if entry["key"] <= self.threshold]

    def offer(self, index, *, image, maps, size, original):
        """Keep arriving image ``index`` (``image`` among all, ``original`` its input size) if it is a
        calibration image."""
        if self.keys[index] <= self.threshold:
            self.entries.append({
                "image": int(image), "key": float(self.keys[index]), "size": list(size), "original": list(original),
                "maps": [compact(one) for one in maps],
            })


def calibration_rows(entry, spec):
    """A calibration image's patch rows ``(h * w, D)``, one array a bank, and its grid ``(h, w)``."""
    maps = [torch.from_numpy(one.astype(np.float32))[None] for one in entry["maps"]]
    grids = patch_features(maps, spec)
    return [patch_rows(grid)[0].numpy() for grid in grids], tuple(grids[0].shape[-2:])


def leave_one_out_worst(banks, entries, spec, progress, pool=None):
    """The calibration images' worst patches, each image measured against the banks without its own patches.

    ``banks`` holds ``(rows, the image each row came from, its search)`` a
    bank. Where every bank row comes from the image measured, it is measured
    against the patches of the other images of ``pool`` (default:
    ``entries``). Returns one ``(n_entries,)`` array per bank, each image's mean
    of its ``spec["n_worst_patches"]`` largest patch distances
    (:func:`~sklearn_panda._estimators.patch_bank.worst_patches`), the
    maxima of their smoothed maps at the scored size (as ``image_score="map"``
    scores), and at the input size (as masks compare maps with ``pixel_offset_``;
    entries saved without their input size: the scored size).
    """
    n_worst = spec["n_worst_patches"]
    pool = entries if pool is None else pool
    per_bank = [[] for _ in banks]
    map_maxima, input_maxima = np.empty(len(entries)), np.empty(len(entries))
    for number, entry in enumerate(entries):
        rows, grid = calibration_rows(entry, spec)
        for which, (bank, owners, scorer) in enumerate(banks):

            def others(which=which, image=entry["image"]):
                return [calibration_rows(other, spec)[0][which] for other in pool if other["image"] != image]

            distances = leave_one_out(rows[which], entry["image"], bank, owners, scorer, others, n_worst)
            per_bank[which].append(worst_patches(distances[None], n_worst)[0])
            if which == 0:
                smoothed = smoothed_maps(distances, grid, tuple(entry["size"]), spec["sigma"])
                map_maxima[number] = float(smoothed.amax())
                input_maxima[number] = float(resize_maps(smoothed, entry.get("original", entry["size"])).amax())
        progress.update(number + 1)
    return [np.array(found) for found in per_bank], map_maxima, input_maxima
