"""A patch detector's memory banks: their search, and what a fitted bank is measured against.

The leave-one-out distances of the calibration images (``offset_``,
``pixel_offset_``) and the exact search again of each image's largest
distances; numpy and the package's scorers, no torch. Every search of the
package gives the distances of the neighbours it found from their
differences (not from matrix products), so that a patch's distance depends
on the patch and its neighbours alone.
"""

import functools
import importlib.util
import warnings

import numpy as np
from threadpoolctl import ThreadpoolController

from ..scorers import KNNScorer, brute_force_kneighbors
from ..scorers._contract import AUTO_CONTAMINATION

# algorithm="auto": a memory bank of this many rows or more is searched through a faiss HNSW
# graph where faiss is installed, and each image's largest patch distances searched again exactly
# (certify_largest), so that image scores and offsets are the exact search's. Chosen on the validation splits of DeepPCB and
# BSData (benchmarks/patch_scoring_speed.py; benchmarks/RESULTS.md, "Faster scoring"): the
# fastest graph whose pixel ROC AUC stayed within 0.1 of the exact search's on both, HNSW16 at
# efSearch 4 (2 cores of an Intel Xeon, Sapphire Rapids: DeepPCB 8.9-9.1 images/s against 8.2 at efSearch 8, pixel ROC AUC 88.13 against
# 88.14 exact; BSData 7.3-7.6 against 6.3, 98.02 against 98.07; HNSW8 at efSearch 4, faster
# still, lost 0.12 on DeepPCB). From about 2,000 rows on the graph answers 6,400 queries faster
# than the exact search, build included. One candidate a patch (k_factor 1): faiss's beam holds
# max(efSearch, k) rows whatever k, and measures its distances from the differences, so asking for
# 4 candidates and re-ranking them gave the same nearest rows (DeepPCB's test photos: the same
# scores, maps and offsets) at 0.88-0.93 of the speed (RESULTS.md, "One candidate a patch").
BANK_INDEX = "HNSW16"
BANK_INDEX_PARAMS = {"efSearch": 4, "k_factor": 1}
BANK_INDEX_MIN_ROWS = 2_000
# The leave-one-out training scores (offset_) come from at most this many training images.
CALIBRATION_IMAGES = 64
# Candidates beyond n_neighbors that a training patch asks the bank for, to find neighbours
# from other images than its own.
LEAVE_OUT_CANDIDATES = 8
# Patches of each image searched again exactly, at first, where the bank's search is approximate:
# its largest patch distances (certify_largest), at least as many as its image score averages. On
# the validation splits of DeepPCB and BSData (HNSW16 at efSearch 4) the graph's largest distance
# was already the exact one for every photo, and its 4 largest the exact 4 largest: one round of 8
# suffices there, and costs 0.6 of a round of 32.
CERTIFIED_PATCHES = 8


def patch_rows(grid):
    """Patch features ``(n, D, h, w)`` -> rows ``(n, h * w, D)``."""
    n_images, n_channels, height, width = grid.shape
    return grid.permute(0, 2, 3, 1).reshape(n_images, height * width, n_channels)


def worst_patches(distances, n_worst):
    """Each image's mean of its ``n_worst`` largest patch distances (all of them where it has fewer):
    ``(n, m)`` -> ``(n,)``, float64.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda._estimators.patch_bank import worst_patches
    >>> worst_patches(np.array([[1.0, 5.0, 3.0, 2.0]]), 2), worst_patches(np.array([[1.0, 5.0]]), 4)
    (array([4.]), array([3.]))
    """
    n_worst = min(n_worst, distances.shape[1])
    largest = np.partition(distances, distances.shape[1] - n_worst, axis=1)[:, distances.shape[1] - n_worst :]
    return largest.astype(np.float64).mean(axis=1)


def patch_distances(grid, bank, scorer, n_largest=1):
    """Mean distance of each patch of ``grid`` ``(n, D, h, w)`` to its nearest ``bank`` rows
    (found by the fitted search ``scorer``): ``(n, h * w)``.

    Where the search is approximate, each image's ``n_largest`` largest
    distances are made exact (:func:`certify_largest`), so that they are the
    exact search's.
    """
    rows = patch_rows(grid)
    flat = rows.reshape(-1, rows.shape[-1]).cpu().numpy()
    distances = scorer.kneighbors(flat)[0].mean(axis=1).reshape(rows.shape[:2])
    if not is_exact(scorer):
        per_image = flat.reshape(*rows.shape)
        for image, found in enumerate(distances):
            certify_largest(found, per_image[image], bank, scorer.n_neighbors_, n_largest)
    return distances


@functools.cache
def blas_controller():
    """threadpoolctl's view of the BLAS libraries loaded (numpy's), made once."""
    return ThreadpoolController()


def is_exact(scorer):
    """Whether a fitted ``KNNScorer``'s search finds the exact nearest neighbours."""
    return scorer._gallery_search().exact


def certify_largest(distances, rows, gallery, n_neighbors, n_largest=1):
    """Make an image's largest patch distances exact, in place, until its ``n_largest`` largest are certain.

    ``distances`` ``(m,)`` are each patch's mean distance to ``n_neighbors``
    rows of ``gallery`` an approximate search found: never below the exact
    mean (the nearest rows can only be nearer). The patches with the largest
    of them are searched again exactly, ``max(CERTIFIED_PATCHES, n_largest)``
    first, then twice as many each round, until the ``n_largest``-th largest
    exact distance is at least every distance not searched again: then the
    ``n_largest`` largest distances are the exact search's (no patch left
    can be above them), and so are the distances of every patch above them.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda._estimators.patch_bank import certify_largest
    >>> gallery = np.array([[0.0], [10.0]], dtype=np.float32)
    >>> rows = np.array([[1.0], [9.0], [4.0]], dtype=np.float32)
    >>> approximate = np.array([1.0, 9.0, 6.0], dtype=np.float32)  # the last: from a far row
    >>> certify_largest(approximate, rows, gallery, 1)
    array([1., 1., 4.], dtype=float32)
    """
    order = np.argsort(-distances, kind="stable")
    n_largest = min(n_largest, len(order))
    done, size = 0, max(CERTIFIED_PATCHES, n_largest)
    while done < len(order):
        chosen = order[done:size]
        # A few rows: one BLAS thread, whose pool would otherwise spin beside torch's and faiss's.
        with blas_controller().limit(limits=1, user_api="blas"):
            squared, _ = brute_force_kneighbors(rows[chosen], gallery, n_neighbors)
        distances[chosen] = np.sqrt(np.maximum(squared, 0)).mean(axis=1)
        done, size = size, 2 * size
        if done >= len(order):
            break
        certain = np.partition(distances[order[:done]], done - n_largest)[done - n_largest]
        if certain >= distances[order[done]]:
            break
    return distances


def leave_one_out(rows, index, bank, owners, scorer, others, n_largest=1):
    """Mean distance of each of training image ``index``'s patch ``rows`` to its nearest bank rows
    from other images.

    Each patch asks the bank's search for ``n_neighbors`` plus
    ``LEAVE_OUT_CANDIDATES`` candidates and keeps the nearest that come from
    other images; a patch whose candidates all come from its own image (a
    uniform region, repeated in the bank) is searched again, exactly, among
    the other images' bank rows. With an exact search the result is exact.
    Where fewer than ``n_neighbors`` bank rows come from other images, the
    mean is over those there are (a warning says so); where none do, over
    ``others()``, the other calibration images' patches. Where the search is
    approximate, the ``n_largest`` largest distances are made exact
    (:func:`certify_largest`) among the other images' bank rows.
    """
    n_neighbors = scorer.n_neighbors_
    candidates, neighbours = scorer.kneighbors(rows, n_neighbors=min(n_neighbors + LEAVE_OUT_CANDIDATES, len(bank)))
    from_others = owners[neighbours] != index
    # The first n_neighbors candidates from other images (their order is by distance).
    order = np.argsort(~from_others, axis=1, kind="stable")[:, :n_neighbors]
    distances = np.take_along_axis(candidates, order, axis=1).mean(axis=1)
    short = np.flatnonzero(from_others.sum(axis=1) < n_neighbors)
    if len(short):
        gallery = bank[owners != index]
        if len(gallery) == 0:
            gallery = np.concatenate(others())
        if len(gallery) < n_neighbors:
            warnings.warn(
                f"Only {len(gallery)} memory-bank patches come from other images than training image "
                f"{index}: its leave-one-out score averages {len(gallery)} distances instead of "
                f"n_neighbors={n_neighbors}.",
                UserWarning,
            )
        squared, _ = brute_force_kneighbors(rows[short], gallery, min(n_neighbors, len(gallery)))
        distances[short] = np.sqrt(np.maximum(squared, 0)).mean(axis=1)
    if not is_exact(scorer):
        others_rows = bank[owners != index]
        if len(others_rows) >= n_neighbors:
            certify_largest(distances, rows, others_rows, n_neighbors, n_largest)
    return distances


def pixel_offset(map_maxima, pixel_contamination):
    """The map value above which a pixel is defective: exceeded somewhere in ``pixel_contamination``
    of the normal images' (leave-one-out) maps ("auto": 1%).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda._estimators.patch_bank import pixel_offset
    >>> pixel_offset(np.arange(101.0), 0.1)
    90.0
    """
    rate = AUTO_CONTAMINATION if pixel_contamination == "auto" else pixel_contamination
    return float(np.percentile(map_maxima, 100.0 * (1.0 - rate)))


def calibration_threshold(kept_keys, new_keys):
    """The largest random key that keeps an image among the calibration images.

    Each training image gets a uniform random key as it arrives; the
    ``CALIBRATION_IMAGES`` images with the smallest keys among all those seen
    (by ``fit`` and every ``partial_fit``) are the calibration images: a
    uniform random sample of them, drawn without holding the others.
    ``kept_keys`` are the keys of the calibration images so far, ``new_keys``
    those of the images arriving.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda._estimators.patch_bank import calibration_threshold
    >>> calibration_threshold(np.array([0.5]), np.array([0.1, 0.9]))   # few images: every one
    inf
    >>> keys = np.random.default_rng(0).random(1000)
    >>> int((keys <= calibration_threshold(keys[:0], keys)).sum())
    64
    """
    keys = np.concatenate([kept_keys, new_keys])
    if len(keys) <= CALIBRATION_IMAGES:
        return float("inf")
    return float(np.partition(keys, CALIBRATION_IMAGES - 1)[CALIBRATION_IMAGES - 1])


def bank_search(algorithm, n_bank, n_neighbors, seed):
    """The unfitted ``KNNScorer`` that searches a memory bank of ``n_bank`` rows."""
    index = {}
    if algorithm == "auto":
        algorithm = "brute"
        if n_bank >= BANK_INDEX_MIN_ROWS and importlib.util.find_spec("faiss") is not None:
            algorithm, index = "faiss", {"faiss_index": BANK_INDEX, "faiss_params": dict(BANK_INDEX_PARAMS)}
    return KNNScorer(n_neighbors=n_neighbors, metric="euclidean", algorithm=algorithm, random_state=seed, **index)
