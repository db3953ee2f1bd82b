"""Feature-extraction and adaptation speed: the paper code's pipeline vs this package.

Everything is measured in one run, on the same images (Fashion-MNIST test
images, upsampled as the paper's pipeline does) and the same backbone:

* feature extraction, images/s: the paper code's way (PIL resize and crop per
  image, ``ToTensor``, ``Normalize``, eager float32 batches of 32, written out
  plainly below) against the package's ``extract_features`` (batched tensor
  preprocessing, ``inference_mode``, channels-last), in float32 and bfloat16;
  the ratio to the baseline, and, for backbones with weights here, the ROC AUC
  of one class with both pipelines' features (kNN, k=2, same metric);
* adaptation steps/s: a plain torch loop (PIL batches, whole network forward,
  gradients through the trainable stages) against ``PandaDetector`` (cached
  trunk outputs, only the trainable stages run per step);
* SES scoring time against the number of checkpoints T.

Peak memory is the peak resident set size of a child process per
measurement. Run::

    python benchmarks/speed.py --backbone efficientnet_lite0
    python benchmarks/speed.py --backbone resnet152 --weights none   # speed only, offline
"""

import argparse
import multiprocessing
import resource
import sys
import time
from pathlib import Path

import numpy as np


def _fashion(n_train, n_test, normal_class=0):
    from sklearn_panda.datasets import load_one_class

    return load_one_class("fashion_mnist", normal_class, max_train=n_train, max_test=n_test, random_state=0)


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
    from sklearn_panda._backbones import build_feature_net

    return build_feature_net(backbone, weights, 2)


def baseline_features(backbone, weights, images):
    import torch

    net = _net(backbone, weights).eval()
    with torch.no_grad():
        return np.concatenate([net(batch).numpy() for batch in _paper_batches(images)])


def package_features(backbone, weights, images, precision, normalize):
    from sklearn_panda import PandaDetector

    detector = PandaDetector(
        backbone=backbone, weights=weights, n_steps=0, precision=precision,
        normalize_features=normalize, device="cpu",
    ).fit(images[:4])
    return detector.extract_features(images)


def baseline_adaptation_steps(backbone, weights, images, n_steps):
    """A plain loop: the whole network forward each step, gradients only in the trainable stages."""
    import torch

    net = _net(backbone, weights)
    batches = list(_paper_batches(images[: 32 * 2]))
    with torch.no_grad():
        center = net(batches[0]).mean(0)
    optimizer = torch.optim.SGD(net.trainable_parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-5)
    for step in range(n_steps):
        features = net(batches[step % len(batches)])
        loss = (features - center).pow(2).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.trainable_parameters(), 1e-3)
        optimizer.step()


def package_fit(backbone, weights, images, n_steps):
    from sklearn_panda import PandaDetector

    PandaDetector(backbone=backbone, weights=weights, n_steps=n_steps, device="cpu", random_state=0).fit(images)


def ses_scoring(backbone, weights, train, test, n_checkpoints):
    from sklearn_panda import PandaDetector, PandaSES

    if n_checkpoints == 0:
        detector = PandaDetector(backbone=backbone, weights=weights, n_steps=1, device="cpu").fit(train)
    else:
        detector = PandaSES(
            backbone=backbone, weights=weights, n_steps=n_checkpoints - 1,
            checkpoint_every=1, device="cpu",
        ).fit(train)
    start = time.perf_counter()
    detector.score_samples(test)
    return time.perf_counter() - start


def _child(queue, function, args):
    start = time.perf_counter()
    result = function(*args)
    elapsed = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((elapsed, peak_mb, result))


def measure(function, *args):
    """(seconds, peak RSS in MB, result) of ``function(*args)`` in a fresh process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, function, args))
    process.start()
    outcome = queue.get()
    process.join()
    return outcome


def roc_auc_of(train_features, test_features, y_test, metric):
    from sklearn.metrics import roc_auc_score

    from sklearn_panda import KNNScorer

    scores = KNNScorer(n_neighbors=2, metric=metric).fit(train_features).score_samples(test_features)
    return 100 * roc_auc_score(y_test, scores)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a path, or 'none' (speed only)")
    parser.add_argument("--n-images", type=int, default=256, help="images for the throughput rows")
    parser.add_argument("--n-train", type=int, default=300, help="normal images for the ROC AUC rows")
    parser.add_argument("--n-test", type=int, default=600)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--checkpoints", type=int, nargs="*", default=[1, 3, 6])
    parser.add_argument("--skip-auc", action="store_true")
    parser.add_argument("--out", default="benchmarks/out")
    args = parser.parse_args(argv)
    weights = None if args.weights == "none" else args.weights

    X_train, X_test, y_test = _fashion(args.n_train, args.n_test)
    images = X_test[: args.n_images]
    lines = [f"# speed, {args.backbone}, weights={args.weights}, {args.n_images} Fashion-MNIST images upsampled to 224", ""]

    lines += ["| feature extraction | images/s | ratio | peak RSS MB |", "|---|---|---|---|"]
    base_seconds, base_peak, _ = measure(baseline_features, args.backbone, weights, images)
    base_rate = len(images) / base_seconds
    lines.append(f"| paper pipeline (PIL per image, fp32 eager) | {base_rate:.1f} | 1.00 | {base_peak:.0f} |")
    for precision in ("float32", "bfloat16"):
        seconds, peak, _ = measure(package_features, args.backbone, weights, images, precision, True)
        rate = len(images) / seconds
        lines.append(f"| package, {precision} | {rate:.1f} | {rate / base_rate:.2f} | {peak:.0f} |")
    print("\n".join(lines), flush=True)

    if weights is not None and not args.skip_auc:
        lines += ["", "| features (class 0, kNN k=2) | ROC AUC |", "|---|---|"]
        train_base = measure(baseline_features, args.backbone, weights, X_train)[2]
        test_base = measure(baseline_features, args.backbone, weights, X_test)[2]
        lines.append(f"| paper pipeline, raw features, sqeuclidean | {roc_auc_of(train_base, test_base, y_test, 'sqeuclidean'):.2f} |")
        for precision in ("float32", "bfloat16"):
            for normalize in (False, True):
                train = measure(package_features, args.backbone, weights, X_train, precision, normalize)[2]
                test = measure(package_features, args.backbone, weights, X_test, precision, normalize)[2]
                label = "L2-normalised" if normalize else "raw"
                lines.append(f"| package, {precision}, {label} features | {roc_auc_of(train, test, y_test, 'sqeuclidean'):.2f} |")
        print("\n".join(lines[-6:]), flush=True)

    lines += ["", f"| adaptation ({args.steps} steps, batch 32) | steps/s | ratio |", "|---|---|---|"]
    base_seconds = measure(baseline_adaptation_steps, args.backbone, weights, images, args.steps)[0]
    zero = measure(package_fit, args.backbone, weights, images[:64], 0)[0]
    with_steps = measure(package_fit, args.backbone, weights, images[:64], args.steps)[0]
    package_step = max(with_steps - zero, 1e-9) / args.steps
    lines.append(f"| plain torch loop (whole network each step) | {args.steps / base_seconds:.2f} | 1.00 |")
    lines.append(
        f"| PandaDetector (cached trunk; fit time minus n_steps=0) | {1 / package_step:.2f} | "
        f"{base_seconds / args.steps / package_step:.2f} |"
    )
    print("\n".join(lines[-4:]), flush=True)

    lines += ["", f"| scoring {args.n_images} images | seconds |", "|---|---|"]
    lines.append(f"| PandaDetector | {measure(ses_scoring, args.backbone, weights, X_train[:64], images, 0)[2]:.1f} |")
    for n_checkpoints in args.checkpoints:
        seconds = measure(ses_scoring, args.backbone, weights, X_train[:64], images, n_checkpoints)[2]
        lines.append(f"| PandaSES, T={n_checkpoints} | {seconds:.1f} |")
    table = "\n".join(lines)
    print("\n".join(lines[-(len(args.checkpoints) + 3) :]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"speed_{args.backbone}.md").write_text(table + "\n")


if __name__ == "__main__":
    sys.exit(main())
