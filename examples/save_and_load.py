"""Save a fitted detector and load it back
=======================================

A fitted PandaDetector carries its adapted network. It pickles like any
scikit-learn estimator, so ``joblib.dump`` / ``joblib.load`` work (a model
fitted on a GPU loads on a CPU-only machine). But loading a pickle or joblib
file runs whatever code the file asks for: only load those from sources you
trust. ``sklearn_panda.save`` / ``sklearn_panda.load`` write and read a file
of tensors, numbers and strings only (read with
``torch.load(weights_only=True)``), the safe way to share a model.

Both round trips must give exactly the same scores. The files go to
``$SKLEARN_PANDA_EXAMPLES_OUT`` (default: ``examples/out``).

Set ``SKLEARN_PANDA_EXAMPLES_FAST=1`` for a seconds-long smoke run on tiny
data (its numbers mean nothing).
"""

import os
from pathlib import Path

import joblib
import numpy as np

import sklearn_panda
from sklearn_panda import PandaDetector
from sklearn_panda.datasets import fashion_mnist_or_sample, load_one_class

FAST = os.environ.get("SKLEARN_PANDA_EXAMPLES_FAST", "0") != "0"
# "or": __file__ is only read when the variable is unset (sphinx-gallery runs the script without one).
OUT = Path(os.environ.get("SKLEARN_PANDA_EXAMPLES_OUT") or Path(__file__).parent / "out")
MAX_TRAIN, MAX_TEST, N_STEPS, RESIZE, CROP = (40, 10, 2, 64, 64) if FAST else (200, 10, 50, 256, 224)
OUT.mkdir(parents=True, exist_ok=True)

# The full Fashion-MNIST when it is installed, else the sample of it that ships
# with the package; load_one_class never swaps one for the other by itself.
DATASET = fashion_mnist_or_sample()
print(f"Data: {DATASET}")
X_train, X_test, y_test = load_one_class(
    DATASET, normal_class=0, max_train=MAX_TRAIN, max_test=MAX_TEST, random_state=0
)
detector = PandaDetector(
    backbone="efficientnet_lite0", n_steps=N_STEPS, resize=RESIZE, crop_size=CROP, random_state=0
).fit(X_train)
scores = {"fitted": detector.score_samples(X_test)}

# joblib (pickle): convenient, for files you made yourself.
joblib_path = OUT / "panda_detector.joblib"
joblib.dump(detector, joblib_path)
scores["joblib"] = joblib.load(joblib_path).score_samples(X_test)

# The pickle-free format, where this version of sklearn-panda has it.
if hasattr(sklearn_panda, "load"):
    safe_path = OUT / "panda_detector.pt"
    sklearn_panda.save(detector, safe_path)
    scores["save/load"] = sklearn_panda.load(safe_path).score_samples(X_test)
else:
    print("This sklearn-panda has no save/load yet: joblib only.\n")

print("| test image | label | " + " | ".join(scores) + " |")
print("|---" * (len(scores) + 2) + "|")
for i, label in enumerate(y_test):
    print(f"| {i} | {label:+d} | " + " | ".join(f"{s[i]:.6f}" for s in scores.values()) + " |")
print()
for name, loaded in scores.items():
    if name != "fitted":
        identical = np.array_equal(loaded, scores["fitted"])
        print(f"{name}: scores identical to the fitted detector's: {identical}")
        if not identical:
            raise SystemExit(f"{name} changed the scores (max difference "
                             f"{np.max(np.abs(loaded - scores['fitted'])):.3g}).")
