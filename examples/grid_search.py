"""Model selection: GridSearchCV over adaptation steps and scorers
===============================================================

One-class detectors must be fitted on normal images only, but ROC AUC needs
anomalies to be measured. :class:`~sklearn_panda.NormalOnlySplit` gives
exactly that to :class:`~sklearn.model_selection.GridSearchCV`: the normal
images are split in folds, and every test fold also gets all the (never
fitted) anomalies. Labels follow ``predict``: +1 normal, -1 anomaly, so
``scoring="roc_auc"`` works as is on ``decision_function``.

Here we pick, on Fashion-MNIST class 0 (T-shirt/top), whether to adapt the
pretrained features (``n_steps`` 0 or more) and which scorer to use, then
refit the best setting on the normal images and check it on held-out test
images. Prints the cross-validation table.

Set ``SKLEARN_PANDA_EXAMPLES_FAST=1`` for a seconds-long smoke run on tiny
data (its numbers mean nothing).
"""

import os
import time

import numpy as np
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from sklearn_panda import NormalOnlySplit, PandaDetector
from sklearn_panda.datasets import fashion_mnist_or_sample, load_one_class

FAST = os.environ.get("SKLEARN_PANDA_EXAMPLES_FAST", "0") != "0"
# A smaller input than the paper's 256/224 keeps the 12 fits of the search
# within a few minutes on a CPU.
MAX_TRAIN, MAX_TEST, STEPS, RESIZE, CROP = (30, 60, 2, 64, 64) if FAST else (150, 300, 50, 128, 112)
SCORERS, N_SPLITS = (["knn"], 2) if FAST else (["knn", "center"], 3)

start = time.perf_counter()
# The full Fashion-MNIST when it is installed, else the sample of it that ships
# with the package; load_one_class never swaps one for the other by itself.
DATASET = fashion_mnist_or_sample()
print(f"Data: {DATASET}")
X_train, X_test, y_test = load_one_class(
    DATASET, normal_class=0, max_train=MAX_TRAIN, max_test=MAX_TEST, random_state=0
)
# Half of the test split joins the search (its anomalies are what the folds
# are scored on); the other half is kept apart for the final check.
X_val, X_holdout, y_val, y_holdout = train_test_split(
    X_test, y_test, test_size=0.5, stratify=y_test, random_state=0
)
X_search = np.concatenate([X_train, X_val])
y_search = np.concatenate([np.ones(len(X_train), dtype=int), y_val])

# Any image preprocessing can go in front of the detector; here, uint8 to
# floats in [0, 1] (the detector accepts either).
pipeline = Pipeline([
    ("scale", FunctionTransformer(lambda images: images / 255.0)),
    ("detector", PandaDetector(
        backbone="efficientnet_lite0", resize=RESIZE, crop_size=CROP, random_state=0
    )),
])
param_grid = {"detector__n_steps": [0, STEPS], "detector__scorer": SCORERS}

search = GridSearchCV(
    pipeline,
    param_grid,
    scoring="roc_auc",
    cv=NormalOnlySplit(n_splits=N_SPLITS, shuffle=True, random_state=0),
    # refit=True would refit on all of X_search, anomalies included: refit
    # by hand on the normal images instead (below).
    refit=False,
    error_score="raise",
)
search.fit(X_search, y_search)

results = search.cv_results_
print(f"Fashion-MNIST class 0 normal: search on {np.sum(y_search == 1)} normal + "
      f"{np.sum(y_search == -1)} anomalous images, {N_SPLITS} folds, crop {CROP}")
print()
print("| n_steps | scorer | mean ROC AUC | std | rank | fit seconds |")
print("|---|---|---|---|---|---|")
for i in np.argsort(results["rank_test_score"], kind="stable"):
    params = results["params"][i]
    print(f"| {params['detector__n_steps']} | {params['detector__scorer']} "
          f"| {100 * results['mean_test_score'][i]:.1f} | {100 * results['std_test_score'][i]:.1f} "
          f"| {results['rank_test_score'][i]} | {results['mean_fit_time'][i]:.1f} |")

best = clone(pipeline).set_params(**search.best_params_).fit(X_search[y_search == 1])
holdout_auc = roc_auc_score(y_holdout, best.decision_function(X_holdout))
print()
print(f"best: {search.best_params_}; held-out ROC AUC {100 * holdout_auc:.1f} "
      f"({len(X_holdout)} images, {np.sum(y_holdout == 1)} normal)")
print(f"({time.perf_counter() - start:.0f} s)")
