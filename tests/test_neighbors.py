"""The search backends behind KNNScorer, and the scorers and files of the layout before them."""

import pickle

import numpy as np
import pytest
import torch

from sklearn_panda import KNNScorer, load, save
from sklearn_panda.scorers import brute_force_kneighbors
from sklearn_panda.scorers._neighbors import BACKENDS, ExactSearch, FaissSearch, NNDescentSearch


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    return rng.normal(size=(300, 16)).astype(np.float32), rng.normal(size=(40, 16)).astype(np.float32)


def _backends():
    backends = [(ExactSearch, {}), (NNDescentSearch, {"n_neighbors": 30, "random_state": 0, "n_jobs": 1})]
    try:
        import faiss  # noqa: F401
    except ImportError:
        return backends
    flat = {"description": "Flat", "params": None, "seed": None}
    hnsw = {"description": "HNSW16", "params": {"efSearch": 64}, "seed": None, "build_threads": 1}
    return [*backends, (FaissSearch, flat), (FaissSearch, hnsw)]


@pytest.mark.parametrize("backend, options", _backends(), ids=lambda v: getattr(v, "__name__", None) or str(v))
def test_each_backend_finds_the_exact_neighbours_and_pickles(rows, backend, options):
    gallery, queries = rows
    search = backend(gallery, **options)
    for asked, exclude_self in [(queries, False), (None, True)]:
        expected_squared, expected = brute_force_kneighbors(
            gallery if asked is None else asked, gallery, 3, exclude_self=exclude_self
        )
        squared, found = search.search(asked, 3)
        if search.exact:
            np.testing.assert_array_equal(found, expected)
            np.testing.assert_allclose(squared, expected_squared, rtol=1e-5)
        else:
            recall = np.mean([len(set(a) & set(b)) / 3 for a, b in zip(found, expected)])
            assert recall > 0.8
        # Whatever was found: its exact squared distances, ascending, never the query itself.
        source = gallery if asked is None else asked
        np.testing.assert_allclose(squared, ((source[:, None] - gallery[found]) ** 2).sum(axis=2), rtol=1e-4, atol=1e-5)
        assert (np.diff(squared, axis=1) >= 0).all()
        if asked is None:
            assert not (found == np.arange(len(gallery))[:, None]).any()
    restored = pickle.loads(pickle.dumps(search))
    np.testing.assert_array_equal(restored.search(queries, 3)[1], search.search(queries, 3)[1])
    assert BACKENDS[backend.algorithm] is backend


def test_a_file_never_unpickles_a_graph(rows):
    """An nndescent graph is rebuilt from a file; bytes given for it are refused, not unpickled."""
    gallery, _ = rows
    options = {"n_neighbors": 30, "random_state": 0, "n_jobs": 1}
    assert NNDescentSearch(gallery, **options).saved() is None
    with pytest.raises(ValueError, match="keeps nothing in a file"):
        NNDescentSearch.from_saved(gallery, np.frombuffer(b"cos\nsystem\n", dtype=np.uint8), **options)


def test_an_nndescent_search_gives_torch_its_thread_count_back(rows, monkeypatch):
    """numba's threading layer sets the thread count of the OpenMP runtime it starts on, which can be
    torch's (with faiss imported first): the graph's build and queries must leave torch's as it was."""
    from threadpoolctl import ThreadpoolController

    def as_numba_starts():
        ThreadpoolController().limit(limits=3, user_api="openmp")  # set, never given back

    class StartsThreads:
        def __init__(self, gallery, **options):
            as_numba_starts()

        def query(self, queries, k, epsilon):
            as_numba_starts()
            return np.zeros((len(queries), k), dtype=np.int64), None

    monkeypatch.setattr("pynndescent.NNDescent", StartsThreads)
    gallery, queries = rows
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        search = NNDescentSearch(gallery, n_neighbors=30, random_state=0, n_jobs=-1)
        assert torch.get_num_threads() == 1
        search.search(queries, 2)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)


def test_an_nndescent_search_leaves_blas_limits_alone(rows, monkeypatch):
    """Only the OpenMP runtimes get their thread counts back: a BLAS limit set meanwhile (by another
    thread, say) stays. (A BLAS threaded by OpenMP follows its runtime: left out here.)"""
    from threadpoolctl import ThreadpoolController

    def own_threads():
        return {
            info["filepath"]: info["num_threads"]
            for info in ThreadpoolController().select(user_api="blas").info()
            if info.get("threading_layer") != "openmp"
        }

    class LimitsBlas:
        def __init__(self, gallery, **options):
            ThreadpoolController().limit(limits=1, user_api="blas")  # set, never given back

    monkeypatch.setattr("pynndescent.NNDescent", LimitsBlas)
    original = own_threads()
    if not original:
        pytest.skip("no BLAS library with threads of its own that threadpoolctl controls")
    try:
        NNDescentSearch(rows[0], n_neighbors=30, random_state=0, n_jobs=1)
        assert set(own_threads().values()) == {1}
    finally:
        ThreadpoolController().limit(limits=max(original.values()), user_api="blas")


def _earlier_pickled_state(scorer):
    """A fitted KNNScorer's ``__getstate__`` as the version before the backends wrote it."""
    state = dict(scorer.__getstate__())
    search = state.pop("_neighbors")
    state["_algorithm"] = search.algorithm
    state["_index"] = None
    if search.algorithm == "faiss":
        state["_faiss_description"] = search.options["description"]
        state["_faiss_params"] = search.options["params"]
        state["_index"] = search.saved()
    elif search.algorithm == "nndescent":
        state["_index"] = pickle.dumps(search._built)
    return state


@pytest.mark.parametrize("algorithm", ["brute", "nndescent", "faiss-hnsw"])
def test_scorers_pickled_before_the_backends_still_load(rows, algorithm):
    gallery, queries = rows
    if algorithm == "faiss-hnsw":
        pytest.importorskip("faiss")
        scorer = KNNScorer(algorithm="faiss", faiss_index="HNSW16", random_state=0)
    else:
        scorer = KNNScorer(algorithm=algorithm, random_state=0)
    scorer.fit(gallery)
    old = KNNScorer.__new__(KNNScorer)
    old.__setstate__(_earlier_pickled_state(scorer))
    np.testing.assert_array_equal(old.score_samples(queries), scorer.score_samples(queries))
    assert old._neighbors.algorithm == scorer._neighbors.algorithm


def test_files_of_format_3_keep_their_faiss_index(rows, tmp_path):
    faiss = pytest.importorskip("faiss")
    from conftest import tiny_mlp

    from sklearn_panda import PandaDetector

    gallery, queries = rows
    scorer = KNNScorer(algorithm="faiss", faiss_index="IVF4,Flat", faiss_params={"nprobe": 1}, random_state=0)
    detector = PandaDetector(backbone=tiny_mlp, weights=None, n_steps=0, scorer=scorer, random_state=0).fit(gallery)
    save(detector, tmp_path / "model.pt")
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    state = payload["attributes"]["scorer_"]["state"]["value"]
    # Format 3 kept the search's settings as attributes of their own.
    search = state.pop("_search")["value"]
    options = search["options"]["value"]
    state.update(_algorithm=search["algorithm"], _faiss_description=options["description"],
                 _faiss_params=options["params"], _faiss_bytes=search["saved"])
    payload["format_version"] = 3
    torch.save(payload, tmp_path / "format3.pt")
    restored = load(tmp_path / "format3.pt", backbone=tiny_mlp)
    np.testing.assert_array_equal(restored.score_samples(queries), detector.score_samples(queries))
    assert faiss.extract_index_ivf(restored.scorer_._neighbors.index).nprobe == 1
