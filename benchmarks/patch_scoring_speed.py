"""How fast a fitted PandaPatchDetector scores photos, where the time goes, and what faster searches cost (issue 43).

Fits ``PandaPatchDetector(random_state=0)`` on a development set's training
images (``patch_study.py``'s splits; the fitted model is saved under
``--models`` and loaded from there on later runs), then scores the split's
evaluation photos (files, one at a time) with ``anomaly_maps`` in each
variant and prints one table: images/s, the share of the time in the
backbone's forward pass and in the bank searches (and, of those, in the exact
search again of each image's largest distances), image and pixel ROC AUC,
and the largest score difference from the first variant. Variants:

* ``batchnorm``: the backbone as built, BatchNorm layers run on their own
  (searches as fitted);
* ``fitted``: the detector as fitted (BatchNorm folded into the convolutions;
  searches as ``algorithm="auto"`` chose them);
* ``exact``: both banks searched exactly;
* ``hnswM-efE``: both banks searched through a faiss ``HNSW{M}`` graph at
  ``efSearch=E`` (4 candidates re-ranked exactly), whatever their size;
  ``hnswM-efE-kF``: F candidates a patch (``k_factor``) instead of 4;
* any of them with ``-uncertified``: without the exact search again of each
  image's largest patch distances (``patch_bank.certify_largest``);
* ``batchnorm+SEARCH``: both, e.g. ``batchnorm+hnsw32-ef32-uncertified``
  (the scoring path before issue 43's last changes).

    python benchmarks/patch_scoring_speed.py --threads 2 --dataset deeppcb --split validation \
        --variants fitted batchnorm exact hnsw32-ef32 hnsw32-ef16 hnsw16-ef16

``--forward-only`` times the backbone's forward pass alone on random 640 x 640
images (batches of 1 and 8, the three networks taking turns, best of the
rounds): as built, with BatchNorm folded, folded with the activations
overwriting their inputs, also with EfficientNet-Lite's even zero padding
done by the convolutions, with its uneven padding too, and with the
activations applied by the convolutions (oneDNN; the default). With ``--compiled``, also the
default network compiled by ``torch.compile`` (Inductor, with freezing).

``--certified-first N [N ...]`` times the exact search again of each photo's
largest patch distances (``patch_bank.certify_largest``, both banks, the
approximate distances found once) with ``CERTIFIED_PATCHES`` set to each N
(the patches searched again in its first round), two passes each in turn,
and counts the exact searches and rows a photo takes. The certified image
scores are the same whatever N (checked); N only moves the time:

    python benchmarks/patch_scoring_speed.py --threads 2 --dataset deeppcb --split validation \
        --certified-first 8 16 24 32 --n-images 60

``--smoothing-only`` times the maps' Gaussian smoothing (sigma 4) at three
map sizes: the package's banded matrix products against one-channel
convolutions along each axis (the package before), best of the rounds.
"""

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent


class PhaseTimer:
    """Wall time spent inside wrapped functions, by phase."""

    def __init__(self):
        self.seconds = {}

    def wrap(self, phase, function):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

        return timed


@contextlib.contextmanager
def patched(module, name, value):
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def fitted_detector(model_path, fit_images):
    from sklearn_panda import PandaPatchDetector, load, save

    if Path(model_path).exists():
        return load(model_path), None
    start = time.perf_counter()
    detector = PandaPatchDetector(random_state=0).fit(fit_images)
    seconds = time.perf_counter() - start
    Path(model_path).parent.mkdir(parents=True, exist_ok=True)
    save(detector, model_path)
    return detector, seconds


def searches(detector, variant):
    """The detector's two bank searches for ``variant`` (fitted on its banks)."""
    from sklearn_panda.scorers import KNNScorer

    variant = variant.removeprefix("batchnorm+").removesuffix("-uncertified")
    if variant in ("fitted", "batchnorm"):
        return detector.scorer_, detector.fine_scorer_
    if variant == "exact":
        options = {"algorithm": "brute"}
    else:
        graph, ef = variant.removeprefix("hnsw").split("-ef")
        ef, _, k_factor = ef.partition("-k")
        options = {
            "algorithm": "faiss",
            "faiss_index": f"HNSW{graph}",
            "faiss_params": {"efSearch": int(ef), "k_factor": int(k_factor or 4)},
        }
    return tuple(
        KNNScorer(n_neighbors=detector.n_neighbors, metric="euclidean", random_state=0, **options).fit(bank)
        for bank in (detector.memory_bank_, detector.fine_bank_)
    )


def even_padding_only(padding_pass):
    """``padding_pass`` as it was before it folded uneven padding: uneven ``static_padding`` modules
    are wrapped (the same padding, no longer an ``nn.ZeroPad2d``), so the pass leaves them."""
    from torch import nn

    def even_only(traced):
        for module in traced.modules():
            padding = getattr(module, "static_padding", None)
            if isinstance(padding, nn.ZeroPad2d):
                left, right, top, bottom = padding.padding
                if left != right or top != bottom:
                    module.static_padding = nn.Sequential(padding)
        padding_pass(traced)

    return even_only


def forward_only(threads, rounds, compiled=False):
    import torch

    import sklearn_panda._engine.folding as folding
    from adaptation_study import cpu_name
    from sklearn_panda._engine.patch_net import build_patch_net

    net, _ = build_patch_net("efficientnet_lite0", "imagenet", "auto")
    networks = {"batchnorm": list(net.trunk)}
    with patched(folding, "_activations_into_convolutions", lambda traced, calls: None):
        with patched(folding, "_activations_in_place", lambda traced: None):
            with patched(folding, "_padding_into_convolutions", lambda traced: None):
                networks["folded"] = [folding.fold_batchnorm(stage) for stage in net.trunk]
        with patched(folding, "_padding_into_convolutions", lambda traced: None):
            networks["folded, activations in place"] = [folding.fold_batchnorm(stage) for stage in net.trunk]
        with patched(folding, "_padding_into_convolutions", even_padding_only(folding._padding_into_convolutions)):
            networks["folded, activations in place, even padding in the convolutions"] = [
                folding.fold_batchnorm(stage) for stage in net.trunk
            ]
        networks["folded, activations in place, padding in the convolutions"] = [
            folding.fold_batchnorm(stage) for stage in net.trunk
        ]
    networks["folded, padding and activations in the convolutions"] = [
        folding.fold_batchnorm(stage) for stage in net.trunk
    ]
    if compiled:
        # Inductor with freezing (weights as constants, pre-packed for oneDNN), one shape per batch
        # size; the first round includes the compilations, which the best of the rounds leaves out.
        networks["the default, compiled (torch.compile, freezing)"] = [
            torch.compile(stage, dynamic=False, options={"freezing": True})
            for stage in networks["folded, padding and activations in the convolutions"]
        ]

    def stage_outputs(stages, images):
        outputs = []
        for stage in stages:
            images = stage(images)
            outputs.append(images)
        return outputs

    print(f"\n# forward pass of EfficientNet-Lite0 to its patch layers, 640 x 640; {cpu_name()}, {threads} threads")
    print("| network | batch 1 images/s | batch 8 images/s |")
    print("|---|---|---|")
    best = {name: {} for name in networks}
    for batch in (1, 8):
        images = torch.rand(batch, 3, 640, 640).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            for _ in range(rounds):
                for name, network in networks.items():
                    start = time.perf_counter()
                    for _ in range(8 // batch):
                        stage_outputs(network, images)
                    seconds = (time.perf_counter() - start) / 8
                    best[name][batch] = min(best[name].get(batch, np.inf), seconds)
    for name, seconds in best.items():
        print(f"| {name} | {1 / seconds[1]:.1f} | {1 / seconds[8]:.1f} |")


def smoothing_only(threads, rounds):
    import torch
    import torch.nn.functional as F

    from adaptation_study import cpu_name
    from sklearn_panda._engine.maps import gaussian_smoothing

    def by_convolution(maps, sigma):
        radius = int(4 * sigma + 0.5)
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = kernel / kernel.sum()
        maps = F.conv2d(F.pad(maps, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
        return F.conv2d(F.pad(maps, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))

    print(f"\n# Gaussian smoothing of one map, sigma 4; {cpu_name()}, {threads} threads, best of {rounds} rounds")
    print("| map | convolutions, ms | banded products (the package), ms | ratio | largest difference |")
    print("|---|---|---|---|---|")
    for shape in ((640, 640), (460, 1130), (1024, 4096)):
        maps = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(0))
        best = {}
        with torch.inference_mode():
            for _ in range(rounds):
                for name, smooth in (("convolutions", by_convolution), ("products", gaussian_smoothing)):
                    start = time.perf_counter()
                    for _ in range(5):
                        smooth(maps, 4.0)
                    best[name] = min(best.get(name, np.inf), (time.perf_counter() - start) / 5)
            difference = float((gaussian_smoothing(maps, 4.0) - by_convolution(maps, 4.0)).abs().max())
        print(f"| {shape[0]} x {shape[1]} | {1e3 * best['convolutions']:.1f} | {1e3 * best['products']:.1f} "
              f"| {best['convolutions'] / best['products']:.1f}x | {difference:.1e} |")


def certification_rounds(detector, images, sizes):
    """Rows of (first round size, ms a photo (best pass), exact searches a photo, rows a photo).

    ``images`` are files, scored one at a time as the script scores them (a batch a photo)."""
    import sklearn_panda._estimators.patch_bank as patch_bank
    from sklearn_panda._estimators.validation import check_new_input

    checked, spec = check_new_input(detector, images), detector._spec()
    n_largest = spec["n_worst_patches"]  # as scoring certifies them
    found = []  # (patch rows, approximate mean distances, bank, n_neighbors) for each photo and bank
    searches = [(detector.memory_bank_, detector.scorer_), (detector.fine_bank_, detector.fine_scorer_)]
    for _, grids, _, _, _ in detector._embeddings(detector.net_, checked, detector.device_, spec, "features"):
        for grid, (bank, scorer) in zip(grids, searches):
            rows = patch_bank.patch_rows(grid).reshape(-1, grid.shape[1]).cpu().numpy()
            found.append((rows, scorer.kneighbors(rows)[0].mean(axis=1), bank, scorer.n_neighbors_))
    searched, original = [], patch_bank.brute_force_kneighbors

    def counted(queries, *args, **kwargs):
        searched.append(len(queries))
        return original(queries, *args, **kwargs)

    results, first_scores = {}, None
    with patched(patch_bank, "brute_force_kneighbors", counted):
        for _ in range(2):
            for size in sizes:
                with patched(patch_bank, "CERTIFIED_PATCHES", size):
                    searched.clear()
                    start = time.perf_counter()
                    certified = [patch_bank.certify_largest(d.copy(), r, b, k, n_largest) for r, d, b, k in found]
                    seconds = time.perf_counter() - start
                scores = [np.sort(one)[-n_largest:] for one in certified]
                first_scores = scores if first_scores is None else first_scores
                if not all(np.array_equal(a, b) for a, b in zip(scores, first_scores)):
                    raise AssertionError(f"the certified largest distances differ with a first round of {size}")
                best = min(seconds, results.get(size, (np.inf,))[0])
                results[size] = (best, len(searched), sum(searched))
    n_photos = len(images)
    return [(size, 1000 * t / n_photos, calls / n_photos, rows / n_photos) for size, (t, calls, rows) in results.items()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dataset", choices=["deeppcb", "bsdata"], default="deeppcb")
    parser.add_argument("--split", choices=["validation", "test"], default="validation")
    parser.add_argument("--deeppcb", default="../shared/data/deeppcb")
    parser.add_argument("--bsdata", default="../shared/data/bsdata")
    parser.add_argument("--models", default="benchmarks/out/patch_scoring_models")
    parser.add_argument("--n-images", type=int, default=None, help="score only the first N evaluation images")
    parser.add_argument("--variants", nargs="+", default=["fitted", "batchnorm"])
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument(
        "--compiled", action="store_true", help="--forward-only: also the default network compiled by torch.compile"
    )
    parser.add_argument("--smoothing-only", action="store_true")
    parser.add_argument("--certified-first", type=int, nargs="+", default=None,
                        help="time certify_largest with these first-round sizes (CERTIFIED_PATCHES)")
    parser.add_argument("--rounds", type=int, default=4, help="--forward-only, --smoothing-only: rounds of turns")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    if args.forward_only:
        return forward_only(args.threads, args.rounds, args.compiled)
    if args.smoothing_only:
        return smoothing_only(args.threads, args.rounds)
    import sklearn_panda._engine.patch_features as patch_features
    import sklearn_panda._estimators.patch as patch_module
    import sklearn_panda._estimators.patch_bank as patch_bank
    from adaptation_study import cpu_name
    from patch_study import bsdata_splits, deeppcb_splits, mask_array
    from sklearn_panda.metrics import pixel_roc_auc

    splits = deeppcb_splits(args.deeppcb) if args.dataset == "deeppcb" else bsdata_splits(args.bsdata)
    fit, images, y, masks = splits[args.split]
    model_path = Path(args.models) / f"{args.dataset}_{args.split}.pt"
    detector, fit_seconds = fitted_detector(model_path, fit)
    count = len(images) if args.n_images is None else args.n_images
    images, y, masks = images[:count], y[:count], masks[:count]
    if args.certified_first:
        table = certification_rounds(detector, images, args.certified_first)
        print(f"# {args.dataset} {args.split}: {len(images)} photos; {cpu_name()}, {args.threads} threads; "
              f"banks {len(detector.memory_bank_)} and {len(detector.fine_bank_)} rows; both banks, best of two passes")
        print("| first round | ms a photo | exact searches a photo | rows a photo |")
        print("|---|---|---|---|")
        for size, milliseconds, calls, rows in table:
            print(f"| {size} | {milliseconds:.1f} | {calls:.2f} | {rows:.1f} |")
        return
    detector.anomaly_maps(images[:2])  # warm-up: the folded copy, the tiles' checks, the allocator
    fitted = detector.scorer_, detector.fine_scorer_
    rows, first_scores = [], None
    for variant in args.variants:
        detector.scorer_, detector.fine_scorer_ = searches(detector, variant)
        timer = PhaseTimer()
        unfolded = contextlib.nullcontext()
        if variant.startswith("batchnorm"):
            unfolded = patched(patch_features, "folded", lambda net: net)
        uncertified = variant.endswith("-uncertified")
        with (
            unfolded,
            patched(patch_bank, "is_exact", lambda scorer: True) if uncertified else contextlib.nullcontext(),
            patched(patch_features, "tiled_stage_outputs", timer.wrap("forward", patch_features.tiled_stage_outputs)),
            patched(patch_module, "patch_distances", timer.wrap("search", patch_module.patch_distances)),
            patched(patch_bank, "certify_largest", timer.wrap("certification", patch_bank.certify_largest)),
        ):
            start = time.perf_counter()
            maps, scores = detector.anomaly_maps(images, return_scores=True)
            seconds = time.perf_counter() - start
        detector.scorer_, detector.fine_scorer_ = fitted
        first_scores = scores if first_scores is None else first_scores
        truth = [mask_array(mask, np.shape(one)) for mask, one in zip(masks, maps)]
        rows.append({
            "variant": variant,
            "images_per_s": len(images) / seconds,
            "forward": timer.seconds.get("forward", 0.0) / seconds,
            "search": timer.seconds.get("search", 0.0) / seconds,
            "certification": timer.seconds.get("certification", 0.0) / seconds,
            "image_auc": roc_auc_score(y == -1, -scores),
            "pixel_auc": pixel_roc_auc(truth, maps),
            "difference": float(np.max(np.abs(scores - first_scores))),
        })
        del maps, truth
        print(f"  {rows[-1]}", flush=True)
    print(f"\n# {args.dataset} {args.split}: {len(images)} photos (files, one at a time); {cpu_name()}, "
          f"{args.threads} threads; banks {len(detector.memory_bank_)} and {len(detector.fine_bank_)} rows")
    if fit_seconds is not None:
        print(f"# fit on {len(fit)} images: {fit_seconds:.0f} s")
    print(f"| variant | images/s | forward | bank searches | of which certification | image ROC AUC | pixel ROC AUC | largest score difference from {rows[0]['variant']} |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['variant']} | {row['images_per_s']:.2f} | {row['forward']:.0%} | {row['search']:.0%} "
            f"| {row['certification']:.0%} | {100 * row['image_auc']:.2f} | {100 * row['pixel_auc']:.2f} | {row['difference']:.2e} |"
        )


if __name__ == "__main__":
    main()
