"""Defaults that never lose: EfficientNet-Lite0 candidates on two kinds of images, every class (issue 35).

Two data sets, each class normal in turn:

* ``fashion_mnist``: the adaptation study's splits (``adaptation_study.py``):
  2,000 training images per class; validation 500 held-out normal + 1,000
  other-class images of the *training* split; test the official 10,000.
* ``natural_images``: ``../shared/data/natural_images`` (8 classes of 30 x 30
  photos). Per class (seed 0): 400 training and 300 normal test images, and
  300 test images drawn from the other classes' test images. Few images are
  left beside those (dogs: 2), so validation is a second fit on 300 of the 400
  training images, scored on the other 100 against 300 images from the other
  classes' *training* images.

The study has two stages.

``--stage features`` (slow, resumable) computes and stores, per class and fit,
the 1280-d features of the training, validation and test images under every
*extractor* (the unadapted network; the recipe's adaptation, whole image,
lr 1e-1, at steps 30 and 100; a gentler lr 1e-2 at 100; the recipe's
adaptation trained without a held-out tenth of the training images, for the
guard) and every *view* (whole image, its mirror image, the paper's
centre crop). The frozen trunk runs once per image and view and is cached.

``--stage report`` (fast) scores every candidate from the stored features
with the package's scorers and prints the per-class tables (validation and
test ROC AUC against the paper's baseline: centre crop, unadapted, kNN k=2)
ranked by their worst validation class, then their mean. Candidates: the
default, shorter / gentler adaptation, Mahalanobis, multi-view scoring
(each view's distances divided by its typical training distance),
unadapted + adapted ensembles, and the held-out guard.

    python benchmarks/defaults_study.py --dataset natural_images --threads 2
    python benchmarks/defaults_study.py --dataset fashion_mnist --threads 2
    python benchmarks/defaults_study.py --dataset natural_images --stage report
    python benchmarks/defaults_study.py --dataset fashion_mnist --stage report
    python benchmarks/defaults_study.py --stage joint
"""

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.utils import check_random_state

sys.path.insert(0, str(Path(__file__).resolve().parent))
import adaptation_study as study  # noqa: E402

from sklearn_panda import PandaDetector  # noqa: E402
from sklearn_panda._engine.backbones import build_feature_net  # noqa: E402
from sklearn_panda.datasets import _FASHION_MNIST, _find_or_fetch, _read_idx_split  # noqa: E402

BACKBONE = study.BACKBONE
N_STAGES = 2  # the recipe's trainable stages; the trunk cache is cut there
WHOLE = {"resize": (224, 224), "crop_size": None}
CROP = {"resize": 256, "crop_size": 224}
VIEWS = {"whole": (WHOLE, False), "crop": (CROP, False), "flip": (WHOLE, True)}
# With --lean, the views stored per extractor (the others: every view).
LEAN_VIEWS = {"unadapted": tuple(VIEWS), "lr1e-1@100": ("whole", "flip")}
# extractor -> (learning rate, steps at which features are stored, trained on the guard's 90%)
ADAPTATIONS = {
    "lr1e-1": (1e-1, (30, 100), False),
    "lr1e-2": (1e-2, (100,), False),
    "guard-lr1e-1": (1e-1, (100,), True),
}
GUARD_FRACTION = 0.1


# ----------------------------------------------------------------- data


def natural_images(root):
    """(images (N, 30, 30, 3) uint8, labels, class names) of the natural-images folders, sorted by name."""
    from PIL import Image

    names = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(names):
        for path in sorted((Path(root) / name).iterdir()):
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
            labels.append(label)
    return np.stack(images), np.asarray(labels), names


def natural_protocol(labels, seed):
    """Per class: {fit name: (train, val normal, val anomalies)} and (test normal, test anomalies) indices."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = {}
    for label in classes:
        order = rng.permutation(np.flatnonzero(labels == label))
        pools[label] = (order[:400], order[400:700])
    plan = {}
    for label in classes:
        train, test_normal = pools[label]
        other_train = np.concatenate([pools[o][0] for o in classes if o != label])
        other_test = np.concatenate([pools[o][1] for o in classes if o != label])
        plan[label] = {
            "val": (train[:300], train[300:], np.sort(rng.choice(other_train, 300, replace=False))),
            "test": (train, test_normal, np.sort(rng.choice(other_test, 300, replace=False))),
        }
    return plan


def fmnist_protocol(seed):
    """The adaptation study's Fashion-MNIST splits, as one fit per class scored on both splits."""
    train_images, train_labels, test_images, test_labels = _read_idx_split(_find_or_fetch(_FASHION_MNIST, None, False))
    images = np.concatenate([train_images, test_images])
    offset = len(train_images)
    _, _, _, per_class, validation, test = study.splits(2000, 500, 1000, None, seed)
    plan = {}
    for label in range(10):
        normal = offset + test[test_labels[test] == label]
        anomalies = offset + test[test_labels[test] != label]
        plan[label] = {
            "both": (per_class[label][0], validation[label][0], validation[label][1], normal, anomalies),
        }
    return images, plan


# ------------------------------------------------------------- features


def trunk_cache(images, needed, view, cache_dir, dataset):
    """Trunk outputs (cut at the recipe's trainable stages) of ``images[needed]`` under ``view``."""
    prep, mirrored = VIEWS[view]
    source = images[:, :, ::-1] if mirrored else images
    name = f"{dataset}-{view}"
    # The adaptation study's cache, cut at this study's trainable stages.
    deepest, study.DEEPEST_TRAINABLE = study.DEEPEST_TRAINABLE, N_STAGES
    try:
        return study.trunk_outputs_subset(np.ascontiguousarray(source), needed, name, cache_dir,
                                          prep["resize"], prep["crop_size"])
    finally:
        study.DEEPEST_TRAINABLE = deepest


def detector_for(learning_rate, n_steps, seed):
    return PandaDetector(backbone=BACKBONE, n_trainable_stages=N_STAGES, learning_rate=learning_rate,
                         n_steps=n_steps, inference_batch_size=64, random_state=seed, **WHOLE)


def as_input(values):
    tensor = torch.from_numpy(np.ascontiguousarray(values))
    return tensor.contiguous(memory_format=torch.channels_last)


def fit_features(out_dir, index_sets, caches, seed, write_time, lean=False):
    """Store every extractor's features of ``index_sets`` (split -> indices) under every view
    (``lean``: the views of ``LEAN_VIEWS``, the whole image for other extractors)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu")
    inputs = {view: {split: as_input(caches[view][idx]) for split, idx in index_sets.items()} for view in VIEWS}

    def views_of(extractor):
        return tuple(v for v in (LEAN_VIEWS.get(extractor, ("whole",)) if lean else VIEWS) if v in VIEWS)

    def store(extractor, adaptation, net):
        for view in views_of(extractor):
            for split, hidden in inputs[view].items():
                path = out_dir / f"{extractor}_{view}_{split}.npy"
                if not path.exists():
                    feats = adaptation._embed(net, study.CachedInput(len(hidden), device), hidden)
                    np.save(path, feats.astype(np.float32))

    unadapted = detector_for(1e-1, 0, seed)._make_features()
    net = build_feature_net(BACKBONE, "imagenet", N_STAGES).to(memory_format=torch.channels_last)
    store("unadapted", unadapted, net)
    n_train = len(index_sets["train"])
    guard_rows = np.sort(check_random_state(seed).choice(n_train, int(round(GUARD_FRACTION * n_train)), replace=False))
    np.save(out_dir / "guard_rows.npy", guard_rows)
    for name, (rate, steps, guarded) in ADAPTATIONS.items():
        if all((out_dir / f"{name}@{s}_{v}_{sp}.npy").exists()
               for s in steps for v in views_of(f"{name}@{s}") for sp in index_sets):
            continue
        detector = detector_for(rate, max(steps), seed)
        adaptation = detector._make_features()
        net = build_feature_net(BACKBONE, "imagenet", N_STAGES).to(memory_format=torch.channels_last)
        rows = np.setdiff1d(np.arange(n_train), guard_rows) if guarded else np.arange(n_train)
        train_hidden = inputs["whole"]["train"][torch.from_numpy(rows)].contiguous(memory_format=torch.channels_last)
        generator = torch.Generator().manual_seed(int(check_random_state(seed).randint(np.iinfo(np.int32).max)))
        clock = {"train": 0.0, "since": time.perf_counter()}

        def checkpoint(step, loss, details, name=name, steps=steps, adaptation=adaptation, net=net, clock=clock):
            if step + 1 in steps:
                clock["train"] += time.perf_counter() - clock["since"]
                write_time(name, step + 1, clock["train"])
                store(f"{name}@{step + 1}", adaptation, net)
                clock["since"] = time.perf_counter()

        adaptation._train(net, study.CachedInput(len(rows), device), train_hidden, generator, callbacks=[checkpoint])


def run_features(args):
    torch.set_num_threads(args.threads)
    for view in set(VIEWS) - set(args.views):
        del VIEWS[view]
    for name in set(ADAPTATIONS) - set(args.adaptations):
        del ADAPTATIONS[name]
    if args.dataset == "natural_images":
        images, labels, names = natural_images(args.root)
        plan = natural_protocol(labels, args.seed)
        # The "val" fit is scored on the validation split only, the "test" fit on the test split only.
        fits = {label: {fit: {"train": tr, fit: np.concatenate([vn, va])}
                        for fit, (tr, vn, va) in plan[label].items()} for label in plan}
        needed = np.arange(len(images))
    else:
        images, plan = fmnist_protocol(args.seed)
        fits = {label: {"both": {"train": p[0], "val": np.concatenate(p[1:3]), "test": np.concatenate(p[3:5])}}
                for label, p in ((label, plan[label]["both"]) for label in plan)}
        needed = np.unique(np.concatenate([np.concatenate(list(s.values())) for f in fits.values() for s in f.values()]))
    cache_dir = Path(args.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    caches = {view: trunk_cache(images, needed, view, cache_dir, args.dataset) for view in VIEWS}
    times = Path(args.features_dir) / args.dataset / "train_seconds.csv"
    times.parent.mkdir(parents=True, exist_ok=True)
    for label in args.classes if args.classes is not None else sorted(fits):
        for fit, index_sets in fits[label].items():
            began = time.perf_counter()
            out_dir = Path(args.features_dir) / args.dataset / f"class{label}" / fit

            def write_time(name, step, seconds, label=label, fit=fit):
                new = not times.exists()
                with open(times, "a", newline="") as handle:
                    writer = csv.writer(handle)
                    if new:
                        writer.writerow(["class", "fit", "extractor", "step", "train_seconds", "threads", "cpu"])
                    writer.writerow([label, fit, name, step, round(seconds, 1), args.threads, study.cpu_name()])

            fit_features(out_dir, index_sets, caches, args.seed, write_time, lean=args.lean)
            for split in index_sets:
                if split != "train":
                    np.save(out_dir / f"labels_{split}.npy", labels_for(args.dataset, plan[label], fit, split))
            print(f"{args.dataset} class {label} fit {fit}: {time.perf_counter() - began:.0f} s", file=sys.stderr,
                  flush=True)


def labels_for(dataset, class_plan, fit, split):
    """+1 normal, -1 anomalous, in the order of the stored split."""
    if dataset == "natural_images":
        _, normal, anomalies = class_plan[fit]
    else:
        parts = class_plan["both"]
        normal, anomalies = (parts[1], parts[2]) if split == "val" else (parts[3], parts[4])
    return np.r_[np.ones(len(normal)), -np.ones(len(anomalies))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["fashion_mnist", "natural_images"])
    parser.add_argument("--stage", choices=["features", "report", "joint"], default="features",
                        help="joint: the choice across both sets' report CSVs")
    parser.add_argument("--root", default="../shared/data/natural_images")
    parser.add_argument("--classes", nargs="*", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--views", nargs="*", default=list(VIEWS), choices=list(VIEWS))
    parser.add_argument("--adaptations", nargs="*", default=list(ADAPTATIONS), choices=list(ADAPTATIONS))
    parser.add_argument("--lean", action="store_true",
                        help="store the mirror and crop views for the unadapted and default networks only")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/sklearn-panda-defaults"))
    parser.add_argument("--features-dir", default=os.path.expanduser("~/.cache/sklearn-panda-defaults/features"))
    args = parser.parse_args(argv)
    import defaults_report

    if args.stage == "joint":
        here = Path(__file__).resolve().parent
        print(defaults_report.joint([here / f"defaults_study_{name}.csv" for name in ("fashion_mnist", "natural_images")]))
    elif args.dataset is None:
        parser.error("--dataset is required for the features and report stages")
    elif args.stage == "features":
        run_features(args)
    else:
        defaults_report.report(args)


if __name__ == "__main__":
    main()
