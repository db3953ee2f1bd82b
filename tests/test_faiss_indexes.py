"""KNNScorer on faiss's approximate indexes (HNSW, IVF-Flat, IVF-PQ), checked against exact search."""

import pickle
import sys
import types
import warnings

import numpy as np
import pytest
from conftest import tiny_mlp
from sklearn.base import clone

from sklearn_panda import KNNScorer, PandaDetector, load, save

faiss = pytest.importorskip("faiss")

INDEXES = {
    "hnsw": ("HNSW16", {"efSearch": 64}),
    "ivf-flat": ("IVF16,Flat", {"nprobe": 4}),
    # 4-bit codes: 16 centroids per sub-quantizer train in a moment (8 bits: 256, slow).
    # Coarse codes propose candidates, re-ranked exactly.
    "ivf-pq": ("IVF16,PQ8x4", {"nprobe": 4, "k_factor": 16}),
}
MIN_RECALL = {"hnsw": 0.95, "ivf-flat": 0.9, "ivf-pq": 0.9}


def _clusters(n_features, n_gallery, seed):
    """Gallery and 200 queries around 20 centres (features of a few kinds), float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(20, n_features))
    gallery = centres[rng.integers(20, size=n_gallery)] + rng.normal(size=(n_gallery, n_features))
    queries = centres[rng.integers(20, size=200)] + rng.normal(size=(200, n_features))
    return gallery.astype(np.float32), queries.astype(np.float32)


@pytest.fixture(scope="module")
def clustered():
    return _clusters(16, 1200, seed=0)


def recall(found, exact):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact)])


@pytest.mark.parametrize("name", INDEXES)
def test_approximate_indexes_find_the_exact_neighbours_and_their_exact_distances(clustered, name):
    gallery, queries = clustered
    description, params = INDEXES[name]
    exact = KNNScorer(algorithm="brute").fit(gallery)
    approx = KNNScorer(algorithm="faiss", faiss_index=description, faiss_params=params, random_state=0)
    approx.fit(gallery)
    exact_dist, exact_ind = exact.kneighbors(queries)
    dist, ind = approx.kneighbors(queries)
    assert recall(ind, exact_ind) >= MIN_RECALL[name]
    # Where the neighbours agree, so do the distances: they are computed from the rows, not the codes.
    same = (ind == exact_ind).all(axis=1)
    assert same.mean() >= MIN_RECALL[name] - 0.1
    np.testing.assert_allclose(dist[same], exact_dist[same], rtol=1e-5)
    # A missed neighbour can only be farther than the true one.
    assert (approx.score_samples(queries) <= exact.score_samples(queries) + 1e-4).all()


@pytest.mark.parametrize("name", INDEXES)
def test_leave_one_out_keeps_its_meaning(clustered, name):
    gallery, _ = clustered
    description, params = INDEXES[name]
    approx = KNNScorer(
        algorithm="faiss", faiss_index=description, faiss_params=params, contamination=0.05, random_state=0
    ).fit(gallery)
    exact = KNNScorer(algorithm="brute", contamination=0.05).fit(gallery)
    indices = approx.kneighbors(return_distance=False)
    assert not (indices == np.arange(len(gallery))[:, None]).any()
    assert recall(indices, exact.kneighbors(return_distance=False)) >= MIN_RECALL[name]
    assert approx.offset_ == pytest.approx(exact.offset_, rel=0.1)
    assert np.mean(approx.fit_predict(gallery) == -1) == pytest.approx(0.05, abs=0.01)


def test_a_query_whose_cells_hold_too_few_rows_is_searched_exactly():
    # 64 cells for 80 rows, one cell visited: most queries see fewer than k rows,
    # where faiss answers -1; those rows are searched exactly instead.
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(80, 8)).astype(np.float32)
    queries = rng.normal(size=(30, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # faiss may warn about 64 cells trained on 80 rows
        approx = KNNScorer(
            n_neighbors=5, algorithm="faiss", faiss_index="IVF64,Flat", random_state=0
        ).fit(gallery)
    raw = approx._neighbors.index.search(queries, 5)[1]
    assert (raw < 0).any()
    exact = KNNScorer(n_neighbors=5, algorithm="brute").fit(gallery)
    ind = approx.kneighbors(queries, return_distance=False)
    assert (ind >= 0).all()
    short = (raw < 0).any(axis=1)
    np.testing.assert_array_equal(ind[short], exact.kneighbors(queries, return_distance=False)[short])
    assert (approx.kneighbors(return_distance=False) >= 0).all()


def test_search_and_build_settings_reach_the_index(clustered):
    gallery, _ = clustered
    ivf = KNNScorer(algorithm="faiss", faiss_index="IVF16,Flat", faiss_params={"nprobe": 7}).fit(gallery)
    assert faiss.extract_index_ivf(ivf._neighbors.index).nprobe == 7
    hnsw = KNNScorer(
        algorithm="faiss", faiss_index="HNSW8", faiss_params={"efConstruction": 80, "efSearch": 33}
    ).fit(gallery)
    assert (hnsw._neighbors.index.hnsw.efConstruction, hnsw._neighbors.index.hnsw.efSearch) == (80, 33)
    with pytest.raises(ValueError, match="efConstruction"):
        KNNScorer(algorithm="faiss", faiss_index="Flat", faiss_params={"efConstruction": 8}).fit(gallery)


def test_random_state_fixes_the_ivf_training(clustered):
    gallery, queries = clustered
    scorer = KNNScorer(algorithm="faiss", faiss_index="IVF16,PQ8x4", faiss_params={"nprobe": 2}, random_state=3)
    first = clone(scorer).fit(gallery).score_samples(queries)
    np.testing.assert_array_equal(clone(scorer).fit(gallery).score_samples(queries), first)


@pytest.mark.parametrize("name", INDEXES)
def test_pickling_keeps_faiss_serialisation_not_a_raw_index(clustered, name):
    gallery, queries = clustered
    description, params = INDEXES[name]
    scorer = KNNScorer(algorithm="faiss", faiss_index=description, faiss_params=params, random_state=0)
    scorer.fit(gallery)
    state = scorer._neighbors.__getstate__()
    assert isinstance(state["built"], np.ndarray) and state["built"].dtype == np.uint8
    restored = pickle.loads(pickle.dumps(scorer))
    np.testing.assert_array_equal(restored.score_samples(queries), scorer.score_samples(queries))
    assert type(restored._neighbors.index) is type(scorer._neighbors.index)


def test_save_and_load_keep_the_approximate_index(clustered, tmp_path):
    gallery, queries = clustered
    scorer = KNNScorer(algorithm="faiss", faiss_index="IVF4,PQ2x4", faiss_params={"nprobe": 2}, random_state=0)
    det = PandaDetector(backbone=tiny_mlp, weights=None, n_steps=0, scorer=scorer, random_state=0).fit(gallery)
    save(det, tmp_path / "det.pt")
    restored = load(tmp_path / "det.pt", backbone=tiny_mlp)
    np.testing.assert_array_equal(restored.score_samples(queries), det.score_samples(queries))
    assert faiss.extract_index_ivf(restored.scorer_._neighbors.index).nprobe == 2


def test_without_faiss_an_approximate_index_falls_back_to_exact_search(clustered, monkeypatch):
    gallery, queries = clustered
    scorer = KNNScorer(algorithm="faiss", faiss_index="HNSW16").fit(gallery)
    payload = pickle.dumps(scorer)
    monkeypatch.setattr("sklearn_panda.scorers._knn._faiss_available", lambda: False)
    with pytest.warns(UserWarning, match="brute-force"):
        restored = pickle.loads(payload)
    assert restored._neighbors.algorithm == "brute"
    np.testing.assert_allclose(
        restored.score_samples(queries), KNNScorer(algorithm="brute").fit(gallery).score_samples(queries)
    )


class _FakeGpuIndex:
    """Stands in for a faiss GPU index: the CPU index it was copied from, searched as is."""

    def __init__(self, cpu_index):
        self.cpu_index = cpu_index

    def search(self, queries, k):
        return self.cpu_index.search(queries, k)


class _FaissWithAGpu(types.ModuleType):
    """The real faiss, seen as faiss-gpu on a machine with one GPU (no GPU is used)."""

    GpuIndex = _FakeGpuIndex

    def __init__(self):
        super().__init__("faiss")
        self.moved, self.gpu_settings = [], []

    def __getattr__(self, name):
        return getattr(faiss, name)

    def get_num_gpus(self):
        return 1

    def StandardGpuResources(self):
        return object()

    def index_cpu_to_gpu(self, resources, device, index):
        if hasattr(index, "hnsw"):
            raise RuntimeError("not implemented for this type of index")
        self.moved.append(device)
        return _FakeGpuIndex(index)

    def index_gpu_to_cpu(self, index):
        return index.cpu_index

    def GpuParameterSpace(self):
        fake = self

        class Space:
            def set_index_parameter(self, index, name, value):
                fake.gpu_settings.append((name, value))
                faiss.ParameterSpace().set_index_parameter(index.cpu_index, name, value)

        return Space()


def test_a_gpu_index_is_used_where_faiss_has_a_gpu(clustered, monkeypatch):
    # Mocked: this checks the calls, not a GPU run.
    gallery, queries = clustered
    fake = _FaissWithAGpu()
    monkeypatch.setitem(sys.modules, "faiss", fake)
    ivf = KNNScorer(algorithm="faiss", faiss_index="IVF16,Flat", faiss_params={"nprobe": 4}, random_state=0)
    ivf.fit(gallery)
    assert isinstance(ivf._neighbors.index, _FakeGpuIndex) and fake.moved == [0]
    assert fake.gpu_settings == [("nprobe", 4)]
    hnsw = KNNScorer(algorithm="faiss", faiss_index="HNSW16").fit(gallery)
    assert not isinstance(hnsw._neighbors.index, _FakeGpuIndex)
    # Pickling stores the CPU copy; unpickling puts it back on the GPU.
    restored = pickle.loads(pickle.dumps(ivf))
    assert isinstance(restored._neighbors.index, _FakeGpuIndex) and fake.moved == [0, 0]
    np.testing.assert_array_equal(restored.score_samples(queries), ivf.score_samples(queries))


@pytest.fixture
def small_auto_thresholds(monkeypatch):
    """algorithm="auto"'s index from 600 rows of 160 features on (20,000 and 512 in use)."""
    from sklearn_panda.scorers import _knn as scorers

    monkeypatch.setattr(scorers, "AUTO_INDEX_MIN_SAMPLES", 600)
    monkeypatch.setattr(scorers, "AUTO_INDEX_MIN_FEATURES", 160)


@pytest.fixture(scope="module")
def wide_clustered():
    """Like ``clustered``, in 160 dimensions: wider than the PCA128 of auto's index."""
    return _clusters(160, 800, seed=1)


def test_auto_searches_a_large_gallery_with_its_faiss_index(wide_clustered, small_auto_thresholds):
    from sklearn_panda.scorers._faiss import AUTO_INDEX, AUTO_INDEX_PARAMS

    gallery, queries = wide_clustered
    exact = KNNScorer(algorithm="brute").fit(gallery)
    auto = KNNScorer(random_state=0).fit(gallery)
    assert (auto._neighbors.algorithm, auto._neighbors.options["description"], auto._neighbors.options["params"]) == ("faiss", AUTO_INDEX, AUTO_INDEX_PARAMS)
    assert isinstance(auto._neighbors.index, faiss.IndexPreTransform)
    # Its candidates are re-ranked exactly: the neighbours found have their exact distances.
    exact_dist, exact_ind = exact.kneighbors(queries)
    dist, ind = auto.kneighbors(queries)
    assert recall(ind, exact_ind) >= 0.95
    same = (ind == exact_ind).all(axis=1)
    np.testing.assert_allclose(dist[same], exact_dist[same], rtol=1e-5)
    # Leave-one-out training scores and the offset keep their meaning.
    assert np.corrcoef(auto.training_scores_, exact.training_scores_)[0, 1] > 0.99
    assert auto.offset_ == pytest.approx(exact.offset_, rel=0.05)
    # The parameters still say "auto"; a pickle keeps the index it built.
    assert auto.get_params()["algorithm"] == "auto" and auto.faiss_index == "Flat"
    restored = pickle.loads(pickle.dumps(auto))
    np.testing.assert_array_equal(restored.score_samples(queries), auto.score_samples(queries))


def test_auto_stays_exact_below_its_thresholds_and_without_faiss(wide_clustered, small_auto_thresholds, monkeypatch):
    from sklearn_panda.scorers import _knn as scorers

    gallery, _ = wide_clustered
    assert KNNScorer().fit(gallery[:599])._neighbors.algorithm == "brute"
    assert KNNScorer().fit(gallery[:, :159])._neighbors.algorithm == "brute"
    monkeypatch.setattr(scorers, "_faiss_available", lambda: False)
    assert KNNScorer().fit(gallery)._neighbors.algorithm == "brute"


def test_ef_construction_reaches_the_graph_behind_a_pca(wide_clustered):
    gallery, _ = wide_clustered
    scorer = KNNScorer(algorithm="faiss", faiss_index="PCA32,HNSW16", faiss_params={"efConstruction": 80}).fit(gallery)
    assert faiss.downcast_index(scorer._neighbors.index.index).hnsw.efConstruction == 80


def test_save_and_load_keep_the_index_auto_chose(clustered, tmp_path, monkeypatch):
    from sklearn_panda.scorers import _knn as scorers

    # tiny_mlp's features are 4-d: a 2-component PCA stands in for auto's PCA128 here.
    monkeypatch.setattr(scorers, "AUTO_INDEX_MIN_SAMPLES", 600)
    monkeypatch.setattr(scorers, "AUTO_INDEX_MIN_FEATURES", 4)
    monkeypatch.setattr(scorers, "AUTO_INDEX", "PCA2,HNSW16")
    gallery, queries = clustered
    det = PandaDetector(
        backbone=tiny_mlp, weights=None, n_steps=0, scorer=KNNScorer(random_state=0), random_state=0
    ).fit(gallery)
    assert (det.scorer_._neighbors.algorithm, det.scorer_._neighbors.options["description"]) == ("faiss", "PCA2,HNSW16")
    save(det, tmp_path / "det.pt")
    restored = load(tmp_path / "det.pt", backbone=tiny_mlp)
    assert restored.scorer_._neighbors.options["params"] == scorers.AUTO_INDEX_PARAMS
    np.testing.assert_array_equal(restored.score_samples(queries), det.score_samples(queries))
