"""The command line's HTML report: thumbnails, heat-map overlays and a histogram, in one page.

The page comes from the template ``templates/report.html`` (``string.Template``,
standard library), filled with figures made here: PNG thumbnails as data URIs,
so that the page is one self-contained file, and an inline SVG histogram (no
plotting library needed). A local model's maps are drawn as heat-map
overlays on the images (:func:`heat_overlay`), also written one PNG per image
by ``sklearn-panda score --maps``; its defect regions as outlines and boxes in
an inline SVG layer over the photos (:func:`regions_svg`), in image pixels, and
a legend explains both (:func:`legend_html`). No torch here.
"""

import base64
import html
import importlib.resources
import io
from dataclasses import dataclass
from string import Template

import numpy as np

from .images import read_image

THUMBNAIL_SIZE = 160
# A blue-to-red ramp (ColorBrewer's RdYlBu, reversed): low anomaly blue, the threshold pale, high red.
RAMP = np.array([(49, 54, 149), (116, 173, 209), (255, 255, 191), (244, 109, 67), (165, 0, 38)], dtype=float)


def number(value):
    """A score as the report and the command line print it."""
    return f"{value:.6g}"


def open_rgb(path):
    """The image file at ``path`` as an 8-bit RGB PIL image, as the model reads it (any bit depth, EXIF turned)."""
    from PIL import Image

    image = read_image(path)
    if image.dtype != np.uint8:
        image = np.round(image * 255).astype(np.uint8)
    return Image.fromarray(image)


def heat_overlay(image, anomaly_map, threshold):
    """``image`` (a PIL image) with ``anomaly_map`` drawn over it: blue below, red above ``threshold``.

    A pixel's colour is its map value on a blue-to-red ramp whose middle (pale
    yellow) is ``threshold``, the map value at the model's decision threshold,
    and whose red end is twice that; the more anomalous, the more opaque.

    Parameters
    ----------
    image : PIL.Image.Image
    anomaly_map : ndarray of shape (H, W)
        Of the image's size.
    threshold : float
        Positive; a patch detector's ``pixel_offset_`` (a map value).

    Returns
    -------
    overlay : PIL.Image.Image, RGB, of the image's size

    Examples
    --------
    >>> import numpy as np
    >>> from PIL import Image
    >>> from sklearn_panda._io.report import heat_overlay
    >>> image = Image.new("RGB", (4, 2), "white")
    >>> overlay = heat_overlay(image, np.array([[0, 1, 2, 3], [0, 0, 0, 0]], dtype=float), threshold=1.0)
    >>> overlay.size, overlay.getpixel((0, 0))[2] > overlay.getpixel((0, 0))[0], overlay.getpixel((3, 0))
    ((4, 2), True, (174, 26, 60))
    """
    from PIL import Image

    rgb = np.asarray(image.convert("RGB"), dtype=float)
    if anomaly_map.shape != rgb.shape[:2]:
        raise ValueError(f"The map has shape {anomaly_map.shape}; the image is {rgb.shape[1]} x {rgb.shape[0]}.")
    level = np.clip(np.asarray(anomaly_map, dtype=float) / (2 * threshold), 0, 1)
    position = level * (len(RAMP) - 1)
    lower = np.minimum(position.astype(int), len(RAMP) - 2)
    fraction = (position - lower)[..., None]
    colour = RAMP[lower] * (1 - fraction) + RAMP[lower + 1] * fraction
    opacity = (0.3 + 0.6 * level)[..., None]
    blended = rgb * (1 - opacity) + colour * opacity
    return Image.fromarray(np.round(blended).astype(np.uint8))


@dataclass(frozen=True)
class MapFigure:
    """What the report shows of an image a local model scored, beside the photo.

    Attributes
    ----------
    overlay : PIL.Image.Image
        The image's anomaly map over it (:func:`heat_overlay`).
    regions : list of dict or None
        Its defect regions (``find_regions``'s records); None when the model
        has no pixel threshold (saved by an older version).
    labels : ndarray of shape (H, W) or None
        ``region + 1`` on each region's pixels, 0 elsewhere (``label_regions``'s).
    """

    overlay: object
    regions: list = None
    labels: np.ndarray = None


def outline_path(mask, top=0, left=0):
    """SVG path data tracing the edges between the pixels of ``mask`` and the others.

    Each run of pixel edges on one line is a move and a line (``M x y h n`` or
    ``M x y v n``): in pixel coordinates, a pixel ``(row, col)`` being the
    square from ``(col, row)`` to ``(col + 1, row + 1)``, shifted by ``top``
    and ``left``. The outside of a region and the edges of its holes alike.

    Parameters
    ----------
    mask : ndarray of bool, shape (h, w)
    top, left : int, default=0
        Where ``mask`` starts in the image.

    Returns
    -------
    path : str

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda._io.report import outline_path
    >>> outline_path(np.array([[True, True], [False, True]]), top=5)
    'M0 5h2M0 6h1M1 7h1M0 5v1M1 6v1M2 5v2'
    """
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    above_rows = padded[:-1, 1:-1] != padded[1:, 1:-1]  # (h + 1, w): the edge above each row, and below the last
    left_of_columns = padded[1:-1, :-1] != padded[1:-1, 1:]  # (h, w + 1)
    parts = [f"M{left + start} {top + row}h{length}" for row, start, length in _runs(above_rows)]
    parts += [f"M{left + column} {top + start}v{length}" for column, start, length in _runs(left_of_columns.T)]
    return "".join(parts)


def _runs(edges):
    """``(row, start, length)`` of each run of True along the rows of a 2-D boolean array."""
    steps = np.diff(np.pad(edges, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    starts, stops = np.argwhere(steps == 1), np.argwhere(steps == -1)
    return zip(starts[:, 0].tolist(), starts[:, 1].tolist(), (stops[:, 1] - starts[:, 1]).tolist())


def regions_svg(regions, labels):
    """An SVG layer for a photo: each region's outline and box, labelled ``number: peak``.

    Its ``viewBox`` is the image in pixels and it fits the same square as the
    thumbnail (``xMidYMid meet``, as ``object-fit: contain``), so a region's
    coordinates are its record's. Each region is a group with its record's
    number and box as ``data-`` attributes and a tooltip.

    Parameters
    ----------
    regions : list of dict
        ``find_regions``'s records.
    labels : ndarray of shape (H, W)
        ``label_regions``'s labels of the same map.

    Returns
    -------
    svg : str

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda._estimators.regions import label_regions
    >>> from sklearn_panda._io.report import regions_svg
    >>> anomaly_map = np.zeros((48, 64))
    >>> anomaly_map[10:20, 30:34] = 2.0
    >>> svg = regions_svg(*label_regions(anomaly_map, 1.0)[::-1])
    >>> '<rect class="region-box" x="30" y="10" width="4" height="10"/>' in svg
    True
    """
    height, width = labels.shape
    # Image pixels a screen pixel of the thumbnail spans: the labels keep one size on screen.
    unit = max(width, height) / THUMBNAIL_SIZE
    parts = [
        f'<svg class="regions" viewBox="0 0 {width} {height}" preserveAspectRatio="xMidYMid meet" '
        f'font-size="{11 * unit:.4g}" stroke-width="{3 * unit:.4g}" role="img" '
        f'aria-label="{len(regions)} defect region(s)">'
    ]
    for region in regions:
        top, left, bottom, right = (region[side] for side in ("top", "left", "bottom", "right"))
        rank, peak = region["region"], number(region["peak"])
        label = f"{rank}: {region['peak']:.3g}"
        mask = labels[top:bottom, left:right] == rank + 1
        parts.append(
            f'<g class="region" data-region="{rank}" data-top="{top}" data-left="{left}" '
            f'data-bottom="{bottom}" data-right="{right}">'
            f"<title>region {rank}: peak {peak}, {region['area']} pixels, rows {top} to {bottom - 1}, "
            f"columns {left} to {right - 1}</title>"
            f'<path class="region-outline" d="{outline_path(mask, top, left)}"/>'
            f'<rect class="region-box" x="{left}" y="{top}" width="{right - left}" height="{bottom - top}"/>'
            f'<text x="{left}" y="{_label_baseline(top, bottom, height, unit):.4g}">{label}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _label_baseline(top, bottom, height, unit):
    """Where a box's label sits: above the box, else below it, else inside at its top (image pixels)."""
    line = 12 * unit
    if top >= line:
        return top - 2 * unit
    if bottom + line <= height:
        return bottom + 10 * unit
    return top + 10 * unit


def legend_html(map_threshold, pixel_threshold, with_regions):
    """The legend of a local model's report: the maps' colour bar and, ``with_regions``, the region marks.

    Parameters
    ----------
    map_threshold : float or None
        The map value the colour scale is anchored at (pale yellow), one for
        every image; None when each batch of images had its own scale.
    pixel_threshold : bool
        Whether that value is the model's pixel threshold (``pixel_offset_``)
        rather than its image threshold on the map's maximum (models saved
        without a pixel threshold).
    with_regions : bool
        Whether outlines and boxes are drawn.

    Returns
    -------
    html : str
    """
    left, bar_width = 60, 320
    stops = "".join(
        f'<stop offset="{position:.0%}" stop-color="rgb{tuple(int(c) for c in colour)}"/>'
        for position, colour in zip(np.linspace(0, 1, len(RAMP)), RAMP)
    )
    if map_threshold is None:
        ticks = [(0, "0"), (0.5, "half the batch's largest"), (1, "its largest")]
        scale = "The colours of each batch of images are scaled to its largest map value (the model has no threshold)."
    else:
        ticks = [(0, "0"), (0.5, f"map threshold {number(map_threshold)}"),
                 (1, f"{number(2 * map_threshold)} and above")]
        meaning = (
            "the model's pixel threshold: a pixel above it is defective" if pixel_threshold
            else "the model's threshold on a map's largest value: an image with a pixel above it is an anomaly"
        )
        scale = (
            f"One colour scale for every image, the map value being a patch's distance to the nearest normal "
            f"patch: pale yellow at the map threshold ({meaning}), blue below it, red above it; the more "
            "anomalous, the more opaque."
        )
    tick_marks = "".join(
        f'<line x1="{left + at * bar_width}" y1="8" x2="{left + at * bar_width}" y2="28" stroke="#333"/>'
        f'<text x="{left + at * bar_width}" y="42" text-anchor="middle">{html.escape(text)}</text>'
        for at, text in ticks
    )
    parts = [
        '<div class="legend">',
        f'<svg class="colour-bar" width="{2 * left + bar_width}" height="48" role="img" '
        'aria-label="Colour scale of the anomaly maps">'
        f'<defs><linearGradient id="heat-ramp">{stops}</linearGradient></defs>'
        f'<rect x="{left}" y="10" width="{bar_width}" height="16" fill="url(#heat-ramp)"/>{tick_marks}</svg>',
        f"<p>Anomaly maps. {scale}</p>",
    ]
    if with_regions:
        parts += [
            '<svg class="marks" width="90" height="40" role="img" aria-label="Region marks">'
            '<path class="region-outline" d="M8 30h16v-18h12v18h12"/>'
            '<rect class="region-box" x="56" y="8" width="28" height="24"/></svg>',
            "<p>Defect regions on the photos: the solid line outlines the pixels whose map value is above the "
            "map threshold, the dashed box bounds each region, labelled <i>number: peak</i> (its rank, 0 for "
            "the most anomalous, and its largest map value, as <code>--regions</code> writes them).</p>",
        ]
    parts.append("</div>")
    return "\n".join(parts)


def _data_uri(image):
    image = image.copy()
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def histogram_svg(scores, threshold, width=640, height=220):
    """Inline SVG histogram of ``scores`` with a line at ``threshold``."""
    low, high = min(scores.min(), threshold), max(scores.max(), threshold)
    bin_width = (high - low or 1.0) / min(30, max(10, len(scores) // 2))
    # The threshold is a bin edge, so that every bar is wholly flagged or wholly not; a score
    # equal to the threshold is not flagged and falls in the bin that starts there.
    steps = np.arange(np.floor((low - threshold) / bin_width), np.floor((high - threshold) / bin_width) + 2)
    edges = threshold + bin_width * steps
    counts, _ = np.histogram(scores, bins=edges)
    low, high = edges[0], edges[-1]
    left, right, top, bottom = 40, 20, 24, 36
    plot_width, plot_height = width - left - right, height - top - bottom

    def x(value):
        return left + (value - low) / (high - low) * plot_width

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="Histogram of the scores">'
    ]
    for count, start, stop in zip(counts, edges[:-1], edges[1:]):
        if count == 0:
            continue
        bar_height = count / counts.max() * plot_height
        kind = "flagged" if start < threshold else "normal"
        parts.append(
            f'<rect class="{kind}" x="{x(start):.1f}" y="{top + plot_height - bar_height:.1f}" '
            f'width="{max(x(stop) - x(start) - 1, 1):.1f}" height="{bar_height:.1f}">'
            f"<title>{count} image(s), scores {number(start)} to {number(stop)}</title></rect>"
        )
    baseline = top + plot_height
    parts += [
        f'<line x1="{left}" y1="{baseline}" x2="{left + plot_width}" y2="{baseline}" stroke="#444"/>',
        f'<text x="{left}" y="{baseline + 16}" text-anchor="start">{number(low)}</text>',
        f'<text x="{left + plot_width}" y="{baseline + 16}" text-anchor="end">{number(high)}</text>',
        f'<text x="{left + plot_width / 2}" y="{baseline + 30}" text-anchor="middle">'
        "score (higher = more normal)</text>",
        f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{counts.max()}</text>',
        f'<line class="threshold" x1="{x(threshold):.1f}" y1="{top - 8}" x2="{x(threshold):.1f}" '
        f'y2="{baseline}"/>',
        f'<text x="{x(threshold):.1f}" y="{top - 12}" text-anchor="middle">'
        f"threshold {number(threshold)}</text>",
        "</svg>",
    ]
    return "\n".join(parts)


def _maps_note(figures, with_regions):
    """The sentence of the report's introduction on what a local model's figures show."""
    if not figures:
        return ""
    regions = ", and on the photo the outlines and boxes of its defect regions" if with_regions else ""
    return f" Beside each of the most anomalous images, its anomaly map{regions}."


def report_html(paths, scores, flagged, threshold, model, top, figures=None, map_threshold=None):
    """The report page as UTF-8 bytes.

    Parameters
    ----------
    paths : list of str
    scores, flagged : ndarray of shape (n_images,)
    threshold : float
        The model's ``offset_``.
    model : str
        The model file, as shown in the page.
    top : int
        Images shown on each side (most anomalous, most normal).
    figures : dict of int to MapFigure or None
        A local model's overlays and defect regions by image index, shown with those images.
    map_threshold : float or None
        The map value the overlays' colours are anchored at, for the legend.
    """
    figures = figures or {}
    order = np.argsort(scores, kind="stable")
    anomalous = order[:top]
    # The normal side never repeats an image already shown as anomalous.
    normal = order[max(top, len(order) - top) :][::-1]

    def figure(index):
        label = "anomaly" if flagged[index] else "normal"
        photo = f'<img src="{_data_uri(open_rgb(paths[index]))}" alt="{html.escape(paths[index])}">'
        classes = "flagged" if flagged[index] else "normal"
        found = ""
        if index in figures:
            shown = figures[index]
            if shown.regions:
                photo = f'<div class="photo">{photo}{regions_svg(shown.regions, shown.labels)}</div>'
            if shown.regions is not None:
                found = f", {len(shown.regions)} defect region(s)"
            photo += f'<img class="overlay" src="{_data_uri(shown.overlay)}" alt="anomaly map">'
            classes += " with-map"
        return (
            f'<figure class="{classes}">{photo}<figcaption><b>{number(scores[index])}</b> {label}{found}<br>'
            f"{html.escape(paths[index])}</figcaption></figure>"
        )

    sections = [f'<h2>The {len(anomalous)} most anomalous</h2>\n<div class="grid">\n'
                + "\n".join(map(figure, anomalous)) + "\n</div>"]
    if len(normal):
        sections.append(f'<h2>The {len(normal)} most normal</h2>\n<div class="grid">\n'
                        + "\n".join(map(figure, normal)) + "\n</div>")
    with_regions = any(shown.regions for shown in figures.values())
    # Models saved without a pixel threshold give no regions (None), and their maps' colours
    # are anchored at the image threshold.
    pixel_threshold = any(shown.regions is not None for shown in figures.values())
    template = Template(importlib.resources.files("sklearn_panda").joinpath("templates", "report.html").read_text())
    page = template.substitute(
        model=html.escape(str(model)),
        n_images=len(scores),
        n_flagged=int(flagged.sum()),
        threshold=number(threshold),
        maps_note=_maps_note(figures, with_regions),
        legend=legend_html(map_threshold, pixel_threshold, with_regions) if figures else "",
        histogram=histogram_svg(scores, threshold),
        sections="\n".join(sections),
    )
    return page.encode("utf-8")
