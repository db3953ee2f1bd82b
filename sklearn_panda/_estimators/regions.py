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
    anomaly_map = np.asarray(anomaly_map)
    if anomaly_map.ndim != 2:
        raise ValueError(f"anomaly_map must be 2-D (H, W); got shape {anomaly_map.shape}.")
    labels, n_regions = ndimage.label(anomaly_map > threshold, structure=CONNECTIVITY)
    if n_regions == 0:
        return []
    index = np.arange(1, n_regions + 1)
    areas = np.bincount(labels.ravel(), minlength=n_regions + 1)[1:]
    peaks = ndimage.maximum(anomaly_map, labels, index)
    positions = ndimage.maximum_position(anomaly_map, labels, index)
    boxes = ndimage.find_objects(labels)
    order = np.argsort(-np.asarray(peaks), kind="stable")
    return [
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
