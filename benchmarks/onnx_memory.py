"""Peak memory per image of an exported patch detector in ONNX Runtime: the gallery searched whole or in pieces.

A :class:`~sklearn_panda.PandaPatchDetector` (ResNet18 with random weights,
``layers=["layer2", "layer3"]``: the cost of the search does not depend on
the weights) is fitted on a few random 640 x 640 images with
``coreset_ratio=1.0``, so that the memory bank keeps every patch (6,400 an
image). It is exported once per gallery piece size
(``sklearn_panda._engine.onnx_graph.GALLERY_CHUNK``; ``all``: the whole bank
at once, as the exported graph searched before issue 41), and each file
scores batches of images in a fresh process: the peak resident memory during
the call, less that before it, divided by the batch size, is the figure per
image (sampled every 2 ms; ONNX Runtime keeps its arena, so the resident
memory after the call is reported too). Scores are compared with the
detector's own. Writes the table to ``benchmarks/out/onnx_memory.md``. Run::

    python benchmarks/onnx_memory.py --threads 2
    python benchmarks/onnx_memory.py --n-train 2 --size 320 --batch-sizes 1 2
"""

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

# Run in a fresh process per measurement: a process's peak memory only grows.
MEASURE = textwrap.dedent(
    """
    import json, sys, threading, time
    import numpy as np, onnxruntime, psutil

    path, images_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    images = np.load(images_path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    process = psutil.Process()
    before = peak = process.memory_info().rss
    running = True

    def sample():
        global peak
        while running:
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    scores, _ = session.run(None, {"images": images})
    seconds = time.perf_counter() - start
    running = False
    sampler.join()
    after = process.memory_info().rss
    peak = max(peak, after)
    print(json.dumps({"before": before, "peak": peak, "after": after, "seconds": seconds,
                      "scores": scores.tolist()}))
    """
)


def _random_images(n, size, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _export(detector, path, size, chunk):
    from sklearn_panda._engine import onnx_graph
    from sklearn_panda.deploy import export_onnx

    default = onnx_graph.GALLERY_CHUNK
    onnx_graph.GALLERY_CHUNK = len(detector.memory_bank_) if chunk == "all" else int(chunk)
    try:
        export_onnx(detector, path, image_size=(size, size))
    finally:
        onnx_graph.GALLERY_CHUNK = default


def _measure(path, images, threads, folder):
    images_path = Path(folder) / f"images_{len(images)}.npy"
    np.save(images_path, images)
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), str(images_path), str(threads)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(result.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=640, help="image side in pixels (default 640)")
    parser.add_argument("--n-train", type=int, default=4, help="training images: the bank holds all their patches")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--chunks", nargs="+", default=["all", "1024"],
                        help="gallery rows searched at once; 'all': the whole bank (before issue 41)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "onnx_memory.md"))
    args = parser.parse_args(argv)

    import torch

    from sklearn_panda import PandaPatchDetector

    torch.set_num_threads(args.threads)
    detector = PandaPatchDetector(
        backbone="resnet18", weights=None, layers=["layer2", "layer3"], coreset_ratio=1.0, device="cpu",
        random_state=0,
    ).fit(_random_images(args.n_train, args.size, 0))
    bank_rows, width = detector.memory_bank_.shape
    test = _random_images(max(args.batch_sizes), args.size, 1)
    expected = detector.score_samples(test)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for chunk in args.chunks:
            path = Path(folder) / f"patch_{chunk}.onnx"
            _export(detector, path, args.size, chunk)
            for batch_size in args.batch_sizes:
                found = _measure(path, test[:batch_size], args.threads, folder)
                difference = float(np.max(np.abs(np.asarray(found["scores"]) - expected[:batch_size])))
                rows.append(
                    f"| {chunk} | {batch_size} | {(found['peak'] - found['before']) / batch_size / 2**20:,.0f} | "
                    f"{(found['after'] - found['before']) / batch_size / 2**20:,.0f} | "
                    f"{found['seconds'] / batch_size:.2f} | {difference:.1e} |"
                )
                print(rows[-1], flush=True)
    settings = (
        f"PandaPatchDetector(resnet18, weights=None, layers=[layer2, layer3], coreset_ratio=1.0) on "
        f"{args.n_train} random {args.size} x {args.size} images: a bank of {bank_rows:,} x {width} rows; "
        f"ONNX Runtime {_version('onnxruntime')}, {args.threads} threads; torch {torch.__version__}."
    )
    table = "\n".join(
        [
            "| gallery rows at once | batch | peak MiB per image | resident after, MiB per image | "
            "s per image | largest score difference from torch |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(settings + "\n\n" + table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(settings + "\n\n" + table + "\n")


def _version(name):
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
