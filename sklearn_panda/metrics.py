"""Pixel-level evaluation of anomaly maps: pixel ROC AUC and the per-region overlap (PRO).

A local detector (:class:`~sklearn_panda.PandaPatchDetector`) gives one map per
image, higher where a pixel looks more anomalous; a data set with defect masks
(1 inside a defect, 0 elsewhere) says where the defects are. Two figures are
standard on MVTec AD and its kin (Bergmann et al., "The MVTec Anomaly Detection
Dataset", IJCV 2021):

* :func:`pixel_roc_auc`: every pixel of every image is one sample, the mask its
  label. Large defects weigh more than small ones.
* :func:`pro_score`: each connected defect region counts once, whatever its
  size. At a threshold, a region's overlap is the fraction of its pixels above
  the threshold; PRO is the mean overlap over all regions, traced against the
  false-positive rate on defect-free pixels and integrated up to ``max_fpr``
  (0.3 by convention), divided by ``max_fpr`` so that a perfect map scores 1.

Both take lists of maps and masks of mixed sizes (each map the size of its
mask) as well as stacked arrays. This module never imports torch. The curves
are computed exactly, from one sort of all pixel scores (ties form one
threshold): scikit-learn's :func:`~sklearn.metrics.roc_auc_score` for the
pixel ROC AUC and scipy's :func:`~scipy.ndimage.label` for the regions; no
threshold grid is sampled, so no figure depends on a grid's resolution.
"""

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

__all__ = ["pixel_roc_auc", "pro_score"]

# Pixels touching by an edge or a corner belong to one region, as in the MVTec AD evaluation.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _check_maps_and_masks(masks, maps):
    """``masks`` and ``maps`` as equally long lists of 2-D arrays of equal shapes, checked."""
    masks = _as_image_list(masks, "masks")
    maps = _as_image_list(maps, "maps")
    if len(masks) != len(maps):
        raise ValueError(f"Got {len(masks)} masks and {len(maps)} maps; give one mask per map.")
    checked_masks, checked_maps = [], []
    for index, (mask, values) in enumerate(zip(masks, maps)):
        if mask.shape != values.shape:
            raise ValueError(
                f"Mask {index} has shape {mask.shape} but its map has shape {values.shape}; a mask "
                "must have its image's size (anomaly_maps returns maps at each input image's size)."
            )
        unique = np.unique(mask)
        if not np.isin(unique, (0, 1)).all():
            raise ValueError(
                f"Mask {index} holds values {unique[:5].tolist()}; masks must be binary (0 or False "
                "for defect-free pixels, 1 or True inside a defect)."
            )
        values = np.asarray(values, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"Map {index} holds NaN or infinite values.")
        checked_masks.append(mask.astype(bool))
        checked_maps.append(values)
    return checked_masks, checked_maps


def _as_image_list(images, name):
    if isinstance(images, np.ndarray):
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3:
            raise ValueError(f"{name} must be 2-D arrays (H, W), one per image; got an array of shape {images.shape}.")
    images = [np.asarray(image) for image in images]
    if not images:
        raise ValueError(f"Found no {name}; at least one image is required.")
    for index, image in enumerate(images):
        if image.ndim != 2:
            raise ValueError(f"{name}[{index}] has shape {image.shape}; each must be a 2-D array (H, W).")
    return images


def pixel_roc_auc(masks, maps):
    """ROC AUC of the anomaly maps as pixel classifiers against the defect masks.

    Parameters
    ----------
    masks : array-like of shape (n_images, H, W) or list of 2-D arrays
        1 (or True) inside a defect, 0 elsewhere.
    maps : array-like of shape (n_images, H, W) or list of 2-D arrays
        Anomaly maps, higher = more anomalous, each of its mask's shape.

    Returns
    -------
    score : float
        The area under the pixel-level ROC curve, in [0, 1].

    Raises
    ------
    ValueError
        When a map's shape differs from its mask's, a mask is not binary, a
        map holds NaN or infinite values, or the masks hold only one class.

    See Also
    --------
    pro_score : Each defect region weighed once, whatever its size.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda.metrics import pixel_roc_auc
    >>> mask = np.zeros((4, 4), dtype=bool); mask[1:3, 1:3] = True
    >>> pixel_roc_auc([mask], [mask * 1.0])
    1.0
    """
    masks, maps = _check_maps_and_masks(masks, maps)
    labels = np.concatenate([mask.ravel() for mask in masks])
    if labels.all() or not labels.any():
        raise ValueError(
            "The masks hold only defect-free pixels or only defect pixels; the pixel ROC AUC needs both."
        )
    return float(roc_auc_score(labels, np.concatenate([values.ravel() for values in maps])))


def pro_score(masks, maps, *, max_fpr=0.3):
    """Area under the per-region-overlap curve up to ``max_fpr``, normalised to [0, 1].

    The defect regions are the 8-connected components of each mask. For a
    threshold ``t``, a region's overlap is the fraction of its pixels whose
    map value is at least ``t``, PRO(t) is the mean overlap over every region
    of every image, and FPR(t) the fraction of defect-free pixels (of all
    images, normal ones included) at least ``t``. The curve (FPR, PRO) runs
    through every distinct map value from (0, 0); its area from FPR 0 to
    ``max_fpr`` (linearly interpolated at ``max_fpr``) is divided by
    ``max_fpr``.

    Parameters
    ----------
    masks : array-like of shape (n_images, H, W) or list of 2-D arrays
        1 (or True) inside a defect, 0 elsewhere.
    maps : array-like of shape (n_images, H, W) or list of 2-D arrays
        Anomaly maps, higher = more anomalous, each of its mask's shape.
    max_fpr : float, default=0.3
        Where the integration stops (the MVTec AD convention is 0.3).

    Returns
    -------
    score : float
        The normalised area, in [0, 1]: 1 when some threshold finds every
        defect pixel before any defect-free one.

    Raises
    ------
    ValueError
        As :func:`pixel_roc_auc`, when no mask has a defect or no pixel is
        defect-free, or for ``max_fpr`` outside (0, 1].

    See Also
    --------
    pixel_roc_auc : Every pixel weighed once.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda.metrics import pro_score
    >>> mask = np.zeros((8, 8), dtype=bool); mask[1:3, 1:3] = True; mask[5:8, 5:8] = True
    >>> pro_score([mask], [mask * 1.0])
    1.0
    >>> round(pro_score([mask], [np.zeros((8, 8))]), 3)  # one threshold: the diagonal, 0.045 / 0.3
    0.15
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1]; got {max_fpr!r}.")
    masks, maps = _check_maps_and_masks(masks, maps)
    # Each pixel's weight in the PRO sum: 1 / (its region's size x the number of regions).
    weights, n_regions = [], 0
    for mask in masks:
        regions, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
        sizes = np.bincount(regions.ravel())
        per_pixel = np.where(regions > 0, 1.0 / sizes[regions], 0.0)
        weights.append(per_pixel.ravel())
        n_regions += count
    normal = np.concatenate([~mask.ravel() for mask in masks])
    if n_regions == 0 or not normal.any():
        raise ValueError("PRO needs at least one defect region and at least one defect-free pixel in the masks.")
    weights = np.concatenate(weights) / n_regions
    scores = np.concatenate([values.ravel() for values in maps])
    order = np.argsort(-scores, kind="stable")
    scores, weights, normal = scores[order], weights[order], normal[order]
    # The curve's points: after the last pixel of each run of equal scores (one threshold each).
    last_of_run = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])
    fpr = np.r_[0.0, np.cumsum(normal)[last_of_run] / normal.sum()]
    pro = np.r_[0.0, np.cumsum(weights)[last_of_run]]
    # The weights sum to 1 up to rounding; the area cannot exceed max_fpr.
    return min(1.0, _area_up_to(fpr, pro, max_fpr) / max_fpr)


def _area_up_to(x, y, limit):
    """Trapezoidal area under the non-decreasing polyline ``(x, y)`` from ``x[0]`` to ``limit``."""
    inside = np.searchsorted(x, limit, side="right")
    xs, ys = x[:inside], y[:inside]
    if inside < len(x) and xs[-1] < limit:
        # The segment crossing the limit, cut there.
        fraction = (limit - x[inside - 1]) / (x[inside] - x[inside - 1])
        xs = np.r_[xs, limit]
        ys = np.r_[ys, y[inside - 1] + fraction * (y[inside] - y[inside - 1])]
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2))
