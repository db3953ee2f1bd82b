"""Local defects on DeepPCB: the patch detector against the image-level detectors.

Fits each setting on normal templates of the training boards and scores
templates (normal) and defective images of the *other* boards
(``sklearn_panda.datasets.load_deeppcb``; 400 training and 300 test images by
default, half of them defective), then reports:

* image ROC AUC (templates against defective images, from ``score_samples``);
* pixel ROC AUC and PRO up to a false-positive rate of 0.3
  (``sklearn_panda.metrics``) of the anomaly maps against the defect boxes, for
  the patch detector (image-level detectors give no maps);
* fit time, the coreset's share of it, scoring speed (images/s, maps and
  scores in one pass) and the memory bank's size.

Each setting is one row of the CSV (``--csv``); settings already there are
skipped, so an interrupted run resumes where it stopped. Settings are named
below (``SETTINGS``); ``--settings`` picks some::

    python benchmarks/deeppcb.py --root ../shared/data/deeppcb --threads 2 \\
        --settings image-paper image-default fine-r01 patch-224 patch-default

All EfficientNet-Lite0 with its ImageNet weights (extra ``lite``).
"""

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from adaptation_study import cpu_name
from sklearn_panda import PandaDetector, PandaPatchDetector
from sklearn_panda._engine.coreset import StreamingCoreset
from sklearn_panda.datasets import load_deeppcb
from sklearn_panda.metrics import pixel_roc_auc, pro_score

LITE = "efficientnet_lite0"
NATIVE = {"resize": None}
# The README's recommendation for fine defects on line art (DeepPCB): the stride-8 map
# alone (the stride-16 one describes a board's layout, which differs between boards),
# no neighbourhood averaging (the defects are a few pixels wide), smoothing over 8 pixels.
FINE = {"layers": ["_blocks.4"], "neighbourhood": 1, "sigma": 8.0}

# name -> (estimator class, parameters). The patch detector's parameters
# override PandaPatchDetector's defaults; the image-level ones PandaDetector's.
SETTINGS = {
    # The image-level detectors: the paper's unadapted baseline and the package's default.
    "image-paper": (PandaDetector, {"n_steps": 0, "resize": 256, "crop_size": 224}),
    "image-default": (PandaDetector, {}),
    # The patch detector's defaults (PatchCore's: strides 8 + 16, 3 x 3 neighbourhoods, a
    # 10% coreset, sigma 4): each image at its own size, 640 x 640 here.
    "patch-default": (PandaPatchDetector, {}),
    "patch-default-r01": (PandaPatchDetector, {"coreset_ratio": 0.01}),
    # At 224 x 224, as PatchCore's MVTec setting (the speed figure of the issue).
    "patch-224": (PandaPatchDetector, {"resize": (224, 224)}),
    "fine-224": (PandaPatchDetector, {**FINE, "resize": (224, 224)}),
    # The coreset-ratio sweep at 224 x 224 (at 640 x 640, 25% of 2.56 million patches takes hours on 2 cores).
    "fine-224-r01": (PandaPatchDetector, {**FINE, "resize": (224, 224), "coreset_ratio": 0.01}),
    "fine-224-r25": (PandaPatchDetector, {**FINE, "resize": (224, 224), "coreset_ratio": 0.25}),
    # The recommendation at the native 640 x 640: coreset ratios.
    "fine-r01": (PandaPatchDetector, {**FINE, "coreset_ratio": 0.01}),
    "fine-r10": (PandaPatchDetector, {**FINE, "coreset_ratio": 0.1}),
    "fine-r25": (PandaPatchDetector, {**FINE, "coreset_ratio": 0.25}),
    # One change at a time from fine-r01: neighbourhood, layers, k, smoothing, resolution.
    "fine-r01-n3": (PandaPatchDetector, {**FINE, "coreset_ratio": 0.01, "neighbourhood": 3}),
    "fine-r01-s8s16": (PandaPatchDetector, {**FINE, "coreset_ratio": 0.01, "layers": ["_blocks.4", "_blocks.10"]}),
    "fine-r01-s4s8": (PandaPatchDetector, {**FINE, "coreset_ratio": 0.01, "layers": ["_blocks.2", "_blocks.4"]}),
    "fine-r01-k3": (PandaPatchDetector, {**FINE, "coreset_ratio": 0.01, "n_neighbors": 3}),
    "fine-r01-sigma4": (PandaPatchDetector, {**FINE, "coreset_ratio": 0.01, "sigma": 4.0}),
    "fine-r01-sigma16": (PandaPatchDetector, {**FINE, "coreset_ratio": 0.01, "sigma": 16.0}),
    "fine-r01-448": (PandaPatchDetector, {**FINE, "coreset_ratio": 0.01, "resize": 448}),
    "fine-r01-960": (PandaPatchDetector, {**FINE, "coreset_ratio": 0.01, "resize": 960}),
}

FIELDS = [
    "setting", "image_auc", "pixel_auc", "pro", "fit_s", "coreset_s", "score_images_per_s", "bank_rows",
    "bank_mb", "training_patches", "n_train", "n_test", "threads", "cpu", "parameters",
]


class CoresetTimer:
    """Times the coreset selection inside ``fit``: both stages of the detector's
    ``StreamingCoreset`` (its ``add``, which selects each chunk's pool, and ``select``)."""

    def __init__(self):
        self.seconds = 0.0
        self.originals = {name: getattr(StreamingCoreset, name) for name in ("add", "select")}

    def __enter__(self):
        def timed(original):
            def run(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - start

            return run

        for name, original in self.originals.items():
            setattr(StreamingCoreset, name, timed(original))
        return self

    def __exit__(self, *exc):
        for name, original in self.originals.items():
            setattr(StreamingCoreset, name, original)


def run_setting(name, data, threads, seed):
    cls, parameters = SETTINGS[name]
    X_train, X_test, y_test, masks = data
    estimator = cls(backbone=LITE, random_state=seed, **parameters)
    with CoresetTimer() as coreset:
        start = time.perf_counter()
        estimator.fit(X_train)
        fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    if isinstance(estimator, PandaPatchDetector):
        maps, scores = estimator.anomaly_maps(X_test, return_scores=True)
    else:
        maps, scores = None, estimator.score_samples(X_test)
    score_seconds = time.perf_counter() - start
    row = {
        "setting": name,
        "image_auc": roc_auc_score(y_test, scores),
        "fit_s": fit_seconds,
        "score_images_per_s": len(X_test) / score_seconds,
        "n_train": len(X_train),
        "n_test": len(X_test),
        "threads": threads,
        "cpu": cpu_name(),
        "parameters": repr(parameters),
    }
    if maps is not None:
        maps = [np.asarray(one) for one in maps]
        row.update(
            pixel_auc=pixel_roc_auc(masks, maps),
            pro=pro_score(masks, maps),
            coreset_s=coreset.seconds,
            bank_rows=len(estimator.memory_bank_),
            bank_mb=estimator.memory_bank_.nbytes / 2**20,
            training_patches=estimator.n_training_patches_,
        )
    return row


def read_rows(path):
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def print_table(rows):
    print(f"{'setting':24} {'image':>6} {'pixel':>6} {'PRO':>6} {'fit s':>7} {'coreset s':>9} {'img/s':>6} {'bank MB':>8}")
    for row in rows:
        def number(key, scale=1.0, digits=1):
            value = row.get(key)
            return f"{float(value) * scale:.{digits}f}" if value not in (None, "") else "-"

        print(
            f"{row['setting']:24} {number('image_auc', 100):>6} {number('pixel_auc', 100):>6} "
            f"{number('pro', 100):>6} {number('fit_s'):>7} {number('coreset_s'):>9} "
            f"{number('score_images_per_s', digits=2):>6} {number('bank_mb'):>8}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="the DeepPCB folder; default: the sample shipped with the package")
    parser.add_argument("--settings", nargs="+", default=["image-paper", "image-default", "fine-r01", "patch-224"])
    parser.add_argument(
        "--split", choices=["test", "validation"], default="test",
        help="validation: fit on three training boards, evaluate on the other two (for choosing settings)",
    )
    parser.add_argument("--max-train", type=int, default=400)
    parser.add_argument("--max-test", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, default=Path("benchmarks/out/deeppcb.csv"))
    parser.add_argument("--force", action="store_true", help="rerun settings the CSV already holds")
    args = parser.parse_args(argv)
    unknown = [name for name in args.settings if name not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_deeppcb(
        args.root, split=args.split, max_train=args.max_train, max_test=args.max_test, random_state=args.seed
    )
    print(f"DeepPCB {'sample' if args.root is None else args.root} ({args.split} split): {len(data[0])} training, "
          f"{len(data[1])} test images ({int((data[2] == -1).sum())} defective); CPU: {cpu_name()}, "
          f"{torch.get_num_threads()} threads", flush=True)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    rows = read_rows(args.csv)
    done = {row["setting"] for row in rows}
    for name in args.settings:
        if name in done and not args.force:
            print(f"{name}: in {args.csv} already", flush=True)
            continue
        row = run_setting(name, data, torch.get_num_threads(), args.seed)
        rows = [old for old in rows if old["setting"] != name] + [row]
        with args.csv.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        print_table([row])
    print()
    print_table([row for row in rows if row["setting"] in args.settings])


if __name__ == "__main__":
    main()
