"""The paper's one-class protocol: each class normal in turn, mean ROC AUC.

For every chosen class of a dataset, the detectors are fitted on that class's
training images only and score the whole test set, whose other classes are the
anomalies. Prints a markdown table (one row per class, one column per method,
and the mean), and writes it with a CSV and a ROC-curve plot to ``--out``.

The data: ``--dataset auto`` (the default) is the full Fashion-MNIST when it
is installed and otherwise the sample of it that ships with the package; the
first line printed says which. ``--dataset fashion_mnist`` requires the full
set (an error names where it looked and how to get it);
``--dataset fashion_mnist_sample`` always takes the sample.

The README's main job, offline on a 2-core CPU in a few minutes: the paper's
unadapted baseline (its preprocessing, kNN) against the package's default for
the backbone (its recipe)::

    python benchmarks/one_class.py --classes 0 1 2 --max-train 200 --max-test 400 \
        --methods paper-unadapted recipe

A forced collapse (raw features, no gradient clipping): fixed-step
adaptation against SES, with and without leaving erratic checkpoints out::

    python benchmarks/one_class.py --classes 0 2 4 6 --max-train 500 --max-test 600 \
        --resize 128 --crop-size 112 --raw-features --clip-norm 0 --learning-rate 1e-3 \
        --steps 150 --ses-steps 150 --checkpoint-every 25 --methods unadapted panda ses ses-all

The paper's Table 1 rows (ResNet152, GPU, full data)::

    python benchmarks/one_class.py --dataset cifar10 --backbone resnet152 \
        --methods unadapted panda panda-ewc --steps 2300 --ewc-steps 7800 \
        --device cuda --download
"""

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.neighbors import LocalOutlierFactor
from sklearn.svm import OneClassSVM

from sklearn_panda import PandaDetector, PandaOE, PandaSES
from sklearn_panda.datasets import fashion_mnist_or_sample, load_one_class

# The paper's Table 1 (mean ROC AUC %, ResNet152), for comparison.
PAPER_TABLE_1 = {
    "cifar10": {"unadapted": 92.5, "panda-ewc": 96.2},
    "cifar100": {"unadapted": 94.1, "panda-ewc": 94.1},
    "fashion_mnist": {"unadapted": 94.5, "panda-ewc": 95.6},
    "cats_vs_dogs": {"unadapted": 96.0, "panda-ewc": 97.3},
}
# The sample's test images are a stratified subset of the same test set.
PAPER_TABLE_1["fashion_mnist_sample"] = PAPER_TABLE_1["fashion_mnist"]

DEFAULT_CLASSES = {"cifar100": range(20), "mvtec": None}


def resolve_dataset(args):
    """``--dataset auto``: the full Fashion-MNIST when found, else the shipped sample.

    Returns the dataset name and a line that says which data the run uses (None
    when the dataset was named explicitly). ``--download`` makes ``auto`` the
    full set, fetched when missing.
    """
    if args.dataset != "auto":
        return args.dataset, None
    if args.download or fashion_mnist_or_sample(args.root) == "fashion_mnist":
        return "fashion_mnist", "Data: the full Fashion-MNIST (60,000 train / 10,000 test images)."
    return "fashion_mnist_sample", (
        "Data: Fashion-MNIST full set not found; using the sample shipped with the package "
        "(3,000 train / 2,000 test images). For the full set: apt-get install "
        "dataset-fashion-mnist, or --download."
    )


def panda_methods(args):
    """Detector factories by method name; all share backbone and preprocessing."""
    common = dict(
        backbone=args.backbone,
        weights=None if args.weights == "none" else args.weights,
        resize=args.resize,
        crop_size=args.crop_size,
        precision=args.precision,
        device=args.device,
        random_state=args.seed,
        batch_size=args.batch_size,
        normalize_features=not args.raw_features,
        learning_rate=args.learning_rate,
        clip_norm=None if args.clip_norm <= 0 else args.clip_norm,
        scorer=args.scorer,
        verbose=args.verbose,
    )
    # PandaOE keeps its own defaults (the paper's OE settings) for these.
    oe_common = {
        key: value for key, value in common.items() if key not in ("normalize_features", "learning_rate", "scorer")
    }
    # The backbone's recipe: n_steps, learning_rate and scorer left at "auto".
    recipe_common = {key: value for key, value in common.items() if key not in ("learning_rate", "scorer")}
    # The paper's baseline whatever --resize and --crop-size say: unadapted, its preprocessing, kNN (k=2).
    paper_common = {**common, "resize": 256, "crop_size": 224, "scorer": "knn"}
    return {
        "recipe": lambda: PandaDetector(**recipe_common),
        # The recipe with each image's features averaged with its mirror image's.
        "recipe-mirror": lambda: PandaDetector(average_mirror=True, **recipe_common),
        "paper-unadapted": lambda: PandaDetector(n_steps=0, **paper_common),
        "unadapted": lambda: PandaDetector(n_steps=0, **common),
        "panda": lambda: PandaDetector(n_steps=args.steps, **common),
        "panda-ewc": lambda: PandaDetector(
            n_steps=args.ewc_steps or args.steps,
            regularization="ewc",
            n_fisher_batches=args.fisher_batches,
            **common,
        ),
        "ses": lambda: PandaSES(
            n_steps=args.ses_steps, checkpoint_every=args.checkpoint_every, **common
        ),
        # The paper's rule: the maximum over every checkpoint.
        "ses-all": lambda: PandaSES(
            n_steps=args.ses_steps, checkpoint_every=args.checkpoint_every, max_dispersion=None, **common
        ),
        "oe": lambda: PandaOE(n_steps=args.oe_steps, **oe_common),
        "oe-knn": lambda: PandaOE(n_steps=args.oe_steps, combine_knn=True, **oe_common),
    }


def exposure_images(name, like, n_images, seed):
    """Exposure images for PandaOE, shaped like the training images ``like``.

    ``digits``: scikit-learn's 8x8 digits, upscaled; disjoint from every
    one-class test set here (none of them contains handwritten digits except
    MNIST, where this exposure set must not be used).
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    if name != "digits":
        sys.exit(f"Unknown exposure set {name!r}; available: digits.")
    digits = load_digits().images
    chosen = np.random.default_rng(seed).choice(len(digits), size=min(n_images, len(digits)), replace=False)
    height, width = like.shape[1:3]
    resized = [
        np.asarray(Image.fromarray((digits[i] * 255 / 16).astype(np.uint8)).resize((width, height), Image.BILINEAR))
        for i in chosen
    ]
    images = np.stack(resized)
    return images if like.ndim == 3 else np.repeat(images[..., None], like.shape[-1], axis=-1)


def pixel_baselines(seed):
    """scikit-learn detectors on raw pixels, for context."""
    return {
        "iforest-pixels": lambda: IsolationForest(random_state=seed),
        "ocsvm-pixels": lambda: OneClassSVM(gamma="scale", nu=0.1),
        "lof-pixels": lambda: LocalOutlierFactor(novelty=True),
    }


def _flat_pixels(images):
    return np.asarray(images, dtype=np.float32).reshape(len(images), -1) / 255.0


def run(args):
    factories = {**panda_methods(args), **pixel_baselines(args.seed)}
    unknown = set(args.methods) - set(factories)
    if unknown:
        sys.exit(f"Unknown methods {sorted(unknown)}; choose from {sorted(factories)}.")
    classes = args.classes if args.classes is not None else DEFAULT_CLASSES.get(args.dataset, range(10))
    rows, curves = [], {}
    for normal_class in classes:
        X_train, X_test, y_test = load_one_class(
            args.dataset,
            normal_class,
            root=args.root,
            max_train=args.max_train,
            max_test=args.max_test,
            random_state=args.seed,
            download=args.download,
        )
        row = {"class": normal_class, "n_train": len(X_train), "n_test": len(X_test)}
        for method in args.methods:
            start = time.perf_counter()
            detector = factories[method]()
            if method.endswith("-pixels"):
                detector.fit(_flat_pixels(X_train))
                scores = detector.score_samples(_flat_pixels(X_test))
            elif method.startswith("oe"):
                exposure = exposure_images(args.exposure, X_train, len(X_train), args.seed)
                X_fit = np.concatenate([X_train, exposure])
                y_fit = np.r_[np.ones(len(X_train), dtype=int), -np.ones(len(exposure), dtype=int)]
                scores = detector.fit(X_fit, y_fit).score_samples(X_test)
            else:
                scores = detector.fit(X_train).score_samples(X_test)
            # y_test: +1 normal, -1 anomaly; scores: higher = more normal.
            row[method] = 100 * roc_auc_score(y_test, scores)
            row[f"{method} seconds"] = time.perf_counter() - start
            curves.setdefault(method, []).append(roc_curve(y_test, scores))
            print(f"class {normal_class} {method}: ROC AUC {row[method]:.1f} "
                  f"({row[f'{method} seconds']:.0f} s)", file=sys.stderr, flush=True)
        rows.append(row)
    return rows, curves


def markdown_table(rows, methods, dataset):
    lines = ["| class | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for row in rows:
        lines.append(f"| {row['class']} | " + " | ".join(f"{row[m]:.1f}" for m in methods) + " |")
    means = [np.mean([row[m] for row in rows]) for m in methods]
    lines.append("| **mean** | " + " | ".join(f"**{value:.1f}**" for value in means) + " |")
    paper = PAPER_TABLE_1.get(dataset)
    if paper:
        lines.append(
            "| paper (ResNet152, all classes) | "
            + " | ".join(f"{paper[m]:.1f}" if m in paper else "" for m in methods)
            + " |"
        )
    return "\n".join(lines)


def write_outputs(rows, curves, table, args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"one_class_{args.dataset}_{args.backbone}"
    (out / f"{stem}.md").write_text(table + "\n")
    with open(out / f"{stem}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no ROC plot (pip install 'sklearn-panda[plot]').", file=sys.stderr)
        return
    figure, axes = plt.subplots(figsize=(5, 5))
    for method, method_curves in curves.items():
        # The first class's curve per method keeps the plot readable.
        fpr, tpr, _ = method_curves[0]
        axes.plot(fpr, tpr, label=method)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axes.set(xlabel="false positive rate", ylabel="true positive rate",
             title=f"{args.dataset}, class {rows[0]['class']} normal")
    axes.legend(loc="lower right")
    figure.savefig(out / f"{stem}_roc.png", dpi=100, bbox_inches="tight")


def _size(text):
    """A side length for --resize / --crop-size: an integer, 'none' (skip the step) or 'auto' (the recipe's)."""
    if text.lower() in ("none", "auto"):
        return None if text.lower() == "none" else "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, 'none' or 'auto'; got {text!r}") from None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", default="auto",
        help="a name of sklearn_panda.datasets.available_datasets(), or 'auto' (default): "
        "fashion_mnist when installed, else fashion_mnist_sample, the subset shipped with "
        "the package; the first line printed says which",
    )
    parser.add_argument("--classes", nargs="*", type=int, default=None, help="default: all")
    parser.add_argument("--methods", nargs="*", default=["unadapted", "panda", "panda-ewc"])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a torchvision name, a path or 'none'")
    parser.add_argument("--resize", type=_size, default="auto",
                        help="an integer, 'none' or 'auto' (default: the backbone's recipe)")
    parser.add_argument("--crop-size", type=_size, default="auto",
                        help="an integer, 'none' or 'auto' (default: the backbone's recipe)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--ewc-steps", type=int, default=None, help="default: --steps")
    parser.add_argument("--fisher-batches", type=int, default=100)
    parser.add_argument("--ses-steps", type=int, default=500)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--oe-steps", type=int, default=300)
    parser.add_argument("--exposure", default="digits", help="exposure set for the 'oe' method")
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument(
        "--scorer", default="knn",
        help="scorer of every method but 'recipe' and the OE ones (default: kNN, k=2, the paper's)",
    )
    parser.add_argument("--raw-features", action="store_true", help="no L2 normalisation")
    parser.add_argument("--clip-norm", type=float, default=1e-3, help="gradient clipping; 0 = none")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--max-test", type=int, default=None)
    parser.add_argument("--root", default=None)
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/out")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    args.dataset, data_line = resolve_dataset(args)
    if data_line:
        print(data_line, flush=True)
    rows, curves = run(args)
    table = markdown_table(rows, args.methods, args.dataset)
    print(table)
    write_outputs(rows, curves, f"{data_line}\n\n{table}" if data_line else table, args)


if __name__ == "__main__":
    main()
