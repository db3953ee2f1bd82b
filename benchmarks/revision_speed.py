"""Scoring speed of the patch detector at two git revisions, in turns, on the same model and photos.

The machine's own speed drifts (by a quarter within a session on the 2-core
Xeon of benchmarks/RESULTS.md), so a speed-up is only measured against a
baseline run in the same place and time. This script checks the baseline
revision out into a temporary git worktree and then runs, in turns, one fresh
process per revision and round: each loads the same saved
``PandaPatchDetector`` (``--model``; both revisions must be able to load it),
scores the same photos (files, one at a time) with ``anomaly_maps`` after a
warm-up of two, and reports images/s. Prints one table; writes nothing.

    python benchmarks/revision_speed.py --baseline 65574ed \\
        --model benchmarks/out/patch_scoring_models/deeppcb_validation.pt --dataset deeppcb --split test
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# What each process runs: the photos' paths and the model come as arguments, images/s goes out as JSON.
SCORER = """
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
from sklearn_panda import load
detector = load(sys.argv[1])
photos = json.loads(sys.argv[2])
detector.anomaly_maps(photos[:2])
start = time.perf_counter()
detector.anomaly_maps(photos)
print(json.dumps({"images_per_s": len(photos) / (time.perf_counter() - start)}))
"""


def images_per_s(tree, model, photos, threads):
    environment = dict(os.environ, PYTHONPATH=str(tree))
    result = subprocess.run(
        [sys.executable, "-c", SCORER, str(model), json.dumps(photos), str(threads)],
        cwd=tree, env=environment, capture_output=True, text=True,
    )
    if result.returncode:
        raise RuntimeError(f"Scoring at {tree} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])["images_per_s"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="the git revision to compare with (the working tree is the other)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", choices=["deeppcb", "bsdata"], default="deeppcb")
    parser.add_argument("--split", choices=["validation", "test"], default="test")
    parser.add_argument("--deeppcb", default="../shared/data/deeppcb")
    parser.add_argument("--bsdata", default="../shared/data/bsdata")
    parser.add_argument("--n-images", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE))
    from adaptation_study import cpu_name
    from patch_study import bsdata_splits, deeppcb_splits

    splits = deeppcb_splits(args.deeppcb) if args.dataset == "deeppcb" else bsdata_splits(args.bsdata)
    photos = [str(Path(photo).resolve()) for photo in splits[args.split][1][: args.n_images]]
    model = Path(args.model).resolve()
    speeds = {args.baseline: [], "working tree": []}
    with tempfile.TemporaryDirectory() as folder:
        baseline = Path(folder) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            for _ in range(args.rounds):
                for name, tree in ((args.baseline, baseline), ("working tree", ROOT)):
                    speeds[name].append(images_per_s(tree, model, photos, args.threads))
                    print(f"  {name}: {speeds[name][-1]:.2f} images/s", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, check=True)
    print(f"\n# {args.dataset} {args.split}: {len(photos)} photos (files, one at a time), {model.name}; "
          f"{cpu_name()}, {args.threads} threads; rounds in turns")
    print("| revision | images/s, each round | mean |")
    print("|---|---|---|")
    for name, found in speeds.items():
        print(f"| {name} | {' / '.join(f'{one:.2f}' for one in found)} | {np.mean(found):.2f} |")
    print(f"\nratio of the means: {np.mean(speeds['working tree']) / np.mean(speeds[args.baseline]):.2f}x")


if __name__ == "__main__":
    main()
