"""BSData's patch-against-image-level gap on more normal photos: cross-fitting (issue 43)

On BSData's test split ``PandaPatchDetector()`` ranks the pitted photos 2.0
points of ROC AUC below ``PandaDetector()`` (92.3 against 94.3), with a 95%
paired bootstrap interval of -5.0 to +0.8; on pairs of photos taken on the same
day it ranks them higher (84.3 against 73.8), but only 24 normal test photos
share a day with a pitted one (``bsdata_dates.py``). This script measures the
same two detectors, defaults unchanged, on every normal photo that did not
choose them: the 150 training photos and the 100 normal test photos of
``patch_study.py``'s split (the 50 normal validation photos chose the patch
detector's defaults and stay out, as do the 57 pitted validation photos).

The 250 normal photos are cut into ``--folds`` folds (stratified by whether a
photo was taken from 2020-09-05 on, the days of 165 of the 167 pitted photos);
for each fold both detectors are fitted with their defaults on the other folds'
photos and score the fold's photos and the 110 pitted test photos. A pair of a
normal photo and a pitted one is compared by the model that did not see the
normal photo; the ROC AUC is the share of pairs the pitted photo wins (ties
count half), over all pairs, pairs of the same day and pairs of different
days. Then, among the normal photos alone, the ROC AUC with which each score
tells a late photo from an early one of the same fold (scored by the same
model): how much of the score is the date. Intervals: 95% paired bootstrap
over the photos (each resampled within its class, both detectors on the same
draws; the fits are not redrawn, and photos of one day count as independent,
though they share that day's soiling).

The image-level detector is ``PandaDetector(backbone="efficientnet_lite0")``
(the backbone of every measurement here), the patch detector ``PandaPatchDetector()``.
Each fold's scores and the photos they belong to are kept in
``--out``/``bsdata_crossfit/fold<k>of<folds>.npz`` and reused on a rerun (the
run is resumable fold by fold; stored photos that are not the fold's stop it).

    python benchmarks/bsdata_crossfit.py --threads 2
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bsdata_dates import BOOTSTRAP_DRAWS, LATE, capture_time  # noqa: E402

DETECTORS = ("image_level", "patch")
NAMES = {"image_level": "PandaDetector() (image level)", "patch": "PandaPatchDetector()"}


def photos(root):
    """``(normal, pitted)`` paths: the normal photos that chose no default, the pitted test photos."""
    from patch_study import bsdata_splits

    split = bsdata_splits(root)["test"]
    fit, images, y = split[0], split[1], split[2]
    normal = list(fit) + [p for p, label in zip(images, y) if label == 1]
    pitted = [p for p, label in zip(images, y) if label == -1]
    return normal, pitted


def folds_of(normal, n_folds):
    """Fold index of each normal photo, stratified by whether it was taken late."""
    late = np.array([capture_time(p)[:6] >= LATE for p in normal])
    fold = np.empty(len(normal), dtype=int)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=0)
    for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(normal)), late)):
        fold[held_out] = k
    return fold


def fold_scores(normal, pitted, fold, k, out):
    """Anomaly scores of fold ``k``'s normal photos and of every pitted photo, per detector."""
    path = Path(out) / "bsdata_crossfit" / f"fold{k}of{fold.max() + 1}.npz"
    held_out = [p for p, f in zip(normal, fold) if f == k]
    if path.is_file():
        stored = dict(np.load(path))
        if [list(stored["normal_paths"]), list(stored["pitted_paths"])] != [held_out, list(pitted)]:
            raise ValueError(f"{path} holds the scores of other photos than fold {k}'s; delete it to score again.")
        return stored
    from sklearn_panda import PandaDetector, PandaPatchDetector

    fit = [p for p, f in zip(normal, fold) if f != k]
    scored = held_out + list(pitted)
    detectors = {
        "image_level": PandaDetector(backbone="efficientnet_lite0", random_state=0),
        "patch": PandaPatchDetector(random_state=0),
    }
    scores = {"normal_paths": np.array(held_out), "pitted_paths": np.array(pitted)}
    for name, detector in detectors.items():
        anomaly = -detector.fit(fit).score_samples(scored)
        scores[f"{name}_normal"], scores[f"{name}_pitted"] = anomaly[: len(held_out)], anomaly[len(held_out) :]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **scores)
    return scores


def pair_wins(normal_scores, pitted_scores):
    """``wins[i, j]``: 1 where pitted photo ``j`` outscores normal photo ``i`` under the model that
    did not see photo ``i`` (``pitted_scores[i]``: that model's scores of the pitted photos), 0.5
    on ties, else 0."""
    difference = pitted_scores - normal_scores[:, None]
    return (difference > 0) + 0.5 * (difference == 0)


def pair_auc(wins, weights, drawn=None):
    """Weighted share of won pairs; over the ``drawn`` ``(normal rows, pitted columns)`` if given."""
    if drawn is not None:
        rows, columns = drawn
        wins, weights = wins[rows][:, columns], weights[rows][:, columns]
    total = weights.sum()
    return float((wins * weights).sum() / total) if total else float("nan")


def paired_pair_interval(first, second, weights, draws, seed=0):
    """2.5th and 97.5th percentiles of ``pair_auc(second) - pair_auc(first)`` over draws of the
    normal rows and of the pitted columns with replacement (both detectors on the same draws)."""
    rng = np.random.default_rng(seed)
    n_normal, n_pitted = first.shape
    differences = []
    for _ in range(draws):
        rows, columns = rng.integers(n_normal, size=n_normal), rng.integers(n_pitted, size=n_pitted)
        differences.append(pair_auc(second, weights, (rows, columns)) - pair_auc(first, weights, (rows, columns)))
    return np.nanpercentile(differences, [2.5, 97.5])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bsdata", default="../shared/data/bsdata")
    parser.add_argument("--out", default="benchmarks/out")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--draws", type=int, default=BOOTSTRAP_DRAWS, help="bootstrap draws of each interval")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    normal, pitted = photos(args.bsdata)
    fold = folds_of(normal, args.folds)
    wins = {name: np.empty((len(normal), len(pitted))) for name in DETECTORS}
    per_fold = {name: [] for name in DETECTORS}
    normal_scores = {name: np.empty(len(normal)) for name in DETECTORS}
    for k in range(args.folds):
        scores = fold_scores(normal, pitted, fold, k, args.out)
        rows = np.flatnonzero(fold == k)
        for name in DETECTORS:
            pitted_scores = np.broadcast_to(scores[f"{name}_pitted"], (len(rows), len(pitted)))
            wins[name][rows] = pair_wins(scores[f"{name}_normal"], pitted_scores)
            normal_scores[name][rows] = scores[f"{name}_normal"]
            per_fold[name].append(pair_auc(wins[name][rows], np.ones((len(rows), len(pitted)))))

    normal_days = np.array([capture_time(p)[:6] for p in normal])
    pitted_days = np.array([capture_time(p)[:6] for p in pitted])
    same_day = (normal_days[:, None] == pitted_days[None]).astype(float)
    weightings = {"every pair": np.ones_like(same_day), "pairs of the same day": same_day,
                  "pairs of different days": 1 - same_day}
    late = normal_days >= LATE
    print(f"# BSData, {args.folds}-fold cross-fitting: {len(normal)} normal photos ({int(late.sum())} taken from "
          f"20{LATE[:2]}-{LATE[2:4]}-{LATE[4:]} on), {len(pitted)} pitted test photos; each fit on "
          + " / ".join(str(len(normal) - size) for size in np.bincount(fold)) + " photos")
    print("| detector | ROC AUC, every pair | per fold | pairs of the same day | pairs of different days |")
    print("|---|---|---|---|---|")
    for name in DETECTORS:
        every, same, different = (pair_auc(wins[name], weights) for weights in weightings.values())
        folds = " / ".join(f"{100 * auc:.1f}" for auc in per_fold[name])
        print(f"| {NAMES[name]} | {100 * every:.1f} | {folds} | {100 * same:.1f} | {100 * different:.1f} |")
    print(f"pairs of the same day: {int(same_day.sum())}, from {int((same_day.sum(axis=1) > 0).sum())} normal photos")
    for label, weights in weightings.items():
        low, high = paired_pair_interval(wins["image_level"], wins["patch"], weights, args.draws)
        print(f"patch minus image level, {label}, 95% paired bootstrap interval: {100 * low:+.1f} to {100 * high:+.1f}")

    # How much each score reads the date: among the normal photos, a late one against an early one
    # of the same fold (scored by the same model).
    same_fold = (fold[~late][:, None] == fold[late][None]).astype(float)
    date_wins = {name: pair_wins(normal_scores[name][~late], np.broadcast_to(normal_scores[name][late], same_fold.shape))
                 for name in DETECTORS}
    print(f"\n# Normal photos only: ROC AUC of \"taken from 20{LATE[:2]}-{LATE[2:4]}-{LATE[4:]} on\" "
          f"({int(late.sum())} late against {int((~late).sum())} early, {int(same_fold.sum())} pairs within a fold)")
    print("| detector | ROC AUC, late against early |\n|---|---|")
    for name in DETECTORS:
        print(f"| {NAMES[name]} | {100 * pair_auc(date_wins[name], same_fold):.1f} |")
    low, high = paired_pair_interval(date_wins["image_level"], date_wins["patch"], same_fold, args.draws)
    print(f"patch minus image level, 95% paired bootstrap interval: {100 * low:+.1f} to {100 * high:+.1f}")


if __name__ == "__main__":
    main()
