"""Passes without gradients: how many samples each one takes (inference_batch_size)."""

import types

import numpy as np
import pytest
import torch
from conftest import TINY_IMAGES, tiny_resnet
from torch import nn

import sklearn_panda._estimators.base
import sklearn_panda._engine.inference
from sklearn_panda import PandaDetector, PandaSES
from sklearn_panda._engine.inference import (
    DEFAULT_LAST_LEVEL_CACHE_BYTES,
    _parse_cache_size,
    cache_sized_batch,
    last_level_cache_bytes,
    peak_activation_bytes,
)


def test_peak_activation_is_the_largest_output_of_any_submodule():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    with torch.inference_mode():
        peak = peak_activation_bytes([net], lambda: net(torch.ones(2, 3, 10, 10)))
    assert peak == 2 * 16 * 10 * 10 * 4
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        half = peak_activation_bytes([net], lambda: net(torch.ones(2, 3, 10, 10)))
    assert half == peak // 2
    # The hooks are gone afterwards.
    assert not net[0]._forward_hooks


def test_peak_activation_leaves_the_modules_picklable_and_ignores_other_threads():
    # A detector pickled (by Dask, say) while another thread measures its network: the
    # modules carry no hook of their own meanwhile, and the other thread's passes do not count.
    import pickle
    import threading

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten())

    def run():
        pickle.dumps(net)
        other = threading.Thread(target=lambda: net(torch.ones(50, 3, 10, 10)))
        other.start()
        other.join()
        net(torch.ones(1, 3, 10, 10))

    with torch.inference_mode():
        assert peak_activation_bytes([net], run) == 4 * 10 * 10 * 4


def _fake_cache_tree(root, sizes):
    for index, (level, size) in enumerate(sizes):
        folder = root / f"index{index}"
        folder.mkdir(parents=True)
        (folder / "level").write_text(f"{level}\n")
        (folder / "size").write_text(f"{size}\n")
    return root


def test_last_level_cache_is_the_highest_level_linux_reports(tmp_path):
    root = _fake_cache_tree(tmp_path / "cache", [(1, "48K"), (1, "32K"), (2, "1024K"), (3, "98304K")])
    assert last_level_cache_bytes(root) == 96 * 2**20
    assert last_level_cache_bytes(tmp_path / "missing") == DEFAULT_LAST_LEVEL_CACHE_BYTES
    broken = _fake_cache_tree(tmp_path / "broken", [(3, "lots")])
    assert last_level_cache_bytes(broken) == DEFAULT_LAST_LEVEL_CACHE_BYTES


@pytest.mark.parametrize("text, expected", [("32768K\n", 32 * 2**20), ("2M", 2 * 2**20), ("512", 512)])
def test_cache_sizes_parse(text, expected):
    assert _parse_cache_size(text) == expected


def test_cache_sized_batch_fills_half_the_cache_within_bounds():
    assert cache_sized_batch(1000, largest=64, cache_bytes=10_000) == 5
    assert cache_sized_batch(1000, largest=4, cache_bytes=10_000) == 4
    assert cache_sized_batch(10**9, largest=64, cache_bytes=10_000) == 1
    assert cache_sized_batch(0, largest=64, cache_bytes=10_000) == 64


def _recording_resnet(record):
    """tiny_resnet whose last stage logs (batch size, gradients on?) of each call."""

    def factory():
        net = tiny_resnet()
        net.layer4.register_forward_pre_hook(
            lambda module, inputs: record.append((inputs[0].shape[0], torch.is_grad_enabled()))
        )
        return net

    return factory


def _batch_sizes(record, with_gradients):
    return [size for size, grad in record if grad == with_gradients]


@pytest.mark.parametrize("trunk_cache_mb", [0, 2048])
def test_inference_batches_follow_inference_batch_size_and_training_batches_batch_size(images, trunk_cache_mb):
    record = []
    params = {**TINY_IMAGES, "backbone": _recording_resnet(record), "n_steps": 2, "random_state": 0}
    detector = PandaDetector(**params, inference_batch_size=5, trunk_cache_mb=trunk_cache_mb).fit(images)
    assert _batch_sizes(record, True) == [8, 8]
    # 24 images, twice during fit (pretrained and adapted features).
    assert _batch_sizes(record, False) == [5, 5, 5, 5, 4] * 2
    record.clear()
    scores = detector.score_samples(images[:13])
    assert _batch_sizes(record, False) == [5, 5, 3]
    reference = PandaDetector(**params, inference_batch_size=8, trunk_cache_mb=trunk_cache_mb).fit(images)
    np.testing.assert_allclose(scores, reference.score_samples(images[:13]), rtol=1e-5, atol=1e-6)


def test_auto_on_the_cpu_fits_the_largest_activation_in_half_the_cache(images, monkeypatch):
    record = []
    params = {**TINY_IMAGES, "backbone": _recording_resnet(record), "n_steps": 0}
    net = PandaDetector(**params).fit(images[:2]).net_
    with torch.inference_mode():
        per_sample = peak_activation_bytes([net.trunk, net.stages], lambda: net(torch.zeros(1, 3, 32, 32)))
    # Room for exactly three samples' largest activation in half the cache.
    monkeypatch.setattr(sklearn_panda._engine.inference, "last_level_cache_bytes", lambda: 2 * 3 * per_sample)
    record.clear()
    detector = PandaDetector(**params).fit(images)
    # The first call is the one-sample measurement.
    assert _batch_sizes(record, False) == [1] + [3] * 8
    record.clear()
    detector.score_samples(images[:7])
    assert _batch_sizes(record, False) == [3, 3, 1]


def test_auto_measures_each_fitted_network_once(images, monkeypatch):
    calls = []
    measure = sklearn_panda._estimators.base.peak_activation_bytes
    monkeypatch.setattr(
        sklearn_panda._estimators.base, "peak_activation_bytes", lambda *args: calls.append(1) or measure(*args)
    )
    detector = PandaDetector(**TINY_IMAGES, n_steps=2, random_state=0).fit(images)
    detector.score_samples(images[:3])
    detector.extract_features(images[:3])
    assert len(calls) == 1
    PandaDetector(**TINY_IMAGES, n_steps=0, inference_batch_size=4).fit(images)
    assert len(calls) == 1


def test_auto_on_a_gpu_is_batch_size():
    on_gpu = types.SimpleNamespace(device=torch.device("cuda"))
    assert PandaDetector(batch_size=48)._inference_batch_size(None, on_gpu) == 48


def test_ses_scores_checkpoints_in_inference_batches(images):
    record = []
    params = {**TINY_IMAGES, "backbone": _recording_resnet(record), "n_steps": 2, "checkpoint_every": 1}
    ses = PandaSES(**params, inference_batch_size=5, random_state=0).fit(images)
    record.clear()
    ses.score_samples(images[:7])
    # Each active checkpoint in turn runs the stages on a batch of 5, then of 2.
    n_active = int(ses.active_checkpoints_.sum())
    assert _batch_sizes(record, False) == [5, 2] * n_active
