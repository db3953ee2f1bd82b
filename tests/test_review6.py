"""The ninth and tenth readings' defects (2026-12-07: a maintainer's reading of the whole package; the adaptation
paths as a user), one test (or more) each."""

import numpy as np
import pytest
import torch

from sklearn_panda import PandaDetector, PandaFeatures, PandaOE, PandaPatchDetector
from sklearn_panda._engine.device import resolve_device
from sklearn_panda.model_selection import NormalOnlySplit

from conftest import TINY_IMAGES, tiny_mlp


# PandaOE's combine_knn scorer was built without the detector's seed (PandaDetector's got it): an
# approximate index (algorithm="auto" on large galleries) was then built on many threads, run to run.
def test_pandaoe_seeds_its_knn_scorer():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 6))
    y = np.r_[np.ones(12), -np.ones(8)]
    oe = PandaOE(backbone=tiny_mlp, weights=None, n_steps=2, combine_knn=True, random_state=5).fit(X, y)
    assert oe.knn_scorer_.random_state is not None
    again = PandaOE(backbone=tiny_mlp, weights=None, n_steps=2, combine_knn=True, random_state=5).fit(X, y)
    assert again.knn_scorer_.random_state == oe.knn_scorer_.random_state


# NormalOnlySplit(random_state=0) without shuffle ignored the seed without a word (KFold refuses it).
def test_normal_only_split_refuses_a_seed_without_shuffle():
    y = np.r_[np.ones(9), -np.ones(3)]
    with pytest.raises(ValueError, match="random_state has no effect since shuffle is False"):
        list(NormalOnlySplit(3, random_state=0).split(y, y))
    assert len(list(NormalOnlySplit(3, shuffle=True, random_state=0).split(y, y))) == 3


# Only CUDA was checked: device="meta" (or an unavailable "mps") failed inside torch during the fit.
@pytest.mark.parametrize("device", ["meta", "mps", "xpu"])
def test_a_device_that_is_not_here_is_named(device):
    if device in ("mps", "xpu"):
        backend = torch.backends.mps if device == "mps" else getattr(torch, "xpu", None)
        if backend is not None and backend.is_available():
            pytest.skip(f"{device} is available here")
    with pytest.raises(ValueError, match=rf"device='{device}'.* (not available|was requested)"):
        PandaDetector(backbone=tiny_mlp, weights=None, n_steps=0, device=device).fit(np.zeros((4, 6)))
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_gpu_index_beyond_the_machine_s_gpus_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"device='cuda:2' was requested but this machine has 2 CUDA device\(s\)"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


# True passed scikit-learn's integer constraint as 1: resize=True crashed inside torch, crop_size=True
# cropped every image to one pixel, (True, 64) was read as (1, 64); the patch detector refused them.
@pytest.mark.parametrize(
    "params, message",
    [
        ({"resize": True}, "resize must be an integer"),
        ({"resize": (True, 32)}, "resize must be an integer"),
        ({"crop_size": True}, "crop_size must be an integer"),
    ],
)
@pytest.mark.parametrize("estimator", [PandaDetector, PandaFeatures])
def test_booleans_are_refused_as_image_sizes(estimator, params, message, images):
    with pytest.raises(ValueError, match=message):
        estimator(**{**TINY_IMAGES, "n_steps": 0, **params}).fit(images[:4])
    with pytest.raises(ValueError, match="resize must be an integer"):
        PandaPatchDetector(backbone="resnet18", weights=None, resize=(True, 32)).fit(images[:4])
