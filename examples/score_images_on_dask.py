"""Score a folder of image files on a Dask cluster
===============================================

A detector is fitted once and then scores far more images than it saw. Here a
PandaDetector is fitted on T-shirts (Fashion-MNIST class 0; the full set when
it is installed, else the sample that ships with the package), the test images
are written to a folder as PNG files, as a production line would leave them,
and a dask bag of their paths is scored on a ``LocalCluster`` of two worker
processes with :func:`sklearn_panda.distributed.score_dask`. The fitted model
travels to each worker once; each partition of paths is read and scored where
it lies. The scores equal in-memory scoring of the same files up to float
rounding (a partition's batches differ from one whole batch).

On a real cluster only the client line changes (see the comment at
``Client``); the image paths must then be readable from every worker (a shared
file system or object-store URLs that PIL can open through ``fsspec``).

Needs the ``dask`` extra (``pip install 'sklearn-panda[dask,lite]'``). Set
``SKLEARN_PANDA_EXAMPLES_FAST=1`` for a seconds-long smoke run on tiny data
(its numbers mean nothing).
"""

import os
import tempfile
import time
from pathlib import Path

import dask.bag as db
import numpy as np
from distributed import Client, LocalCluster
from PIL import Image
from sklearn.metrics import roc_auc_score

from sklearn_panda import PandaDetector
from sklearn_panda.datasets import fashion_mnist_or_sample, load_one_class
from sklearn_panda.distributed import score_dask

FAST = os.environ.get("SKLEARN_PANDA_EXAMPLES_FAST", "0") != "0"
MAX_TRAIN, MAX_TEST, SIZE, PARTITION = (30, 40, 64, 10) if FAST else (500, 2000, 224, 100)


def main():
    dataset = fashion_mnist_or_sample()
    X_train, X_test, y_test = load_one_class(
        dataset, normal_class=0, max_train=MAX_TRAIN, max_test=MAX_TEST, random_state=0
    )
    # n_steps=0: the unadapted features, one pass over the images, to keep the example short
    # (the backbone's recipe adapts for 100 steps first: docs/recipes.rst).
    detector = PandaDetector(
        backbone="efficientnet_lite0", n_steps=0, resize=SIZE, crop_size=SIZE, random_state=0
    ).fit(X_train)

    out = Path(os.environ.get("SKLEARN_PANDA_EXAMPLES_OUT", tempfile.mkdtemp()))
    folder = out / "incoming"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, image in enumerate(X_test):
        path = folder / f"{number:05d}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))

    # On a real cluster: client = Client("tcp://scheduler-address:8786")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster, Client(cluster) as client:
        bag = db.from_sequence(paths, partition_size=PARTITION)
        began = time.perf_counter()
        scores = score_dask(detector, bag, client=client).compute()
        seconds = time.perf_counter() - began

    in_memory = detector.score_samples(paths)
    print(f"Data: {dataset}; {len(paths)} PNG files in {bag.npartitions} partitions on 2 worker processes")
    print(f"Scored in {seconds:.1f} s ({len(paths) / seconds:.0f} images/s)")
    print(f"Largest difference to in-memory scoring: {np.abs(scores - in_memory).max():.2e}")
    print(f"ROC AUC (T-shirts normal): {100 * roc_auc_score(y_test, scores):.2f}")


if __name__ == "__main__":
    # Worker processes import this file; the cluster starts only in the main one.
    main()
