"""Image score from more than the one worst patch? (issue 43; validation splits only)

``PandaPatchDetector``'s image score was each bank's **largest** patch
distance (over its median leave-one-out training score), summed over the two
banks (``"patch+fine"``); this study chose ``n_worst_patches=4`` instead. On BSData's splits the image-level ``PandaDetector()``
ranks the pitted photos better; a whole-image term lifted BSData and wrecked
DeepPCB (``patch_global_study.py``). This study asks whether an aggregate
between the two, the **mean of each image's k largest patch distances**,
closes part of the gap without costing DeepPCB.

It loads the detectors ``patch_scoring_speed.py`` fitted on the validation
splits' training images (``--models``; fitted there if missing), searches both
banks **exactly**, and keeps each evaluation image's and each calibration
image's (leave-one-out) largest ``--keep`` (512) patch distances per bank in
``benchmarks/out/patch_topk_<set>.npz`` (reused on a rerun). Every aggregate
is normalised as the detector normalises the maximum: by its median over the
calibration images' leave-one-out values. Every image of a set must have at
least that many patches (both sets have thousands). Then the 4-mean of each bank standardised by the spread of its
leave-one-out values (interquartile range or standard deviation) instead of
divided by their median: does weighting each bank by how tightly its normal
images gather rank better? Last, the k-mean *above the image's own level*
(minus its 128th or 512th largest distance): does a score that ignores how far
the whole image is from the bank keep DeepPCB's unseen boards down at larger
k? Prints one table, each candidate's
validation image ROC AUC on both sets and the worse of the two.

    python benchmarks/patch_topk_study.py --threads 2
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent
# k of the k-mean candidates, and of the "minus the base-th largest" ones.
KS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTRAST_KS = (1, 4, 16, 64)
CONTRAST_BASES = (128, 512)


def largest(distances, keep):
    """Each row's ``keep`` largest values, in decreasing order: ``(n, keep)``."""
    distances = np.asarray(distances)
    if distances.shape[1] < keep:
        raise ValueError(f"An image has {distances.shape[1]} patches, fewer than --keep {keep}.")
    return -np.sort(-distances, axis=1)[:, :keep]


def distances_of(dataset, args):
    """``(evaluation largest per bank, calibration largest per bank, y)`` for ``dataset``'s validation split."""
    path = Path(args.out) / f"patch_topk_{dataset}.npz"
    if path.is_file():
        stored = np.load(path)
        if stored["eval0"].shape[1] < args.keep:
            raise ValueError(f"{path} keeps {stored['eval0'].shape[1]} distances an image, fewer than --keep {args.keep}.")
        return [stored["eval0"], stored["eval1"]], [stored["loo0"], stored["loo1"]], stored["y"]
    from patch_scoring_speed import fitted_detector, searches
    from patch_study import bsdata_splits, deeppcb_splits

    from sklearn_panda._estimators.patch_bank import leave_one_out, patch_distances
    from sklearn_panda._estimators.patch_calibration import calibration_rows
    from sklearn_panda._estimators.validation import check_input

    splits = deeppcb_splits(args.deeppcb) if dataset == "deeppcb" else bsdata_splits(args.bsdata)
    fit, images, y, _ = splits["validation"]
    detector, _ = fitted_detector(Path(args.models) / f"{dataset}_validation.pt", fit)
    exact = searches(detector, "exact")
    banks = [(detector.memory_bank_, exact[0]), (detector.fine_bank_, exact[1])]
    spec = detector._spec()
    found = [[], []]
    checked = check_input(images)
    for _, grids, _, _, _ in detector._embeddings(detector.net_, checked, detector.device_, spec, "evaluation"):
        for which, (grid, (bank, scorer)) in enumerate(zip(grids, banks)):
            found[which].append(largest(patch_distances(grid, bank, scorer), args.keep))
    owners = (detector.memory_bank_images_, detector.fine_bank_images_)
    loo = [[], []]
    for entry in detector.calibration_maps_:
        rows, _ = calibration_rows(entry, spec)
        for which, ((bank, scorer), owner) in enumerate(zip(banks, owners)):
            distances = leave_one_out(rows[which], entry["image"], bank, owner, scorer, others=None)
            loo[which].append(largest(distances[None], args.keep)[0])
    evaluation = [np.concatenate(one) for one in found]
    loo = [np.array(one) for one in loo]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    np.savez(path, eval0=evaluation[0], eval1=evaluation[1], loo0=loo[0], loo1=loo[1], y=np.asarray(y))
    return evaluation, loo, np.asarray(y)


def aggregate(largest_distances, k):
    return largest_distances[:, :k].mean(axis=1)


def candidates(keep=max(KS)):
    """(name, function of (evaluation, loo) per bank -> anomaly scores), for ``keep`` distances an image."""
    def normalised(k, which):
        def term(evaluation, loo):
            return aggregate(evaluation[which], k) / np.median(aggregate(loo[which], k))
        return term

    ks = [k for k in KS if k <= keep]
    found = []
    for k in ks:
        found.append((f"patch+fine, top-{k} mean", lambda e, l, k=k: normalised(k, 0)(e, l) + normalised(k, 1)(e, l)))
    for k in ks[1:]:
        found.append((f"patch top-{k} + fine max", lambda e, l, k=k: normalised(k, 0)(e, l) + normalised(1, 1)(e, l)))
        found.append((f"patch max + fine top-{k}", lambda e, l, k=k: normalised(1, 0)(e, l) + normalised(k, 1)(e, l)))
    for k in ks[1:]:
        found.append((
            f"patch+fine max + patch+fine top-{k}",
            lambda e, l, k=k: sum(normalised(j, w)(e, l) for j in (1, k) for w in (0, 1)),
        ))
    for spread in ("interquartile range", "standard deviation"):
        found.append((
            f"patch+fine top-4 mean, each less its median over its {spread}",
            lambda e, l, spread=spread: sum(standardised(4, w, spread)(e, l) for w in (0, 1)),
        ))
    for k in CONTRAST_KS:
        for base in (base for base in CONTRAST_BASES if k < base <= keep):
            found.append((
                f"patch+fine top-{k} mean minus the {base}th largest",
                lambda e, l, k=k, base=base: sum(contrast(k, base, w)(e, l) for w in (0, 1)),
            ))
    return found


def standardised(k, which, spread):
    """The top-``k`` mean less its median leave-one-out value, over the leave-one-out values'
    ``spread`` (``"interquartile range"`` or ``"standard deviation"``): each bank weighted by how
    tightly its normal images' scores gather, instead of by their median alone."""
    def term(evaluation, loo):
        normal = aggregate(loo[which], k)
        scale = np.subtract(*np.percentile(normal, [75, 25])) if spread == "interquartile range" else normal.std()
        return (aggregate(evaluation[which], k) - np.median(normal)) / scale
    return term


def contrast(k, base, which):
    """The top-``k`` mean above the image's own ``base``-th largest distance, over its median
    leave-one-out value: a region that stands out from the rest of its own image."""
    def level(distances):
        return aggregate(distances, k) - distances[:, base - 1]

    def term(evaluation, loo):
        return level(evaluation[which]) / np.median(level(loo[which]))
    return term


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--deeppcb", default="../shared/data/deeppcb")
    parser.add_argument("--bsdata", default="../shared/data/bsdata")
    parser.add_argument("--models", default="benchmarks/out/patch_scoring_models")
    parser.add_argument("--out", default="benchmarks/out")
    parser.add_argument("--keep", type=int, default=max(KS), help="largest distances kept an image and bank")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    data = {dataset: distances_of(dataset, args) for dataset in ("deeppcb", "bsdata")}
    print("\n# validation image ROC AUC, exact searches of the validation detectors' banks")
    print("| image score | DeepPCB | BSData | worse |")
    print("|---|---|---|---|")
    for name, score in candidates(args.keep):
        aucs = [100 * roc_auc_score(y == -1, score(evaluation, loo)) for evaluation, loo, y in data.values()]
        print(f"| {name} | {aucs[0]:.1f} | {aucs[1]:.1f} | {min(aucs):.1f} |")


if __name__ == "__main__":
    main()
