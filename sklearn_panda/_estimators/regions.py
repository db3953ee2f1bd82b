"""Defect regions of an anomaly map: the connected parts above a threshold, as plain records.

numpy and scipy only; no torch.
"""

import numpy as np
from scipy import ndimage

# 8-connectivity: pixels that touch at a corner belong to one region (as pro_score counts them).
CONNECTIVITY = np.ones((3, 3), dtype=bool)


def find_regions(anomaly_map, threshold, image=0):
    """The 8-connected regions of ``anomaly_map > threshold``, the most anomalous first.

    Parameters
    ----------
    anomaly_map : ndarray of shape (H, W)
        Higher = more anomalous.
    threshold : float
        A pixel above it is defective.
    image : int, default=0
        The image's index, copied into each record.

    Returns
    -------
    regions : list of dict
        One record per region, sorted by ``peak`` (descending): ``image``,
        ``region`` (its rank, 0 for the most anomalous), ``top``, ``left``,
        ``bottom``, ``right`` (the bounding box in pixels, bottom and right
        exclusive, as slices), ``area`` (pixels), ``peak`` (the largest map
        value inside), ``peak_row``, ``peak_col`` (where it is). Plain Python
        numbers: ``pandas.DataFrame(regions)`` takes them as they are.

    See Also
    --------
    label_regions : The same records with the regions' pixels.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda._estimators.regions import find_regions
    >>> anomaly_map = np.zeros((6, 8))
    >>> anomaly_map[1:3, 1:4] = 2.0
    >>> anomaly_map[4, 6] = 5.0
    >>> [(r["top"], r["left"], r["bottom"], r["right"], r["area"], r["peak"]) for r in find_regions(anomaly_map, 1.0)]
    [(4, 6, 5, 7, 1, 5.0), (1, 1, 3, 4, 6, 2.0)]
    """
    return label_regions(anomaly_map, threshold, image)[1]


def label_regions(anomaly_map, threshold, image=0):
    """:func:`find_regions`'s records and where each region is: a label image numbered by rank.

    Parameters
    ----------
    anomaly_map : ndarray of shape (H, W)
    threshold : float
    image : int, default=0
        As for :func:`find_regions`.

    Returns
    -------
    labels : ndarray of shape (H, W), int32
        ``record["region"] + 1`` on each region's pixels, 0 elsewhere.
    regions : list of dict
        :func:`find_regions`'s records.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda._estimators.regions import label_regions
    >>> anomaly_map = np.zeros((3, 5))
    >>> anomaly_map[0, 0], anomaly_map[1:, 3:] = 2.0, 5.0
    >>> labels, regions = label_regions(anomaly_map, 1.0)
    >>> labels
    array([[2, 0, 0, 0, 0],
           [0, 0, 0, 1, 1],
           [0, 0, 0, 1, 1]], dtype=int32)
    >>> [(r["region"], r["area"]) for r in regions]
    [(0, 4), (1, 1)]
    """
    anomaly_map = np.asarray(anomaly_map)
    if anomaly_map.ndim != 2:
        raise ValueError(f"anomaly_map must be 2-D (H, W); got shape {anomaly_map.shape}.")
    labels, n_regions = ndimage.label(anomaly_map > threshold, structure=CONNECTIVITY)
    if n_regions == 0:
        return labels.astype(np.int32), []
    index = np.arange(1, n_regions + 1)
    areas = np.bincount(labels.ravel(), minlength=n_regions + 1)[1:]
    peaks = ndimage.maximum(anomaly_map, labels, index)
    positions = ndimage.maximum_position(anomaly_map, labels, index)
    boxes = ndimage.find_objects(labels)
    order = np.argsort(-np.asarray(peaks), kind="stable")
    # ndimage numbers regions in scan order; the records (and so the labels) go by peak.
    label_by_rank = np.zeros(n_regions + 1, dtype=np.int32)
    label_by_rank[order + 1] = np.arange(1, n_regions + 1)
    regions = [
        {
            "image": int(image),
            "region": rank,
            "top": int(boxes[k][0].start),
            "left": int(boxes[k][1].start),
            "bottom": int(boxes[k][0].stop),
            "right": int(boxes[k][1].stop),
            "area": int(areas[k]),
            "peak": float(peaks[k]),
            "peak_row": int(positions[k][0]),
            "peak_col": int(positions[k][1]),
        }
        for rank, k in enumerate(order)
    ]
    return label_by_rank[labels], regions
