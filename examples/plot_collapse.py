"""Catastrophic collapse, EWC and sample-wise early stopping (the paper's Figure 1)
================================================================================

Fine-tuning features to be compact around the normal images' mean can help
at first, but run long enough the network learns to map *every* image close
to that mean: anomalies come as close to the normal training features as
normal images are, and the ROC AUC falls. This is the paper's "catastrophic
collapse".

:class:`~sklearn_panda.PandaSES` keeps checkpoints during adaptation. At each
checkpoint ``t`` a test image's kNN distance is divided by ``s_t``, the mean
distance of held-out normal training images at that checkpoint, so that
checkpoints compare: normal images sit near 1, anomalies above.
``checkpoint_distances`` returns these (n_images, n_checkpoints) distances;
SES scores an image by its largest one, so an anomaly counts at the
checkpoint where it stood out most.

We train on Fashion-MNIST class 0 (T-shirt/top) without and with EWC, whose
penalty keeps the weights near the pretrained ones. The settings make
collapse show within a hundred steps on a CPU: raw pooled features as in the
paper (``normalize_features=False``; the package's default, L2-normalised
features, resist collapse far longer) and gradient clipping 10x looser than
the paper's (``clip_norm=1e-2``). EWC's strength is raised to this backbone's
loss scale (``ewc_lambda=1e8``, see the comment below). Look for: the ROC AUC
per checkpoint falling without EWC, EWC holding it up, and where the SES
score (dotted) lands. Prints the per-checkpoint table and saves a two-panel
figure (``plot_collapse.png`` in ``$SKLEARN_PANDA_EXAMPLES_OUT``, default
``examples/out``).

Set ``SKLEARN_PANDA_EXAMPLES_FAST=1`` for a seconds-long smoke run on tiny
data (its numbers mean nothing).
"""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from sklearn_panda import PandaSES  # noqa: E402
from sklearn_panda.datasets import fashion_mnist_or_sample, load_one_class  # noqa: E402

FAST = os.environ.get("SKLEARN_PANDA_EXAMPLES_FAST", "0") != "0"
# "or": __file__ is only read when the variable is unset (sphinx-gallery runs the script without one).
OUT = Path(os.environ.get("SKLEARN_PANDA_EXAMPLES_OUT") or Path(__file__).parent / "out")
MAX_TRAIN, MAX_TEST, N_STEPS, EVERY, N_FISHER, RESIZE, CROP = (
    (40, 60, 4, 2, 2, 64, 64) if FAST else (100, 300, 150, 25, 20, 128, 112)
)

# The full Fashion-MNIST when it is installed, else the sample of it that ships
# with the package; load_one_class never swaps one for the other by itself.
DATASET = fashion_mnist_or_sample()
print(f"Data: {DATASET}")
X_train, X_test, y_test = load_one_class(
    DATASET, normal_class=0, max_train=MAX_TRAIN, max_test=MAX_TEST, random_state=0
)
common = dict(
    backbone="efficientnet_lite0",
    n_steps=N_STEPS,
    checkpoint_every=EVERY,
    normalize_features=False,
    clip_norm=1e-2,
    resize=RESIZE,
    crop_size=CROP,
    random_state=0,
)
variants = {
    "no regularisation": PandaSES(**common),
    # The Fisher is estimated on the training images, with labels sampled
    # from the pretrained classifier's own predictions (no ImageNet needed).
    # The paper's ewc_lambda=1e4 is tuned to ResNet152 and an ImageNet
    # Fisher; against the compactness loss of raw EfficientNet-Lite0 features
    # (about 1e3 here) its penalty stays near 1e-2 and changes nothing.
    "EWC (lambda 1e8)": PandaSES(
        regularization="ewc", ewc_lambda=1e8, n_fisher_batches=N_FISHER, **common
    ),
}

results = {}
for name, ses in variants.items():
    ses.fit(X_train)
    distances = ses.checkpoint_distances(X_test)  # (n_test, n_checkpoints), divided by s_t
    results[name] = {
        "steps": np.asarray(ses.checkpoint_steps_),
        "normal": distances[y_test == 1].mean(axis=0),
        "anomaly": distances[y_test == -1].mean(axis=0),
        # y_test is +1 normal: a larger distance must mean "anomaly", hence the minus.
        "auc": [roc_auc_score(y_test, -distances[:, t]) for t in range(distances.shape[1])],
        "ses_auc": roc_auc_score(y_test, -distances.max(axis=1)),
    }

names = list(results)
print(f"Fashion-MNIST class 0 normal: {len(X_train)} training images, {len(X_test)} test images, "
      f"raw features, clip_norm=1e-2, {N_STEPS} steps, crop {CROP}")
print("Mean normalised kNN distance (normal / anomalous test images) and ROC AUC per checkpoint:")
print()
print("| step | " + " | ".join(f"{n}: normal | anomalous | ROC AUC" for n in names) + " |")
print("|---" * (1 + 3 * len(names)) + "|")
for t, step in enumerate(results[names[0]]["steps"]):
    cells = [f"{r['normal'][t]:.2f} | {r['anomaly'][t]:.2f} | {100 * r['auc'][t]:.1f}" for r in results.values()]
    print(f"| {step} | " + " | ".join(cells) + " |")
print("| SES | " + " | ".join(f" | | {100 * r['ses_auc']:.1f}" for r in results.values()) + " |")

figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
for (name, r), color in zip(results.items(), ["tab:red", "tab:blue"]):
    left.plot(r["steps"], r["normal"], color=color, marker="o", label=f"{name}, normal")
    left.plot(r["steps"], r["anomaly"], color=color, marker="o", linestyle="--", label=f"{name}, anomalous")
    right.plot(r["steps"], 100 * np.asarray(r["auc"]), color=color, marker="o", label=f"{name}, per checkpoint")
    right.axhline(100 * r["ses_auc"], color=color, linestyle=":", label=f"{name}, SES (max over checkpoints)")
left.set(xlabel="training step", ylabel="mean kNN distance / $s_t$", title="Test distances, normalised per checkpoint")
right.set(xlabel="training step", ylabel="ROC AUC (%)", title="ROC AUC per checkpoint and with SES")
left.legend(fontsize="small")
right.legend(fontsize="small", loc="lower left")
figure.tight_layout()
OUT.mkdir(parents=True, exist_ok=True)
figure.savefig(OUT / "plot_collapse.png", dpi=100)
print()
print(f"Figure saved to {OUT / 'plot_collapse.png'}")
