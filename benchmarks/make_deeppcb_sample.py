"""Make the DeepPCB sample that ships with the package (``load_deeppcb()`` without ``root``).

From the full DeepPCB folder (``--root``, the layout of ``load_deeppcb(root)``),
with the package's own split (training boards for templates, other boards for
testing): 300 training templates and 30 test regions, each as a template and as
a defective image, each a 320 x 320 crop at the native resolution (defects keep
their size in pixels). A defective crop has a defect pixel at least 40 pixels inside
its border; its mask is 1 inside the defect boxes. The images are one bit per pixel (DeepPCB's are
binary) and stored packed, about 0.3 MB::

    python benchmarks/make_deeppcb_sample.py --root ../shared/data/deeppcb
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from sklearn_panda._io.deeppcb import SAMPLE_FILE, TEST_GROUPS, TRAIN_GROUPS, _pairs
from sklearn_panda._io.images import read_binary_mask

OUT = Path(__file__).resolve().parents[1] / "sklearn_panda" / "data" / SAMPLE_FILE
CROP = 320


def read_binary(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > 127


def crop_with_a_whole_defect(mask_path, rng):
    """A crop corner ``(top, left)`` with a defect pixel at least 40 pixels inside, or None."""
    mask = read_binary_mask(mask_path)
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    for _ in range(50):
        pick = rng.integers(rows.size)
        top_min = max(0, rows[pick] + 40 - CROP)
        top_max = min(mask.shape[0] - CROP, rows[pick] - 40)
        left_min = max(0, cols[pick] + 40 - CROP)
        left_max = min(mask.shape[1] - CROP, cols[pick] - 40)
        if top_min <= top_max and left_min <= left_max:
            return int(rng.integers(top_min, top_max + 1)), int(rng.integers(left_min, left_max + 1))
    return None


def make_sample(root, seed=0, n_train=300, n_test_each=30):
    rng = np.random.default_rng(seed)
    train_pairs, test_pairs = _pairs(root, TRAIN_GROUPS), _pairs(root, TEST_GROUPS)
    train = []
    for index in rng.choice(len(train_pairs), n_train, replace=False):
        image = read_binary(train_pairs[index][0])
        top, left = rng.integers(0, image.shape[0] - CROP + 1, size=2)
        train.append(image[top : top + CROP, left : left + CROP])
    # Test regions: the same crop of a template and of its defective image.
    normal, defective, masks = [], [], []
    for index in rng.permutation(len(test_pairs)):
        if len(defective) == n_test_each:
            break
        template, tested, mask_path = test_pairs[index]
        corner = crop_with_a_whole_defect(mask_path, rng)
        if corner is None:
            continue
        top, left = corner
        crop = (slice(top, top + CROP), slice(left, left + CROP))
        normal.append(read_binary(template)[crop])
        defective.append(read_binary(tested)[crop])
        masks.append(read_binary_mask(mask_path)[crop])
    test = normal + defective
    masks = [np.zeros_like(mask) for mask in masks] + masks
    y_test = np.r_[np.ones(n_test_each, dtype=np.int8), -np.ones(n_test_each, dtype=np.int8)]

    def packed(images):
        return np.packbits(np.stack(images).reshape(len(images), -1), axis=1)

    return {
        "size": np.array([CROP, CROP]),
        "train": packed(train),
        "test": packed(test),
        "masks": packed(masks),
        "y_test": y_test,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the DeepPCB folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    np.savez_compressed(args.out, **make_sample(args.root, args.seed))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
