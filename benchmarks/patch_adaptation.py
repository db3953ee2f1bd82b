"""Does PANDA's adaptation help a patch memory bank? Compactness on patch features, measured.

PANDA fine-tunes the last stages of a pretrained network so that the normal
images' features move towards their mean (the compactness loss, paper Eq. 1).
For a patch detector the natural transfer is the same loss on every patch
feature: pull all normal patch features towards the mean patch feature. This
script measures it on DeepPCB's *validation* split (fitting boards and
evaluation boards both from the training boards): EfficientNet-Lite0, the
README's settings for fine defects (the stride-8 map alone, no neighbourhood
averaging, sigma 8, a 1% coreset), with the stage that ends at the stride-8
map trained for 0 (the unadapted baseline), 30 and 100 steps of the recipe's
SGD (lr 1e-1, momentum 0.9, weight decay 5e-5, gradient-norm clip 1e-3, batches
of 8 images), then the same memory bank, search and maps::

    python benchmarks/patch_adaptation.py --root ../shared/data/deeppcb --threads 2

Prints image ROC AUC, pixel ROC AUC and PRO for each length of adaptation.
"""

import argparse
import copy
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from sklearn_panda import PandaPatchDetector
from sklearn_panda._engine.backbones import build_model
from sklearn_panda._engine.coreset import greedy_coreset
from sklearn_panda._engine.data import Preprocessor
from sklearn_panda._engine.stages import split_model
from sklearn_panda._estimators.patch_calibration import smoothed_maps
from sklearn_panda._estimators.validation import check_input
from sklearn_panda.datasets import load_deeppcb
from sklearn_panda.metrics import pixel_roc_auc, pro_score
from sklearn_panda.scorers import brute_force_kneighbors

FINE = {"layers": ["_blocks.4"], "neighbourhood": 1, "sigma": 8.0, "coreset_ratio": 0.01}


def patch_rows(stage, trunk_outputs):
    """Patch features (n * h * w, d) of the trainable stage's output, as the detector takes them (n1)."""
    maps = stage(trunk_outputs)
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1]), maps.shape[-2:]


def evaluate(stage, train_hidden, test_hidden, data, detector):
    _, _, y_test, masks = data
    with torch.inference_mode():
        train = torch.cat([patch_rows(stage, train_hidden[i : i + 8])[0] for i in range(0, len(train_hidden), 8)])
        parts = [patch_rows(stage, test_hidden[i : i + 8]) for i in range(0, len(test_hidden), 8)]
    test, grid = torch.cat([rows for rows, _ in parts]).numpy(), parts[0][1]
    train = train.numpy()
    bank = train[greedy_coreset(torch.from_numpy(train), int(FINE["coreset_ratio"] * len(train))).numpy()]
    squared, _ = brute_force_kneighbors(test, bank, 1)
    distances = np.sqrt(np.maximum(squared[:, 0], 0))
    maps = smoothed_maps(distances, tuple(grid), masks.shape[1:], detector.patch_spec_["sigma"])[:, 0].numpy()
    scores = -maps.reshape(len(maps), -1).max(axis=1)
    return roc_auc_score(y_test, scores), pixel_roc_auc(masks, maps), pro_score(masks, maps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="the DeepPCB folder")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 30, 100])
    parser.add_argument("--max-train", type=int, default=200)
    parser.add_argument("--max-test", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_deeppcb(args.root, split="validation", max_train=args.max_train, max_test=args.max_test)
    detector = PandaPatchDetector(**FINE)  # only for its map smoothing
    model = build_model("efficientnet_lite0", "imagenet")
    # Frozen up to the stride-4 map; the stage from there to the stride-8 map trains.
    net = split_model(model, 1, stage_ends=["_blocks.2", "_blocks.4"], feature_node="_blocks.4").eval()
    device = torch.device("cpu")

    def trunk_outputs(X):
        preprocessor = Preprocessor(check_input(X), resize=None, crop_size=None, device=device)
        with torch.inference_mode():
            return torch.cat([net.trunk(preprocessor(np.arange(i, min(i + 8, len(X))))) for i in range(0, len(X), 8)])

    start = time.perf_counter()
    train_hidden, test_hidden = trunk_outputs(data[0]), trunk_outputs(data[1])
    print(f"validation split: {len(data[0])} training, {len(data[1])} test images; trunk in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    pretrained = net.stages[0]
    with torch.inference_mode():
        center = torch.cat([patch_rows(pretrained, train_hidden[i : i + 8])[0] for i in range(0, len(train_hidden), 8)])
        center = center.mean(dim=0)
    generator = torch.Generator().manual_seed(0)
    print(f"{'steps':>5} {'image':>6} {'pixel':>6} {'PRO':>6} {'loss':>8}")
    for n_steps in args.steps:
        stage = copy.deepcopy(pretrained)
        for parameter in stage.parameters():
            parameter.requires_grad_(True)
        optimizer = torch.optim.SGD(stage.parameters(), lr=1e-1, momentum=0.9, weight_decay=5e-5)
        loss = torch.tensor(float("nan"))
        for _ in range(n_steps):
            batch = torch.randperm(len(train_hidden), generator=generator)[:8]
            rows, _ = patch_rows(stage, train_hidden[batch].clone())
            loss = ((rows - center) ** 2).sum(dim=1).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(stage.parameters(), 1e-3)
            optimizer.step()
        stage.eval()
        image, pixel, pro = evaluate(stage, train_hidden, test_hidden, data, detector)
        print(f"{n_steps:>5} {100 * image:6.1f} {100 * pixel:6.1f} {100 * pro:6.1f} {float(loss.detach()):8.4f}", flush=True)


if __name__ == "__main__":
    main()
