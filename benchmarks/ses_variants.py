"""PandaSES at other lengths and with other aggregates, offline, from one run per class.

``adaptation_study.py --ses-dump DIR`` saves, for a ``PandaSES`` setting, every
checkpoint's anomaly distances on the study's validation and test splits,
with the normalisers ``s_t`` and dispersions that the fit measured on its own
held-out normal images. SES's checkpoints are a prefix of one training run
(the learning rate is constant and the mini-batches do not depend on
``n_steps``), so the checkpoints up to step ``n`` are exactly those of
``PandaSES(n_steps=n)``, and every second one those of
``checkpoint_every=100``. This script scores each such variant without
training again:

* ``n_steps`` and ``checkpoint_every``: which checkpoints take part;
* ``aggregate``: ``max``, the paper's maximum over checkpoints of the
  normalised distance (``PandaSES.score_samples``), or ``mean``;
* ``normalise``: ``mean``, the paper's ``d_t / s_t``, or ``z``,
  ``(d_t - s_t) / sigma_t`` with ``sigma_t`` the held-out distances' standard
  deviation;
* ``max_dispersion``: 3 (the default) or none (the paper: every checkpoint).

Gains are against the paper's unadapted kNN baseline of each class, read from
the study's CSV (the ``unadapted`` kNN rows: the whole 2,000-image gallery).
Variants are ranked by the mean validation gain; choose on validation only::

    python benchmarks/adaptation_study.py --classes 8 6 0 3 4 2 9 5 7 1 \\
        --settings ses-defaults --threads 2 --csv ses_dump.csv --ses-dump benchmarks/ses_distances
    python benchmarks/ses_variants.py --dump benchmarks/ses_distances \\
        --baseline benchmarks/adaptation_study_ses.csv
"""

import argparse
import csv
import itertools
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

AGGREGATES = {"max": np.max, "mean": np.mean}
NORMALISES = ("mean", "z")


def load_dump(path):
    """The arrays ``adaptation_study.py --ses-dump`` saved for one class, as a dict."""
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def selected_checkpoints(dump, n_steps, every, max_dispersion):
    """Indices of the checkpoints a ``PandaSES(n_steps, checkpoint_every=every)`` takes the aggregate over.

    Checkpoint 0 (the pretrained network) always takes part; a later one when
    its step is a multiple of ``every`` up to ``n_steps`` and its dispersion is
    at most ``max_dispersion`` times checkpoint 0's (``None``: any dispersion).
    """
    steps, dispersions = dump["steps"], dump["dispersions"]
    keep = (steps <= n_steps) & (steps % every == 0)
    if max_dispersion is not None and dispersions[0] > 0:
        keep &= dispersions <= max_dispersion * dispersions[0]
    keep[0] = True
    return np.flatnonzero(keep)


def variant_scores(dump, split, n_steps, every, aggregate, normalise, max_dispersion):
    """Anomaly scores (higher: more normal) of ``split`` ("val" or "test") under one variant."""
    chosen = selected_checkpoints(dump, n_steps, every, max_dispersion)
    distances = dump[f"{split}_distances"][chosen].astype(np.float64)
    means = dump["normalizers"][chosen, None]
    if normalise == "mean":
        normalised = distances / means
    else:
        spreads = np.maximum(dump["dispersions"][chosen, None] * means, np.finfo(np.float32).tiny)
        normalised = (distances - means) / spreads
    return -AGGREGATES[aggregate](normalised, axis=0)


def variants(max_steps):
    """Every (n_steps, checkpoint_every, aggregate, normalise, max_dispersion) the dumps allow."""
    lengths = [n for n in range(100, max_steps + 1, 100)]
    return list(itertools.product(lengths, (50, 100), AGGREGATES, NORMALISES, (3.0, None)))


def baseline_rows(csv_paths):
    """class -> (val, test) ROC AUC of the unadapted kNN baseline."""
    baseline = {}
    for path in csv_paths:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                if row["setting"] == "unadapted" and row["scorer"] == "knn":
                    baseline[int(row["class"])] = (float(row["val_auc"]), float(row["test_auc"]))
    return baseline


def table(dumps, baseline, setting):
    """Markdown lines: every variant's mean gains and worst class, best mean validation gain first."""
    classes = sorted(dumps)
    max_steps = int(min(dump["steps"].max() for dump in dumps.values()))
    results = []
    for variant in variants(max_steps):
        aucs = np.array([
            [100 * roc_auc_score(dumps[c][f"labels_{split}"], variant_scores(dumps[c], split, *variant))
             for split in ("val", "test")]
            for c in classes
        ])
        gains = aucs - np.array([baseline[c] for c in classes])
        n_checkpoints = len(range(0, variant[0] + 1, variant[1]))
        results.append((variant, n_checkpoints, aucs, gains))
    results.sort(key=lambda result: -result[3][:, 0].mean())
    lines = [
        f"SES variants of `{setting}` on classes {','.join(map(str, classes))}; gains against the unadapted "
        "kNN baseline; the worst class by validation gain.",
        "",
        "| n_steps | checkpoint_every | checkpoints | aggregate | normalise | max_dispersion | val gain "
        "| worst class (val gain) | test gain | worst class (test gain) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (n_steps, every, aggregate, normalise, max_dispersion), n_checkpoints, aucs, gains in results:
        worst_val, worst_test = gains[:, 0].argmin(), gains[:, 1].argmin()
        lines.append(
            f"| {n_steps} | {every} | {n_checkpoints} | {aggregate} | {normalise} | {max_dispersion} | "
            f"{gains[:, 0].mean():+.2f} | {classes[worst_val]} ({gains[worst_val, 0]:+.2f}) | "
            f"{gains[:, 1].mean():+.2f} | {classes[worst_test]} ({gains[worst_test, 1]:+.2f}) |"
        )
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dump", default="benchmarks/ses_distances", help="the folder of --ses-dump")
    parser.add_argument("--setting", default="ses-defaults")
    parser.add_argument("--baseline", nargs="+", default=["benchmarks/adaptation_study_ses.csv"],
                        help="study CSVs with the classes' unadapted kNN rows")
    parser.add_argument("--classes", nargs="*", type=int, default=None, help="default: every class dumped")
    args = parser.parse_args(argv)
    dumps = {
        int(path.name.split("-")[0].removeprefix("class")): load_dump(path)
        for path in sorted(Path(args.dump).glob(f"class*-{args.setting}.npz"))
    }
    if args.classes is not None:
        missing = set(args.classes) - set(dumps)
        if missing:
            raise SystemExit(f"No dump of classes {sorted(missing)} in {args.dump}.")
        dumps = {c: dumps[c] for c in args.classes}
    if not dumps:
        raise SystemExit(f"No dumps of {args.setting!r} in {args.dump}.")
    baseline = baseline_rows(args.baseline)
    missing = set(dumps) - set(baseline)
    if missing:
        raise SystemExit(f"No unadapted kNN rows of classes {sorted(missing)} in {args.baseline}.")
    print("\n".join(table(dumps, baseline, args.setting)))


if __name__ == "__main__":
    main()
