"""The candidates of ``defaults_study.py``, scored from its stored features, and their tables.

Every candidate is a way of turning stored features into anomaly scores
without test labels; kNN is the package's :class:`~sklearn_panda.KNNScorer`
(k=2), the Gaussian score its :class:`~sklearn_panda.MahalanobisScorer`.
A multi-view or multi-extractor candidate divides each member's kNN distances
by that member's *typical training distance* (the mean leave-one-out kNN
distance of the training images) and averages them; "mean feature" candidates
instead average each image's features over the views and fit one scorer. The guard holds a tenth of
the training images out of the adaptation and keeps the adapted network only
when their normalised distance (held-out kNN distance to the rest over the
rest's leave-one-out distance) grew by at most ``margin`` against the
unadapted network's; otherwise it scores with the unadapted features.
"""

import csv
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from sklearn_panda import KNNScorer, MahalanobisScorer

K = 2


def knn_distances(train, other):
    """kNN distances of ``other`` to ``train`` (the package's scorer, exact)."""
    return -KNNScorer(n_neighbors=K, algorithm="brute").fit(train).score_samples(other)


def loo_distances(train):
    """Each training image's kNN distance to the others."""
    squared = (train**2).sum(axis=1)
    d2 = np.maximum(squared[:, None] + squared[None, :] - 2 * train @ train.T, 0)
    np.fill_diagonal(d2, np.inf)
    nearest = np.sqrt(np.sort(d2, axis=1)[:, :K])
    return nearest.mean(axis=1)


class Fit:
    """The stored features of one class's fit, loaded on demand."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self._cache = {}

    def features(self, extractor, view, split):
        key = (extractor, view, split)
        if key not in self._cache:
            self._cache[key] = np.load(self.folder / f"{extractor}_{view}_{split}.npy").astype(np.float64)
        return self._cache[key]

    def labels(self, split):
        return np.load(self.folder / f"labels_{split}.npy")

    def normalised(self, extractor, view, split, scorer="knn"):
        """Distances of ``split`` divided by the training images' typical (leave-one-out) distance."""
        train = self.features(extractor, view, "train")
        if scorer == "mahalanobis":
            fitted = MahalanobisScorer().fit(train)
            return -fitted.score_samples(self.features(extractor, view, split)) / -fitted.training_scores_.mean()
        typical = loo_distances(train).mean()
        return knn_distances(train, self.features(extractor, view, split)) / typical

    def guard_ratio(self, extractor):
        """Held-out normal training images' kNN distance to the rest, over the rest's own."""
        train = self.features(extractor, "whole", "train")
        held = np.load(self.folder / "guard_rows.npy")
        rest = np.setdiff1d(np.arange(len(train)), held)
        return knn_distances(train[rest], train[held]).mean() / loo_distances(train[rest]).mean()


def knn(extractor, view="whole"):
    return lambda fit, split: -knn_distances(fit.features(extractor, view, "train"), fit.features(extractor, view, split))


def mahalanobis(extractor, view="whole"):
    def score(fit, split):
        return MahalanobisScorer().fit(fit.features(extractor, view, "train")).score_samples(
            fit.features(extractor, view, split))
    return score


def ensemble(members, how="mean", scorer="knn"):
    """``members``: (extractor, view) pairs; their normalised distances averaged (or their maximum)."""
    def score(fit, split):
        stacked = np.stack([fit.normalised(e, v, split, scorer) for e, v in members])
        return -(stacked.mean(axis=0) if how == "mean" else stacked.max(axis=0))
    return score


def mean_feature(extractor, views):
    """The Gaussian score of each image's features averaged over ``views`` (one scorer, unlike ``ensemble``)."""
    def score(fit, split):
        train = np.mean([fit.features(extractor, v, "train") for v in views], axis=0)
        return MahalanobisScorer().fit(train).score_samples(np.mean([fit.features(extractor, v, split) for v in views],
                                                                    axis=0))
    return score


def guard(margin, fallback="unadapted"):
    def score(fit, split):
        grew = fit.guard_ratio("guard-lr1e-1@100") / fit.guard_ratio("unadapted")
        chosen = "guard-lr1e-1@100" if grew <= 1 + margin else fallback
        return knn(chosen)(fit, split)
    return score


DEFAULT = "lr1e-1@100"
CANDIDATES = {
    "baseline (crop, unadapted)": knn("unadapted", "crop"),
    "unadapted whole": knn("unadapted"),
    "default (lr 1e-1 x 100)": knn(DEFAULT),
    "shorter (lr 1e-1 x 30)": knn("lr1e-1@30"),
    "gentler (lr 1e-2 x 100)": knn("lr1e-2@100"),
    "default trained on 90%": knn("guard-lr1e-1@100"),
    "unadapted whole, Mahalanobis": mahalanobis("unadapted"),
    "baseline's crop, unadapted, Mahalanobis": mahalanobis("unadapted", "crop"),
    "default, Mahalanobis": mahalanobis(DEFAULT),
    "unadapted whole + mirror": ensemble([("unadapted", "whole"), ("unadapted", "flip")]),
    "unadapted whole + mirror + crop": ensemble([("unadapted", v) for v in ("whole", "flip", "crop")]),
    "default whole + mirror": ensemble([(DEFAULT, "whole"), (DEFAULT, "flip")]),
    "default whole + mirror + crop": ensemble([(DEFAULT, v) for v in ("whole", "flip", "crop")]),
    "unadapted + default (whole)": ensemble([("unadapted", "whole"), (DEFAULT, "whole")]),
    "unadapted + default, max": ensemble([("unadapted", "whole"), (DEFAULT, "whole")], how="max"),
    "baseline + default": ensemble([("unadapted", "crop"), (DEFAULT, "whole")]),
    "unadapted + default, whole + mirror": ensemble(
        [(e, v) for e in ("unadapted", DEFAULT) for v in ("whole", "flip")]),
    "unadapted + shorter (whole)": ensemble([("unadapted", "whole"), ("lr1e-1@30", "whole")]),
    "unadapted + gentler (whole)": ensemble([("unadapted", "whole"), ("lr1e-2@100", "whole")]),
    "default, Mahalanobis, whole + mirror": ensemble([(DEFAULT, "whole"), (DEFAULT, "flip")], scorer="mahalanobis"),
    "unadapted, Mahalanobis, whole + mirror": ensemble(
        [("unadapted", "whole"), ("unadapted", "flip")], scorer="mahalanobis"),
    "default, Mahalanobis, mean feature of whole + mirror": mean_feature(DEFAULT, ("whole", "flip")),
    "unadapted + default, Mahalanobis": ensemble([("unadapted", "whole"), (DEFAULT, "whole")], scorer="mahalanobis"),
    "shorter (lr 1e-1 x 30), Mahalanobis": mahalanobis("lr1e-1@30"),
    "guard, margin 0": guard(0.0),
    "guard, margin 0.05": guard(0.05),
    "guard, margin 0.1": guard(0.1),
}


def fits_of(dataset_dir):
    """class -> {split: Fit serving it}."""
    out = {}
    for folder in sorted(Path(dataset_dir).glob("class*")):
        label = int(folder.name[5:])
        serving = {}
        for fit_dir in folder.iterdir():
            for split in ("val", "test"):
                if (fit_dir / f"labels_{split}.npy").exists():
                    serving[split] = Fit(fit_dir)
        if len(serving) == 2:
            out[label] = serving
    return out


def measure(dataset_dir, out_csv):
    fits = fits_of(dataset_dir)
    rows = []
    for label, serving in sorted(fits.items()):
        for name, candidate in CANDIDATES.items():
            row = {"class": label, "candidate": name}
            for split, fit in serving.items():
                try:
                    row[split] = 100 * roc_auc_score(fit.labels(split), candidate(fit, split))
                except FileNotFoundError:
                    row[split] = float("nan")
            rows.append(row)
            print(f"class {label} {name}: val {row['val']:.2f} test {row['test']:.2f}", file=sys.stderr, flush=True)
        for split, fit in serving.items():
            try:
                grew = fit.guard_ratio("guard-lr1e-1@100") / fit.guard_ratio("unadapted")
                rows.append({"class": label, "candidate": f"guard statistic ({split} fit)", "val": grew, "test": grew})
            except FileNotFoundError:
                pass
    with open(out_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["class", "candidate", "val", "test"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def tables(rows, baseline="baseline (crop, unadapted)"):
    """Markdown: candidates ranked by worst validation gain, then mean; per-class test (val) columns."""
    scores = {}
    for row in rows:
        if row["candidate"].startswith("guard statistic"):
            continue
        scores.setdefault(row["candidate"], {})[int(row["class"])] = (float(row["val"]), float(row["test"]))
    classes = sorted(scores[baseline])
    base = scores[baseline]
    summary, partial = [], []
    for name, per_class in scores.items():
        measured = [c for c in classes if c in per_class and not np.isnan(per_class[c]).any()]
        if not measured:
            continue
        gains = np.array([[per_class[c][i] - base[c][i] for i in (0, 1)] for c in measured])
        row = (name, gains[:, 0].min(), gains[:, 0].mean(), gains[:, 1].min(), gains[:, 1].mean(),
               measured[int(gains[:, 0].argmin())], measured[int(gains[:, 1].argmin())])
        if len(measured) == len(classes):
            summary.append(row)
        else:
            # Measured on some classes only: listed apart, over those classes.
            partial.append((f"{name} (classes {', '.join(map(str, measured))} only)", *row[1:]))
    summary.sort(key=lambda item: (-round(item[1], 2), -item[2]))
    summary += sorted(partial, key=lambda item: (-round(item[1], 2), -item[2]))
    lines = ["| candidate | worst val gain (class) | mean val gain | worst test gain (class) | mean test gain |",
             "|---|---|---|---|---|"]
    for name, worst_val, mean_val, worst_test, mean_test, c_val, c_test in summary:
        lines.append(f"| {name} | {worst_val:+.2f} ({c_val}) | {mean_val:+.2f} | {worst_test:+.2f} ({c_test}) | "
                     f"{mean_test:+.2f} |")
    lines += ["", "| candidate | " + " | ".join(str(c) for c in classes) + " | mean |",
              "|---|" + "---|" * (len(classes) + 1)]
    for name, *_ in summary:
        per_class = scores[name.split(" (classes ")[0]]
        cells = [f"{per_class[c][1]:.2f} ({per_class[c][0]:.2f})" if c in per_class and not np.isnan(per_class[c]).any()
                 else "-" for c in classes]
        measured = [c for c in classes if cells[classes.index(c)] != "-"]
        mean = np.mean([[per_class[c][1], per_class[c][0]] for c in measured], axis=0)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean[0]:.2f} ({mean[1]:.2f}) |")
    return "\n".join(lines)


def passes(name):
    """Network passes per scored image: views times networks (the unadapted and adapted
    networks share their trunk, not their stages). The baseline's crop is its only view."""
    views = ("mirror" in name) + ("crop" in name and not name.startswith("baseline")) + 1
    networks = 2 if name.startswith(("unadapted +", "baseline +")) else 1
    return views * networks


def joint(csv_paths):
    """The choice across data sets, the rule fixed before the Fashion-MNIST rows were in.

    Rank by the worst validation gain over every class of every set; among
    the candidates within 0.1 of the best worst class (the noise of a
    validation ROC AUC on 100 normal images), the fewest network passes per
    image, then the highest mean of the sets' mean validation gains.
    """
    per_set = {}
    for path in csv_paths:
        with open(path, newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if not row["candidate"].startswith("guard statistic")]
        per_set[Path(path).stem] = rows
    summaries = {}
    for name, rows in per_set.items():
        scores = {}
        for row in rows:
            scores.setdefault(row["candidate"], {})[int(row["class"])] = float(row["val"]), float(row["test"])
        base = scores["baseline (crop, unadapted)"]
        for candidate, per_class in scores.items():
            values = np.array([[per_class[c][i] - base[c][i] for i in (0, 1)] for c in sorted(base)])
            if set(per_class) != set(base) or np.isnan(values).any():
                continue
            summaries.setdefault(candidate, {})[name] = values
    complete = {c: v for c, v in summaries.items() if len(v) == len(per_set)}
    table = []
    for candidate, sets in complete.items():
        worst_val = min(v[:, 0].min() for v in sets.values())
        worst_test = min(v[:, 1].min() for v in sets.values())
        means = {name: (v[:, 0].mean(), v[:, 1].mean()) for name, v in sets.items()}
        table.append((candidate, worst_val, worst_test, means))
    best_worst = max(row[1] for row in table)
    shortlist = [row for row in table if row[1] >= best_worst - 0.1]
    chosen = min(shortlist, key=lambda row: (passes(row[0]), -np.mean([m[0] for m in row[3].values()])))
    table.sort(key=lambda row: (-row[1], -np.mean([m[0] for m in row[3].values()])))
    names = list(per_set)
    lines = ["| candidate | passes | worst val gain | worst test gain | "
             + " | ".join(f"{n} mean val / test" for n in names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for candidate, worst_val, worst_test, means in table:
        mark = " **(chosen)**" if candidate == chosen[0] else ""
        cells = " | ".join(f"{means[n][0]:+.2f} / {means[n][1]:+.2f}" for n in names)
        lines.append(f"| {candidate}{mark} | {passes(candidate)} | {worst_val:+.2f} | {worst_test:+.2f} | {cells} |")
    return "\n".join(lines)


def report(args):
    dataset_dir = Path(args.features_dir) / args.dataset
    out_csv = Path(__file__).resolve().parent / f"defaults_study_{args.dataset}.csv"
    rows = measure(dataset_dir, out_csv)
    print(tables(rows))
    stats = [row for row in rows if row["candidate"].startswith("guard statistic")]
    if stats:
        print("\nGuard statistic (held-out normalised distance, adapted / unadapted):")
        for row in stats:
            print(f"  class {row['class']} {row['candidate']}: {float(row['val']):.3f}")
