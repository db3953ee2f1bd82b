"""The memory bank's coreset: exact greedy k-center selection, and the two-stage streaming one."""

import numpy as np
import pytest
import torch

from sklearn_panda._engine.coreset import StreamingCoreset, _lazy_greedy, greedy_coreset


def plain_greedy(points, n_select, first):
    """Greedy k-center selection, one full distance update per pick (the reference)."""
    chosen = [first]
    nearest = ((points - points[first]) ** 2).sum(1)
    while len(chosen) < n_select:
        pick = int(np.argmax(nearest))
        chosen.append(pick)
        nearest = np.minimum(nearest, ((points - points[pick]) ** 2).sum(1))
    return chosen


def covering_radius(points, chosen):
    squared = ((points[:, None, :] - points[None, chosen, :]) ** 2).sum(-1)
    return float(np.sqrt(squared.min(axis=1).max()))


def test_selection_that_reaches_past_the_candidates_is_the_plain_greedy_one():
    # Issue 41, item 3. A first pick at the origin, 51 points on the unit circle around it, and
    # 2,048 copies of 100 far grid points: the first block's candidates are the copies; once the
    # grid is covered, the circle (outside the candidates) is the farthest, and must be picked.
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, 51)
    grid = np.c_[np.arange(100) % 10, np.arange(100) // 10] * 3.0 + 5
    points = np.concatenate([np.zeros((1, 2)), np.c_[np.cos(angle), np.sin(angle)], grid[np.arange(2048) % 100]])
    points = points.astype(np.float32)
    chosen = _lazy_greedy(torch.from_numpy(points), 200, 0).tolist()
    reference = plain_greedy(points.astype(np.float64), 200, 0)
    assert set(range(1, 52)) <= set(chosen)
    assert covering_radius(points, chosen) == covering_radius(points, reference) == 0.0


def test_streaming_coreset_keeps_the_ratio_and_covers_nearly_as_well_as_exact_greedy():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 16)) * 5
    points = (centres[rng.integers(40, size=6000)] + rng.normal(size=(6000, 16))).astype(np.float32)
    coreset = StreamingCoreset(0.05, projection_dim=None, chunk_rows=1000, generator=torch.Generator().manual_seed(0))
    for start in range(0, 6000, 500):
        coreset.add(torch.from_numpy(points[start : start + 500]), torch.arange(start, start + 500))
    rows, labels = coreset.select()
    assert rows.shape == (300, 16) and coreset.n_seen_ == 6000
    # Labels follow their rows, and the rows are in the order they came.
    np.testing.assert_array_equal(rows.numpy(), points[labels.numpy()])
    assert (np.diff(labels.numpy()) > 0).all()
    exact = greedy_coreset(torch.from_numpy(points), 300, projection_dim=None).tolist()
    # Two stages: within the sum of the stages' radii, here well within twice the exact one.
    assert covering_radius(points, labels.tolist()) <= 1.5 * covering_radius(points, exact)


def test_streaming_coreset_with_every_row_in_the_pool_is_exact_greedy():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(800, 5)).astype(np.float32)
    coreset = StreamingCoreset(0.3, projection_dim=None, chunk_rows=100, generator=torch.Generator().manual_seed(2))
    for start in range(0, 800, 100):
        coreset.add(torch.from_numpy(points[start : start + 100]), torch.arange(start, start + 100))
    _, labels = coreset.select()
    assert len(labels) == 240
    exact = greedy_coreset(torch.from_numpy(points), 240, projection_dim=None).tolist()
    assert covering_radius(points, labels.tolist()) == pytest.approx(covering_radius(points, exact), rel=0.2)


def test_streaming_coreset_refuses_bad_ratios_and_empty_streams():
    with pytest.raises(ValueError, match="ratio"):
        StreamingCoreset(0.0)
    with pytest.raises(ValueError, match="No rows"):
        StreamingCoreset(0.5).select()
