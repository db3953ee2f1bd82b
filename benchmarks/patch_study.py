"""Choosing PandaPatchDetector's defaults on two kinds of surface (issue 43).

Two development sets of different kinds, each with pixel masks:

* DeepPCB (``../shared/data/deeppcb``): line art, 640 x 640 one-bit board scans,
  defects a few pixels wide, box masks. Validation: fit on up to 400 templates
  of three training boards, evaluate 100 templates and 100 defective images of
  the other two training boards; test: fit on 400 templates of the five
  training boards, evaluate 150 + 150 of the six test boards
  (``sklearn_panda.datasets.load_deeppcb``).
* BSData (``../shared/data/bsdata``): textured metal of ball-screw drives,
  460 x 1,130 photos, small pits, polygon masks. The 300 normal images are
  split at random (seed 0) into 150 to fit, 50 for validation and 100 for
  test (a half, a sixth and the rest of however many a folder holds), the
  167 pitted images into 57 for validation and 110 for test; the fit is the
  same for both splits.

Stage ``features`` stores, for every image and working size, the raw outputs
of EfficientNet-Lite0's ``_blocks.4`` (stride 8) and ``_blocks.10`` (stride
16) in float16 under ``--cache`` (resumable: stored images are skipped).
Stage ``score`` builds each candidate's patch features from them with the
package's own ``aggregate``, selects its memory bank with the package's
``StreamingCoreset``, searches every evaluation patch exactly (float32) and
reports, per candidate, the image ROC AUC of three image scores (the largest
patch distance before upsampling, PatchCore's; the same re-weighted by the
density of its nearest bank patch, PatchCore's; the largest value of the
smoothed map, the package's before) and the maps' pixel ROC AUC and PRO for
two smoothing widths (on every second pixel of every second row, for speed). One CSV row per candidate and smoothing; candidates
already in the CSV are skipped. Stage ``report`` prints the tables and the
choice by the rule fixed before any score was seen: for the image score and
for the map separately, the candidate whose *worse* data set is best on the
validation splits (image ROC AUC; pixel ROC AUC, then PRO).

Stage ``coreset`` measures, for the chosen defaults only (the pair of feature
sets of ``image_score="patch+fine"``), how the streaming coreset's pool factor
and seed move the image and pixel ROC AUC, against the exact greedy selection
(``benchmarks/patch_coreset.csv``, resumable).

    python benchmarks/patch_study.py --stage features --threads 2
    python benchmarks/patch_study.py --stage score --split validation --threads 2
    python benchmarks/patch_study.py --stage report --split validation
    python benchmarks/patch_study.py --stage coreset --split validation --datasets deeppcb --threads 2
"""

import argparse
import csv
import hashlib
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from adaptation_study import cpu_name
from sklearn_panda._engine.coreset import StreamingCoreset
from sklearn_panda._engine.data import IMAGENET_MEAN, IMAGENET_STD
from sklearn_panda._engine.maps import gaussian_smoothing, resize_maps
from sklearn_panda._engine.patch_features import aggregate, working_size
from sklearn_panda._engine.patch_net import build_patch_net, stage_outputs
from sklearn_panda._io.images import read_binary_mask, read_image
from sklearn_panda.datasets import load_deeppcb
from sklearn_panda.metrics import pixel_roc_auc, pro_score

LAYERS = ("_blocks.4", "_blocks.10")
SIZES = {"native": None, "224": 224}
# name -> (indices into LAYERS, neighbourhood, border)
FEATURES = {
    "s8-n1": ((0,), 1, "zeros"),
    "s8-n3-zeros": ((0,), 3, "zeros"),
    "s8-n3-inside": ((0,), 3, "inside"),
    "s8s16-n1": ((0, 1), 1, "zeros"),
    "s8s16-n3-zeros": ((0, 1), 3, "zeros"),
    "s8s16-n3-inside": ((0, 1), 3, "inside"),
}
SIGMAS = (4.0, 8.0)
# Pixel metrics on every PIXEL_STEP-th pixel of every PIXEL_STEP-th row.
PIXEL_STEP = 2
# Leave-one-out image scores of this many fit images (their typical value normalises a score).
CALIBRATION = 20
# PatchCore's re-weighting looks at this many bank neighbours of the nearest bank patch.
REWEIGHT_NEIGHBOURS = 9
FIELDS = [
    "dataset", "split", "size", "features", "ratio", "sigma", "image_patch", "image_reweighted", "image_map",
    "pixel_auc", "pro", "bank_rows", "training_patches", "coreset_s", "search_s", "cpu",
]


# ------------------------------------------------------------------ data


def bsdata_splits(root, seed=0):
    root = Path(root)
    normal = sorted(str(path) for path in (root / "normal").glob("*.jpg"))
    pitted = sorted(str(path) for path in (root / "pitting").glob("*.jpg"))
    rng = np.random.default_rng(seed)
    normal = [normal[i] for i in rng.permutation(len(normal))]
    pitted = [pitted[i] for i in rng.permutation(len(pitted))]
    n_fit, n_validation = len(normal) // 2, len(normal) // 6  # BSData's 300: 150 and 50
    fit = normal[:n_fit]

    def evaluation(normal_part, pitted_part):
        images = normal_part + pitted_part
        y = np.r_[np.ones(len(normal_part), dtype=int), -np.ones(len(pitted_part), dtype=int)]
        masks = [None] * len(normal_part) + [str(root / "mask" / (Path(p).stem + ".png")) for p in pitted_part]
        return images, y, masks

    return {
        "validation": (fit, *evaluation(normal[n_fit : n_fit + n_validation], pitted[:57])),
        "test": (fit, *evaluation(normal[n_fit + n_validation :], pitted[57:])),
    }


def deeppcb_splits(root):
    splits = {}
    for split, max_test in (("validation", 200), ("test", 300)):
        fit, images, y, masks = load_deeppcb(root, split=split, max_train=400, max_test=max_test, random_state=0)
        splits[split] = (list(fit), list(images), y, list(masks))
    return splits


def load_splits(args):
    return {"deeppcb": deeppcb_splits(args.deeppcb), "bsdata": bsdata_splits(args.bsdata)}


def mask_array(mask, shape):
    if mask is None:
        return np.zeros(shape, dtype=bool)
    if isinstance(mask, str):
        return read_binary_mask(mask)
    return np.asarray(mask, dtype=bool)


# -------------------------------------------------------------- features


def cache_path(cache, image, size):
    return Path(cache) / f"{hashlib.sha1(image.encode()).hexdigest()[:20]}_{size}.npz"


def image_tensor(path):
    """The image as the detector reads it: float in [0, 1], 3 channels, (1, 3, H, W)."""
    array = read_image(path)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].float() / 255.0


def extract(args):
    net, layers = build_patch_net("efficientnet_lite0", "imagenet", list(LAYERS))
    net = net.to(memory_format=torch.channels_last)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    images = sorted({image for splits in load_splits(args).values() for split in splits.values()
                     for image in split[0] + split[1]})
    for size_name, resize in SIZES.items():
        todo = [image for image in images if not cache_path(args.cache, image, size_name).is_file()]
        start = time.perf_counter()
        for number, image in enumerate(todo):
            tensor = image_tensor(image)
            original = tuple(tensor.shape[-2:])
            size = working_size(*original, resize)
            if size != original:
                tensor = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True)
            tensor = (tensor - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
            with torch.inference_mode():
                outputs = stage_outputs(net, tensor.contiguous(memory_format=torch.channels_last))
            np.savez(
                cache_path(args.cache, image, size_name),
                **{f"map{i}": output[0].numpy().astype(np.float16) for i, output in enumerate(outputs)},
                original=np.array(original), size=np.array(size),
            )
            if (number + 1) % 50 == 0:
                rate = (number + 1) / (time.perf_counter() - start)
                print(f"{size_name}: {number + 1}/{len(todo)} images, {rate:.1f}/s", flush=True)
        print(f"{size_name}: {len(todo)} images extracted", flush=True)


def patch_features(cache, image, size_name, features):
    """``(features (h, w, D) float32 tensor, scored size, original size)`` of one image."""
    which, neighbourhood, border = FEATURES[features]
    stored = np.load(cache_path(cache, image, size_name))
    maps = [torch.from_numpy(stored[f"map{i}"].astype(np.float32))[None] for i in which]
    aggregated = aggregate(maps, neighbourhood, border=border)[0]
    return aggregated.permute(1, 2, 0).contiguous(), tuple(stored["size"]), tuple(stored["original"])


# ----------------------------------------------------------------- score


def nearest(queries, bank, bank_norms, chunk=1024):
    """Exact nearest bank row of each query: (distances, indices)."""
    distances, indices = [], []
    for start in range(0, len(queries), chunk):
        rows = queries[start : start + chunk]
        squared = (rows * rows).sum(1, keepdim=True) - 2 * rows @ bank.T + bank_norms[None]
        value, index = squared.min(dim=1)
        distances.append(value.clamp_min_(0).sqrt_())
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


def reweighted(query, nearest_index, bank, bank_norms):
    """PatchCore's density re-weighting of the largest patch distance (Roth et al., eq. 7)."""
    centre = bank[nearest_index]
    to_centre = bank_norms - 2 * bank @ centre + float(centre @ centre)
    neighbours = torch.topk(to_centre, min(REWEIGHT_NEIGHBOURS, len(bank)), largest=False).indices
    distances = (bank[neighbours] - query[None]).norm(dim=1)
    nearest_distance = (centre - query).norm()
    weight = 1.0 - 1.0 / torch.exp(distances - nearest_distance).sum()
    return float(weight * nearest_distance)


def score_candidate(args, dataset, split, data, size_name, features, ratio, *, pool_factor=4.0, seed=0, scores_to=None):
    fit, images, y, masks = data
    generator = torch.Generator().manual_seed(seed)
    coreset = StreamingCoreset(ratio, min_select=2, pool_factor=pool_factor, generator=generator)
    start = time.perf_counter()
    for index, image in enumerate(fit):
        rows = patch_features(args.cache, image, size_name, features)[0].reshape(-1, FEATURES_DIM[features])
        coreset.add(rows, torch.full((len(rows),), index))
    bank, owners = coreset.select()
    coreset_seconds = time.perf_counter() - start
    bank_norms = (bank * bank).sum(1)
    loo_patch, loo_map = leave_one_out(args, fit, size_name, features, bank, bank_norms, owners)
    start = time.perf_counter()
    grids, patch_scores, reweighted_scores, geometry = [], [], [], []
    for image in images:
        grid, size, original = patch_features(args.cache, image, size_name, features)
        rows = grid.reshape(-1, grid.shape[-1])
        distances, indices = nearest(rows, bank, bank_norms)
        worst = int(distances.argmax())
        patch_scores.append(float(distances[worst]))
        reweighted_scores.append(reweighted(rows[worst], int(indices[worst]), bank, bank_norms))
        grids.append(distances.reshape(grid.shape[:2]))
        geometry.append((size, original))
    search_seconds = time.perf_counter() - start
    print(f"  bank {len(bank)} rows: coreset {coreset_seconds:.0f} s, search {search_seconds:.0f} s", flush=True)
    anomalous = (y == -1).astype(int)
    scores_to = scores_to or scores_path(args, dataset, split, size_name, features, ratio)
    scores_to.parent.mkdir(parents=True, exist_ok=True)
    map_scores_by_sigma = {}
    rows = []
    for sigma in SIGMAS:
        maps, map_scores = [], []
        for grid, (size, original) in zip(grids, geometry):
            upsampled = F.interpolate(grid[None, None], size=size, mode="bilinear", align_corners=False)
            smoothed = gaussian_smoothing(upsampled, sigma)
            map_scores.append(float(smoothed.max()))
            maps.append(resize_maps(smoothed, original)[0, 0].numpy())
        map_scores_by_sigma[sigma] = map_scores
        # Every second pixel of every second row: an unbiased quarter of the pixels, for speed
        # (the reported test figures come from the detector itself, at every pixel).
        truth = [mask_array(mask, one.shape)[::PIXEL_STEP, ::PIXEL_STEP] for mask, one in zip(masks, maps)]
        maps = [one[::PIXEL_STEP, ::PIXEL_STEP] for one in maps]
        rows.append({
            "dataset": dataset, "split": split, "size": size_name, "features": features, "ratio": ratio,
            "sigma": sigma,
            "image_patch": roc_auc_score(anomalous, patch_scores),
            "image_reweighted": roc_auc_score(anomalous, reweighted_scores),
            "image_map": roc_auc_score(anomalous, map_scores),
            "pixel_auc": pixel_roc_auc(truth, maps), "pro": pro_score(truth, maps),
            "bank_rows": len(bank), "training_patches": coreset.n_seen_,
            "coreset_s": coreset_seconds, "search_s": search_seconds, "cpu": cpu_name(),
        })
    np.savez(
        scores_to, y=y, patch=np.array(patch_scores),
        map4=np.array(map_scores_by_sigma[4.0]), loo_patch=loo_patch, loo_map=loo_map,
    )
    return rows


def scores_path(args, dataset, split, size_name, features, ratio):
    return Path(args.cache).parent / "patch_study_scores" / f"{dataset}_{split}_{size_name}_{features}_{ratio}.npz"


def leave_one_out(args, fit, size_name, features, bank, bank_norms, owners):
    """Image scores (largest patch distance, largest smoothed-map value at sigma 4) of the first
    CALIBRATION fit images, each against the bank without its own patches (as the detector's offset_)."""
    patch, maps = [], []
    for index, image in enumerate(fit[:CALIBRATION]):
        grid, size, _ = patch_features(args.cache, image, size_name, features)
        keep = owners != index
        distances, _ = nearest(grid.reshape(-1, grid.shape[-1]), bank[keep], bank_norms[keep])
        patch.append(float(distances.max()))
        upsampled = F.interpolate(distances.reshape(1, 1, *grid.shape[:2]), size=size, mode="bilinear",
                                  align_corners=False)
        maps.append(float(gaussian_smoothing(upsampled, 4.0).max()))
    return np.array(patch), np.array(maps)


FEATURES_DIM = {name: sum((40, 112)[i] for i in which) for name, (which, _, _) in FEATURES.items()}


def read_rows(path):
    if not Path(path).is_file():
        return []
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def write_rows(path, rows):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def score(args):
    splits = load_splits(args)
    rows = read_rows(args.csv)
    done = {(r["dataset"], r["split"], r["size"], r["features"], float(r["ratio"])) for r in rows}
    for size_name in args.sizes:
        for features in args.features:
            for ratio in args.ratios:
                for dataset in args.datasets:
                    key = (dataset, args.split, size_name, features, float(ratio))
                    if key in done and scores_path(args, *key).is_file():
                        continue
                    start = time.perf_counter()
                    new = score_candidate(args, dataset, args.split, splits[dataset][args.split], size_name, features,
                                          ratio)
                    rows = [r for r in read_rows(args.csv)
                            if (r["dataset"], r["split"], r["size"], r["features"], float(r["ratio"])) != key] + new
                    write_rows(args.csv, rows)
                    best = new[0]
                    print(f"{dataset} {args.split} {size_name} {features} r{ratio}: image patch "
                          f"{100 * best['image_patch']:.1f} rw {100 * best['image_reweighted']:.1f} map "
                          f"{100 * best['image_map']:.1f}, pixel {100 * best['pixel_auc']:.1f} / "
                          f"{100 * new[1]['pixel_auc']:.1f} ({time.perf_counter() - start:.0f} s)", flush=True)


# --------------------------------------------------------------- coreset

# The default detector's two feature sets (image score: both; map: the first).
DEFAULT_PAIR = ("s8s16-n3-zeros", "s8-n1")
# pool_factor 1 / ratio keeps every patch for stage two: the exact greedy selection.
EXACT = "exact"


def coreset_scores_path(args, dataset, features, pool, seed):
    return Path(args.cache).parent / "patch_coreset_scores" / f"{dataset}_{args.split}_{features}_{pool}_{seed}.npz"


def coreset(args):
    """The default pair's image and pixel ROC AUC with the streaming coreset's pool factors and seeds,
    and with the exact greedy selection (resumable: one CSV row a run)."""
    splits = load_splits(args)
    path = Path(args.coreset_csv)
    rows = read_rows(path) if path.is_file() else []
    fields = ["dataset", "split", "pool", "seed", "image_pair", "image_patch", "pixel_auc", "pro", "coreset_s", "cpu"]
    for dataset in args.datasets:
        for pool in args.pools:
            for seed in args.seeds if pool != EXACT else args.seeds[:1]:
                if any((r["dataset"], r["split"], r["pool"], int(r["seed"])) == (dataset, args.split, pool, seed)
                       for r in rows):
                    continue
                found, seconds = {}, 0.0
                for features in DEFAULT_PAIR:
                    factor = 1.0 / 0.01 if pool == EXACT else float(pool)
                    target = coreset_scores_path(args, dataset, features, pool, seed)
                    found[features] = score_candidate(args, dataset, args.split, splits[dataset][args.split], "native",
                                                      features, 0.01, pool_factor=factor, seed=seed, scores_to=target)
                    seconds += found[features][0]["coreset_s"]
                saved = [np.load(coreset_scores_path(args, dataset, features, pool, seed)) for features in DEFAULT_PAIR]
                pair = pair_scores(saved[0], saved[1], "patch", "sum")
                first = found[DEFAULT_PAIR[0]][0]  # sigma 4
                rows.append({"dataset": dataset, "split": args.split, "pool": pool, "seed": seed,
                             "image_pair": roc_auc_score(saved[0]["y"] == -1, pair),
                             "image_patch": first["image_patch"], "pixel_auc": first["pixel_auc"], "pro": first["pro"],
                             "coreset_s": seconds, "cpu": cpu_name()})
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "w", newline="") as file:
                    writer = csv.DictWriter(file, fields)
                    writer.writeheader()
                    writer.writerows(rows)
                print(f"{dataset} pool {pool} seed {seed}: image {100 * rows[-1]['image_pair']:.1f}, pixel "
                      f"{100 * float(first['pixel_auc']):.1f}, coreset {seconds:.0f} s", flush=True)
    print("| set | pool | seed | image (patch+fine) | pixel | PRO | coreset s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['pool']} | {r['seed']} | {100 * float(r['image_pair']):.1f} | "
              f"{100 * float(r['pixel_auc']):.1f} | {100 * float(r['pro']):.1f} | {float(r['coreset_s']):.0f} |")


# ---------------------------------------------------------------- report


def report(args):
    rows = [r for r in read_rows(args.csv) if r["split"] == args.split]
    candidates = {}
    for r in rows:
        key = (r["size"], r["features"], float(r["ratio"]), float(r["sigma"]))
        candidates.setdefault(key, {})[r["dataset"]] = r
    complete = {key: sets for key, sets in candidates.items() if len(sets) == 2}
    print(f"{args.split} split, {len(complete)} candidates on both sets\n")
    print("| size | features | ratio | sigma | DeepPCB image (patch / rw / map) | BSData image (patch / rw / map) "
          "| DeepPCB pixel / PRO | BSData pixel / PRO |")
    print("|---|---|---|---|---|---|---|---|")
    for key in sorted(complete):
        sets = complete[key]

        def cell(r, *names):
            return " / ".join(f"{100 * float(r[name]):.1f}" for name in names)

        print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]:g} | "
              f"{cell(sets['deeppcb'], 'image_patch', 'image_reweighted', 'image_map')} | "
              f"{cell(sets['bsdata'], 'image_patch', 'image_reweighted', 'image_map')} | "
              f"{cell(sets['deeppcb'], 'pixel_auc', 'pro')} | {cell(sets['bsdata'], 'pixel_auc', 'pro')} |")
    image_choices = [
        (min(float(sets[d][kind]) for d in sets), key, kind)
        for key, sets in complete.items() for kind in ("image_patch", "image_reweighted", "image_map")
    ]
    map_choices = [
        (min(float(sets[d]["pixel_auc"]) for d in sets), min(float(sets[d]["pro"]) for d in sets), key)
        for key, sets in complete.items()
    ]
    print("\nImage score, best worst set first:")
    for worst, key, kind in sorted(image_choices, reverse=True)[:8]:
        print(f"  {100 * worst:.1f}  {key} {kind}")
    print("Map, best worst set first (pixel ROC AUC, then PRO):")
    for worst, worst_pro, key in sorted(map_choices, reverse=True)[:8]:
        print(f"  {100 * worst:.1f} / PRO {100 * worst_pro:.1f}  {key}")
    report_pairs(args)


def pair_scores(saved_a, saved_b, kind, how):
    """Two candidates' image scores combined, each divided by its median leave-one-out score."""
    name = "map4" if kind == "map" else "patch"
    a = saved_a[name] / np.median(saved_a[f"loo_{kind}"])
    b = saved_b[name] / np.median(saved_b[f"loo_{kind}"])
    return np.maximum(a, b) if how == "max" else a + b


def report_pairs(args):
    """Image scores from two feature sets of one fit (the detector's image_features), worst set first."""
    found = {}
    for path in (Path(args.cache).parent / "patch_study_scores").glob(f"*_{args.split}_*.npz"):
        dataset, _, size, features, ratio = path.stem.split("_")
        found.setdefault((size, features, ratio), {})[dataset] = dict(np.load(path))
    complete = {key: sets for key, sets in found.items() if len(sets) == 2}
    results = []
    for key_a in complete:
        for key_b in complete:
            if key_a >= key_b or key_a[0] != key_b[0]:
                continue
            for kind in ("patch", "map"):
                for how in ("max", "sum"):
                    aucs = {
                        dataset: roc_auc_score(complete[key_a][dataset]["y"] == -1,
                                               pair_scores(complete[key_a][dataset], complete[key_b][dataset], kind, how))
                        for dataset in complete[key_a]
                    }
                    results.append((min(aucs.values()), key_a, key_b, kind, how, aucs))
    print("\nImage score from two feature sets (each / its median leave-one-out score), worst set first:")
    for worst, key_a, key_b, kind, how, aucs in sorted(results, key=lambda r: -r[0])[:10]:
        detail = ", ".join(f"{d} {100 * v:.1f}" for d, v in sorted(aucs.items()))
        print(f"  {100 * worst:.1f}  {key_a[1]} {how} {key_b[1]} ({key_a[0]}, {kind}): {detail}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=["features", "score", "report", "coreset"], required=True)
    parser.add_argument("--split", choices=["validation", "test"], default="validation")
    parser.add_argument("--deeppcb", default="../shared/data/deeppcb")
    parser.add_argument("--bsdata", default="../shared/data/bsdata")
    parser.add_argument("--cache", default="benchmarks/out/patch_study_cache")
    parser.add_argument("--csv", default="benchmarks/patch_study.csv")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--features", nargs="+", default=list(FEATURES), choices=list(FEATURES))
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.01])
    parser.add_argument("--datasets", nargs="+", default=["bsdata", "deeppcb"], choices=["bsdata", "deeppcb"])
    parser.add_argument("--pools", nargs="+", default=["4", "16", EXACT], help="--stage coreset: pool factors")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="--stage coreset: coreset seeds")
    parser.add_argument("--coreset-csv", default="benchmarks/patch_coreset.csv")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    {"features": extract, "score": score, "report": report, "coreset": coreset}[args.stage](args)


if __name__ == "__main__":
    main()
