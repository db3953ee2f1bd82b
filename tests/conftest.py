"""Tiny backbones shared by the tests: no download, a few milliseconds per batch."""

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet


def _compile_numba_unoptimised():
    """Have numba compile pynndescent without LLVM's optimisation passes, cached in the tests' own folder.

    pynndescent's numba functions compile on their first use in each new
    environment (CI's is always new): in a plain process about 120 s at
    numba's default optimisation, 85 s without LLVM's optimisation passes
    (AMD EPYC Zen 3, 2 cores; tests/test_neighbors.py and test_scorers.py:
    131 s -> 101 s). The tests check what the search finds, not how fast: the
    same search, up to float rounding. numba's cache does not tell
    optimisation levels apart, so the unoptimised code is cached in a folder
    of the tests' own (the checkout's .pytest_cache, or a temporary folder
    where that cannot be written), never beside pynndescent in the
    environment, where a user's later searches would load it. Both settings
    are read when numba is first imported (by pynndescent, lazily), after
    this; where the caller sets either, numba is left as the caller set it.
    """
    if "NUMBA_OPT" in os.environ or "NUMBA_CACHE_DIR" in os.environ:
        return
    folder = Path(__file__).resolve().parents[1] / ".pytest_cache" / "numba"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(folder)
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="sklearn_panda_numba_"))
    os.environ["NUMBA_OPT"] = "0"
    os.environ["NUMBA_CACHE_DIR"] = str(folder)


_compile_numba_unoptimised()


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


@pytest.fixture(autouse=True)
def _torch_threads_left_as_found():
    """Fail a test after which torch's thread count has changed (and set it back).

    A library that changes it for the rest of the process (numba's threading
    layer did, through pynndescent) oversubscribes the cores of every test
    that follows in the worker, and a user's process as well.
    """
    threads = torch.get_num_threads()
    yield
    changed = torch.get_num_threads()
    if changed != threads:
        torch.set_num_threads(threads)
        pytest.fail(f"torch's thread count went from {threads} to {changed} in this test", pytrace=False)

TINY_IMAGES = dict(backbone=tiny_resnet, weights=None, resize=32, crop_size=32, batch_size=8)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return (rng.random((24, 20, 20, 3)) * 255).astype(np.uint8)


# Modules that take longest, first. With ``--dist loadscope --no-loadscope-reorder``
# (``pyproject.toml``) pytest-xdist hands each module to one worker whole, in the
# order of collection: a module's tests share its module-scoped fixtures (a fitted
# model, a Dask cluster), built once. Starting with the longest modules keeps
# either worker from waiting for the other at the end.
LONG_MODULES = (
    "tests/test_examples.py", "tests/test_scorers.py", "tests/test_benchmarks.py", "tests/test_backbone_nodes.py",
)

# Modules handed to the worker of another, as if they were one module: they share a costly
# first use in each process, pynndescent's numba compilation (about 20 s).
SAME_WORKER = {"tests/test_neighbors.py": "tests/test_scorers.py"}


def pytest_collection_modifyitems(items):
    """Put the tests of ``LONG_MODULES`` (and of their ``SAME_WORKER`` partners) first, in that order."""
    rank = {name: position for position, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(_worker_scope(item.nodeid.split("::")[0]), len(LONG_MODULES)))


def _worker_scope(scope):
    """The scope whose worker runs ``scope``'s tests: its partner in ``SAME_WORKER``, else itself."""
    return SAME_WORKER.get(scope, scope)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: unknown to pytest without it
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadscope``, with each module of ``SAME_WORKER`` in its partner's scope."""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedScopes(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return _worker_scope(super()._split_scope(nodeid))

    return SharedScopes(config, log)
