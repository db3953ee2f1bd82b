"""What ``score`` writes: the CSV of scores and the heat-map overlays of a local model."""

import csv
import hashlib
import heapq
import io
import os
import pathlib

import numpy as np

from .._estimators.regions import label_regions
from .._io.report import MapFigure, heat_overlay, open_rgb


def check_destination(path, option):
    """Fail before the work, not after it, when an output cannot be written."""
    if not os.fspath(path) or os.fspath(path).endswith(("/", os.sep)):
        raise ValueError(f"{option} {path!r} names no file; give a file name.")
    # Where the file will be written: through a symbolic link, its target's folder.
    folder = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"The folder for {option} does not exist: {folder}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{option} {path} is a folder; give a file name.")


def check_spares_inputs(outputs, inputs, model=None):
    """Fail before the work when an output would overwrite an input image or the model read.

    ``outputs`` holds ``(option, a file it writes)`` pairs; ``model`` is the
    model file a command reads (``--model``), ``None`` where it writes it.
    """
    read = {os.path.realpath(path): f"one of the input images ({path})" for path in inputs}
    if model is not None:
        read[os.path.realpath(model)] = f"the model read (--model {model})"
    for option, path in outputs:
        what = read.get(os.path.realpath(path))
        if what is not None:
            raise ValueError(f"{option} {path} is {what}; writing there would overwrite it. Give another file.")


def scores_csv(paths, scores, flagged, map_files=None):
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "score", "label"] + (["map"] if map_files is not None else []))
    for index, (path, score, is_flagged) in enumerate(zip(paths, scores, flagged)):
        row = [path, repr(float(score)), "anomaly" if is_flagged else "normal"]
        writer.writerow(row + ([map_files[index]] if map_files is not None else []))
    return text.getvalue().encode("utf-8")


# Images scored at once by a local model: their maps are held in memory together.
MAP_CHUNK = 32


def map_file(path):
    """The file name of the map of the image at ``path``: its name and a digest of its absolute path.

    The same image gets the same name on every run, so scoring it again into one folder writes over
    its earlier map; images of one name in two folders keep a map each.

    Examples
    --------
    >>> from sklearn_panda.cli._outputs import map_file
    >>> map_file("/line/a/board.png") == map_file("/line/a/board.png") != map_file("/line/b/board.png")
    True
    """
    digest = hashlib.sha256(os.path.abspath(path).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{pathlib.Path(path).stem}-{digest}.png"


REGION_FIELDS = ["region", "top", "left", "bottom", "right", "area", "peak", "peak_row", "peak_col"]


def regions_csv(paths, regions):
    """One row a defect region: its image's path and the region's record."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path"] + REGION_FIELDS)
    for region in regions:
        writer.writerow([paths[region["image"]]] + [region[field] for field in REGION_FIELDS])
    return text.getvalue().encode("utf-8")


def score_with_maps(estimator, paths, maps_folder, top, regions=None):
    """Scores of a local model, its maps written to ``maps_folder`` (when given) as they
    come, and (into the list ``regions``, when given) each map's defect regions above
    ``pixel_offset_``.

    Returns the scores; the report's figures of the ``top`` most anomalous images (a dict
    of image index to :class:`MapFigure`: overlay and defect regions, each map's regions
    found once for both outputs); and the map value the overlays' colours are anchored
    at, one for every image (None when each batch had its own scale).
    """
    # One colour scale for every image, anchored at the pixel threshold (a map value; models
    # saved before pixel_offset_ scored images by their map's maximum, so -offset_ is one).
    pixel_threshold = getattr(estimator, "pixel_offset_", None)
    threshold = float(pixel_threshold if pixel_threshold is not None else -estimator.offset_)
    if not threshold > 0:
        threshold = None
    scores, kept = np.empty(len(paths)), []
    for start in range(0, len(paths), MAP_CHUNK):
        chunk = paths[start : start + MAP_CHUNK]
        maps, chunk_scores = estimator.anomaly_maps(chunk, return_scores=True)
        scores[start : start + len(chunk)] = chunk_scores
        scale = threshold if threshold is not None else max(float(np.max(m)) for m in maps) / 2 or 1.0
        for offset, (path, anomaly_map) in enumerate(zip(chunk, maps)):
            index, anomaly = start + offset, -chunk_scores[offset]
            for_report = _among_top(kept, top, anomaly)
            labels = found = None
            if pixel_threshold is not None and (regions is not None or for_report):
                labels, found = label_regions(anomaly_map, pixel_threshold, image=index)
                if regions is not None:
                    regions.extend(found)
            if maps_folder is None and not for_report:
                continue
            overlay = heat_overlay(open_rgb(path), anomaly_map, scale)
            if maps_folder is not None:
                overlay.save(os.path.join(maps_folder, map_file(path)))
            if for_report:
                heapq.heappush(kept, (anomaly, index, MapFigure(overlay, found, labels)))
                if len(kept) > top:
                    heapq.heappop(kept)
    return scores, {index: figure for _, index, figure in kept}, threshold


def _among_top(kept, top, anomaly):
    """Whether an image this anomalous enters the report's ``top`` overlays, ``kept`` so far
    (the most anomalous, smallest first: a heap); never when ``top`` is 0.

    Examples
    --------
    >>> _among_top([], 0, 1.0), _among_top([], 2, 1.0), _among_top([(0.5, 0, None)], 1, 0.4)
    (False, True, False)
    """
    return len(kept) < top or (top > 0 and anomaly > kept[0][0])
