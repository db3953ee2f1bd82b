"""Defect masks and regions: an anomaly map above a threshold, its connected parts as plain records.

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


class DefectMasksMixin:
    """``predict_masks`` and ``defect_regions`` for a detector with ``anomaly_maps`` and ``pixel_offset_``."""

    def predict_masks(self, X):
        """Defect masks: True where a pixel's anomaly exceeds ``pixel_offset_``.

        ``pixel_offset_`` comes from normal images only: the training images'
        leave-one-out maps exceed it somewhere in ``pixel_contamination`` of
        them, so about that share of new normal images gets a false region.

        Parameters
        ----------
        X : array-like or list of paths / PIL images
            Images in the layout seen in ``fit``.

        Returns
        -------
        masks : ndarray of shape (n_images, H, W), bool, or list of ndarrays
            At each image's size, as :meth:`anomaly_maps`.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_panda import PandaPatchDetector
        >>> rng = np.random.default_rng(0)
        >>> normal = rng.normal(0.5, 0.02, size=(6, 64, 64, 3)).clip(0, 1)
        >>> detector = PandaPatchDetector(backbone="resnet18", weights=None, random_state=0).fit(normal)
        >>> defective = normal[:1].copy()
        >>> defective[:, 20:28, 20:28] = 1.0   # a bright square
        >>> mask = detector.predict_masks(defective)[0]
        >>> mask.shape, bool(mask[20:28, 20:28].all()), bool(mask[48:, 48:].any())
        ((64, 64), True, False)
        >>> detector.predict_masks(normal[1:3]).any(axis=(1, 2))   # normal images: no defect pixel
        array([False, False])
        """
        maps = self.anomaly_maps(X)
        if isinstance(maps, list):
            return [one > self.pixel_offset_ for one in maps]
        return maps > self.pixel_offset_

    def defect_regions(self, X):
        """The defect regions of each image: box, area and peak of each connected part of its mask.

        Parameters
        ----------
        X : array-like or list of paths / PIL images
            Images in the layout seen in ``fit``.

        Returns
        -------
        regions : list of list of dict
            Per image, its regions (8-connected parts of
            :meth:`predict_masks`), the most anomalous first, each a record
            of plain numbers: ``image``, ``region``, ``top``, ``left``,
            ``bottom``, ``right`` (bottom and right exclusive), ``area`` (in
            pixels), ``peak`` (the largest map value inside), ``peak_row``,
            ``peak_col``. ``pandas.DataFrame([r for one in regions for r in
            one])`` gives one row a region.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_panda import PandaPatchDetector
        >>> rng = np.random.default_rng(0)
        >>> normal = rng.normal(0.5, 0.02, size=(6, 64, 64, 3)).clip(0, 1)
        >>> detector = PandaPatchDetector(backbone="resnet18", weights=None, random_state=0).fit(normal)
        >>> defective = normal[:1].copy()
        >>> defective[:, 20:28, 20:28] = 1.0   # a bright square
        >>> (region,) = detector.defect_regions(defective)[0]
        >>> region["top"] <= 20 < 28 <= region["bottom"], (region["peak_row"], region["peak_col"])
        (True, (25, 25))
        """
        maps = self.anomaly_maps(X)
        return [find_regions(one, self.pixel_offset_, image=index) for index, one in enumerate(maps)]
