"""Pixel ROC AUC and PRO against direct computations on small hand-made maps."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from sklearn_panda.metrics import pixel_roc_auc, pro_score


def direct_pro(masks, maps, max_fpr=0.3):
    """PRO the slow way: threshold at every distinct value, label regions, average overlaps, integrate."""
    regions = []
    for image, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(image, labelled == label) for label in range(1, count + 1)]
    normal_pixels = sum(int((~mask).sum()) for mask in masks)
    points = [(0.0, 0.0)]
    for threshold in sorted({float(v) for values in maps for v in np.ravel(values)}, reverse=True):
        predicted = [values >= threshold for values in maps]
        fpr = sum(int((p & ~m).sum()) for p, m in zip(predicted, masks)) / normal_pixels
        pro = np.mean([(predicted[image] & region).sum() / region.sum() for image, region in regions])
        points.append((fpr, pro))
    fpr, pro = np.array(points).T
    # Area up to max_fpr, with the crossing segment cut at max_fpr.
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(fpr, pro), zip(fpr[1:], pro[1:])):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (max_fpr - x0) / (x1 - x0) * (y1 - y0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


def random_case(seed, sizes=((12, 10), (9, 14), (11, 11))):
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for height, width in sizes:
        mask = np.zeros((height, width), dtype=bool)
        for _ in range(rng.integers(0, 3)):
            top, left = rng.integers(0, height - 3), rng.integers(0, width - 3)
            mask[top : top + rng.integers(1, 4), left : left + rng.integers(1, 4)] = True
        # Rounded values: many ties, which must form one threshold each.
        maps.append(np.round(rng.random((height, width)) + 0.8 * mask, 1))
        masks.append(mask)
    masks[0][0, 0] = True  # at least one region
    return masks, maps


@pytest.mark.parametrize("seed", range(6))
def test_pro_equals_a_direct_computation(seed):
    masks, maps = random_case(seed)
    assert pro_score(masks, maps) == pytest.approx(direct_pro(masks, maps), abs=1e-12)
    assert pro_score(masks, maps, max_fpr=0.05) == pytest.approx(direct_pro(masks, maps, 0.05), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_pixel_roc_auc_equals_scikit_learns_on_the_pixels(seed):
    masks, maps = random_case(seed)
    expected = roc_auc_score(np.concatenate([m.ravel() for m in masks]), np.concatenate([v.ravel() for v in maps]))
    assert pixel_roc_auc(masks, maps) == pytest.approx(expected)


def test_pro_weighs_each_region_once_whatever_its_size():
    mask = np.zeros((20, 20), dtype=bool)
    mask[0:10, 0:10] = True  # 100 pixels
    mask[15, 15] = True  # 1 pixel
    found_big = np.where(mask & (np.arange(20)[:, None] < 10), 1.0, 0.0)
    # Only the big region found before any false positive: PRO 0.5 up to FPR 0 ...
    assert pro_score([mask], [found_big], max_fpr=1e-9) == pytest.approx(0.5, abs=1e-6)
    # ... while the pixel ROC AUC barely notices the missing pixel.
    assert pixel_roc_auc([mask], [found_big]) > 0.99


def test_perfect_and_inverted_maps():
    masks, _ = random_case(0)
    assert pro_score(masks, [m * 1.0 for m in masks]) == pytest.approx(1.0)
    assert pro_score(masks, [1.0 - m for m in masks]) == pytest.approx(0.0)
    assert pixel_roc_auc(masks, [1.0 - m for m in masks]) == pytest.approx(0.0)


def test_stacked_arrays_and_lists_agree():
    masks, maps = random_case(1, sizes=((10, 10),) * 3)
    assert pro_score(np.stack(masks), np.stack(maps)) == pro_score(masks, maps)
    assert pixel_roc_auc(np.stack(masks), np.stack(maps)) == pixel_roc_auc(masks, maps)


def test_bad_input_names_the_problem():
    masks, maps = random_case(0)
    with pytest.raises(ValueError, match=r"Mask 1 has shape \(9, 14\) but its map has shape \(14, 9\)"):
        pro_score(masks, [maps[0], maps[1].T, maps[2]])
    with pytest.raises(ValueError, match="3 masks and 2 maps"):
        pixel_roc_auc(masks, maps[:2])
    with pytest.raises(ValueError, match="binary"):
        pixel_roc_auc([masks[0] * 2], [maps[0]])
    with pytest.raises(ValueError, match="NaN"):
        pro_score(masks, [maps[0] * np.nan, maps[1], maps[2]])
    with pytest.raises(ValueError, match="at least one defect region"):
        pro_score([np.zeros((4, 4))], [np.zeros((4, 4))])
    with pytest.raises(ValueError, match="only one class|only defect-free"):
        pixel_roc_auc([np.zeros((4, 4))], [np.zeros((4, 4))])
    with pytest.raises(ValueError, match="max_fpr"):
        pro_score(masks, maps, max_fpr=0)
    with pytest.raises(ValueError, match="2-D"):
        pro_score([np.zeros((2, 4, 4))], [np.zeros((2, 4, 4))])
