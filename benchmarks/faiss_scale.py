"""Exact kNN search against faiss indexes on real PANDA features, at gallery sizes up to 60,000.

What it measures
----------------
The pooled EfficientNet-Lite0 features (unadapted, ImageNet weights, L2-normalised
as ``PandaDetector`` uses them, 1280-d) of all 60,000 Fashion-MNIST training images
are the gallery and the 10,000 test images the queries. They are extracted once and
cached under ``benchmarks/out/faiss_features_<size>/`` (one file per chunk of 5,000
images, so an interrupted extraction resumes where it stopped). ``--size`` is the
input resolution (resize and crop); the default, 64, is 12 times cheaper than the
paper's 224 and what a loaded 2-core CPU extracts in reasonable time: the features
are real, the search problem (1280-d, 60,000 rows) is the same.

For each gallery size ``N`` (the first ``N`` training images of a seeded
permutation) and each search -- ``KNNScorer``'s exact brute force, faiss's exact
``IndexFlatL2`` and the approximate faiss indexes ``KNNScorer`` exposes (HNSW,
IVF-Flat, IVF-PQ) -- the table gives the index build time, the time to answer the
10,000 queries (k = 2), recall@2 against the exact neighbours, and the bytes the
index holds per vector (faiss's serialised index size / N; the brute force keeps
the float32 rows). Times are the best of ``--repeats``.

One-class scoring with each index: for ``--classes``, a ``KNNScorer`` fitted on the
training features of that class (6,000 rows) scores the 10,000 test features; the
ROC AUC of each index is given beside the exact one's (same classes, same run).

How to run
----------
From the repository root (extraction first, in the background; then the tables)::

    nice -n 10 python benchmarks/faiss_scale.py --extract-only --threads 1
    python benchmarks/faiss_scale.py --threads 2

The ROC AUC of chosen searches on every class, without the speed table::

    python benchmarks/faiss_scale.py --threads 2 --sizes --classes 0 1 2 3 4 5 6 7 8 9 \
        --auc-searches brute "PCA128,HNSW32 efSearch=32 k_factor=8"

The tables go to stdout and to ``--output`` (``benchmarks/out/faiss_scale.md``).
"""

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"
CHUNK = 5000


def fashion_mnist_arrays():
    """All 60,000 training and 10,000 test images of Fashion-MNIST with their class labels."""
    from sklearn_panda.datasets import load_one_class

    train, train_labels, test_labels = [], [], None
    test = None
    for normal_class in range(10):
        X_train, X_test, y_test = load_one_class("fashion_mnist", normal_class)
        train.append(X_train)
        train_labels.append(np.full(len(X_train), normal_class))
        if test is None:
            test, test_labels = X_test, np.full(len(X_test), -1)
        test_labels[y_test == 1] = normal_class
    return np.concatenate(train), np.concatenate(train_labels), test, test_labels


def feature_dir(size):
    return OUT / f"faiss_features_{size}"


def extract(size, threads, verbose=True):
    """Cache the pooled EfficientNet-Lite0 features of every image, chunk by chunk."""
    import torch

    from sklearn_panda import PandaFeatures

    torch.set_num_threads(threads)
    directory = feature_dir(size)
    directory.mkdir(parents=True, exist_ok=True)
    train, train_labels, test, test_labels = fashion_mnist_arrays()
    np.save(directory / "train_labels.npy", train_labels)
    np.save(directory / "test_labels.npy", test_labels)
    features = PandaFeatures(
        backbone="efficientnet_lite0", n_steps=0, resize=size, crop_size=size, random_state=0
    )
    features.fit(train[:64])
    for split, images in (("test", test), ("train", train)):
        for start in range(0, len(images), CHUNK):
            path = directory / f"{split}_{start:05d}.npy"
            if path.exists():
                continue
            began = time.perf_counter()
            block = features.transform(images[start : start + CHUNK])
            np.save(path.with_suffix(".tmp.npy"), block.astype(np.float32))
            os.replace(path.with_suffix(".tmp.npy"), path)
            if verbose:
                print(f"{split} {start}: {time.perf_counter() - began:.0f} s", flush=True)


def load_features(size):
    """The cached features and labels: train (60000, d), test (10000, d)."""
    directory = feature_dir(size)

    def stacked(split, n):
        return np.concatenate([np.load(directory / f"{split}_{start:05d}.npy") for start in range(0, n, CHUNK)])

    return (
        stacked("train", 60000),
        np.load(directory / "train_labels.npy"),
        stacked("test", 10000),
        np.load(directory / "test_labels.npy"),
    )


def indexes(n):
    """The searches compared at gallery size ``n``: name -> (faiss description, settings) or None (brute)."""
    nlist = 1 << int(round(np.log2(4 * np.sqrt(n))))  # faiss's rule of thumb: ~4 sqrt(N) cells
    return {
        "brute (KNNScorer)": None,
        "faiss Flat": ("Flat", {}),
        # The search-time knobs swept: a smaller efSearch / nprobe answers faster at a lower recall.
        **{f"HNSW32 efSearch={ef}": ("HNSW32", {"efSearch": ef}) for ef in (16, 24, 32, 64)},
        **{f"IVF{nlist},Flat nprobe={nprobe}": (f"IVF{nlist},Flat", {"nprobe": nprobe}) for nprobe in (4, 8, 16)},
        f"IVF{nlist},PQ128x4 nprobe=16 k_factor=16": (f"IVF{nlist},PQ128x4", {"nprobe": 16, "k_factor": 16}),
        # The graph on 128 principal components (10x cheaper distances), its k_factor x k
        # candidates re-ranked by their exact distances in the full space.
        **{
            f"PCA128,HNSW32 efSearch={ef} k_factor={factor}": ("PCA128,HNSW32", {"efSearch": ef, "k_factor": factor})
            for ef, factor in ((16, 8), (32, 4), (32, 8), (64, 8))
        },
    }


def timed(function, repeats=1):
    best, result = np.inf, None
    for _ in range(repeats):
        began = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - began)
    return best, result


def recall(found, exact):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact)]))


def speed_rows(gallery, queries, sizes, threads, repeats):
    """Build time, query time, recall@2 and bytes per vector of each search, for each N."""
    import faiss

    from sklearn_panda import KNNScorer
    from sklearn_panda.scorers import brute_force_kneighbors

    rows = []
    for n in sizes:
        part = gallery[:n]
        exact_time, (_, exact) = timed(lambda: brute_force_kneighbors(queries, part, 2), repeats)
        for name, spec in indexes(n).items():
            if spec is None:
                rows.append((n, name, 0.0, exact_time, 1.0, 4 * part.shape[1]))
                continue
            description, params = spec
            scorer = KNNScorer(algorithm="faiss", faiss_index=description, faiss_params=params,
                               n_jobs=threads, random_state=0)
            # The index alone (no leave-one-out search of the gallery), as fit builds it.
            scorer._faiss_description, scorer._algorithm = description, "faiss"
            scorer._fit_X, scorer.n_samples_fit_ = part, n
            build, scorer._index = timed(lambda: scorer._build_index(part))
            query, (_, found) = timed(lambda: scorer._search(queries, 2), repeats)
            size = len(faiss.serialize_index(scorer._index)) / n
            rows.append((n, name, build, query, recall(found, exact), size))
            print(rows[-1], flush=True)
    return rows


def auc_rows(train, train_labels, test, test_labels, classes, threads, searches=None):
    """ROC AUC of one-class kNN scoring (k=2) with each search (those starting with one of ``searches``), per class."""
    from sklearn.metrics import roc_auc_score

    from sklearn_panda import KNNScorer

    rows = []
    for normal_class in classes:
        gallery = train[train_labels == normal_class]
        y = np.where(test_labels == normal_class, 1, -1)
        for name, spec in indexes(len(gallery)).items():
            if searches and not name.startswith(tuple(searches)):
                continue
            if spec is None:
                scorer = KNNScorer(algorithm="brute")
            else:
                scorer = KNNScorer(algorithm="faiss", faiss_index=spec[0], faiss_params=spec[1],
                                   n_jobs=threads, random_state=0)
            auc = roc_auc_score(y, scorer.fit(gallery).score_samples(test))
            rows.append((normal_class, name, auc))
            print(rows[-1], flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extract-only", action="store_true", help="cache the features and stop")
    parser.add_argument("--threads", type=int, default=1, help="torch and faiss threads")
    parser.add_argument("--size", type=int, default=64, help="input resolution of the backbone")
    parser.add_argument("--sizes", type=int, nargs="*", default=[6000, 20000, 60000],
                        help="gallery sizes (none: the ROC AUC table only)")
    parser.add_argument("--classes", type=int, nargs="+", default=[0, 1], help="one-class AUC classes")
    parser.add_argument("--repeats", type=int, default=1, help="query timings: best of")
    parser.add_argument("--auc-searches", nargs="*", default=None,
                        help="ROC AUC of these searches only (names as in the table, or their beginnings)")
    parser.add_argument("--output", type=Path, default=OUT / "faiss_scale.md")
    args = parser.parse_args(argv)
    if args.extract_only:
        extract(args.size, args.threads)
        return
    from threadpoolctl import threadpool_limits

    train, train_labels, test, test_labels = load_features(args.size)
    order = np.random.default_rng(0).permutation(len(train))
    lines = [
        f"# faiss_scale: {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{args.threads} threads, features at {args.size}x{args.size}, d={train.shape[1]}",
        f"command: python {' '.join(sys.argv)}",
    ]
    if args.sizes:
        lines += [
            "",
            "| N | search | build s | 10k queries s | speed-up vs brute | recall@2 | bytes / vector |",
            "|---|---|---|---|---|---|---|",
        ]
    with threadpool_limits(args.threads):
        speed = speed_rows(train[order], test, args.sizes, args.threads, args.repeats)
        brute = {n: query for n, name, _, query, _, _ in speed if name.startswith("brute")}
        for n, name, build, query, rec, size in speed:
            lines.append(f"| {n} | {name} | {build:.2f} | {query:.2f} | {brute[n] / query:.1f}x | "
                         f"{rec:.4f} | {size:.0f} |")
        lines += ["", "| class | search | ROC AUC |", "|---|---|---|"]
        for normal_class, name, auc in auc_rows(train, train_labels, test, test_labels, args.classes,
                                                args.threads, args.auc_searches):
            lines.append(f"| {normal_class} | {name} | {auc:.4f} |")
    text = "\n".join(lines)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
