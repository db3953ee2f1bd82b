"""Quick start: flag anomalous Fashion-MNIST images with PandaDetector
===================================================================

T-shirts (Fashion-MNIST class 0) are the normal images; every other class in
the test set is an anomaly (the full Fashion-MNIST when it is installed,
else the sample of it that ships with the package). A PandaDetector adapts
ImageNet-pretrained EfficientNet-Lite0 features to the T-shirts (works
offline: the weights come with the ``lite`` extra; any torchvision classifier's
name works as well, the user guide's "Choosing a backbone") and scores each test image
by how far its features lie from the normal training images' (the backbone's recipe
chooses how: for EfficientNet-Lite0 a Gaussian fitted to them, the Mahalanobis
distance, on whole images at 224 x 224). We then measure the
ROC AUC and compare two ways of turning scores into labels: the default
threshold (``offset_``, set by ``contamination="auto"``) and a threshold
chosen for a 5% false alarm rate on the training images
(``contamination=0.05``), and draw the ROC curve with both thresholds on it
(``quick_start.png`` with the ``plot`` extra).

Set ``SKLEARN_PANDA_EXAMPLES_FAST=1`` for a seconds-long smoke run on tiny
data (its numbers mean nothing).
"""

import os
import time

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from sklearn_panda import PandaDetector
from sklearn_panda.datasets import fashion_mnist_or_sample, load_one_class

FAST = os.environ.get("SKLEARN_PANDA_EXAMPLES_FAST", "0") != "0"
OUT = os.environ.get("SKLEARN_PANDA_EXAMPLES_OUT", ".")
# The backbone's recipe chooses the preprocessing and the scorer (resize and crop_size "auto");
# fast mode uses 64x64 inputs, which EfficientNet-Lite0 accepts as well.
MAX_TRAIN, MAX_TEST, N_STEPS = (40, 60, 3) if FAST else (200, 400, 100)
GEOMETRY = {"resize": 64, "crop_size": 64} if FAST else {}

start = time.perf_counter()
# The full Fashion-MNIST when it is installed, else the sample of it that ships
# with the package; load_one_class never swaps one for the other by itself.
DATASET = fashion_mnist_or_sample()
print(f"Data: {DATASET}")
X_train, X_test, y_test = load_one_class(
    DATASET, normal_class=0, max_train=MAX_TRAIN, max_test=MAX_TEST, random_state=0
)

detector = PandaDetector(
    backbone="efficientnet_lite0",
    weights="imagenet",
    n_steps=N_STEPS,
    random_state=0,
    **GEOMETRY,
)
detector.fit(X_train)  # normal images only: no labels needed

# score_samples: higher = more normal. y_test is +1 normal / -1 anomaly, so
# the two plug into roc_auc_score directly.
scores = detector.score_samples(X_test)
auc = roc_auc_score(y_test, scores)

# predict() thresholds at offset_; contamination="auto" flags about 1% of
# the (leave-one-out) training scores.
labels_auto = detector.predict(X_test)

# A threshold for a chosen false alarm rate: set contamination and refit, or,
# without refitting, take that percentile of the leave-one-out training
# scores (what contamination=0.05 would set as offset_).
offset_5 = np.percentile(detector.training_scores_, 5)
labels_5 = np.where(scores < offset_5, -1, 1)


def flagged(labels, kind):
    """Fraction of the test images of one kind (+1 normal, -1 anomaly) labelled -1."""
    return np.mean(labels[y_test == kind] == -1)


print(f"Fashion-MNIST class 0 normal: {len(X_train)} training images, {len(X_test)} test images "
      f"({np.sum(y_test == 1)} normal), {N_STEPS} adaptation steps, {detector.preprocessing_}")
print()
print(f"ROC AUC: {100 * auc:.1f}")
print()
print("| threshold | offset_ | flagged among normal | flagged among anomalies |")
print("|---|---|---|---|")
for name, offset, labels in [
    ('contamination="auto"', detector.offset_, labels_auto),
    ("contamination=0.05", offset_5, labels_5),
]:
    print(f"| {name} | {offset:.4f} | {100 * flagged(labels, 1):.1f}% | {100 * flagged(labels, -1):.1f}% |")
print()
print(f"({time.perf_counter() - start:.0f} s)")

try:
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed (the plot extra): no figure.")
else:
    # The anomalies (-1) as the positive class, minus the score as theirs: the curve
    # reads as anomalies flagged against normal images flagged, as the thresholds do.
    false_alarms, detected, _ = roc_curve(y_test, -scores, pos_label=-1)
    figure, axis = plt.subplots(figsize=(5, 4.5))
    axis.plot(false_alarms, detected, label=f"PandaDetector, ROC AUC {100 * auc:.1f}")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    for name, labels, marker in [('contamination="auto"', labels_auto, "o"), ("contamination=0.05", labels_5, "s")]:
        axis.plot(flagged(labels, 1), flagged(labels, -1), marker, label=name)
    axis.set_xlabel("normal test images flagged (false alarms)")
    axis.set_ylabel("anomalies flagged")
    axis.set_title("Fashion-MNIST, T-shirts normal")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(os.path.join(OUT, "quick_start.png"), dpi=80)
    print(f"Figure: {os.path.join(OUT, 'quick_start.png')}")
