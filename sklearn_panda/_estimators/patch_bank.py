"""A patch detector's memory banks: their search, and what a fitted bank is measured against.

The leave-one-out distances of the calibration images (``offset_``,
``pixel_offset_``) and the exact distances of the neighbours a search found;
numpy and the package's scorers, no torch.
"""

import functools
import importlib.util
import warnings

import numpy as np
from threadpoolctl import ThreadpoolController

from ..scorers import KNNScorer, brute_force_kneighbors
from ..scorers._contract import AUTO_CONTAMINATION

# algorithm="auto": a memory bank of this many rows or more is searched through a faiss HNSW
# graph where faiss is installed, 4 candidates a patch re-ranked by their exact distances, and
# each image's largest patch distances searched again exactly (certify_largest), so that image
# scores and offsets are the exact search's. Chosen on the validation splits of DeepPCB and
# BSData (benchmarks/patch_scoring_speed.py; benchmarks/RESULTS.md, "Faster scoring"): the
# fastest graph whose pixel ROC AUC stayed within 0.1 of the exact search's on both, HNSW16 at
# efSearch 4 (DeepPCB 8.9-9.1 images/s against 8.2 at efSearch 8, pixel ROC AUC 88.13 against
# 88.14 exact; BSData 7.3-7.6 against 6.3, 98.02 against 98.07; HNSW8 at efSearch 4, faster
# still, lost 0.12 on DeepPCB). From about 2,000 rows on the graph answers 6,400 queries faster
# than the exact search, build included.
BANK_INDEX = "HNSW16"
BANK_INDEX_PARAMS = {"efSearch": 4, "k_factor": 4}
BANK_INDEX_MIN_ROWS = 2_000
# The leave-one-out training scores (offset_) come from at most this many training images.
CALIBRATION_IMAGES = 64
# Candidates beyond n_neighbors that a training patch asks the bank for, to find neighbours
# from other images than its own.
LEAVE_OUT_CANDIDATES = 8
# Patches of each image searched again exactly, at first, where the bank's search is approximate:
# its largest patch distances (certify_largest).
CERTIFIED_PATCHES = 32
# Rows whose differences to their neighbours are taken at once: a photo's hundreds of thousands
# of patches would otherwise hold two more copies of its features.
EXACT_DISTANCE_ROWS = 2**14


def exact_distances(rows, bank, neighbours):
    """Distances ``(n, k)`` from each row to the bank rows its search found, from the differences.

    The search's own distances come from ``|x|^2 - 2 x.y + |y|^2`` in float32
    matrix products, whose rounding depends on what else is in the batch;
    these depend on the row and its neighbours alone (and lose no precision
    to the cancellation). Taken ``EXACT_DISTANCE_ROWS`` rows at a time.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda._estimators.patch_bank import exact_distances
    >>> exact_distances(np.zeros((1, 2), np.float32), np.array([[3.0, 4.0], [1.0, 0.0]], np.float32), np.array([[1, 0]]))
    array([[1., 5.]], dtype=float32)
    """
    distances = np.empty(neighbours.shape, dtype=np.result_type(rows, bank))
    for start in range(0, len(rows), EXACT_DISTANCE_ROWS):
        block = slice(start, start + EXACT_DISTANCE_ROWS)
        distances[block] = np.linalg.norm(rows[block, None, :] - bank[neighbours[block]], axis=2)
    return distances


def patch_rows(grid):
    """Patch features ``(n, D, h, w)`` -> rows ``(n, h * w, D)``."""
    n_images, n_channels, height, width = grid.shape
    return grid.permute(0, 2, 3, 1).reshape(n_images, height * width, n_channels)


def patch_distances(grid, bank, scorer):
    """Mean distance of each patch of ``grid`` ``(n, D, h, w)`` to its nearest ``bank`` rows
    (found by the fitted search ``scorer``): ``(n, h * w)``.

    Where the search is approximate, each image's largest distances are
    made exact (:func:`certify_largest`), so that its largest patch
    distance is the exact search's.
    """
    rows = patch_rows(grid)
    flat = rows.reshape(-1, rows.shape[-1]).cpu().numpy()
    _, neighbours = scorer.kneighbors(flat)
    distances = exact_distances(flat, bank, neighbours).mean(axis=1).reshape(rows.shape[:2])
    if not is_exact(scorer):
        per_image = flat.reshape(*rows.shape)
        for image, found in enumerate(distances):
            certify_largest(found, per_image[image], bank, scorer.n_neighbors_)
    return distances


@functools.cache
def blas_controller():
    """threadpoolctl's view of the BLAS libraries loaded (numpy's), made once."""
    return ThreadpoolController()


def is_exact(scorer):
    """Whether a fitted ``KNNScorer``'s search finds the exact nearest neighbours."""
    return scorer._gallery_search().exact


def certify_largest(distances, rows, gallery, n_neighbors):
    """Make an image's largest patch distances exact, in place, until its largest one is certain.

    ``distances`` ``(m,)`` are each patch's mean distance to ``n_neighbors``
    rows of ``gallery`` an approximate search found: never below the exact
    mean (the nearest rows can only be nearer). The patches with the largest
    of them are searched again exactly, ``CERTIFIED_PATCHES`` first, then
    twice as many each round, until the largest exact distance is at least
    every distance not searched again: then it is the exact search's
    largest, and so are the distances of every patch above it.

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
    done, size = 0, CERTIFIED_PATCHES
    while done < len(order):
        chosen = order[done:size]
        # A few rows: one BLAS thread, whose pool would otherwise spin beside torch's and faiss's.
        with blas_controller().limit(limits=1, user_api="blas"):
            _, neighbours = brute_force_kneighbors(rows[chosen], gallery, n_neighbors)
        distances[chosen] = exact_distances(rows[chosen], gallery, neighbours).mean(axis=1)
        done, size = size, 2 * size
        if done >= len(order) or distances[order[:done]].max() >= distances[order[done]]:
            break
    return distances


def leave_one_out(rows, index, bank, owners, scorer, others):
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
    approximate, the largest distances are made exact
    (:func:`certify_largest`) among the other images' bank rows.
    """
    n_neighbors = scorer.n_neighbors_
    _, neighbours = scorer.kneighbors(rows, n_neighbors=min(n_neighbors + LEAVE_OUT_CANDIDATES, len(bank)))
    candidates = exact_distances(rows, bank, neighbours)
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
            certify_largest(distances, rows, others_rows, n_neighbors)
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
