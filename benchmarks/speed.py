"""Feature-extraction and adaptation speed: the paper code's pipeline vs this package.

Everything is measured in one run, on the same images (Fashion-MNIST test
images, upsampled as the paper's pipeline does) and the same backbone:

* feature extraction, images/s: the paper code's way (PIL resize and crop per
  image, ``ToTensor``, ``Normalize``, eager float32 batches of 32, written out
  plainly below) against the package's ``extract_features`` (batched tensor
  preprocessing, ``inference_mode``, channels-last, batches sized to the CPU's
  cache), in float32 and bfloat16, eager and with ``compile=True``, and in
  float32 with batches of 32 as well; the rate after a first batch, the ratio to
  the baseline, and the setup time (model build and first batch, which
  includes any compilation, counted separately so it is not hidden); for
  backbones with weights here, the ROC AUC of one class with every pipeline's
  features (kNN, k=2, same metric) and their mean cosine similarity to the
  paper pipeline's features of the same images; with ``--precision-classes``,
  float32 against bfloat16 ROC AUC on more classes;
* adaptation steps/s: a plain torch loop (PIL batches, whole network forward,
  gradients through the trainable stages) and a bare loop doing the package's
  work (cached trunk outputs, channels-last, normalised features) against the
  time ``PandaDetector.fit`` spends in its SGD loop;
* SES scoring time against the number of checkpoints T;
* with ``--memory-images N``: peak memory of ``PandaDetector.fit`` on N
  training images, with and without the trunk cache, next to the sizes of the
  model, the gallery features and the cache.

Peak memory is the peak resident set size of a child process per
measurement. Run::

    python benchmarks/speed.py --backbone efficientnet_lite0 --precision-classes 0 2 4 6
    python benchmarks/speed.py --backbone resnet152 --weights none   # speed only, offline
"""

import argparse
import multiprocessing
import queue as queue_module
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np


def _one_class(dataset, n_train, n_test, normal_class=0):
    from sklearn_panda.datasets import load_one_class

    return load_one_class(dataset, normal_class, max_train=n_train, max_test=n_test, random_state=0)


def _paper_transform():
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )


def _paper_batches(images, batch_size=32):
    """The paper code's input pipeline: PIL per image, then stack."""
    import torch
    from PIL import Image

    transform = _paper_transform()
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        yield torch.stack([transform(Image.fromarray(image).convert("RGB")) for image in chunk])


def _net(backbone, weights):
    from sklearn_panda._engine.backbones import build_feature_net

    return build_feature_net(backbone, weights, 2)


def _timed_extraction(make_extract, images, repeats=2):
    """(setup seconds, images/s, features): setup builds the extractor and runs a
    first batch (warm-up and any compilation); the rate is the best of
    ``repeats`` passes over all ``images`` after it (this machine's speed
    drifts by 10-15% between minutes)."""
    start = time.perf_counter()
    extract = make_extract()
    extract(images[:32])
    setup = time.perf_counter() - start
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        features = extract(images)
        seconds.append(time.perf_counter() - start)
    return setup, len(images) / min(seconds), features


def _baseline_extractor(backbone, weights):
    import torch

    net = _net(backbone, weights).eval()

    def extract(images):
        with torch.no_grad():
            return np.concatenate([net(batch).numpy() for batch in _paper_batches(images)])

    return extract


def _package_extractor(backbone, weights, precision, normalize, compile, inference_batch_size="auto"):
    from sklearn_panda import PandaDetector

    def extract(images):
        if not hasattr(extract, "detector"):
            extract.detector = PandaDetector(
                backbone=backbone, weights=weights, n_steps=0, precision=precision,
                normalize_features=normalize, compile=compile, inference_batch_size=inference_batch_size,
                device="cpu",
            ).fit(images[:4])
        return extract.detector.extract_features(images)

    return extract


def _resolved_batch_size(extract, images):
    detector = extract.detector
    preprocessor = detector._preprocessor(detector._check_new_input(images), detector.device_)
    return detector._inference_batch_size(detector.net_, preprocessor)


def baseline_features(backbone, weights, images):
    return _timed_extraction(lambda: _baseline_extractor(backbone, weights), images)


def package_features(backbone, weights, images, precision, normalize, compile=False, inference_batch_size="auto"):
    """(setup s, images/s, the inference batch size used)."""
    # The extractor builds its detector on its first call, which the setup time counts.
    extract = _package_extractor(backbone, weights, precision, normalize, compile, inference_batch_size)
    setup, rate, _ = _timed_extraction(lambda: extract, images)
    return setup, rate, _resolved_batch_size(extract, images[:1])


def baseline_train_test(backbone, weights, train, test):
    extract = _baseline_extractor(backbone, weights)
    return extract(train), extract(test)


def package_train_test(backbone, weights, train, test, precision, normalize, compile=False):
    extract = _package_extractor(backbone, weights, precision, normalize, compile)
    return extract(train), extract(test)


def baseline_adaptation_steps(backbone, weights, images, n_steps, cached=False):
    """Seconds of ``n_steps`` of a plain loop (setup not counted), gradients only in the trainable stages.

    ``cached=False``: the whole network forward each step, as the paper's code.
    ``cached=True``: a bare loop over precomputed trunk outputs, the same work
    as the package's steps (channels-last, L2-normalised features), to show
    the package's own per-step overhead.
    """
    import torch
    import torch.nn.functional as F

    net = _net(backbone, weights)
    batches = list(_paper_batches(images[: 32 * 2]))
    if cached:
        net = net.to(memory_format=torch.channels_last)
        batches = [batch.contiguous(memory_format=torch.channels_last) for batch in batches]
    project = F.normalize if cached else (lambda features: features)
    with torch.no_grad():
        center = project(net(batches[0])).mean(0)
        if cached:
            batches = [net.trunk(batch) for batch in batches]
    stages = net.stages if cached else net

    def forward(batch):
        return project(stages(batch))

    optimizer = torch.optim.SGD(net.trainable_parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-5)
    start = time.perf_counter()
    for step in range(n_steps):
        features = forward(batches[step % len(batches)])
        loss = (features - center).pow(2).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.trainable_parameters(), 1e-3)
        optimizer.step()
    return time.perf_counter() - start


def package_steps(backbone, weights, images, n_steps):
    """Seconds ``PandaDetector.fit`` spends in its SGD loop (``run_sgd``) over ``n_steps``."""
    import sklearn_panda._estimators.base
    from sklearn_panda import PandaDetector

    run_sgd, spent = sklearn_panda._estimators.base.run_sgd, []

    def timed_run_sgd(*args, **kwargs):
        start = time.perf_counter()
        result = run_sgd(*args, **kwargs)
        spent.append(time.perf_counter() - start)
        return result

    sklearn_panda._estimators.base.run_sgd = timed_run_sgd
    try:
        PandaDetector(backbone=backbone, weights=weights, n_steps=n_steps, device="cpu", random_state=0).fit(images)
    finally:
        sklearn_panda._estimators.base.run_sgd = run_sgd
    return spent[0]


def ses_scoring(backbone, weights, train, test, n_checkpoints):
    from sklearn_panda import PandaDetector, PandaSES

    if n_checkpoints == 0:
        detector = PandaDetector(backbone=backbone, weights=weights, n_steps=1, device="cpu").fit(train)
    else:
        detector = PandaSES(
            backbone=backbone, weights=weights, n_steps=n_checkpoints - 1,
            checkpoint_every=1, device="cpu",
        ).fit(train)
    seconds = []
    for _ in range(2):  # the best of two: this machine's speed drifts
        start = time.perf_counter()
        detector.score_samples(test)
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def memory_of_fit(backbone, weights, images, n_steps, trunk_cache_mb):
    """Sizes in MB of the parameters, the gallery features and the trunk cache, for one fit."""
    import torch

    from sklearn_panda import PandaDetector

    detector = PandaDetector(
        backbone=backbone, weights=weights, n_steps=n_steps, trunk_cache_mb=trunk_cache_mb,
        device="cpu", random_state=0,
    ).fit(images)
    net = detector.net_
    parameters = sum(p.numel() * p.element_size() for p in net.parameters()) / 2**20
    gallery = detector.scorer_.n_samples_fit_ * detector.scorer_.n_features_in_ * 4 / 2**20
    with torch.inference_mode():
        one = net.trunk(torch.zeros(1, 3, 224, 224).contiguous(memory_format=torch.channels_last))
    cache = len(images) * one[0].numel() * one.element_size() / 2**20
    return parameters, gallery, cache if cache <= trunk_cache_mb else 0.0


def _child(queue, function, args):
    try:
        start = time.perf_counter()
        result = function(*args)
        elapsed = time.perf_counter() - start
    except BaseException:
        queue.put(("error", traceback.format_exc()))
        raise
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(("ok", (elapsed, peak_mb, result)))


def _process_context():
    """Fresh processes forked from a server that has imported torch and the package once.

    A spawned process would import them anew for every measured row (seconds
    each); a forked one starts with them imported and nothing else run, since
    the server runs no torch code. Its peak RSS counts the imports, as a
    spawned process's did. Where there is no fork server (Windows), spawn.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torchvision", "sklearn_panda", "__main__"])
    return context


def measure(function, *args):
    """(seconds, peak RSS in MB, result) of ``function(*args)`` in a fresh process.

    Raises ``RuntimeError`` with the child's traceback when it fails, or when
    it dies without a word (killed, out of memory)."""
    context = _process_context()
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, function, args))
    process.start()
    while True:
        try:
            status, outcome = queue.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not process.is_alive() and queue.empty():
                raise RuntimeError(
                    f"{function.__name__} died with exit code {process.exitcode} and no result"
                ) from None
    process.join()
    if status == "error":
        raise RuntimeError(f"{function.__name__} failed in its process:\n{outcome}")
    return outcome


def mean_cosine(reference, features):
    """Mean over rows of the cosine similarity between two feature matrices of the same images."""
    from sklearn.metrics.pairwise import paired_cosine_distances

    # scikit-learn's paired cosine distance is 1 - cosine similarity, row by row.
    return 1 - paired_cosine_distances(reference, features).mean()


def roc_auc_of(train_features, test_features, y_test, metric):
    from sklearn.metrics import roc_auc_score

    from sklearn_panda import KNNScorer

    scores = KNNScorer(n_neighbors=2, metric=metric).fit(train_features).score_samples(test_features)
    return 100 * roc_auc_score(y_test, scores)


def _memory_rows(args, weights):
    from sklearn_panda.datasets import load_one_class

    train = load_one_class(args.dataset, 0, max_train=args.memory_images, max_test=1, random_state=0)[0]
    # One batch of images: the model, the framework and one batch's working memory.
    reference = measure(package_steps, args.backbone, weights, train[:32], args.steps)[1]
    rows = [
        "",
        f"| fit, {len(train)} images, {args.steps} steps | peak RSS MB | above a 32-image fit | "
        "parameters MB | gallery MB | trunk cache MB |",
        "|---|---|---|---|---|---|",
    ]
    for cache_mb in (2048, 0):
        _, peak, (parameters, gallery, cache) = measure(
            memory_of_fit, args.backbone, weights, train, args.steps, cache_mb
        )
        rows.append(
            f"| trunk_cache_mb={cache_mb} | {peak:.0f} | {peak - reference:.0f} | {parameters:.0f} | "
            f"{gallery:.0f} | {cache:.0f} |"
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--dataset", default="fashion_mnist", help="any name load_one_class knows")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a path, or 'none' (speed only)")
    parser.add_argument("--n-images", type=int, default=256, help="images for the throughput rows")
    parser.add_argument("--n-train", type=int, default=300, help="normal images for the ROC AUC rows")
    parser.add_argument("--n-test", type=int, default=600)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--checkpoints", type=int, nargs="*", default=[1, 3, 6])
    parser.add_argument("--skip-auc", action="store_true")
    parser.add_argument(
        "--skip-compile", action="store_true",
        help="leave out the compile=True rows (each compiles the backbone anew, which takes minutes)",
    )
    parser.add_argument(
        "--precision-classes", type=int, nargs="*", default=[],
        help="also compare float32 and bfloat16 ROC AUC (eager, L2-normalised features) on these classes",
    )
    parser.add_argument("--memory-images", type=int, default=0, help="also measure fit's peak memory on this many")
    parser.add_argument("--out", default="benchmarks/out")
    args = parser.parse_args(argv)
    weights = None if args.weights == "none" else args.weights

    X_train, X_test, y_test = _one_class(args.dataset, args.n_train, args.n_test)
    images = X_test[: args.n_images]
    lines = [f"# speed, {args.backbone}, weights={args.weights}, {args.n_images} {args.dataset} images upsampled to 224", ""]

    lines += [
        "| feature extraction | batch | images/s | ratio | setup s | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    _, base_peak, (base_setup, base_rate, _) = measure(baseline_features, args.backbone, weights, images)
    lines.append(
        f"| paper pipeline (PIL per image, fp32 eager) | 32 | {base_rate:.1f} | 1.00 | {base_setup:.1f} "
        f"| {base_peak:.0f} |"
    )
    compiles = (False,) if args.skip_compile else (False, True)
    variants = [(precision, compile) for precision in ("float32", "bfloat16") for compile in compiles]
    # The package's defaults, then batches of 32 (the paper's, and this package's before
    # inference_batch_size="auto") to show what the cache-sized batches give.
    rows = [(precision, compile, "auto") for precision, compile in variants]
    for position, compile in enumerate(compiles):
        rows.insert(1 + 2 * position, ("float32", compile, 32))
    for precision, compile, batch in rows:
        _, peak, (setup, rate, used) = measure(
            package_features, args.backbone, weights, images, precision, True, compile, batch
        )
        label = f"package, {precision}" + (", compile=True" if compile else "")
        label += "" if batch == "auto" else f", inference_batch_size={batch}"
        lines.append(
            f"| {label} | {used} | {rate:.1f} | {rate / base_rate:.2f} | {setup:.1f} | {peak:.0f} |"
        )
    print("\n".join(lines), flush=True)

    if weights is not None and not args.skip_auc:
        first = len(lines) + 1
        lines += [
            "", "| features (class 0, kNN k=2) | ROC AUC | mean cosine to the paper pipeline's |", "|---|---|---|"
        ]
        paper_train, paper_test = measure(baseline_train_test, args.backbone, weights, X_train, X_test)[2]
        paper = np.concatenate([paper_train, paper_test])
        lines.append(
            f"| paper pipeline, raw features | {roc_auc_of(paper_train, paper_test, y_test, 'sqeuclidean'):.2f} | 1 |"
        )
        for precision, compile in variants:
            for normalize in (False, True):
                train, test = measure(
                    package_train_test, args.backbone, weights, X_train, X_test, precision, normalize, compile
                )[2]
                label = f"package, {precision}" + (", compile=True" if compile else "")
                label += ", L2-normalised" if normalize else ", raw"
                # Cosine ignores the L2 normalisation, so every row compares preprocessing and precision alone.
                cosine = mean_cosine(paper, np.concatenate([train, test]))
                lines.append(
                    f"| {label} features | {roc_auc_of(train, test, y_test, 'sqeuclidean'):.2f} | {cosine:.5f} |"
                )
        print("\n".join(lines[first:]), flush=True)

    if args.precision_classes:
        first = len(lines) + 1
        lines += ["", "| class (kNN k=2, L2-normalised) | float32 | bfloat16 | difference |", "|---|---|---|---|"]
        for normal_class in args.precision_classes:
            train, test, y = _one_class(args.dataset, args.n_train, args.n_test, normal_class)
            auc = {}
            for precision in ("float32", "bfloat16"):
                features = measure(package_train_test, args.backbone, weights, train, test, precision, True)[2]
                auc[precision] = roc_auc_of(*features, y, "sqeuclidean")
            lines.append(
                f"| {normal_class} | {auc['float32']:.2f} | {auc['bfloat16']:.2f} "
                f"| {auc['bfloat16'] - auc['float32']:+.2f} |"
            )
        print("\n".join(lines[first:]), flush=True)

    first = len(lines) + 1
    lines += ["", f"| adaptation ({args.steps} steps, batch 32) | steps/s | ratio |", "|---|---|---|"]
    base_seconds = measure(baseline_adaptation_steps, args.backbone, weights, images, args.steps)[2]
    bare_seconds = measure(baseline_adaptation_steps, args.backbone, weights, images, args.steps, True)[2]
    package_step = measure(package_steps, args.backbone, weights, images[:64], args.steps)[2] / args.steps
    lines.append(f"| plain torch loop (whole network each step) | {args.steps / base_seconds:.2f} | 1.00 |")
    lines.append(
        f"| bare torch loop on cached trunk outputs | {args.steps / bare_seconds:.2f} | "
        f"{base_seconds / bare_seconds:.2f} |"
    )
    lines.append(
        f"| PandaDetector (cached trunk; time inside its SGD loop) | {1 / package_step:.2f} | "
        f"{base_seconds / args.steps / package_step:.2f} |"
    )
    print("\n".join(lines[first:]), flush=True)

    first = len(lines) + 1
    lines += ["", f"| scoring {args.n_images} images | seconds |", "|---|---|"]
    lines.append(f"| PandaDetector | {measure(ses_scoring, args.backbone, weights, X_train[:64], images, 0)[2]:.1f} |")
    for n_checkpoints in args.checkpoints:
        seconds = measure(ses_scoring, args.backbone, weights, X_train[:64], images, n_checkpoints)[2]
        lines.append(f"| PandaSES, T={n_checkpoints} | {seconds:.1f} |")
    if args.memory_images:
        lines += _memory_rows(args, weights)
    table = "\n".join(lines)
    print("\n".join(lines[first:]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"speed_{args.backbone}.md").write_text(table + "\n")


if __name__ == "__main__":
    sys.exit(main())
