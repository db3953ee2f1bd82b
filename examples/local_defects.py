"""Local defects: where is the flaw on a printed-circuit board?
============================================================

Whole-image features average a defect a few pixels wide away; a patch
detector compares every small region of an image with the regions of normal
images instead, and says where the defect is. The data: the DeepPCB sample
that ships with the package (320 x 320 crops of board images at their native
resolution; normal templates to fit on, and test regions of *other* boards,
each as a template and with defects, with the defects' boxes as masks).

We fit a :class:`~sklearn_panda.PandaPatchDetector` on the normal templates
(EfficientNet-Lite0, its ImageNet weights from the ``lite`` extra), score the
test images, measure the image ROC AUC, the pixel ROC AUC and the per-region
overlap (PRO) of the anomaly maps against the boxes, and draw the maps over
the images (``local_defects.png`` with the ``plot`` extra).

The settings are those recommended for DeepPCB's fine defects on line art
before the defaults were chosen on two data sets (the stride-8 features alone,
no neighbourhood averaging, smoothing over 8 pixels); ``PandaPatchDetector()``'s
defaults were chosen on DeepPCB and BSData together (see the user guide's
local-defects page).

Set ``SKLEARN_PANDA_EXAMPLES_FAST=1`` for a seconds-long smoke run on tiny
data (its numbers mean nothing).
"""

import os
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from sklearn_panda import PandaPatchDetector
from sklearn_panda.datasets import load_deeppcb
from sklearn_panda.metrics import pixel_roc_auc, pro_score

FAST = os.environ.get("SKLEARN_PANDA_EXAMPLES_FAST", "0") != "0"
OUT = os.environ.get("SKLEARN_PANDA_EXAMPLES_OUT", ".")

start = time.perf_counter()
X_train, X_test, y_test, masks = load_deeppcb(max_train=12 if FAST else None, max_test=8 if FAST else None)
print(f"DeepPCB sample: {len(X_train)} normal training crops, {len(X_test)} test crops "
      f"({int((y_test == -1).sum())} with defects), {X_train.shape[1]} x {X_train.shape[2]} pixels")

detector = PandaPatchDetector(
    backbone="efficientnet_lite0",
    layers=["_blocks.4"],  # stride 8 alone: the deeper layer describes the board's layout, not the defect
    neighbourhood=1,
    coreset_ratio=0.1,
    sigma=8.0,
    random_state=0,
)
if FAST:
    detector.set_params(resize=(96, 96))
detector.fit(X_train)
print(f"Memory bank: {len(detector.memory_bank_)} of {detector.n_training_patches_} patches "
      f"({detector.memory_bank_.nbytes / 2**20:.1f} MiB); fitted in {time.perf_counter() - start:.0f} s")

maps, scores = detector.anomaly_maps(X_test, return_scores=True)
print(f"Image ROC AUC {roc_auc_score(y_test, scores):.3f}, pixel ROC AUC {pixel_roc_auc(masks, maps):.3f}, "
      f"PRO {pro_score(masks, maps):.3f}")
print(f"Flagged: {int((detector.predict(X_test) == -1).sum())} of {len(X_test)} test images "
      f"(threshold offset_ = {detector.offset_:.4g})")

try:
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed (the plot extra): no figure.")
else:
    worst = np.argsort(scores)[:4]
    figure, axes = plt.subplots(2, 4, figsize=(12, 6))
    for column, index in enumerate(worst):
        axes[0, column].imshow(X_test[index], cmap="gray")
        axes[0, column].contour(masks[index], levels=[0.5], colors="lime", linewidths=1)
        axes[0, column].set_title(f"{'defective' if y_test[index] == -1 else 'normal'}, score {scores[index]:.2f}")
        axes[1, column].imshow(X_test[index], cmap="gray")
        axes[1, column].imshow(maps[index], cmap="jet", alpha=0.5)
    for axis in axes.ravel():
        axis.axis("off")
    figure.suptitle("The four most anomalous test crops: defect boxes (green) and anomaly maps")
    figure.tight_layout()
    figure.savefig(os.path.join(OUT, "local_defects.png"), dpi=80)
    print(f"Figure: {os.path.join(OUT, 'local_defects.png')}")
