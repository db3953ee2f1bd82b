"""The report's defect regions (issue 42, item 2): outlines and boxes over the photos, where the regions are.

One local model (a random ResNet18, tiny images) scores a folder where one image has a bright
square; ``score --report --regions`` writes the page and the regions' CSV in one run. The page is
read twice: by the standard library's HTML parser (always), and by headless Chromium, which lays
it out (skipped where no Chromium is installed; ``apt-get install chromium`` on Debian).
"""

import csv
import html
import json
import re
import shutil
import subprocess
import types
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from sklearn_panda import PandaPatchDetector, load
from sklearn_panda._io.report import outline_path
from sklearn_panda.cli import main

HEIGHT, WIDTH = 64, 80
# The defect: a white square, rows 20 to 31 and columns 44 to 55.
SQUARE = (20, 44, 32, 56)
THUMBNAIL = 160


def _smooth_noise(rng):
    noise = ndimage.gaussian_filter(rng.normal(size=(HEIGHT, WIDTH)), 3)
    image = np.clip(128 + noise / noise.std() * 30, 0, 255).astype(np.uint8)
    return np.repeat(image[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Smooth noise to fit on; two more to score and one with the square; the report and regions of one run."""
    root = tmp_path_factory.mktemp("report_regions")
    rng = np.random.default_rng(0)
    (root / "train").mkdir()
    (root / "test").mkdir()
    train = []
    for i in range(10):
        train.append(str(root / "train" / f"good{i}.png"))
        Image.fromarray(_smooth_noise(rng)).save(train[-1])
    for i in range(2):
        Image.fromarray(_smooth_noise(rng)).save(root / "test" / f"good{i}.png")
    square = _smooth_noise(rng)
    top, left, bottom, right = SQUARE
    square[top:bottom, left:right] = 255
    Image.fromarray(square).save(root / "test" / "square.png")
    detector = PandaPatchDetector(backbone="resnet18", weights=None, layers=["layer1", "layer2"], resize=None,
                                  coreset_ratio=1.0, random_state=0, device="cpu").fit(train)
    detector.save(root / "model.pt")
    report, regions = root / "report.html", root / "regions.csv"
    status = main(["score", str(root / "test"), "--model", str(root / "model.pt"), "--output",
                   str(root / "scores.csv"), "--report", str(report), "--regions", str(regions), "--top", "3"])
    assert status == 0
    with open(regions, newline="") as file:
        rows = list(csv.DictReader(file))
    return types.SimpleNamespace(root=root, report=report, regions=rows, square=str(root / "test" / "square.png"),
                                 detector=load(root / "model.pt"))


class FigureParser(HTMLParser):
    """Each figure of the page: its photo's path, its regions layer's viewBox, and each region's marks."""

    def __init__(self):
        super().__init__()
        self.figures, self._text = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = attrs.get("class", "").split()
        if tag == "figure":
            self.figures.append({"path": None, "view_box": None, "regions": []})
        elif not self.figures:
            return
        figure = self.figures[-1]
        if tag == "img" and figure["path"] is None:
            figure["path"] = attrs["alt"]
        elif tag == "svg" and "regions" in classes:
            figure["view_box"] = attrs["viewbox"]
        elif tag == "g" and "region" in classes:
            figure["regions"].append({key[5:]: int(value) for key, value in attrs.items() if key.startswith("data-")})
        elif tag == "rect" and "region-box" in classes:
            figure["regions"][-1]["rect"] = tuple(int(attrs[key]) for key in ("x", "y", "width", "height"))
        elif tag == "path" and "region-outline" in classes:
            figure["regions"][-1]["outline"] = attrs["d"]
        elif tag == "text" and figure["regions"]:
            self._text = figure["regions"][-1]

    def handle_data(self, data):
        if self._text is not None:
            self._text["label"] = data

    def handle_endtag(self, tag):
        if tag == "text":
            self._text = None


def _figures(page):
    parser = FigureParser()
    parser.feed(page)
    return parser.figures


def _boundary_edges(mask):
    """Every unit edge between a pixel of ``mask`` and one outside it (or the image's border), pixel by pixel."""
    edges = set()
    for row, col in zip(*np.nonzero(mask)):
        for d_row, d_col, edge in ((-1, 0, ("h", row, col)), (1, 0, ("h", row + 1, col)),
                                   (0, -1, ("v", row, col)), (0, 1, ("v", row, col + 1))):
            inside = 0 <= row + d_row < mask.shape[0] and 0 <= col + d_col < mask.shape[1]
            if not (inside and mask[row + d_row, col + d_col]):
                edges.add(edge)
    return edges


def _path_edges(path):
    """The unit edges an outline path draws (``M x y h n`` / ``M x y v n`` only)."""
    edges = set()
    for x, y, direction, length in re.findall(r"M(\d+) (\d+)([hv])(\d+)", path):
        x, y = int(x), int(y)
        for step in range(int(length)):
            edges.add(("h", y, x + step) if direction == "h" else ("v", y + step, x))
    assert re.sub(r"M\d+ \d+[hv]\d+", "", path) == "", "only moves and horizontal or vertical lines"
    return edges


def test_outline_path_draws_every_pixel_edge_between_a_mask_and_the_rest():
    rng = np.random.default_rng(1)
    for shape in [(1, 1), (5, 7), (9, 4)]:
        mask = rng.random(shape) < 0.5
        assert _path_edges(outline_path(mask)) == _boundary_edges(mask)
    ring = np.ones((5, 5), dtype=bool)
    ring[2, 2] = False
    shifted = {(kind, row + 3, col + 10) for kind, row, col in _boundary_edges(ring)}
    assert _path_edges(outline_path(ring, top=3, left=10)) == shifted
    assert len(shifted) == 4 * 5 + 4, "the hole's four edges are outlined too"


def test_the_report_draws_a_box_and_outline_for_each_region_the_regions_csv_lists(scored):
    page = scored.report.read_text()
    figures = {figure["path"]: figure for figure in _figures(page)}
    assert sorted(figures) == sorted(str(path) for path in (scored.root / "test").iterdir())
    assert {row["path"] for row in scored.regions} <= set(figures)
    threshold = scored.detector.pixel_offset_
    for path, figure in figures.items():
        expected = [row for row in scored.regions if row["path"] == path]
        assert [region["region"] for region in figure["regions"]] == [int(row["region"]) for row in expected]
        if not expected:
            assert figure["view_box"] is None
            continue
        assert figure["view_box"] == f"0 0 {WIDTH} {HEIGHT}", "the layer's coordinates are the image's pixels"
        anomaly_map = scored.detector.anomaly_maps([path])[0]
        labels, _ = ndimage.label(anomaly_map > threshold, structure=np.ones((3, 3)))
        for region, row in zip(figure["regions"], expected):
            top, left, bottom, right = (int(row[side]) for side in ("top", "left", "bottom", "right"))
            assert (region["top"], region["left"], region["bottom"], region["right"]) == (top, left, bottom, right)
            assert region["rect"] == (left, top, right - left, bottom - top)
            # The outline: exactly the edges of the region's pixels above the pixel threshold.
            mask = labels == labels[int(row["peak_row"]), int(row["peak_col"])]
            assert _path_edges(region["outline"]) == _boundary_edges(mask)
            assert region["label"] == f"{row['region']}: {float(row['peak']):.3g}"
    square = figures[scored.square]["regions"][0]
    assert square["top"] <= SQUARE[0] and square["left"] <= SQUARE[1]
    assert square["bottom"] >= SQUARE[2] and square["right"] >= SQUARE[3], "the first region covers the square"
    # One colour scale, anchored at the pixel threshold, and a legend of it and of the marks.
    assert f"map threshold {threshold:.6g}" in page and f"{2 * threshold:.6g} and above" in page
    assert 'class="colour-bar"' in page and 'class="marks"' in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "nothing fetched from elsewhere"


@pytest.fixture(scope="module")
def chromium():
    """The path of a Chromium executable; the test is skipped (before the model is fitted) without one."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("No Chromium found (chromium, chromium-browser or google-chrome on PATH); "
                "on Debian or Ubuntu: apt-get install chromium")


# Written into a copy of the page (the report itself has no script): where the browser laid
# out each region's marks and the photo under them, in CSS pixels of the viewport.
GEOMETRY_SCRIPT = """<script>
const box = (element) => { const r = element.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
const drawn = (element) => { const style = getComputedStyle(element);
  return style.display !== "none" && style.visibility === "visible" && style.opacity === "1"
    && style.stroke !== "none"; };
const figures = [...document.querySelectorAll("figure")].map((figure) => {
  const photo = figure.querySelector("img");
  return { path: photo.alt, photo: box(photo), width: photo.naturalWidth, height: photo.naturalHeight,
    regions: [...figure.querySelectorAll("g.region")].map((group) => ({
      region: Number(group.dataset.region), box: box(group.querySelector("rect.region-box")),
      outline: box(group.querySelector("path.region-outline")),
      drawn: drawn(group.querySelector("rect.region-box")) && drawn(group.querySelector("path.region-outline")) })) };
});
const out = document.createElement("pre");
out.id = "geometry";
out.textContent = JSON.stringify(figures);
document.body.appendChild(out);
</script>"""
WINDOW = ["--window-size=1000,1400", "--force-device-scale-factor=1", "--hide-scrollbars"]


def _run_chromium(chromium, page, profile, *args):
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *WINDOW,
               *args, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


def test_chromium_draws_the_outlines_and_boxes_over_the_regions_of_the_photos(chromium, scored, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(scored.report.read_text().replace("</body>", GEOMETRY_SCRIPT + "\n</body>"))
    dom = _run_chromium(chromium, page, tmp_path / "profile", "--dump-dom")
    figures = json.loads(html.unescape(re.search(r'<pre id="geometry">(.*?)</pre>', dom, re.S).group(1)))
    expected = {}
    for row in scored.regions:
        expected.setdefault(row["path"], []).append(row)
    screen_boxes = []
    for figure in figures:
        rows = expected.get(figure["path"], [])
        assert [region["region"] for region in figure["regions"]] == [int(row["region"]) for row in rows]
        # The photo is a 160 x 160 box showing the image whole and centred (object-fit: contain).
        left, top, right, bottom = figure["photo"]
        assert (right - left, bottom - top, figure["width"], figure["height"]) == (THUMBNAIL, THUMBNAIL, WIDTH, HEIGHT)
        scale = min(THUMBNAIL / WIDTH, THUMBNAIL / HEIGHT)
        origin_x = left + (THUMBNAIL - WIDTH * scale) / 2
        origin_y = top + (THUMBNAIL - HEIGHT * scale) / 2
        for region, row in zip(figure["regions"], rows):
            where = [origin_x + int(row["left"]) * scale, origin_y + int(row["top"]) * scale,
                     origin_x + int(row["right"]) * scale, origin_y + int(row["bottom"]) * scale]
            assert region["drawn"]
            np.testing.assert_allclose(region["box"], where, atol=0.5)
            # An outline touches its region's box on all four sides.
            np.testing.assert_allclose(region["outline"], where, atol=0.5)
            screen_boxes.append(where)
    assert screen_boxes, "the page has regions to draw"
    square = next(figure for figure in figures if figure["path"] == scored.square)
    assert square["regions"], "the image with the square has a region"

    # The pixels the browser painted: the outline's colour (#00e5ff) is on the photos only
    # around the regions, and around each of them.
    shot = tmp_path / "report.png"
    _run_chromium(chromium, page, tmp_path / "profile", f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    cyan = (pixels[..., 0] < 90) & (pixels[..., 1] > 180) & (pixels[..., 2] > 200)
    near_a_region = np.zeros_like(cyan)
    for left, top, right, bottom in screen_boxes:
        rows, cols = slice(int(top) - 2, int(np.ceil(bottom)) + 2), slice(int(left) - 2, int(np.ceil(right)) + 2)
        assert cyan[rows, cols].sum() >= 8, "the outline is painted around the region"
        near_a_region[rows, cols] = True
    on_photos = np.zeros_like(cyan)
    for figure in figures:
        left, top, right, bottom = (int(value) for value in figure["photo"])
        on_photos[top:bottom, left:right] = True
    assert not (cyan & on_photos & ~near_a_region).any(), "no outline away from the regions"
