"""The command line's HTML report: thumbnails, heat-map overlays and a histogram, in one page.

The page comes from the template ``templates/report.html`` (``string.Template``,
standard library), filled with figures made here: PNG thumbnails as data URIs,
so that the page is one self-contained file, and an inline SVG histogram (no
plotting library needed). A local model's maps are drawn as heat-map
overlays on the images (:func:`heat_overlay`), also written one PNG per image
by ``sklearn-panda score --maps``. No torch here.
"""

import base64
import html
import importlib.resources
import io
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


def report_html(paths, scores, flagged, threshold, model, top, overlays=None):
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
    overlays : dict of int to PIL.Image.Image or None
        Heat-map overlays by image index, shown beside those images.
    """
    overlays = overlays or {}
    order = np.argsort(scores, kind="stable")
    anomalous = order[:top]
    # The normal side never repeats an image already shown as anomalous.
    normal = order[max(top, len(order) - top) :][::-1]

    def figure(index):
        label = "anomaly" if flagged[index] else "normal"
        images = f'<img src="{_data_uri(open_rgb(paths[index]))}" alt="{html.escape(paths[index])}">'
        classes = "flagged" if flagged[index] else "normal"
        if index in overlays:
            images += f'<img class="overlay" src="{_data_uri(overlays[index])}" alt="anomaly map">'
            classes += " with-map"
        return (
            f'<figure class="{classes}">{images}<figcaption><b>{number(scores[index])}</b> {label}<br>'
            f"{html.escape(paths[index])}</figcaption></figure>"
        )

    sections = [f'<h2>The {len(anomalous)} most anomalous</h2>\n<div class="grid">\n'
                + "\n".join(map(figure, anomalous)) + "\n</div>"]
    if len(normal):
        sections.append(f'<h2>The {len(normal)} most normal</h2>\n<div class="grid">\n'
                        + "\n".join(map(figure, normal)) + "\n</div>")
    template = Template(importlib.resources.files("sklearn_panda").joinpath("templates", "report.html").read_text())
    page = template.substitute(
        model=html.escape(str(model)),
        n_images=len(scores),
        n_flagged=int(flagged.sum()),
        threshold=number(threshold),
        maps_note=(
            " Beside each image, its anomaly map: blue where it looks normal, red where it departs "
            "from every normal patch." if overlays else ""
        ),
        histogram=histogram_svg(scores, threshold),
        sections="\n".join(sections),
    )
    return page.encode("utf-8")
