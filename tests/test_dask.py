"""Scoring dask collections and model selection on a distributed LocalCluster (2 worker processes)."""

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_IMAGES
from PIL import Image
from sklearn.model_selection import GridSearchCV, KFold

from sklearn_panda import PandaDetector, PandaFeatures
from sklearn_panda.distributed import score_dask

da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    # Worker processes unpickle the tests' backbone factories from conftest.
    tests = str(Path(__file__).parent)
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        env={"PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])},
    )
    with cluster, distributed.Client(cluster) as client:
        yield client


# A computation on the cluster that has not finished in this time has hung
# (a tiny model on 24 images takes about a second): fail instead of waiting
# for the CI's time limit.
TIMEOUT_S = 120


def _compute(client, collection):
    return client.compute(collection).result(timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def fitted(images_module):
    return PandaDetector(**TINY_IMAGES, n_steps=2, random_state=0).fit(images_module)


@pytest.fixture(scope="module")
def images_module():
    rng = np.random.default_rng(0)
    return (rng.random((24, 20, 20, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("method", ["score_samples", "decision_function", "predict"])
def test_a_dask_array_scores_as_in_memory(client, fitted, images_module, method):
    X = da.from_array(images_module, chunks=(7, 10, 20, 3))
    result = score_dask(fitted, X, method=method)
    assert result.chunks[0] == X.chunks[0]
    np.testing.assert_array_equal(_compute(client, result), getattr(fitted, method)(images_module))


def test_a_bag_of_paths_scores_as_in_memory(client, fitted, images_module, tmp_path):
    paths = []
    for i, image in enumerate(images_module):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    result = _compute(client, score_dask(fitted, db.from_sequence(paths, npartitions=3)))
    np.testing.assert_array_equal(result, fitted.score_samples(paths))


def test_features_transform_on_the_cluster(client, images_module):
    features = PandaFeatures(**TINY_IMAGES, n_steps=0, random_state=0).fit(images_module)
    X = da.from_array(images_module, chunks=(10, 20, 20, 3))
    np.testing.assert_array_equal(_compute(client, score_dask(features, X, method="transform")),
                                  features.transform(images_module))


def test_the_model_is_scattered_once_not_put_in_every_task(client, fitted, images_module):
    result = score_dask(fitted, da.from_array(images_module, chunks=6))
    tasks = dict(result.__dask_graph__())
    assert len(tasks) > 4
    assert not any(fitted is value for task in tasks.values() for value in _leaves(task))


def _leaves(task):
    """Every object a task holds, recursively (dask tasks are tuples or Task objects)."""
    items = [task]
    while items:
        item = items.pop()
        yield item
        if isinstance(item, (tuple, list)):
            items.extend(item)
        for name in ("args", "kwargs"):
            value = getattr(item, name, None)
            if isinstance(value, (tuple, list)):
                items.extend(value)
            elif isinstance(value, dict):
                items.extend(value.values())


def test_worker_processes_run_torch_on_one_thread(client):
    import torch

    assert set(client.run(torch.get_num_threads).values()) == {1}


def test_grid_search_under_the_dask_backend_equals_a_serial_run(client, images_module):
    from joblib import parallel_backend

    y = np.where(np.arange(len(images_module)) % 4 == 0, -1, 1)
    search = GridSearchCV(
        PandaDetector(**TINY_IMAGES, n_steps=1, random_state=0),
        {"learning_rate": [1e-2, 1e-3]},
        scoring="roc_auc",
        cv=KFold(2),
        refit=False,
    )
    serial = search.fit(images_module, y).cv_results_
    with parallel_backend("dask"):
        on_cluster = search.fit(images_module, y).cv_results_
    for key in ("split0_test_score", "split1_test_score", "mean_test_score"):
        np.testing.assert_array_equal(on_cluster[key], serial[key])
