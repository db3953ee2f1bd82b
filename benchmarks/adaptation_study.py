"""Where does adaptation help? A resumable sweep on Fashion-MNIST with EfficientNet-Lite0.

Each class is normal in turn. For every class and setting (trainable stages,
learning rate, EWC, SES, ...) the backbone is adapted on ``--n-train`` images
of the class through the package's own training code, and at every step of
``--eval-steps`` the adapted features are scored by kNN (k=2) and by the
Mahalanobis distance (:class:`~sklearn_panda.MahalanobisScorer`) on two splits:

* **validation**: held-out images of the class from Fashion-MNIST's *training*
  split, against images of the other classes from that split. Settings are
  chosen on these labels only.
* **test**: the official test split (the paper's protocol), reported, never
  used to choose.

The frozen trunk (everything below the deepest trainable choice) runs once per
image; its outputs are kept in ``--cache-dir`` as memory-mapped files and
reused by every setting, so a setting costs only its trainable stages. Rows
are appended to ``--csv`` as they are measured; a rerun skips the (class,
setting) pairs that are complete and redoes those that were interrupted.

Every setting preprocesses as the paper does (resize 256, centre-crop 224)
but those named ``-nocrop``, which resize the whole image to 224 (each
preprocessing has its own trunk cache). ``s2-lr1e-1-nocrop`` at step 100 is
EfficientNet-Lite0's recipe, the default ``PandaDetector``, and
``ses-defaults-nocrop`` is ``PandaSES`` with its defaults.

Run the sweep, then print the tables and the plot from the CSV::

    python benchmarks/adaptation_study.py --classes 0 1 2 3 4 5 6 7 8 9 \\
        --settings unadapted s2-lr1e-2 s2-lr1e-1 s2-lr1
    python benchmarks/adaptation_study.py --report
"""

import argparse
import csv
import os
import platform
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.utils import check_random_state

from sklearn_panda import KNNScorer, MahalanobisScorer, PandaDetector, PandaSES
from sklearn_panda._engine.augment import ViewMaker
from sklearn_panda._engine.backbones import build_feature_net
from sklearn_panda._engine.data import Preprocessor
from sklearn_panda._engine.inference import extract_features
from sklearn_panda._estimators.validation import check_input
from sklearn_panda.datasets import _FASHION_MNIST, _find_or_fetch, _read_idx_split

BACKBONE = "efficientnet_lite0"
# The trunk is cut below the deepest trainable choice of the sweep; shallower
# choices run the cut's first stages on top of the cached outputs.
DEEPEST_TRAINABLE = 3
EVAL_STEPS = (30, 100, 300, 1000, 2000, 3000)
SCORERS = {"knn": lambda: KNNScorer(n_neighbors=2), "mahalanobis": lambda: MahalanobisScorer()}
FIELDS = [
    "class", "setting", "step", "scorer", "val_auc", "test_auc", "train_seconds",
    "compactness_ratio", "n_train", "n_val", "n_test", "threads", "cpu",
]


# The paper's preprocessing (resize 256, centre-crop 224) drops a border of
# 1/16 of the side all round; "-nocrop" settings resize the whole image to 224.
PAPER_PREPROCESSING = {"resize": 256, "crop_size": 224}
NO_CROP = {"resize": (224, 224), "crop_size": None}


def _setting(n_stages=2, learning_rate=1e-2, **extra):
    return {"n_trainable_stages": n_stages, "learning_rate": learning_rate, **PAPER_PREPROCESSING, **extra}


# name -> PandaDetector (or PandaSES with "ses": True) parameters.
SETTINGS = {
    "unadapted": _setting(n_steps=0),
    **{
        f"s{stages}-lr{label}": _setting(stages, rate)
        for stages in (2, 3)
        for label, rate in (("1e-2", 1e-2), ("1e-1", 1e-1), ("1", 1.0))
    },
    **{
        f"s2-lr{label}-ewc": _setting(2, rate, regularization="ewc")
        for label, rate in (("1e-1", 1e-1), ("1", 1.0))
    },
    **{
        f"s2-lr{label}-noclip": _setting(2, rate, clip_norm=None)
        for label, rate in (("1e-4", 1e-4), ("1e-3", 1e-3))
    },
    # PandaSES with its defaults (500 steps, a checkpoint every 50).
    "ses-defaults": _setting(ses=True, n_steps=500),
    # The mean-shifted contrastive loss at the follow-up paper's SGD settings
    # (lr 1e-5, no clipping) and at a larger rate.
    **{
        f"s2-msc-lr{label}": _setting(2, rate, loss="mean_shifted", clip_norm=None)
        for label, rate in (("1e-5", 1e-5), ("1e-4", 1e-4), ("1e-3", 1e-3), ("1e-2", 1e-2))
    },
}
SETTINGS.update({
    f"{name}-nocrop": {**SETTINGS[name], **NO_CROP}
    for name in ("unadapted", "s2-lr1e-2", "s2-lr1e-1", "s2-lr1", "s3-lr1e-1", "s2-lr1e-1-ewc", "s2-msc-lr1e-4",
                 "ses-defaults")
})


def preprocessing(params):
    """(resize, crop_size) of a setting's parameters."""
    return params["resize"], params["crop_size"]


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ----------------------------------------------------------------- data


def splits(n_train, n_val, n_val_anomalies, max_test, seed):
    """Indices into Fashion-MNIST's arrays: per class train / validation, and the test subset."""
    train_images, train_labels, test_images, test_labels = _read_idx_split(
        _find_or_fetch(_FASHION_MNIST, None, False)
    )
    rng = np.random.default_rng(seed)
    per_class = {}
    for label in range(10):
        order = rng.permutation(np.flatnonzero(train_labels == label))
        per_class[label] = (order[:n_train], order[n_train : n_train + n_val])
    validation = {}
    for label in range(10):
        others = np.concatenate([per_class[other][1] for other in range(10) if other != label])
        anomalies = rng.choice(others, size=min(n_val_anomalies, len(others)), replace=False)
        validation[label] = (per_class[label][1], np.sort(anomalies))
    test = np.arange(len(test_labels))
    if max_test is not None and max_test < len(test):
        test = np.sort(rng.choice(test, size=max_test, replace=False))
    return train_images, test_images, test_labels, per_class, validation, test


def trunk_outputs(images, name, cache_dir, resize=PAPER_PREPROCESSING["resize"],
                  crop_size=PAPER_PREPROCESSING["crop_size"], chunk=1000):
    """The frozen trunk's output for every image, memory-mapped in ``cache_dir``; resumable."""
    net = build_feature_net(BACKBONE, "imagenet", DEEPEST_TRAINABLE).to(memory_format=torch.channels_last)
    detector = PandaDetector(backbone=BACKBONE, resize=resize, crop_size=crop_size)
    checked = check_input(images)
    preprocessor = Preprocessor(checked, resize=detector.resize, crop_size=detector.crop_size, device=torch.device("cpu"))
    with torch.inference_mode():
        shape = tuple(net.trunk(preprocessor(np.arange(1))).shape[1:])
    # The name also tells how the images were preprocessed: outputs cached by
    # an earlier version of the package's preprocessing are not reused.
    first = preprocessor(np.arange(min(8, len(images)))).contiguous().numpy()
    path = Path(cache_dir) / f"{name}_{BACKBONE}_cut{DEEPEST_TRAINABLE}_pre{zlib.crc32(first.tobytes()):08x}.f32"
    done_path = path.with_suffix(".done")
    mode = "r+" if path.exists() else "w+"
    cache = np.lib.format.open_memmap(path, mode=mode, dtype=np.float32, shape=(len(images), *shape))
    done = int(done_path.read_text()) if done_path.exists() else 0
    batch = detector._inference_batch_size(net, preprocessor)
    for start in range(done, len(images), chunk):
        stop = min(start + chunk, len(images))
        began = time.perf_counter()
        part = Preprocessor(check_input(images[start:stop]), resize=detector.resize, crop_size=detector.crop_size,
                            device=torch.device("cpu"))
        outputs = extract_features(lambda x: net.trunk(x).flatten(1), part, stop - start, batch)
        cache[start:stop] = outputs.reshape(stop - start, *shape)
        cache.flush()
        done_path.write_text(str(stop))
        print(f"trunk {name}: {stop}/{len(images)} ({(stop - start) / (time.perf_counter() - began):.0f} img/s)",
              file=sys.stderr, flush=True)
    return cache


class CachedInput:
    """Stands for the preprocessor of ``n`` samples whose trunk outputs are cached.

    The estimators' training and embedding code reads only the length and the
    device of a preprocessor when it is given the trunk outputs.
    """

    def __init__(self, n_samples, device):
        self.n_samples = n_samples
        self.device = device

    def __len__(self):
        return self.n_samples

    def __call__(self, indices):
        raise RuntimeError("the study computes no images: trunk outputs must be cached")


def view_bank(images, n_stages, n_views, name, cache_dir, seed, resize, crop_size, chunk=64):
    """Trunk outputs of ``n_views`` augmented views of every image, memory-mapped; resumable.

    The study's stand-in for fresh views at every step of the mean-shifted
    loss: the views are drawn once, by the package's :class:`ViewMaker`, and
    each training step contrasts two different ones of an image's
    ``n_views``. Steps then cost what compactness steps cost (the trunk does
    not run), at the price of seeing ``n_views`` views of an image instead of
    new ones every time.
    """
    if n_views < 2 or n_views % 2:
        raise ValueError(f"the view bank needs an even number of views >= 2, got {n_views}")
    net = build_feature_net(BACKBONE, "imagenet", n_stages).to(memory_format=torch.channels_last)
    detector = PandaDetector(backbone=BACKBONE, resize=resize, crop_size=crop_size)
    preprocessor = Preprocessor(check_input(images), resize=detector.resize, crop_size=detector.crop_size,
                                device=torch.device("cpu"))
    with torch.inference_mode():
        shape = tuple(net.trunk(preprocessor(np.arange(1))).shape[1:])
    first = preprocessor(np.arange(min(8, len(images)))).contiguous().numpy()
    path = Path(cache_dir) / (f"views{n_views}-s{seed}_{name}_{BACKBONE}_cut{n_stages}"
                              f"_pre{zlib.crc32(first.tobytes()):08x}.f32")
    done_path = path.with_suffix(".done")
    mode = "r+" if path.exists() else "w+"
    bank = np.lib.format.open_memmap(path, mode=mode, dtype=np.float32, shape=(len(images), n_views, *shape))
    done = int(done_path.read_text()) if done_path.exists() else 0
    views = ViewMaker(torch.Generator().manual_seed(seed))
    # Each chunk's views come from its own seed, so that a resumed run draws the same views.
    for start in range(done, len(images), chunk):
        stop = min(start + chunk, len(images))
        began = time.perf_counter()
        views.generator.manual_seed(seed * 1_000_003 + start)
        batch = preprocessor(np.arange(start, stop))
        with torch.inference_mode():
            for pair in range(n_views // 2):
                one, two = views(batch)
                out = net.trunk(torch.cat([one, two])).float().numpy()
                bank[start:stop, 2 * pair] = out[: stop - start]
                bank[start:stop, 2 * pair + 1] = out[stop - start :]
        bank.flush()
        done_path.write_text(str(stop))
        if stop == len(images) or (start // chunk) % 8 == 0:
            print(f"views {name}: {stop}/{len(images)} ({n_views * (stop - start) / (time.perf_counter() - began):.0f} views/s)",
                  file=sys.stderr, flush=True)
    return bank


class BankViews:
    """``_view_trunk_outputs`` of :class:`PandaFeatures` served from a :func:`view_bank`.

    For each image of a batch, two different views are drawn uniformly from
    its bank (from ``generator``); first views first, as the package stacks them.
    """

    def __init__(self, bank, generator):
        self.bank = bank
        self.generator = generator

    def __call__(self, net, preprocessor, views, batch):
        n_views = self.bank.shape[1]
        first = torch.randint(n_views, (len(batch),), generator=self.generator).numpy()
        second = (first + torch.randint(1, n_views, (len(batch),), generator=self.generator).numpy()) % n_views
        rows = np.concatenate([self.bank[batch, first], self.bank[batch, second]])
        return torch.from_numpy(rows).contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------ runs


def completed(csv_path):
    """(class, setting) -> rows already measured."""
    rows = {}
    if Path(csv_path).exists():
        with open(csv_path, newline="") as handle:
            for row in csv.DictReader(handle):
                rows.setdefault((int(row["class"]), row["setting"]), []).append(row)
    return rows


def rewrite_without(csv_path, drop):
    with open(csv_path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if (int(row["class"]), row["setting"]) not in drop]
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def run_setting(label, name, params, hidden, train_images, labels_val, labels_test, eval_steps, seed, write,
                view_bank=None, ses_dump=None):
    """Adapt on the class's training images with the package's code; score at ``eval_steps``.

    Compactness runs read the cached trunk outputs ``hidden``; the
    mean-shifted loss augments ``train_images`` and runs the trunk on them,
    or, given ``view_bank``, draws its views' trunk outputs from it.
    A PandaSES setting is scored once, after its own ``n_steps``; given
    ``ses_dump`` (a folder), each checkpoint's anomaly distances on both splits
    are saved there too.
    """
    params = dict(params)
    is_ses = params.pop("ses", False)
    n_stages = params["n_trainable_stages"]
    params.setdefault("n_steps", max(eval_steps))
    estimator_class = PandaSES if is_ses else PandaDetector
    detector = estimator_class(backbone=BACKBONE, inference_batch_size=64, random_state=seed, **params)
    # The adaptation runs in the detector's PandaFeatures, as in its fit.
    adaptation = detector._make_features()
    device = torch.device("cpu")
    net = build_feature_net(BACKBONE, "imagenet", n_stages).to(memory_format=torch.channels_last)
    inputs = {split: torch.from_numpy(np.ascontiguousarray(h)) for split, h in hidden[n_stages].items()}
    inputs = {split: h.contiguous(memory_format=torch.channels_last) for split, h in inputs.items()}
    if detector.loss == "mean_shifted" and view_bank is not None:
        train_input = CachedInput(len(inputs["train"]), device)
        adaptation._view_trunk_outputs = BankViews(view_bank, torch.Generator().manual_seed(seed))
    elif detector.loss == "mean_shifted":
        train_input = Preprocessor(check_input(train_images), resize=detector.resize, crop_size=detector.crop_size,
                                   device=device)
    else:
        train_input = CachedInput(len(inputs["train"]), device)
    # As PandaDetector.fit derives its generator from random_state.
    generator_seed = int(check_random_state(seed).randint(np.iinfo(np.int32).max))
    generator = torch.Generator().manual_seed(generator_seed)
    clock = {"train": 0.0, "since": time.perf_counter()}

    def emit(step, scorer_name, val_scores, test_scores, compactness_ratio):
        write({
            "class": label, "setting": name, "step": step, "scorer": scorer_name,
            "val_auc": 100 * roc_auc_score(labels_val, val_scores),
            "test_auc": 100 * roc_auc_score(labels_test, test_scores),
            "train_seconds": round(clock["train"], 1), "compactness_ratio": compactness_ratio,
            "n_train": len(inputs["train"]), "n_val": len(labels_val), "n_test": len(labels_test),
        })

    def evaluate(step, compactness_ratio):
        clock["train"] += time.perf_counter() - clock["since"]
        features = {
            split: adaptation._embed(net, CachedInput(len(h), device), h) for split, h in inputs.items()
        }
        for scorer_name, make in SCORERS.items():
            scorer = make().fit(features["train"])
            emit(step, scorer_name, scorer.score_samples(features["val"]), scorer.score_samples(features["test"]),
                 compactness_ratio)
        clock["since"] = time.perf_counter()

    if params["n_steps"] == 0:
        evaluate(0, 1.0)
        return
    if is_ses:
        plan = detector._training_plan()
        fitted = adaptation._adapt(net, train_input, inputs["train"], generator, plan)
        fitted.update(detector._fit_scoring(net, CachedInput(len(inputs["train"]), device), inputs["train"], seed, plan))
        clock["train"] += time.perf_counter() - clock["since"]
        # Every checkpoint is scored (SES's maximum reads the active ones), so
        # that ses_variants.py can try other lengths and aggregates offline.
        active = fitted["active_checkpoints_"]
        scores, raw = {}, {}
        for split in ("val", "test"):
            features = detector._checkpoint_features(
                net, fitted["checkpoints_"], CachedInput(len(inputs[split]), device), inputs[split], split,
            )
            raw[split] = np.stack([-scorer.score_samples(f) for scorer, f in zip(fitted["scorers_"], features)])
            # As PandaSES.score_samples: the largest normalised distance over the active checkpoints.
            distances = raw[split] / fitted["normalizers_"][:, None]
            scores[split] = -distances[active].max(axis=0)
        if ses_dump is not None:
            Path(ses_dump).mkdir(parents=True, exist_ok=True)
            np.savez_compressed(
                Path(ses_dump) / f"class{label}-{name}.npz",
                steps=np.asarray(fitted["checkpoint_steps_"]), normalizers=fitted["normalizers_"],
                dispersions=fitted["dispersions_"], active=active,
                val_distances=raw["val"].astype(np.float32), test_distances=raw["test"].astype(np.float32),
                labels_val=labels_val, labels_test=labels_test,
            )
        ratio = fitted["history_"]["compactness_ratio"][-1]
        emit(params["n_steps"], detector.scorer, scores["val"], scores["test"], ratio)
        return
    # The compactness ratio as PandaDetector's history_ defines it.
    pretrained = adaptation._embed(net, CachedInput(len(inputs["train"]), device), inputs["train"])
    initial = float(((pretrained - pretrained.mean(axis=0)) ** 2).sum(axis=1).mean())

    def checkpoint(step, loss, details):
        if step + 1 in eval_steps:
            evaluate(step + 1, details["compactness"] / initial)

    clock["since"] = time.perf_counter()
    adaptation._train(net, train_input, inputs["train"], generator, callbacks=[checkpoint])


def hidden_for_class(cache, per_class, validation, test, label, stages_needed):
    """Trunk outputs of the class's train / val / test images at each trainable-stage cut."""
    train_idx, _ = per_class[label]
    val_normal, val_anomalies = validation[label]
    at_cut = {
        "train": cache["train"][train_idx],
        "val": cache["train"][np.concatenate([val_normal, val_anomalies])],
        "test": cache["test"][test],
    }
    hidden = {DEEPEST_TRAINABLE: at_cut}
    deep = build_feature_net(BACKBONE, "imagenet", DEEPEST_TRAINABLE).to(memory_format=torch.channels_last)
    for n_stages in stages_needed:
        if n_stages == DEEPEST_TRAINABLE:
            continue
        # The first (DEEPEST_TRAINABLE - n_stages) trainable stages of the deep
        # split are frozen trunk stages of this one.
        frozen = deep.stages[: DEEPEST_TRAINABLE - n_stages]
        hidden[n_stages] = {}
        for split, values in at_cut.items():
            source = torch.from_numpy(np.ascontiguousarray(values)).contiguous(memory_format=torch.channels_last)
            outputs = extract_features(lambda x: frozen(x).flatten(1), lambda i: source[i], len(source), 64)
            with torch.inference_mode():
                shape = frozen(source[:1]).shape[1:]
            hidden[n_stages][split] = outputs.reshape(len(source), *shape)
    return hidden


def run(args):
    unknown = set(args.settings) - set(SETTINGS)
    if unknown:
        sys.exit(f"Unknown settings {sorted(unknown)}; choose from {sorted(SETTINGS)}.")
    torch.set_num_threads(args.threads)
    train_images, test_images, test_labels, per_class, validation, test = splits(
        args.n_train, args.n_val, args.n_val_anomalies, args.max_test, args.seed
    )
    needed = np.unique(np.concatenate([np.concatenate([*per_class[c], *validation[c]]) for c in range(10)]))
    # Only the needed training images go through the trunk; the cache is
    # indexed by position in the training split, other rows stay zero.
    Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
    caches = {}
    for prep in sorted({preprocessing(SETTINGS[name]) for name in args.settings}, key=str):
        caches[prep] = {
            "train": trunk_outputs_subset(train_images, needed, "train", args.cache_dir, *prep),
            "test": trunk_outputs(test_images, "test", args.cache_dir, *prep),
        }
    csv_path = args.csv[0]
    done = completed(csv_path)
    # Only the settings of this run: another run's rows may have been measured at other steps.
    interrupted = {
        key for key, rows in done.items()
        if key[1] in args.settings and not _complete(key[1], rows, args.eval_steps)
    }
    if interrupted:
        rewrite_without(csv_path, interrupted)
    new_file = not Path(csv_path).exists()
    handle = open(csv_path, "a", newline="")
    writer = csv.DictWriter(handle, fieldnames=FIELDS)
    if new_file:
        writer.writeheader()

    def write(row):
        writer.writerow({**row, "threads": args.threads, "cpu": cpu_name()})
        handle.flush()
        print(f"class {row['class']} {row['setting']} step {row['step']} {row['scorer']}: "
              f"val {row['val_auc']:.2f} test {row['test_auc']:.2f} ({row['train_seconds']} s)", file=sys.stderr, flush=True)

    for label in args.classes:
        todo = [name for name in args.settings if (label, name) not in done or (label, name) in interrupted]
        if not todo:
            continue
        val_normal, val_anomalies = validation[label]
        labels_val = np.r_[np.ones(len(val_normal)), -np.ones(len(val_anomalies))]
        labels_test = np.where(test_labels[test] == label, 1, -1)
        train_images_of_class = train_images[per_class[label][0]]
        hidden, banks = {}, {}
        for name in todo:
            prep, n_stages = preprocessing(SETTINGS[name]), SETTINGS[name]["n_trainable_stages"]
            if prep not in hidden:
                stages = sorted({SETTINGS[other]["n_trainable_stages"] for other in todo
                                 if preprocessing(SETTINGS[other]) == prep})
                hidden[prep] = hidden_for_class(caches[prep], per_class, validation, test, label, stages)
            bank = None
            if SETTINGS[name].get("loss") == "mean_shifted" and args.view_bank:
                if (prep, n_stages) not in banks:
                    banks[prep, n_stages] = view_bank(train_images_of_class, n_stages, args.view_bank,
                                                      f"class{label}", args.cache_dir, args.seed, *prep)
                bank = banks[prep, n_stages]
            run_setting(label, name, SETTINGS[name], hidden[prep], train_images_of_class, labels_val, labels_test,
                        args.eval_steps, args.seed, write, view_bank=bank, ses_dump=args.ses_dump)
    handle.close()


def _complete(setting, rows, eval_steps):
    params = SETTINGS.get(setting, {})
    last = params.get("n_steps", max(eval_steps))
    return any(int(row["step"]) == last for row in rows)


def trunk_outputs_subset(images, needed, name, cache_dir, resize=PAPER_PREPROCESSING["resize"],
                         crop_size=PAPER_PREPROCESSING["crop_size"]):
    """:func:`trunk_outputs` of ``images[needed]``, indexable by position in ``images``."""
    # The file name tells which images it holds.
    fingerprint = zlib.crc32(np.asarray(needed, dtype=np.int64).tobytes())
    outputs = trunk_outputs(images[needed], f"{name}{len(needed)}-{fingerprint:08x}", cache_dir, resize, crop_size)
    return _Positions(outputs, needed, len(images))


class _Positions:
    """Rows of ``values`` addressed by the original positions ``positions``."""

    def __init__(self, values, positions, n_total):
        self.values = values
        self.lookup = np.full(n_total, -1)
        self.lookup[positions] = np.arange(len(positions))

    def __getitem__(self, indices):
        rows = self.lookup[indices]
        if (rows < 0).any():
            raise IndexError("a requested image is not in the trunk cache")
        return self.values[rows]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", nargs="*", type=int, default=list(range(10)))
    parser.add_argument("--settings", nargs="*", default=["unadapted", "s2-lr1e-2"])
    parser.add_argument("--eval-steps", nargs="*", type=int, default=list(EVAL_STEPS))
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-val", type=int, default=500, help="held-out normal images per class")
    parser.add_argument("--n-val-anomalies", type=int, default=1000)
    parser.add_argument("--max-test", type=int, default=None, help="default: the whole test split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--view-bank", type=int, default=0, metavar="N_VIEWS",
                        help="mean-shifted settings draw their views from N_VIEWS precomputed views per "
                             "training image (even; 0: fresh views through the trunk at every step)")
    parser.add_argument("--ses-dump", default=None, metavar="DIR",
                        help="save each SES checkpoint's distances on both splits in DIR (for ses_variants.py)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/sklearn-panda-study"))
    parser.add_argument("--csv", nargs="+", default=["benchmarks/adaptation_study.csv"],
                        help="where rows go (one file); --report reads and merges several")
    parser.add_argument("--report", action="store_true", help="print the tables from --csv and plot")
    parser.add_argument("--out", default="benchmarks/out", help="where --report writes its table and plot")
    args = parser.parse_args(argv)
    if not args.report and len(args.csv) != 1:
        parser.error("a run writes to one --csv file; several are for --report")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        report(args)
    else:
        run(args)


def _read_rows(csv_path):
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in ("class", "step", "n_train", "n_val", "n_test", "threads"):
            row[key] = int(row[key])
        for key in ("val_auc", "test_auc", "train_seconds", "compactness_ratio"):
            # Rows re-entered from a log have no compactness ratio.
            row[key] = float(row[key]) if row[key] else float("nan")
    return rows


def summarise(rows):
    """(setting, step, scorer) -> {"classes", "val", "test", "seconds"} over the classes measured."""
    table = {}
    for row in rows:
        entry = table.setdefault((row["setting"], row["step"], row["scorer"]), {})
        entry[row["class"]] = row
    summary = {}
    for key, by_class in table.items():
        classes = sorted(by_class)
        summary[key] = {
            "classes": classes,
            "val": np.mean([by_class[c]["val_auc"] for c in classes]),
            "test": np.mean([by_class[c]["test_auc"] for c in classes]),
            "seconds": np.mean([by_class[c]["train_seconds"] for c in classes]),
            "by_class": by_class,
        }
    return summary


def report(args):
    """Markdown tables from the CSV: every (setting, step, scorer) averaged over
    the classes it has, then per class the best by *validation* ROC AUC against
    the paper's baseline (unadapted, kNN), then pairs of clipped compactness
    runs with the same learning rate x steps, then each class's own best
    setting (a bound on any one setting's mean gain); and a plot of ROC AUC
    against steps."""
    rows = [row for path in args.csv for row in _read_rows(path)]
    summary = summarise(rows)
    baseline = {row["class"]: row for row in rows if row["setting"] == "unadapted" and row["scorer"] == "knn"}
    lines = [
        f"Rows from {', '.join(args.csv)}; CPU: {', '.join(sorted({row['cpu'] for row in rows}))}.",
        "Gains are against the paper's baseline (unadapted, kNN) of the same class, averaged over the "
        "classes listed; the worst class is by validation gain.",
        "",
        "| setting | step | scorer | classes | val | val gain | worst class (val gain) | test | test gain "
        "| fit s (train only) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (setting, step, scorer), entry in sorted(summary.items(), key=lambda item: (item[0][0], item[0][2], item[0][1])):
        measured = [c for c in entry["classes"] if c in baseline]
        val_gains = {c: entry["by_class"][c]["val_auc"] - baseline[c]["val_auc"] for c in measured}
        test_gain = np.mean([entry["by_class"][c]["test_auc"] - baseline[c]["test_auc"] for c in measured])
        worst = min(val_gains, key=val_gains.get)
        lines.append(
            f"| {setting} | {step} | {scorer} | {','.join(map(str, entry['classes']))} | {entry['val']:.2f} | "
            f"{np.mean(list(val_gains.values())):+.2f} | {worst} ({val_gains[worst]:+.2f}) | "
            f"{entry['test']:.2f} | {test_gain:+.2f} | {entry['seconds']:.0f} |"
        )
    # Chosen on validation, over the classes every candidate was measured on.
    classes = sorted(baseline)
    candidates = {key: entry for key, entry in summary.items() if set(classes) <= set(entry["classes"])}
    if candidates:
        best = max(candidates, key=lambda key: np.mean([candidates[key]["by_class"][c]["val_auc"] for c in classes]))
        lines += ["", f"Best on validation over classes {classes}: {best[0]}, step {best[1]}, {best[2]}.", "",
                  "| class | baseline (unadapted, kNN) | unadapted, same scorer | best | best - baseline |", "|---|---|---|---|---|"]
        same_scorer = summary.get(("unadapted", 0, best[2]))
        for c in classes:
            chosen = candidates[best]["by_class"][c]["test_auc"]
            unadapted = same_scorer["by_class"][c]["test_auc"] if same_scorer else float("nan")
            lines.append(f"| {c} | {baseline[c]['test_auc']:.2f} | {unadapted:.2f} | {chosen:.2f} | {chosen - baseline[c]['test_auc']:+.2f} |")
    lines += _path_length_table(summary, baseline)
    lines += _per_class_bound(summary, baseline)
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adaptation_study.md").write_text(text + "\n")
    _plot(summary, out / "adaptation_study.png")


def _clipped_compactness_rate(setting):
    """The learning rate of a clipped compactness setting without EWC, or None for any other setting."""
    params = SETTINGS.get(setting, {})
    plain = params.get("loss", "compactness") == "compactness" and "clip_norm" not in params
    if not plain or params.get("ses") or params.get("regularization") or params.get("n_steps") == 0:
        return None
    return params["learning_rate"]


def _path_length_table(summary, baseline):
    """Pairs of clipped compactness runs that went equally far, compared class by class.

    The paper's gradient clip (norm 1e-3) binds at every step of these runs,
    so a step moves the parameters by a length proportional to the learning
    rate, and ``learning_rate * step`` is how far a run can have gone. For
    every two runs (kNN, same trainable stages and preprocessing) with the same product, the
    table gives their gains on the classes both were measured on and the mean
    absolute difference between them per class: where it is small, a higher
    rate stands for proportionally more steps at the lower one.
    """
    by_path = {}
    for (setting, step, scorer), entry in summary.items():
        rate = _clipped_compactness_rate(setting)
        if rate is not None and scorer == "knn":
            # Runs pair only with runs of the same trainable stages and preprocessing.
            key = (SETTINGS[setting]["n_trainable_stages"], float(f"{rate * step:.3g}"), preprocessing(SETTINGS[setting]))
            by_path.setdefault(key, []).append((setting, step, entry))
    lines = ["", "Clipped compactness runs (kNN) that went equally far (learning rate x steps), on the classes "
             "both were measured on:", "",
             "| stages | lr x steps | run a | run b | classes | a: val / test gain | b: val / test gain "
             "| mean abs. difference, val / test |", "|---|---|---|---|---|---|---|---|"]
    for (stages, path, _), runs in sorted(by_path.items(), key=lambda item: (*item[0][:2], str(item[0][2]))):
        runs = sorted(runs, key=lambda run: run[1])
        for i, (setting_a, step_a, a) in enumerate(runs):
            for setting_b, step_b, b in runs[i + 1:]:
                classes = sorted(set(a["classes"]) & set(b["classes"]) & set(baseline))
                if not classes:
                    continue

                def gains(entry, split):
                    return np.array([entry["by_class"][c][split] - baseline[c][split] for c in classes])

                val_a, test_a, val_b, test_b = (gains(e, split) for e in (a, b) for split in ("val_auc", "test_auc"))
                lines.append(
                    f"| {stages} | {path:g} | {setting_a} x {step_a} | {setting_b} x {step_b} | "
                    f"{','.join(map(str, classes))} | {val_a.mean():+.2f} / {test_a.mean():+.2f} | "
                    f"{val_b.mean():+.2f} / {test_b.mean():+.2f} | "
                    f"{np.abs(val_a - val_b).mean():.2f} / {np.abs(test_a - test_b).mean():.2f} |"
                )
    return lines


def _per_class_bound(summary, baseline):
    """What the best setting of each class gains, the class's own choice among all measured.

    A single setting gains on average at most what each class gains with its
    own best setting, so the mean of these per-class bests bounds every
    default the sweep could choose. The best is taken by validation gain (the
    choice a user with labelled validation anomalies of every class could
    make) and, as an oracle, by test gain.
    """
    best = {}
    for key, entry in summary.items():
        for c, row in entry["by_class"].items():
            if c not in baseline:
                continue
            gains = (row["val_auc"] - baseline[c]["val_auc"], row["test_auc"] - baseline[c]["test_auc"])
            for split, gain in enumerate(gains):
                if gain > best.get((c, split), (float("-inf"),))[0]:
                    best[(c, split)] = (gain, key, gains)
    classes = sorted({c for c, _ in best})
    if not classes:
        return []
    lines = ["", "Each class's own best measured setting (a bound on any one setting's mean gain):", "",
             "| class | best on validation | its val / test gain | best on test (oracle) | its test gain |",
             "|---|---|---|---|---|"]

    def name(key):
        return f"{key[0]} at {key[1]}, {key[2]}"

    for c in classes:
        _, by_val, (val_gain, test_gain) = best[(c, 0)]
        oracle_gain, by_test, _ = best[(c, 1)]
        lines.append(f"| {c} | {name(by_val)} | {val_gain:+.2f} / {test_gain:+.2f} | {name(by_test)} | {oracle_gain:+.2f} |")
    lines.append(
        f"| mean | | {np.mean([best[(c, 0)][2][0] for c in classes]):+.2f} / "
        f"{np.mean([best[(c, 0)][2][1] for c in classes]):+.2f} | | {np.mean([best[(c, 1)][0] for c in classes]):+.2f} |"
    )
    return lines


def unadapted_of(setting):
    """The setting of the unadapted features a run of ``setting`` starts from: same preprocessing.

    >>> unadapted_of("s2-lr1e-1-nocrop"), unadapted_of("s2-lr1e-1")
    ('unadapted-nocrop', 'unadapted')
    """
    return "unadapted-nocrop" if setting.endswith("-nocrop") else "unadapted"


def _plot(summary, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'sklearn-panda[plot]').", file=sys.stderr)
        return
    # Gains over the paper's baseline of the same classes: settings measured on
    # different classes stay comparable.
    baseline = summary.get(("unadapted", 0, "knn"))
    if baseline is None:
        print("no unadapted kNN rows: no plot", file=sys.stderr)
        return

    def mean_gain(entry, classes):
        return np.mean([entry["by_class"][c]["test_auc"] - baseline["by_class"][c]["test_auc"] for c in classes])

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for axis, scorer in zip(axes, SCORERS):
        for setting in sorted({key[0] for key in summary}):
            # A point measured on one class is that class, not a mean: left out.
            points = sorted(
                (step, entry) for (name, step, kind), entry in summary.items()
                if name == setting and kind == scorer and len(entry["classes"]) > 1
            )
            if not points:
                continue
            steps = [step for step, _ in points]
            gains = [mean_gain(entry, entry["classes"]) for _, entry in points]
            unadapted = summary.get((unadapted_of(setting), 0, scorer))
            if steps[0] != 0 and unadapted is not None:
                steps.insert(0, 0)
                gains.insert(0, mean_gain(unadapted, points[0][1]["classes"]))
            counts = sorted({len(entry["classes"]) for _, entry in points})
            label = f"{counts[0]}-{counts[-1]}" if len(counts) > 1 else counts[0]
            axis.plot(steps, gains, marker="o", label=f"{setting} ({label} classes)")
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_xscale("symlog", linthresh=10)
        axis.set(xlim=(0, None), xlabel="adaptation steps (linear to 10, logarithmic above)", title=f"scorer: {scorer}")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("mean test ROC AUC gain over unadapted kNN (points)")
    for axis in axes:
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
            break
    figure.savefig(path, dpi=100, bbox_inches="tight")


if __name__ == "__main__":
    main()
