"""Tiny backbones shared by the tests: no download, a few milliseconds per batch."""

import os

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet


def tiny_resnet():
    """A one-block-per-stage ResNet: the same structure as ResNet152, at toy size."""
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)


def tiny_cnn():
    """Four strided convolutions (strides 2 to 16): patch maps at strides 8 and 16, ``layers=TINY_LAYERS``."""
    layers = []
    for n_in, n_out in ((3, 8), (8, 8), (8, 16), (16, 16)):
        layers += [nn.Conv2d(n_in, n_out, 3, stride=2, padding=1), nn.ReLU()]
    return nn.Sequential(*layers)


TINY_LAYERS = ["5", "7"]


def tiny_mlp():
    """A vector backbone of any input width (the lazy layer sizes itself on first use)."""
    return nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 4))


def _share_the_cores_between_workers():
    """Under pytest-xdist, give each worker (and the processes it starts) its share of the cores.

    Without it every worker runs torch's default of one thread per core, and
    two workers on two cores oversubscribe them (OpenMP threads then wait on
    each other).
    """
    if "PYTEST_XDIST_WORKER_COUNT" not in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


_share_the_cores_between_workers()

TINY_IMAGES = dict(backbone=tiny_resnet, weights=None, resize=32, crop_size=32, batch_size=8)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return (rng.random((24, 20, 20, 3)) * 255).astype(np.uint8)


# Groups that take minutes on one worker: run first, while the other worker
# takes the many short tests, so that neither waits for the other at the end.
LONG_GROUPS = ("nndescent", "inductor")


def _group(item):
    if "nndescent" in item.nodeid:
        return "nndescent"
    if "compile" in item.name or item.nodeid.startswith("tests/test_compilation.py"):
        # torch.compile's first compilation in a process sets up Inductor
        # and its C++ toolchain (some 20 s); once is enough.
        return "inductor"
    fixtures = getattr(item, "_fixtureinfo", None)
    if fixtures is None:
        return None
    # The suite's own fixtures only: pytest's tmp_path, for one, rests on a
    # session-scoped factory, and would otherwise group every test that uses it.
    scopes = {
        definitions[-1].scope
        for definitions in fixtures.name2fixturedefs.values()
        if definitions and definitions[-1].baseid
    }
    if scopes & {"module", "session"}:
        return item.module.__name__
    return None


# First: pytest-xdist's own hook reads the xdist_group marks (into the node ids) after it.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Keep tests that share a costly set-up on one xdist worker, the longest first.

    With ``--dist loadgroup`` (``pyproject.toml``) tests of one ``xdist_group``
    run on the same worker: a module's tests that share a module-scoped
    fixture (a fitted model, a Dask cluster) build it once instead of once per
    worker, the tests of pynndescent compile its numba functions (some
    30 s, over 100 s with a cold cache) in one process only, and the tests
    of ``compile=True`` set up ``torch.compile`` in one process only.
    """
    groups = {item: _group(item) for item in items}
    for item, group in groups.items():
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    rank = {group: position for position, group in enumerate(LONG_GROUPS)}
    items.sort(key=lambda item: rank.get(groups[item], len(LONG_GROUPS)))
