"""Does the image-level detector's lead on BSData come from the pits or from the date? (issue 43)

On BSData's test split ``PandaDetector()`` ranks the pitted photos above the
normal ones better (94.3 ROC AUC) than ``PandaPatchDetector()`` (92.3). The
data set's README warns that the soiling drifts with time and that a detector
can learn the date, and the pitted photos were taken late: all but two of the
167 on 2020-09-05 to 09-07, when only 50 of the 300 normal photos were taken.
So a detector that sees the whole photo's soiling ranks a late photo high
whether or not it has a pit.

Both detectors are fitted with their defaults on the 150 training photos of
``patch_study.py``'s BSData split (the same fit as the test split's) and score
every held-out photo. Printed:

* on the test split, then on the validation and test splits together (the
  validation photos chose the patch detector's defaults): each detector's
  image ROC AUC, and the difference with a paired, stratified bootstrap
  interval (2,000 draws of the photos);
* the **date-matched** ROC AUC on the same photos: only pairs of a normal and
  a pitted photo taken on the same day count (the per-day ROC AUCs, weighted
  by their pairs), so that the date cannot separate them; its difference's
  interval likewise;
* among the held-out **normal** photos only (validation and test, none
  pitted), the ROC AUC with which each score tells the photos taken on
  2020-09-05 or later (the days of 165 of the 167 pitted photos) from the
  earlier ones, and the rank correlation of the score with the capture time:
  how much of the score is the date.

Scores are kept in ``--out``'s ``bsdata_dates.npz``, reused on a rerun
whatever ``--bsdata`` says (delete it to score again).

    python benchmarks/bsdata_dates.py --threads 2
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent
# The first day with more than two pitted photos.
LATE = "200905"
BOOTSTRAP_DRAWS = 2000


def capture_time(path):
    """The photo's capture time ``yymmddhhmmss`` from its name (``01_<time>_<position>_...``)."""
    return Path(path).name.split("_")[1]


def scores_of(args):
    """``(paths, y, image-level anomaly scores, patch anomaly scores, split)`` of every held-out photo."""
    path = Path(args.out) / "bsdata_dates.npz"
    if path.is_file():
        stored = np.load(path)
        return [str(p) for p in stored["paths"]], stored["y"], stored["image_level"], stored["patch"], stored["split"]
    sys.path.insert(0, str(HERE))
    from patch_study import bsdata_splits

    from sklearn_panda import PandaDetector, PandaPatchDetector

    splits = bsdata_splits(args.bsdata)
    fit = splits["test"][0]
    paths, y, split = [], [], []
    for name in ("validation", "test"):
        _, images, labels, _ = splits[name]
        paths += images
        y += list(labels)
        split += [name] * len(images)
    image_level = -PandaDetector(backbone="efficientnet_lite0", random_state=0).fit(fit).score_samples(paths)
    patch = -PandaPatchDetector(random_state=0).fit(fit).score_samples(paths)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    np.savez(path, paths=np.array(paths), y=np.array(y), image_level=image_level, patch=patch, split=np.array(split))
    return paths, np.array(y), image_level, patch, np.array(split)


def paired_interval(anomalous, first, second, auc, draws=None, seed=0):
    """2.5th and 97.5th percentiles of ``auc(drawn, second) - auc(drawn, first)`` over draws of the
    photos' indices with replacement within each class (both scores see the same draws; draws
    where ``auc`` is NaN are left out). ``draws``: ``BOOTSTRAP_DRAWS`` unless given."""
    rng = np.random.default_rng(seed)
    positive, negative = np.flatnonzero(anomalous), np.flatnonzero(~anomalous)
    differences = []
    for _ in range(BOOTSTRAP_DRAWS if draws is None else draws):
        drawn = np.r_[rng.choice(positive, len(positive)), rng.choice(negative, len(negative))]
        differences.append(auc(drawn, second) - auc(drawn, first))
    return np.nanpercentile(differences, [2.5, 97.5])


def paired_bootstrap(anomalous, first, second, draws=None):
    """Paired bootstrap interval of ROC AUC(second) - ROC AUC(first)."""
    return paired_interval(anomalous, first, second, lambda drawn, s: roc_auc_score(anomalous[drawn], s[drawn]), draws)


def date_matched_difference_interval(anomalous, first, second, days, draws=None):
    """Paired bootstrap interval of the date-matched ROC AUC difference."""
    def auc(drawn, scores):
        return date_matched_auc(anomalous[drawn], scores[drawn], days[drawn])[0]
    return paired_interval(anomalous, first, second, auc, draws)


def date_matched_auc(anomalous, scores, days):
    """ROC AUC over the pairs of a normal and an anomalous photo of the same day (NaN without
    any), and the number of those pairs."""
    weighted, pairs = 0.0, 0
    for day in np.unique(days):
        on_day = days == day
        n_pairs = int(anomalous[on_day].sum() * (~anomalous[on_day]).sum())
        if n_pairs:
            weighted += n_pairs * roc_auc_score(anomalous[on_day], scores[on_day])
            pairs += n_pairs
    return (weighted / pairs if pairs else float("nan")), pairs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bsdata", default="../shared/data/bsdata")
    parser.add_argument("--out", default="benchmarks/out")
    parser.add_argument("--draws", type=int, default=BOOTSTRAP_DRAWS, help="bootstrap draws of each interval")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    paths, y, image_level, patch, split = scores_of(args)
    times = np.array([capture_time(p) for p in paths])
    days = np.array([t[:6] for t in times])
    anomalous = y == -1
    detectors = {"PandaDetector() (image level)": image_level, "PandaPatchDetector()": patch}

    test = split == "test"
    everything = np.ones(len(split), dtype=bool)
    for name, rows in (("test split", test), ("validation and test splits (validation chose the patch defaults)", everything)):
        print(f"\n# BSData {name}: {int((~anomalous[rows]).sum())} normal, {int(anomalous[rows].sum())} pitted photos")
        print("| detector | image ROC AUC | date-matched ROC AUC |")
        print("|---|---|---|")
        for detector, scores in detectors.items():
            matched, pairs = date_matched_auc(anomalous[rows], scores[rows], days[rows])
            print(f"| {detector} | {100 * roc_auc_score(anomalous[rows], scores[rows]):.1f} | {100 * matched:.1f} |")
        shared = [d for d in np.unique(days[rows]) if len(np.unique(anomalous[rows][days[rows] == d])) == 2]
        print(f"date-matched pairs: {pairs}; days with both kinds (normal photos on them): "
              + ", ".join(f"{d} ({int((~anomalous[rows] & (days[rows] == d)).sum())})" for d in shared))
        low, high = paired_bootstrap(anomalous[rows], image_level[rows], patch[rows], args.draws)
        print(f"patch minus image level, 95% paired bootstrap interval: {100 * low:+.1f} to {100 * high:+.1f}")
        low, high = date_matched_difference_interval(
            anomalous[rows], image_level[rows], patch[rows], days[rows], args.draws
        )
        print(f"the same, date-matched: {100 * low:+.1f} to {100 * high:+.1f}")

    normal = ~anomalous
    late = days[normal] >= LATE
    print(f"\n# Held-out normal photos only (validation and test): {int(late.sum())} taken from 20{LATE[:2]}-"
          f"{LATE[2:4]}-{LATE[4:]} on, {int((~late).sum())} before")
    print("| detector | ROC AUC late against early | Spearman with capture time |")
    print("|---|---|---|")
    for name, scores in detectors.items():
        rho = spearmanr(scores[normal], times[normal].astype(np.int64))[0]
        print(f"| {name} | {100 * roc_auc_score(late, scores[normal]):.1f} | {rho:+.2f} |")


if __name__ == "__main__":
    main()
