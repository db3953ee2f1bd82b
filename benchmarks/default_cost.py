"""What a default costs: fit and scoring time of EfficientNet-Lite0 detectors, one run, one table.

Fits each setting on ``--n-train`` training images of one Fashion-MNIST class
(the full set where installed, else the package's sample) and scores
``--n-test`` test images, timing both, in one process so that the ratios
compare like with like::

    python benchmarks/default_cost.py --threads 2

Settings: the paper's unadapted baseline (centre crop, kNN), the recipe with
the kNN scorer (the default before issue 35), the recipe as it is now, and the
recipe with each image's features averaged with its mirror image's.
Each setting is fitted once after one warm-up fit of the first (the first
fit in a process pays for loading the network and BLAS warm-up).
"""

import argparse
import time

import torch

from sklearn_panda import PandaDetector
from sklearn_panda.datasets import fashion_mnist_or_sample, load_one_class

SETTINGS = {
    "paper baseline (crop, unadapted, kNN)": {"n_steps": 0, "resize": 256, "crop_size": 224, "scorer": "knn"},
    "recipe with kNN (the default before)": {"scorer": "knn"},
    "recipe (the default now)": {},
    "recipe with average_mirror=True": {"average_mirror": True},
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--normal-class", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = fashion_mnist_or_sample()
    X_train, X_test, _ = load_one_class(dataset, args.normal_class, max_train=args.n_train,
                                        max_test=args.n_test, random_state=0)
    first = next(iter(SETTINGS.values()))
    PandaDetector(backbone="efficientnet_lite0", random_state=0, **first).fit(X_train[:64])
    print(f"{dataset}, class {args.normal_class}: {len(X_train)} training, {len(X_test)} test images, "
          f"{torch.get_num_threads()} threads")
    print("| setting | scorer | fit (s) | score (s) | fit / recipe with kNN |")
    print("|---|---|---|---|---|")
    rows = []
    for name, params in SETTINGS.items():
        detector = PandaDetector(backbone="efficientnet_lite0", random_state=0, **params)
        began = time.perf_counter()
        detector.fit(X_train)
        fitted = time.perf_counter()
        detector.score_samples(X_test)
        scored = time.perf_counter()
        rows.append((name, type(detector.scorer_).__name__, fitted - began, scored - fitted))
    reference = rows[1][2]
    for name, scorer, fit_s, score_s in rows:
        print(f"| {name} | {scorer} | {fit_s:.1f} | {score_s:.1f} | {fit_s / reference:.2f} |")


if __name__ == "__main__":
    main()
