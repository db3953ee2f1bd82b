"""The mean-shifted contrastive loss, its augmented views, and adaptation with it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_IMAGES, tiny_mlp

from sklearn_panda import PandaDetector, PandaSES
from sklearn_panda._engine.augment import ViewMaker
from sklearn_panda._engine.losses import mean_shifted_contrastive_loss


def _reference_loss(first, second, center, temperature):
    """NT-Xent written out sample by sample."""
    shift = lambda z: (lambda v: v / v.norm())(z / z.norm() - center)  # noqa: E731
    views = [shift(z) for z in first] + [shift(z) for z in second]
    n = len(first)
    total = 0.0
    for i, view in enumerate(views):
        positive = views[(i + n) % (2 * n)]
        others = [other for j, other in enumerate(views) if j != i]
        denominator = sum(torch.exp(view @ other / temperature) for other in others)
        total += -torch.log(torch.exp(view @ positive / temperature) / denominator)
    return total / (2 * n)


def test_loss_matches_a_sample_by_sample_computation():
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(5, 7, generator=generator), torch.randn(5, 7, generator=generator)
    center = F.normalize(torch.randn(7, generator=generator), dim=0)
    torch.testing.assert_close(
        mean_shifted_contrastive_loss(first, second, center, 0.25), _reference_loss(first, second, center, 0.25)
    )


def test_loss_decreases_when_features_learn_to_match_their_views():
    generator = torch.Generator().manual_seed(1)
    anchors = torch.randn(16, 8, generator=generator)
    noise = 0.5 * torch.randn(16, 8, generator=generator)
    linear = torch.nn.Linear(8, 8)
    center = F.normalize(torch.ones(8), dim=0)
    optimizer = torch.optim.SGD(linear.parameters(), lr=0.5)
    losses = []
    for _ in range(60):
        loss = mean_shifted_contrastive_loss(linear(anchors), linear(anchors + noise), center)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_views_differ_are_reproducible_and_leave_the_global_generator_alone():
    images = torch.rand(3, 3, 20, 20)
    state = torch.get_rng_state()
    first, second = ViewMaker(torch.Generator().manual_seed(0))(images)
    assert torch.equal(torch.get_rng_state(), state)
    assert first.shape == second.shape == images.shape
    assert not torch.allclose(first, second)
    again = ViewMaker(torch.Generator().manual_seed(0))(images)
    assert torch.equal(again[0], first) and torch.equal(again[1], second)


@pytest.fixture(scope="module")
def normal_images():
    rng = np.random.default_rng(0)
    return (rng.random((16, 20, 20, 3)) * 255).astype(np.uint8)


def test_detector_adapts_with_the_mean_shifted_loss(normal_images):
    common = dict(**TINY_IMAGES, n_steps=3, loss="mean_shifted", clip_norm=None, learning_rate=0.1, random_state=0)
    fitted = PandaDetector(**common).fit(normal_images)
    assert len(fitted.history_["loss"]) == 3 and np.all(np.isfinite(fitted.history_["loss"]))
    unadapted = PandaDetector(**{**common, "n_steps": 0}).fit(normal_images)
    assert not np.allclose(fitted.extract_features(normal_images), unadapted.extract_features(normal_images))
    again = PandaDetector(**common).fit(normal_images)
    np.testing.assert_array_equal(again.score_samples(normal_images), fitted.score_samples(normal_images))


def test_mean_shifted_loss_with_ewc_and_with_ses(normal_images):
    common = dict(**TINY_IMAGES, loss="mean_shifted", random_state=0)
    ewc = PandaDetector(n_steps=2, regularization="ewc", n_fisher_batches=1, **common).fit(normal_images)
    assert ewc.history_["ewc_penalty"][-1] > 0
    ses = PandaSES(n_steps=2, checkpoint_every=1, **common).fit(normal_images)
    assert np.all(np.isfinite(ses.score_samples(normal_images)))


def test_mean_shifted_loss_needs_images():
    with pytest.raises(ValueError, match="mean_shifted.*vectors"):
        PandaDetector(backbone=tiny_mlp, weights=None, n_steps=1, loss="mean_shifted").fit(np.ones((10, 4)))
