"""Is ``offset_`` calibrated? The share of new normal images each detector flags.

``contamination`` sets ``offset_`` as a percentile of the leave-one-out
training scores. After adaptation those training images are the ones the
network was trained to pull together, so their scores may look more normal
than a new normal image's, and more than ``contamination`` of new normal
images may be flagged. This script measures it: each Fashion-MNIST class
normal in turn, fit on training images of it, and count the flagged share of
its *test* images (normal, never seen), against ``contamination``::

    python benchmarks/offset_calibration.py --classes 0 1 2 --max-train 1000 --threads 2

Prints a table (and writes it to ``--csv``).
"""

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from sklearn_panda import PandaDetector
from sklearn_panda.datasets import fashion_mnist_or_sample, load_one_class

SETTINGS = {
    "unadapted (n_steps=0)": {"n_steps": 0},
    "default (recipe)": {},
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-train", type=int, default=1000)
    parser.add_argument("--contamination", type=float, nargs="+", default=[0.01, 0.05])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--csv", type=Path, default=Path("benchmarks/out/offset_calibration.csv"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = fashion_mnist_or_sample()
    rows = []
    for normal_class in args.classes:
        X_train, X_test, y_test = load_one_class(dataset, normal_class, max_train=args.max_train, random_state=0)
        normal_test = X_test[y_test == 1]
        for name, params in SETTINGS.items():
            detector = PandaDetector(backbone="efficientnet_lite0", random_state=0, **params).fit(X_train)
            scores = detector.score_samples(normal_test)
            for contamination in args.contamination:
                offset = float(np.percentile(detector.training_scores_, 100 * contamination))
                rows.append({
                    "class": normal_class,
                    "setting": name,
                    "contamination": contamination,
                    "training_flagged": float(np.mean(detector.training_scores_ < offset)),
                    "new_normal_flagged": float(np.mean(scores < offset)),
                    "n_train": len(X_train),
                    "n_new_normal": len(normal_test),
                })
                print(f"class {normal_class} {name:24} contamination {contamination:.2f}: flagged "
                      f"{rows[-1]['training_flagged']:.3f} of training (leave-one-out), "
                      f"{rows[-1]['new_normal_flagged']:.3f} of {len(normal_test)} new normal images", flush=True)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n{dataset}; mean share of new normal images flagged:")
    for name in SETTINGS:
        for contamination in args.contamination:
            shares = [row["new_normal_flagged"] for row in rows
                      if row["setting"] == name and row["contamination"] == contamination]
            print(f"  {name:24} contamination {contamination:.2f}: {np.mean(shares):.3f}")


if __name__ == "__main__":
    main()
