"""Make the Fashion-MNIST sample that ships with the package.

Reads the full Fashion-MNIST (the four IDX files, found as
``load_one_class("fashion_mnist", ...)`` finds them) with the package's own
reader, draws a seeded, stratified subset of each split (300 training and 200
test images per class by default) and writes it, uint8, with
``numpy.savez_compressed`` to ``sklearn_panda/data/fashion_mnist_sample.npz``.
``load_one_class("fashion_mnist_sample", ...)`` reads that file.

The file holds ``train_images`` (n, 28, 28), ``train_labels`` (n,),
``test_images``, ``test_labels`` and ``train_index`` / ``test_index``: where
each image lies in the full split. Images keep the order of the full files.
Rerunning the script with the same settings gives the same arrays::

    python benchmarks/make_fashion_mnist_sample.py
"""

import argparse
from pathlib import Path

import numpy as np

from sklearn_panda import datasets

OUT = Path(__file__).resolve().parents[1] / "sklearn_panda" / "data" / "fashion_mnist_sample.npz"


def stratified_subset(labels, per_class, rng):
    """Sorted indices of ``per_class`` images of each label, drawn without replacement."""
    chosen = [
        rng.choice(np.flatnonzero(labels == label), per_class, replace=False)
        for label in np.unique(labels)
    ]
    return np.sort(np.concatenate(chosen))


def make_sample(directory, n_train_per_class=300, n_test_per_class=200, seed=0):
    """The sample's arrays, by name, from the full Fashion-MNIST in ``directory``."""
    train, train_labels, test, test_labels = datasets._read_idx_split(Path(directory))
    train_rng, test_rng = np.random.default_rng(seed).spawn(2)
    train_index = stratified_subset(train_labels, n_train_per_class, train_rng)
    test_index = stratified_subset(test_labels, n_test_per_class, test_rng)
    return {
        "train_images": train[train_index],
        "train_labels": train_labels[train_index],
        "test_images": test[test_index],
        "test_labels": test_labels[test_index],
        "train_index": train_index.astype(np.uint16),
        "test_index": test_index.astype(np.uint16),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="as load_one_class's root")
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    directory = datasets._find_or_fetch(datasets._FASHION_MNIST, args.root, download=False)
    arrays = make_sample(directory, args.train_per_class, args.test_per_class, args.seed)
    np.savez_compressed(args.out, **arrays)
    size = Path(args.out).stat().st_size
    print(f"{args.out}: {len(arrays['train_images'])} train and {len(arrays['test_images'])} "
          f"test images from {directory}, {size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
