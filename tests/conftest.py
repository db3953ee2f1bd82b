"""Tiny backbones shared by the tests: no download, a few milliseconds per batch."""

import numpy as np
import pytest
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet


def tiny_resnet():
    """A one-block-per-stage ResNet: the same structure as ResNet152, at toy size."""
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)


def tiny_mlp():
    """A vector backbone of any input width (the lazy layer sizes itself on first use)."""
    return nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 4))


TINY_IMAGES = dict(backbone=tiny_resnet, weights=None, resize=32, crop_size=32, batch_size=8)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return (rng.random((24, 20, 20, 3)) * 255).astype(np.uint8)
