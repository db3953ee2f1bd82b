"""Draw docs/_static/anomaly_map.png, the picture of the README and of the docs' front page.

A ``PandaPatchDetector`` with the settings recommended for fine defects on line art
(the stride-8 map of EfficientNet-Lite0 alone, no neighbourhood averaging, smoothing over
8 pixels), fitted on the normal crops of the DeepPCB sample that ships with the package,
draws its anomaly maps over the three most anomalous defective test crops, with the
labelled defect boxes in green. Runs offline (the ``lite`` and ``plot`` extras), about a
minute on a 2-core CPU::

    python docs/make_anomaly_map.py

The PNG is stored with a 64-colour palette to keep it small in the repository.
"""

import io
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from sklearn_panda import PandaPatchDetector  # noqa: E402
from sklearn_panda.datasets import load_deeppcb  # noqa: E402

OUT = Path(__file__).resolve().parent / "_static" / "anomaly_map.png"


def main():
    start = time.perf_counter()
    X_train, X_test, y_test, masks = load_deeppcb()
    detector = PandaPatchDetector(
        backbone="efficientnet_lite0",
        layers=["_blocks.4"],
        neighbourhood=1,
        sigma=8.0,
        coreset_ratio=0.01,
        random_state=0,
    ).fit(X_train)
    defective = np.flatnonzero(y_test == -1)
    maps, scores = detector.anomaly_maps(X_test[defective], return_scores=True)
    shown = np.argsort(scores)[:3]
    # One colour scale for the three maps, from the lowest to the highest value shown.
    low, high = np.min(maps[shown]), np.max(maps[shown])

    figure, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    for axis, index in zip(axes, shown):
        axis.imshow(X_test[defective[index]], cmap="gray")
        axis.imshow(maps[index], cmap="jet", alpha=0.45, vmin=low, vmax=high)
        axis.contour(masks[defective[index]], levels=[0.5], colors="lime", linewidths=1.2)
        axis.set_title(f"score {scores[index]:.2f}", fontsize=10)
        axis.axis("off")
    figure.suptitle("PandaPatchDetector on DeepPCB: anomaly maps, defect boxes in green", fontsize=11)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    image.save(OUT, optimize=True)
    print(f"{OUT}: {OUT.stat().st_size / 1024:.0f} KiB, {image.size[0]} x {image.size[1]} pixels, "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
