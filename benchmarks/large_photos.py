"""Photos of any size: peak memory and speed of ``PandaPatchDetector(resize=None)`` on large photos (issue 42).

A photo larger than ``TILE_PIXELS`` goes through the backbone in overlapping
tiles whose maps are assembled exactly (``sklearn_panda/_engine/tiles.py``),
so that the backbone's activations are those of one tile whatever the photo's
size. This script fits the detector (by default its own defaults:
EfficientNet-Lite0, ImageNet weights) on a few crops of a synthetic texture
(smooth waves and pixel noise), then, in a fresh process for each photo
size, scores a photo of that size ``--repeats`` times and reports:

* the peak resident memory of the scoring, as its increase over the memory
  resident after loading the detector, making the photo and scoring a small
  image (``ru_maxrss``, its peak reset to the resident memory first through
  ``/proc/self/clear_refs``; the photo itself, in uint8, is in the baseline);
* seconds per photo (the fastest of the repeats; the first one measures the
  network's reach as well) and photos per second;
* the tiles per photo, the CPU (``lscpu``) and torch's threads.

With ``--untiled`` each size is also scored in one piece (``TILE_PIXELS``
raised above the photo), for comparison, and the tiled map and score are
compared with the one-piece ones. Prints a Markdown table and writes it to
``--out``::

    PYTHONPATH=. python benchmarks/large_photos.py --threads 2 --untiled
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def texture(height, width, seed, rows_per_block=256):
    """A uint8 photo ``(1, height, width, 3)`` of one surface: the same smooth waves in every photo, pixel
    noise of its own (``seed``); made a block of rows at a time, so that making it costs little more
    memory than the photo itself.

    Examples
    --------
    >>> texture(300, 200, seed=0).shape
    (1, 300, 200, 3)
    """
    surface = np.random.default_rng(0)
    frequencies = surface.uniform(-0.15, 0.15, size=(6, 2))
    phases, amplitudes = surface.uniform(0, 2 * np.pi, size=6), surface.uniform(5, 20, size=6)
    colour = surface.uniform(0.8, 1.2, size=3)
    rng = np.random.default_rng(seed)
    photo = np.empty((1, height, width, 3), dtype=np.uint8)
    columns = np.arange(width)[None, :]
    for top in range(0, height, rows_per_block):
        rows = np.arange(top, min(top + rows_per_block, height))[:, None]
        waves = sum(
            amplitude * np.sin(row_frequency * rows + column_frequency * columns + phase)
            for (row_frequency, column_frequency), phase, amplitude in zip(frequencies, phases, amplitudes)
        )
        noise = rng.normal(0, 6, size=(len(rows), width, 3))
        photo[0, top : top + len(rows)] = np.clip(128 + waves[..., None] * colour + noise, 0, 255)
    return photo


def cpu_description():
    """The CPU's model name (``lscpu``), with AVX-512 and AMX where it has them."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    name = fields.get("Model name", "unknown CPU").strip()
    flags = fields.get("Flags", "").split()
    extras = [label for flag, label in (("avx512f", "AVX-512"), ("amx_tile", "AMX")) if flag in flags]
    return f"{name} ({', '.join(extras)})" if extras else name


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resident_mb():
    """This process's resident memory now, from ``/proc/self/status``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("No VmRSS in /proc/self/status: this measurement needs Linux.")


def reset_peak():
    """Bring the peak resident memory (``ru_maxrss``) down to the memory resident now (Linux 4.0 and later):
    loading the detector passes through more than it keeps."""
    Path("/proc/self/clear_refs").write_text("5")


def score_one(model_path, height, width, tile_pixels, threads, repeats, seed, maps_path):
    """In this (fresh) process: score one photo ``repeats`` times; a dict of the measurements.
    Its map and score are saved to ``maps_path`` (``.npz``)."""
    import joblib
    import torch

    from sklearn_panda._engine import patch_features
    from sklearn_panda._engine.tiles import tile_layout

    torch.set_num_threads(threads)
    if tile_pixels:
        patch_features.TILE_PIXELS = tile_pixels
    detector = joblib.load(model_path)
    photo = texture(height, width, seed)
    # Libraries, their buffers and the network's first pass are in the baseline.
    detector.score_samples(photo[:, :256, :256])
    reset_peak()
    baseline = resident_mb()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        maps, scores = detector.anomaly_maps(photo, return_scores=True)
        seconds.append(time.perf_counter() - start)
        # Saved, then let go: the next call's peak does not hold this one's map.
        np.savez(maps_path, map=maps[0], score=scores)
        del maps
    peak = peak_rss_mb() - baseline
    tiles = "1"
    if height * width > patch_features.TILE_PIXELS:
        reach = patch_features.network_reach(detector.net_, torch.zeros(1, 3, 1, 1))
        rows, columns = tile_layout(height, width, patch_features.TILE_PIXELS, reach)
        tiles = f"{len(rows)} x {len(columns)}"
    return {
        "height": height, "width": width, "tile_pixels": patch_features.TILE_PIXELS, "tiles": tiles,
        "photo_mb": photo.nbytes / 2**20, "baseline_mb": baseline, "peak_increase_mb": peak,
        "first_s": seconds[0], "best_s": min(seconds), "threads": torch.get_num_threads(),
    }


def fit_and_save(args, path):
    import joblib
    import torch

    from sklearn_panda import PandaPatchDetector

    torch.set_num_threads(args.threads)
    height, width = args.fit_size
    crops = np.concatenate([texture(height, width, seed=args.seed + number) for number in range(args.fit_images)])
    detector = PandaPatchDetector(backbone=args.backbone, weights=args.weights, resize=None, random_state=0)
    start = time.perf_counter()
    detector.fit(crops)
    seconds = time.perf_counter() - start
    joblib.dump(detector, path)
    return seconds, len(detector.memory_bank_)


def run_child(args, model_path, height, width, tile_pixels, maps_path):
    command = [
        sys.executable, __file__, "--child", str(model_path), str(height), str(width), str(tile_pixels),
        str(maps_path), "--threads", str(args.threads), "--repeats", str(args.repeats), "--seed", str(args.seed + 100),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"scoring {height} x {width} failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def difference(tiled_path, whole_path):
    """The largest difference between the tiled and the one-piece map, relative to the map's largest
    value, and between their scores."""
    with np.load(tiled_path) as tiled, np.load(whole_path) as whole:
        maps = float(np.abs(tiled["map"] - whole["map"]).max() / np.abs(whole["map"]).max())
        return maps, float(np.abs(tiled["score"] - whole["score"]).max())


def table(rows, cpu, fit_line):
    lines = [
        f"CPU: {cpu}; torch threads: {rows[0]['threads']}. {fit_line}",
        "",
        "| photo | megapixels | tiles | tile pixels | peak memory increase (MB) | resident before (MB) "
        "| photo, uint8 (MB) | s / photo (first) | s / photo (best) | photos / s "
        "| map, score: largest difference from one piece |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        compared = f"{row['map_difference']:.1e}, {row['score_difference']:.1e}" if "map_difference" in row else "-"
        lines.append(
            f"| {row['width']:,} x {row['height']:,} | {row['height'] * row['width'] / 1e6:.1f} | {row['tiles']} "
            f"| {row['tile_pixels']:,} | {row['peak_increase_mb']:,.0f} | {row['baseline_mb']:,.0f} | {row['photo_mb']:.0f} "
            f"| {row['first_s']:.1f} | {row['best_s']:.1f} | {1 / row['best_s']:.3f} | {compared} |"
        )
    return "\n".join(lines)


def size(text):
    """``"WIDTHxHEIGHT"`` -> ``(height, width)``."""
    width, height = (int(part) for part in text.lower().split("x"))
    return height, width


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", nargs="+", type=size, default=[(3000, 4096), (2000, 8000)],
                        help="photo sizes to score, WIDTHxHEIGHT")
    parser.add_argument("--fit-size", type=size, default=(1536, 2048), help="size of the training crops, WIDTHxHEIGHT")
    parser.add_argument("--fit-images", type=int, default=3)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet", type=lambda text: None if text == "none" else text)
    parser.add_argument("--tile-pixels", type=int, default=0, help="0: the package's TILE_PIXELS")
    parser.add_argument("--untiled", action="store_true", help="also score each photo in one piece")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "large_photos.md")
    parser.add_argument("--child", nargs=5, metavar=("MODEL", "HEIGHT", "WIDTH", "TILE_PIXELS", "MAPS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        model_path, height, width, tile_pixels, maps_path = args.child
        print(json.dumps(score_one(model_path, int(height), int(width), int(tile_pixels), args.threads,
                                   args.repeats, args.seed, maps_path)))
        return
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        fit_seconds, bank_rows = fit_and_save(args, folder / "detector.joblib")
        rows = []
        for height, width in args.sizes:
            tiled = run_child(args, folder / "detector.joblib", height, width, args.tile_pixels, folder / "tiled.npz")
            rows.append(tiled)
            if args.untiled:
                rows.append(run_child(args, folder / "detector.joblib", height, width, height * width,
                                      folder / "whole.npz"))
                tiled["map_difference"], tiled["score_difference"] = difference(folder / "tiled.npz",
                                                                               folder / "whole.npz")
            for row in rows[-2 if args.untiled else -1 :]:
                print(json.dumps(row), flush=True)
    fit_height, fit_width = args.fit_size
    fit_line = (
        f"{args.backbone}, fitted on {args.fit_images} photos of {fit_width:,} x {fit_height:,} in {fit_seconds:.0f} s "
        f"({bank_rows:,} bank rows); resize=None."
    )
    report = table(rows, cpu_description(), fit_line)
    print(report)
    args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
