"""Feature-extraction speed of backbone families on the CPU, images/s, in one run.

Each backbone is built by name with random weights (``weights=None``: speed
does not depend on the weights, and nothing is downloaded), split as the
package splits it, and run as the package runs it without gradients
(``inference_mode``, channels-last, float32) on 224x224 inputs, in batches of
``--batch-size`` after one warm-up batch, for at least ``--seconds`` each. The
table also gives the feature width and the share of parameters that train by
default (``n_trainable_stages=2``)::

    OMP_NUM_THREADS=1 python benchmarks/backbone_speed.py --threads 1
"""

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from sklearn_panda._engine.backbones import build_feature_net

BACKBONES = [
    "mobilenet_v3_large",
    "efficientnet_lite0",
    "efficientnet_b0",
    "regnet_y_400mf",
    "resnet18",
    "densenet121",
    "resnet50",
    "convnext_tiny",
    "swin_t",
    "resnet152",
    "vit_b_16",
]


def images_per_second(net, batch_size, seconds):
    batch = torch.rand(batch_size, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        net(batch)  # warm-up: oneDNN builds its kernels for this shape
        done, start = 0, time.perf_counter()
        while done == 0 or time.perf_counter() - start < seconds:
            net(batch)
            done += batch_size
    return done / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=BACKBONES)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "backbone_speed.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.backbones:
        torch.manual_seed(0)
        net = build_feature_net(name, None, 2).to(memory_format=torch.channels_last)
        total = sum(parameter.numel() for parameter in net.parameters())
        trainable = sum(parameter.numel() for parameter in net.trainable_parameters())
        with torch.inference_mode():
            width = net(torch.zeros(1, 3, 224, 224)).shape[1]
        rate = images_per_second(net, args.batch_size, args.seconds)
        rows.append(f"| {name} | {width} | {total / 1e6:.1f} | {100 * trainable / total:.0f}% | {rate:.1f} |")
        print(rows[-1], file=sys.stderr, flush=True)
    lines = [
        f"CPU: {platform.processor() or 'see lscpu'}; torch {torch.__version__}, {args.threads} thread(s); "
        f"batch {args.batch_size}, 224x224, float32, channels-last, random weights",
        "",
        "| backbone | features | parameters (M) | trainable by default | images/s |",
        "|---|---|---|---|---|",
        *rows,
    ]
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
