"""One adaptation, five scorers: PandaFeatures with scikit-learn's outlier detectors
=================================================================================

PANDA has two halves: adapting pretrained features to the normal images, and
scoring new images against the normal features. ``PandaFeatures`` is the first
half alone, as a scikit-learn transformer, so the second half can be any
outlier detector. Here EfficientNet-Lite0 features (works offline: the
weights come with the ``lite`` extra) are adapted once to the T-shirts of
Fashion-MNIST (class 0; the full set when it is installed, else the sample
that ships with the package), and the same adapted features are scored by:

* kNN with k=2 (:class:`~sklearn_panda.KNNScorer`, the paper's scorer);
* :class:`~sklearn.neighbors.LocalOutlierFactor` (``novelty=True``);
* a Gaussian: :class:`~sklearn_panda.MahalanobisScorer` (Ledoit-Wolf
  shrinkage, all features), and scikit-learn's
  :class:`~sklearn.covariance.EllipticEnvelope` (a robust covariance, which
  needs more images than dimensions: on the first principal components);
* :class:`~sklearn.ensemble.IsolationForest`.

The ROC AUC of each on the test set (every other class is an anomaly) is
printed side by side. ``PandaDetector(scorer=LocalOutlierFactor(novelty=True))``
gives the same as ``make_pipeline(PandaFeatures(), LocalOutlierFactor(novelty=True))``
in one estimator.

Set ``SKLEARN_PANDA_EXAMPLES_FAST=1`` for a seconds-long smoke run on tiny
data (its numbers mean nothing).
"""

import os
import time

from sklearn.covariance import EllipticEnvelope
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import LocalOutlierFactor
from sklearn.pipeline import make_pipeline

from sklearn_panda import KNNScorer, MahalanobisScorer, PandaFeatures
from sklearn_panda.datasets import fashion_mnist_or_sample, load_one_class

FAST = os.environ.get("SKLEARN_PANDA_EXAMPLES_FAST", "0") != "0"
# The paper's preprocessing is resize 256 / centre crop 224; fast mode uses
# 64x64 inputs, which EfficientNet-Lite0 accepts as well.
MAX_TRAIN, MAX_TEST, N_STEPS, RESIZE, CROP = (40, 60, 3, 64, 64) if FAST else (200, 400, 100, 256, 224)
# EllipticEnvelope's robust covariance needs several images per dimension.
N_COMPONENTS = 5 if FAST else 20

start = time.perf_counter()
DATASET = fashion_mnist_or_sample()
print(f"Data: {DATASET}")
X_train, X_test, y_test = load_one_class(
    DATASET, normal_class=0, max_train=MAX_TRAIN, max_test=MAX_TEST, random_state=0
)

# Adapt once. fit_transform returns the adapted features of the training
# images without running the frozen part of the network on them again.
features = PandaFeatures(
    backbone="efficientnet_lite0", n_steps=N_STEPS, resize=RESIZE, crop_size=CROP, random_state=0
)
train_features = features.fit_transform(X_train)
test_features = features.transform(X_test)
print(
    f"Fashion-MNIST class 0 normal: {len(X_train)} training images, {len(X_test)} test images, "
    f"{N_STEPS} adaptation steps, {train_features.shape[1]} features ({time.perf_counter() - start:.0f} s)"
)
print()

scorers = {
    "kNN, k=2 (KNNScorer)": KNNScorer(n_neighbors=2),
    "LocalOutlierFactor (novelty=True)": LocalOutlierFactor(n_neighbors=min(20, len(X_train) - 1), novelty=True),
    "MahalanobisScorer (Ledoit-Wolf)": MahalanobisScorer(),
    f"EllipticEnvelope on {N_COMPONENTS} principal components": make_pipeline(
        PCA(n_components=N_COMPONENTS, random_state=0), EllipticEnvelope(random_state=0)
    ),
    "IsolationForest": IsolationForest(random_state=0),
}
print("| scorer | ROC AUC | fit + score s |")
print("|---|---|---|")
for name, scorer in scorers.items():
    began = time.perf_counter()
    # score_samples is higher for normal images and y_test is +1 normal / -1
    # anomaly: they plug into roc_auc_score as they are.
    scores = scorer.fit(train_features).score_samples(test_features)
    print(f"| {name} | {100 * roc_auc_score(y_test, scores):.1f} | {time.perf_counter() - began:.2f} |")
print()
print(f"({time.perf_counter() - start:.0f} s)")
