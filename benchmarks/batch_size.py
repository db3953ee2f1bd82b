"""Forward-pass throughput against the inference batch size, on this CPU.

The sizes are timed round-robin in one process (so that the machine's drift
hits every size alike); each rate is the best of ``--rounds`` passes over
``--n-images`` random images (eager, channels-last, ``inference_mode``). The
last column is the size ``inference_batch_size="auto"`` picks here, with the
largest activation of one image, which decides it. Run::

    python benchmarks/batch_size.py --backbone resnet152 --weights none --sizes 2 4 5 8 10 16 32
    python benchmarks/batch_size.py --backbone efficientnet_lite0 --sizes 1 2 3 4 6 8 16 32 --precision bfloat16
"""

import argparse
import sys
import time


def rates(backbone, weights, sizes, n_images, rounds, precision, crop_size):
    """images/s per batch size, the largest activation of one image, and the automatic size."""
    import torch

    from sklearn_panda._engine.backbones import build_feature_net
    from sklearn_panda._engine.inference import cache_sized_batch, peak_activation_bytes

    net = build_feature_net(backbone, weights, 2).eval().to(memory_format=torch.channels_last)
    images = torch.randn(n_images, 3, crop_size, crop_size).contiguous(memory_format=torch.channels_last)
    dtype = {"float32": None, "bfloat16": torch.bfloat16}[precision]
    best = dict.fromkeys(sizes, float("inf"))
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        per_image = peak_activation_bytes([net], lambda: net(images[:1]))
        for size in sizes:  # warm-up: oneDNN prepares its kernels per shape
            net(images[:size])
        for _ in range(rounds):
            for size in sizes:
                start = time.perf_counter()
                for first in range(0, n_images, size):
                    net(images[first : first + size])
                best[size] = min(best[size], time.perf_counter() - start)
    return {size: n_images / seconds for size, seconds in best.items()}, per_image, cache_sized_batch(
        per_image, largest=max(sizes)
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a path, or 'none'")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--crop-size", type=int, default=224)
    args = parser.parse_args(argv)
    weights = None if args.weights == "none" else args.weights
    by_size, per_image, automatic = rates(
        args.backbone, weights, args.sizes, args.n_images, args.rounds, args.precision, args.crop_size
    )
    print(f"| {args.backbone}, {args.precision} | " + " | ".join(str(size) for size in args.sizes) + " | auto |")
    print("|---" * (len(args.sizes) + 2) + "|")
    print(
        f"| images/s (largest activation {per_image / 1e6:.1f} MB per image) | "
        + " | ".join(f"{by_size[size]:.1f}" for size in args.sizes)
        + f" | {automatic} |"
    )


if __name__ == "__main__":
    sys.exit(main())
