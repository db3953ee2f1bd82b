"""Any network of one's own: unadapted features of any module, a plain nn.Sequential split by its children."""

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_panda import PandaDetector, load

from conftest import tiny_mlp


def sequential_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


class OwnNet(nn.Module):
    """Not a Sequential and of no known family: a body and a linear head."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2))
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3)))


@pytest.fixture
def images():
    return (np.random.default_rng(0).random((10, 16, 16, 3)) * 255).astype(np.uint8)


TINY = dict(weights=None, resize=None, crop_size=None, random_state=0)


@pytest.mark.parametrize("factory, width", [(sequential_cnn, 16), (OwnNet, 12)])
def test_any_network_gives_unadapted_features_without_stage_ends(factory, width, images, tmp_path):
    detector = PandaDetector(backbone=factory, n_steps=0, **TINY).fit(images)
    # The features: the input of the last Linear (pooled, for a feature map).
    assert detector.extract_features(images[:2]).shape == (2, width)
    model = detector.net_.model
    with torch.no_grad():
        x = torch.from_numpy(images[:2]).permute(0, 3, 1, 2).float() / 255
        x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        expected = model[:-1](x) if isinstance(model, nn.Sequential) else model.body(x).mean(dim=(2, 3))
    features = detector.features_.transform(images[:2])
    np.testing.assert_allclose(features, torch.nn.functional.normalize(expected, dim=1).numpy(), rtol=1e-4, atol=1e-6)
    detector.save(tmp_path / "own.pt")
    loaded = load(tmp_path / "own.pt", backbone=factory)
    np.testing.assert_array_equal(loaded.score_samples(images), detector.score_samples(images))


def test_a_sequential_adapts_with_its_children_as_stages(images):
    detector = PandaDetector(backbone=sequential_cnn, n_steps=2, n_trainable_stages=1, **TINY).fit(images)
    net = detector.net_
    # Stages: each convolution with the activation and pooling after it; the Linear is the head.
    assert len(net.trunk) == 2 and isinstance(net.head, nn.Linear)
    trained = {id(p) for p in net.stages.parameters()}
    assert trained == {id(p) for p in net.model[6].parameters()}
    assert np.isfinite(detector.score_samples(images)).all()


def test_other_networks_that_adapt_still_need_stage_ends(images):
    with pytest.raises(ValueError, match="Set stage_ends.*n_steps=0.*Its top-level modules: body, head"):
        PandaDetector(backbone=OwnNet, n_steps=2, **TINY).fit(images)


def test_a_vector_backbone_refuses_a_feature_node_it_would_ignore():
    X = np.random.default_rng(0).normal(size=(20, 5))
    with pytest.raises(ValueError, match="feature_node needs stage_ends for a vector backbone"):
        PandaDetector(backbone=tiny_mlp, weights=None, n_steps=2, feature_node="1").fit(X)
