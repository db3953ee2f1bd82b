"""Seconds per adaptation step of each loss, measured in one process.

The compactness loss trains on cached trunk outputs; the mean-shifted loss
runs the frozen trunk on two fresh augmented views of every image of the
batch, so its steps cost far more. Each row is ``(fit(n_steps) - fit(0)) /
n_steps`` of ``PandaDetector`` on the same images, the losses alternating
over ``--rounds`` so that drifts in the machine's speed hit both alike::

    python benchmarks/loss_cost.py --n-images 200 --steps 10 --rounds 2
"""

import argparse
import platform
import sys
import time

import torch

from sklearn_panda import PandaDetector
from sklearn_panda.datasets import fashion_mnist_or_sample, load_one_class


def fit_seconds(images, **params):
    start = time.perf_counter()
    PandaDetector(backbone="efficientnet_lite0", random_state=0, **params).fit(images)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    images, _, _ = load_one_class(fashion_mnist_or_sample(), 0, max_train=args.n_images)
    common = dict(batch_size=args.batch_size)
    runs = {"no adaptation": dict(n_steps=0), "compactness": dict(n_steps=args.steps),
            "mean_shifted": dict(n_steps=args.steps, loss="mean_shifted", clip_norm=None, learning_rate=1e-5)}
    times = {name: [] for name in runs}
    for round_ in range(args.rounds):
        for name, params in runs.items():
            times[name].append(fit_seconds(images, **common, **params))
            print(f"round {round_ + 1} {name}: {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
    base = min(times["no adaptation"])
    print(f"CPU: {platform.processor() or 'see lscpu'}; torch threads {torch.get_num_threads()}; "
          f"{len(images)} images, batch {args.batch_size}, {args.steps} steps, best of {args.rounds}")
    print("| loss | fit s | s per step | steps per minute |")
    print("|---|---|---|---|")
    for name, values in times.items():
        best = min(values)
        per_step = (best - base) / args.steps if name != "no adaptation" else float("nan")
        print(f"| {name} | {best:.1f} | {per_step:.2f} | {60 / per_step if per_step == per_step else float('nan'):.0f} |")


if __name__ == "__main__":
    main()
