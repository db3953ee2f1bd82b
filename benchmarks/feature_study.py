"""Which unadapted features score best? Layers and pooling of EfficientNet-Lite0 on Fashion-MNIST.

The adaptation study (``adaptation_study.py``) found that no adaptation of the
pooled penultimate features gains on average. This script asks the question
one level down: with the backbone left as it is, which of its feature maps,
pooled how, give the best one-class ROC AUC? Each class is normal in turn,
on the adaptation study's splits (2,000 training images of the class; a
*validation* split from Fashion-MNIST's training set, on which choices are
made; the official *test* split, reported only) and from its trunk cache.

Taps (feature maps of the unadapted network, 224x224 input):

* ``b7``: the output of block 7 (80 channels, 14x14), the study's cut;
* ``b10``: block 10 (112 channels, 14x14);
* ``b14``: block 14 (192 channels, 7x7);
* ``head``: the 1x1 head convolution (1,280 channels, 7x7), whose average
  is the paper's feature.

Each tap is average-pooled to ``g x g`` cells (``g`` = 1: global pooling, the
paper's), flattened and L2-normalised; a variant concatenates the normalised
taps it names (each then weighs the same) and is scored by kNN (k=2) or by
:class:`~sklearn_panda.MahalanobisScorer`. Rows go to ``--csv``; a rerun skips
rows already there::

    python benchmarks/feature_study.py --classes 0 1 2 3 4 5 6 7 8 9
    python benchmarks/feature_study.py --report
"""

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptation_study import (  # noqa: E402  (the study's splits and trunk cache)
    BACKBONE,
    DEEPEST_TRAINABLE,
    cpu_name,
    splits,
    trunk_outputs,
    trunk_outputs_subset,
)

from sklearn_panda import KNNScorer, MahalanobisScorer  # noqa: E402
from sklearn_panda._engine.backbones import build_feature_net  # noqa: E402

TAPS = ("b7", "b10", "b14", "head")
GRIDS = (1, 2)
SCORERS = {"knn": lambda: KNNScorer(n_neighbors=2), "mahalanobis": lambda: MahalanobisScorer()}
FIELDS = ["class", "variant", "scorer", "dim", "val_auc", "test_auc", "n_train", "n_val", "n_test", "cpu"]


def _variant(*parts):
    """A variant's name from (tap, grid) parts: ``head@1+b14@2``."""
    return "+".join(f"{tap}@{grid}" for tap, grid in parts)


VARIANTS = [
    _variant(("head", 1)),  # the paper's feature
    _variant(("b14", 1)),
    _variant(("b10", 1)),
    _variant(("b7", 1)),
    _variant(("head", 1), ("b14", 1)),
    _variant(("head", 1), ("b14", 1), ("b10", 1)),
    _variant(("head", 1), ("b14", 1), ("b10", 1), ("b7", 1)),
    _variant(("head", 2)),
    _variant(("b14", 2)),
    _variant(("head", 2), ("b14", 2)),
    _variant(("head", 1), ("head", 2)),
    _variant(("head", 1), ("b14", 1), ("head", 2), ("b14", 2)),
]


def parse_variant(name):
    parts = []
    for part in name.split("+"):
        tap, grid = part.split("@")
        if tap not in TAPS or int(grid) not in GRIDS:
            raise ValueError(f"unknown part {part!r} of variant {name!r}: taps {TAPS}, grids {GRIDS}")
        parts.append((tap, int(grid)))
    return parts


def pooled_taps(inputs, batch=256):
    """``{(tap, grid): (n, C * grid * grid) float32}`` of the unadapted network on cut outputs."""
    net = build_feature_net(BACKBONE, "imagenet", DEEPEST_TRAINABLE).to(memory_format=torch.channels_last)
    stages = list(net.stages)[:3]  # blocks 8-10, 11-14, 15 with the head convolution
    out = {}
    with torch.inference_mode():
        for start in range(0, len(inputs), batch):
            x = torch.from_numpy(np.ascontiguousarray(inputs[start : start + batch]))
            x = x.contiguous(memory_format=torch.channels_last)
            maps = {"b7": x}
            for tap, stage in zip(TAPS[1:], stages):
                x = stage(x)
                maps[tap] = x
            for tap, value in maps.items():
                for grid in GRIDS:
                    pooled = F.adaptive_avg_pool2d(value, grid).flatten(1).float().numpy()
                    out.setdefault((tap, grid), []).append(pooled)
    return {key: np.concatenate(parts) for key, parts in out.items()}


def tap_bank(images, name, cache_dir, trunk):
    """:func:`pooled_taps` of every cached trunk output, kept as ``.npz`` in ``cache_dir``."""
    path = Path(cache_dir) / f"taps_{name}_{BACKBONE}_{Path(trunk.filename).stem}.npz"
    if path.exists():
        with np.load(path) as stored:
            return {tuple((key.split("@")[0], int(key.split("@")[1]))): stored[key] for key in stored.files}
    began = time.perf_counter()
    taps = pooled_taps(trunk)
    np.savez(path, **{f"{tap}@{grid}": value for (tap, grid), value in taps.items()})
    print(f"taps {name}: {len(trunk)} images in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    return taps


def features(taps, rows, variant):
    blocks = []
    for tap, grid in parse_variant(variant):
        block = taps[(tap, grid)][rows]
        blocks.append(block / np.linalg.norm(block, axis=1, keepdims=True))
    return np.concatenate(blocks, axis=1)


def run(args):
    torch.set_num_threads(args.threads)
    train_images, test_images, test_labels, per_class, validation, test = splits(
        args.n_train, args.n_val, args.n_val_anomalies, None, args.seed
    )
    needed = np.unique(np.concatenate([np.concatenate([*per_class[c], *validation[c]]) for c in range(10)]))
    Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
    train_trunk = trunk_outputs_subset(train_images, needed, "train", args.cache_dir)
    test_trunk = trunk_outputs(test_images, "test", args.cache_dir)
    train_taps = tap_bank(train_images, "train", args.cache_dir, train_trunk.values)
    test_taps = tap_bank(test_images, "test", args.cache_dir, test_trunk)
    lookup = train_trunk.lookup

    done = set()
    if Path(args.csv).exists():
        with open(args.csv, newline="") as handle:
            done = {(int(r["class"]), r["variant"], r["scorer"]) for r in csv.DictReader(handle)}
    new_file = not Path(args.csv).exists()
    with open(args.csv, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        for label in args.classes:
            val_normal, val_anomalies = validation[label]
            labels_val = np.r_[np.ones(len(val_normal)), -np.ones(len(val_anomalies))]
            labels_test = np.where(test_labels == label, 1, -1)
            rows_train = lookup[per_class[label][0]]
            rows_val = lookup[np.concatenate([val_normal, val_anomalies])]
            for variant in args.variants:
                for scorer_name in args.scorers:
                    if (label, variant, scorer_name) in done:
                        continue
                    train = features(train_taps, rows_train, variant)
                    scorer = SCORERS[scorer_name]().fit(train)
                    val_auc = 100 * roc_auc_score(labels_val, scorer.score_samples(features(train_taps, rows_val, variant)))
                    test_auc = 100 * roc_auc_score(
                        labels_test, scorer.score_samples(features(test_taps, np.arange(len(test_labels)), variant))
                    )
                    writer.writerow({
                        "class": label, "variant": variant, "scorer": scorer_name, "dim": train.shape[1],
                        "val_auc": f"{val_auc:.4f}", "test_auc": f"{test_auc:.4f}", "n_train": len(rows_train),
                        "n_val": len(rows_val), "n_test": len(labels_test), "cpu": cpu_name(),
                    })
                    handle.flush()
                    print(f"class {label} {variant} {scorer_name}: val {val_auc:.2f} test {test_auc:.2f}",
                          file=sys.stderr, flush=True)


def report(args):
    with open(args.csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    table = {}
    for row in rows:
        table.setdefault((row["variant"], row["scorer"]), {})[int(row["class"])] = row
    baseline = table.get((VARIANTS[0], "knn"), {})
    classes = sorted(baseline)
    lines = [
        f"Rows from {args.csv}; CPU: {', '.join(sorted({row['cpu'] for row in rows}))}. Gains against the "
        f"paper's feature ({VARIANTS[0]}, kNN) of the same class; worst class by validation gain.",
        "",
        "| variant | scorer | dim | classes | val | val gain | worst class (val gain) | test | test gain | "
        + " | ".join(f"{c}" for c in classes) + " |",
        "|---|---|---|---|---|---|---|---|---|" + "---|" * len(classes),
    ]
    for (variant, scorer), by_class in sorted(table.items(), key=lambda item: -np.mean(
            [float(r["val_auc"]) - float(baseline[c]["val_auc"]) for c, r in item[1].items() if c in baseline])):
        measured = [c for c in sorted(by_class) if c in baseline]
        val_gain = {c: float(by_class[c]["val_auc"]) - float(baseline[c]["val_auc"]) for c in measured}
        test_gain = [float(by_class[c]["test_auc"]) - float(baseline[c]["test_auc"]) for c in measured]
        worst = min(val_gain, key=val_gain.get)
        per_class = " | ".join(f"{float(by_class[c]['test_auc']):.2f}" if c in by_class else "-" for c in classes)
        lines.append(
            f"| {variant} | {scorer} | {by_class[measured[0]]['dim']} | {len(measured)} | "
            f"{np.mean([float(by_class[c]['val_auc']) for c in measured]):.2f} | {np.mean(list(val_gain.values())):+.2f} | "
            f"{worst} ({val_gain[worst]:+.2f}) | {np.mean([float(by_class[c]['test_auc']) for c in measured]):.2f} | "
            f"{np.mean(test_gain):+.2f} | {per_class} |"
        )
    print("\n".join(lines))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", nargs="*", type=int, default=list(range(10)))
    parser.add_argument("--variants", nargs="*", default=VARIANTS)
    parser.add_argument("--scorers", nargs="*", default=list(SCORERS), choices=list(SCORERS))
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-val", type=int, default=500)
    parser.add_argument("--n-val-anomalies", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/sklearn-panda-study"))
    parser.add_argument("--csv", default="benchmarks/feature_study.csv")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    for variant in args.variants:
        parse_variant(variant)
    return args


def main(argv=None):
    args = parse_args(argv)
    report(args) if args.report else run(args)


if __name__ == "__main__":
    main()
