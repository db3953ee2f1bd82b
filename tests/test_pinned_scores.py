"""Scores of each estimator, pinned: refactors of the estimators must not change them.

The values were computed with the package as of the mean-shifted-loss commit
(per-sample Fisher included). Images are already at the model's input size
(``resize=None, crop_size=None``), so the pins test adaptation and scoring,
not the resize implementation. The tolerance allows for BLAS differences
between CPUs (AVX2 vs AVX-512 kernels change float32 rounding), which a few
SGD steps do not amplify beyond ~1e-6 relative.
"""

import numpy as np
import pytest
from conftest import tiny_resnet

from sklearn_panda import PandaDetector, PandaOE, PandaSES

COMMON = dict(backbone=tiny_resnet, weights=None, resize=None, crop_size=None, batch_size=8, random_state=0)
ADAPTED = dict(COMMON, learning_rate=0.1, clip_norm=None)

PINNED = {
    "detector": (
        lambda: PandaDetector(n_steps=3, **ADAPTED),
        [-0.0287911, -0.0392519, -0.0307511, -0.0344601],
        -0.034303194656968114,
    ),
    "detector_ewc": (
        lambda: PandaDetector(n_steps=3, regularization="ewc", n_fisher_batches=2, ewc_lambda=10.0, **ADAPTED),
        [-0.0288441, -0.0393288, -0.030805, -0.034472],
        -0.03436110883951187,
    ),
    "ses": (
        lambda: PandaSES(n_steps=4, checkpoint_every=2, **ADAPTED),
        [-0.9452465, -1.2051697, -1.0824098, -1.0539825],
        -1.1727444432366152,
    ),
    "oe": (
        lambda: PandaOE(n_steps=3, **COMMON),
        [-0.0329992, 0.0223015, 0.1149939, 0.1854177],
        0.047387789227068426,
    ),
}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = (rng.random((20, 32, 32, 3)) * 255).astype(np.uint8)
    queries = (rng.random((4, 32, 32, 3)) * 255).astype(np.uint8)
    return X, queries


@pytest.mark.parametrize("name", sorted(PINNED))
def test_scores_are_unchanged(data, name):
    make, scores, offset = PINNED[name]
    X, queries = data
    estimator = make()
    if isinstance(estimator, PandaOE):
        estimator.fit(X, np.r_[np.ones(12, dtype=int), -np.ones(8, dtype=int)])
    else:
        estimator.fit(X)
    np.testing.assert_allclose(estimator.score_samples(queries), scores, rtol=1e-4, atol=1e-6)
    assert estimator.offset_ == pytest.approx(offset, rel=1e-4, abs=1e-6)
