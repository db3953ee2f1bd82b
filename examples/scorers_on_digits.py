"""Anomaly scorers on any features: digits, one class normal at a time
===================================================================

The scorers of sklearn-panda work on any 2-D feature matrix. Here the features
are raw 8x8 pixels of scikit-learn's digits: each digit in turn is "normal",
its training images fit the scorer, and every test image of another digit is
an anomaly. Prints the ROC AUC of each scorer per digit and the mean.
"""

import numpy as np
from sklearn.metrics import roc_auc_score

from sklearn_panda import CenterScorer, KMeansScorer, KNNScorer
from sklearn_panda.datasets import load_one_class

scorers = {
    "kNN (k=2)": lambda: KNNScorer(n_neighbors=2),
    "k-means (10)": lambda: KMeansScorer(n_clusters=10, random_state=0),
    "centre": lambda: CenterScorer(),
}
rows = []
for digit in range(10):
    X_train, X_test, y_test = load_one_class("digits", normal_class=digit, random_state=0)
    flat_train = X_train.reshape(len(X_train), -1) / 255.0
    flat_test = X_test.reshape(len(X_test), -1) / 255.0
    # y_test is +1 normal / -1 anomaly and score_samples is higher for normal,
    # so the two plug into roc_auc_score directly.
    rows.append([roc_auc_score(y_test, make().fit(flat_train).score_samples(flat_test)) for make in scorers.values()])

print("| digit | " + " | ".join(scorers) + " |")
print("|---" * (len(scorers) + 1) + "|")
for digit, row in enumerate(rows):
    print(f"| {digit} | " + " | ".join(f"{100 * auc:.1f}" for auc in row) + " |")
print("| mean | " + " | ".join(f"{100 * auc:.1f}" for auc in np.mean(rows, axis=0)) + " |")
