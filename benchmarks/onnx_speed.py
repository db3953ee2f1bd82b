"""Scoring speed and ROC AUC of an exported detector: torch against ONNX Runtime and OpenVINO, float32 and int8.

One run, one fitted detector (EfficientNet-Lite0 with its ImageNet weights,
adapted to one Fashion-MNIST class), the same test images for every
pipeline:

* the paper pipeline, the baseline of the ratios: PIL resize and crop per
  image (the paper code's torchvision transforms), the detector's network in
  float32 and its scorer;
* torch float32: ``PandaDetector.score_samples`` (eager, channels-last);
* the file from :func:`sklearn_panda.deploy.export_onnx` in ONNX Runtime and
  in OpenVINO (float32 arithmetic), and its int8 versions from
  :func:`sklearn_panda.deploy.quantize_onnx` (every convolution, and every
  convolution but the first three), calibrated on the normal training images.

Each pipeline scores the whole test set once per round, the pipelines taking
turns, so that a background load slows them alike; the rate is the median
over rounds of images/s, and the ratios are against the paper pipeline and
torch in the same run.
ROC AUC is of the scores of the test images (normal class against the rest),
with the largest score difference from torch's. Writes the table to
``benchmarks/out/onnx_speed.md``. Run::

    python benchmarks/onnx_speed.py --threads 2
    python benchmarks/onnx_speed.py --threads 2 --backbone resnet152 --weights none --n-steps 0
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _paper_pipeline(detector):
    """Scoring as the paper's code does it: PIL resize and crop per image, then the same network and scorer."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from speed import _paper_batches

    net = detector.net_.eval()

    def score(images):
        with torch.no_grad():
            features = np.concatenate([net(batch).numpy() for batch in _paper_batches(images)])
        if detector.normalize_features:
            features /= np.linalg.norm(features, axis=1, keepdims=True)
        return detector.scorer_.score_samples(features)

    return score


def _pipelines(detector, folder, calibration, threads, runtimes):
    """name -> scoring function of uint8 images, every exported pipeline built up front."""
    from sklearn_panda.deploy import OnnxDetector, export_onnx, onnx_convolutions, quantize_onnx

    size = calibration.shape[1:3]
    float_path = export_onnx(detector, folder / "float32.onnx", image_size=size)
    int8_path = quantize_onnx(float_path, folder / "int8.onnx", calibration)
    # On EfficientNet-Lite0, int8 in the first three convolutions costs most of the rank agreement
    # with float32 that int8 loses (benchmarks/RESULTS.md).
    first = onnx_convolutions(float_path)[:3]
    int8_first_path = quantize_onnx(float_path, folder / "int8-first.onnx", calibration, keep_float32=first)
    files = {"float32": float_path, "int8": int8_path, "int8, first 3 convolutions float32": int8_first_path}
    pipelines = {"paper pipeline (PIL per image, torch float32)": _paper_pipeline(detector),
                 "torch float32": detector.score_samples}
    for runtime in runtimes:
        for precision, path in files.items():
            scorer = OnnxDetector(path, runtime=runtime, n_threads=threads, batch_size=32)
            pipelines[f"{runtime} {precision}"] = scorer.score_samples
    return pipelines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--normal-class", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--n-steps", type=int, default=30, help="adaptation steps")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "onnx_speed.md"))
    args = parser.parse_args(argv)

    import torch
    from sklearn.metrics import roc_auc_score

    from sklearn_panda import PandaDetector
    from sklearn_panda.datasets import load_one_class

    torch.set_num_threads(args.threads)
    runtimes = ["onnxruntime"]
    try:
        import openvino  # noqa: F401

        runtimes.append("openvino")
    except ImportError:
        print("OpenVINO is not installed: its rows are left out.", file=sys.stderr)
    X_train, X_test, y_test = load_one_class(
        args.dataset, args.normal_class, max_train=args.n_train, max_test=args.n_test, random_state=0
    )
    detector = PandaDetector(
        backbone=args.backbone,
        weights=None if args.weights == "none" else args.weights,
        n_steps=args.n_steps,
        random_state=0,
    ).fit(X_train)
    with tempfile.TemporaryDirectory() as folder:
        pipelines = _pipelines(detector, Path(folder), X_train, args.threads, runtimes)
        rates = {name: [] for name in pipelines}
        scores = {}
        for name, score in pipelines.items():
            score(X_test[:8])  # first call: allocation, kernel selection
        for _ in range(args.rounds):
            for name, score in pipelines.items():
                start = time.perf_counter()
                scores[name] = score(X_test)
                rates[name].append(len(X_test) / (time.perf_counter() - start))
    paper = float(np.median(rates[next(iter(pipelines))]))
    torch_rate = float(np.median(rates["torch float32"]))
    header = ("| pipeline | images/s | ratio to the paper pipeline | ratio to torch | ROC AUC "
              "| max abs score difference to torch |")
    lines = [header, "|---|---|---|---|---|---|"]
    for name in pipelines:
        rate = float(np.median(rates[name]))
        auc = 100 * roc_auc_score(y_test, scores[name])
        difference = np.abs(scores[name] - scores["torch float32"]).max()
        lines.append(f"| {name} | {rate:.1f} | {rate / paper:.2f} | {rate / torch_rate:.2f} | {auc:.1f} "
                      f"| {difference:.1e} |")
    table = "\n".join(lines)
    settings = (
        f"{args.backbone} ({args.weights}), {args.dataset} class {args.normal_class}, "
        f"{len(X_train)} training / {len(X_test)} test images, {args.n_steps} steps, "
        f"{args.threads} threads, median of {args.rounds} rounds"
    )
    print(settings)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(settings + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
