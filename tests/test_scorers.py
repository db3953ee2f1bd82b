"""Scorers against numpy references, leave-one-out semantics and properties."""

import pickle
import sys
import types
import warnings

import joblib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.distance import cdist
from sklearn.utils.estimator_checks import parametrize_with_checks
from test_common import expected_failed_checks

from sklearn_panda import CenterScorer, KMeansScorer, KNNScorer
from sklearn_panda.scorers import brute_force_kneighbors

ALGORITHMS = ["brute", "faiss", "nndescent"]


def _algorithm(name):
    if name == "faiss":
        pytest.importorskip("faiss")
    return name


def reference_knn(train, queries, k, metric, exclude_self=False):
    """Distances of the k nearest training rows, straight from scipy."""
    scipy_metric = {"sqeuclidean": "sqeuclidean", "euclidean": "euclidean", "cosine": "cosine"}
    distances = cdist(queries.astype(np.float64), train.astype(np.float64), scipy_metric[metric])
    if exclude_self:
        np.fill_diagonal(distances, np.inf)
    return np.sort(distances, axis=1)[:, :k]


@pytest.fixture
def blobs():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(400, 32)).astype(np.float32)
    queries = rng.normal(size=(50, 32)).astype(np.float32) * 1.5
    return train, queries


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean", "cosine"])
def test_kneighbors_matches_reference(blobs, algorithm, metric):
    train, queries = blobs
    scorer = KNNScorer(n_neighbors=3, algorithm=_algorithm(algorithm), metric=metric, random_state=0)
    scorer.fit(train)
    dist, _ = scorer.kneighbors(queries)
    expected = reference_knn(train, queries, 3, metric)
    if algorithm == "nndescent":
        # Approximate: each found distance is a real distance, never below the truth.
        assert np.all(dist >= expected * (1 - 1e-4) - 1e-6)
        assert np.mean(np.isclose(dist, expected, rtol=1e-4)) > 0.6
    else:
        np.testing.assert_allclose(dist, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        -scorer.score_samples(queries), dist.mean(axis=1), rtol=1e-6
    )


# scikit-learn's common checks for the nndescent search, here rather than in test_common.py: a
# pytest-xdist worker takes a module whole, so one worker compiles pynndescent's numba functions
# (about 20 s) for these and this module's other nndescent tests.
@parametrize_with_checks(
    [KNNScorer(algorithm="nndescent", random_state=0)], expected_failed_checks=expected_failed_checks
)
def test_nndescent_search_passes_the_common_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_kneighbors_none_leaves_each_point_out(blobs, algorithm):
    train, _ = blobs
    scorer = KNNScorer(n_neighbors=2, algorithm=_algorithm(algorithm), random_state=0).fit(train)
    dist, ind = scorer.kneighbors()
    assert not np.any(ind == np.arange(len(train))[:, None])
    expected = reference_knn(train, train, 2, "sqeuclidean", exclude_self=True)
    if algorithm != "nndescent":
        np.testing.assert_allclose(dist, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(-scorer.training_scores_, dist.mean(axis=1), rtol=1e-6)


def test_brute_force_chunks_agree_with_one_block(blobs):
    train, queries = blobs
    tiny = brute_force_kneighbors(queries, train, 4, working_memory_mb=0.01)
    big = brute_force_kneighbors(queries, train, 4, working_memory_mb=1024)
    np.testing.assert_array_equal(tiny[1], big[1])
    np.testing.assert_allclose(tiny[0], big[0])


def test_brute_force_large_k_uses_partition_path(blobs):
    train, queries = blobs
    dist, _ = brute_force_kneighbors(queries, train, 12)
    np.testing.assert_allclose(dist, reference_knn(train, queries, 12, "sqeuclidean"), rtol=1e-4)


def test_duplicated_training_point_is_a_zero_distance_neighbour():
    X = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [9.0, 1.0]])
    dist, ind = KNNScorer(n_neighbors=1, algorithm="brute").fit(X).kneighbors()
    assert dist[0, 0] == 0 and ind[0, 0] == 1
    assert dist[1, 0] == 0 and ind[1, 0] == 0


def test_n_neighbors_too_large_warns_and_clamps():
    X = np.random.default_rng(0).normal(size=(4, 3))
    with pytest.warns(UserWarning, match="n_neighbors"):
        scorer = KNNScorer(n_neighbors=10).fit(X)
    assert scorer.n_neighbors_ == 3


def test_kneighbors_rejects_too_many_neighbours():
    scorer = KNNScorer(n_neighbors=1).fit(np.eye(3))
    with pytest.raises(ValueError, match="n_neighbors <= 2"):
        scorer.kneighbors(n_neighbors=3)
    assert scorer.kneighbors(n_neighbors=2, return_distance=False).shape == (3, 2)


@pytest.mark.parametrize("Scorer", [KNNScorer, KMeansScorer, CenterScorer])
def test_errors_name_the_problem(Scorer):
    with pytest.raises(ValueError, match="NaN"):
        Scorer().fit(np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(ValueError, match="2D array"):
        Scorer().fit(np.arange(5.0))
    with pytest.raises(ValueError, match="at least 2 samples"):
        Scorer().fit(np.ones((1, 3)))
    fitted = Scorer().fit(np.random.default_rng(0).normal(size=(20, 3)))
    with pytest.raises(ValueError, match="3 features"):
        fitted.score_samples(np.ones((2, 4)))


@pytest.mark.parametrize("Scorer", [KNNScorer, KMeansScorer, CenterScorer])
def test_contamination_float_flags_that_fraction_of_training_points(Scorer):
    X = np.random.default_rng(1).normal(size=(200, 5))
    labels = Scorer(contamination=0.1).fit_predict(X)
    assert np.sum(labels == -1) == 20


@pytest.mark.parametrize("Scorer", [KNNScorer, KMeansScorer, CenterScorer])
def test_auto_contamination_flags_one_percent_and_far_outliers(Scorer):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(500, 5))
    scorer = (Scorer(random_state=0) if Scorer is KMeansScorer else Scorer()).fit(X)
    assert np.sum(scorer.fit_predict(X) == -1) == 5
    assert np.mean(scorer.predict(rng.normal(size=(2000, 5))) == -1) < 0.03
    assert np.all(scorer.predict(rng.normal(size=(20, 5)) + 20) == -1)


@pytest.mark.parametrize("Scorer", [KNNScorer, KMeansScorer, CenterScorer])
def test_decision_function_and_predict_follow_offset(Scorer):
    rng = np.random.default_rng(3)
    scorer = Scorer(contamination=0.2).fit(rng.normal(size=(50, 4)))
    Xt = rng.normal(size=(30, 4)) * 2
    decision = scorer.decision_function(Xt)
    np.testing.assert_allclose(decision, scorer.score_samples(Xt) - scorer.offset_)
    np.testing.assert_array_equal(scorer.predict(Xt), np.where(decision < 0, -1, 1))


def test_center_scorer_leave_one_out_is_exact():
    X = np.random.default_rng(4).normal(size=(30, 3))
    scorer = CenterScorer(metric="euclidean").fit(X)
    for i in [0, 7, 29]:
        rest = np.delete(X, i, axis=0)
        expected = np.linalg.norm(X[i] - rest.mean(axis=0))
        assert -scorer.training_scores_[i] == pytest.approx(expected, rel=1e-5)


def test_kmeans_leave_one_out_moves_only_the_own_centroid():
    X = np.random.default_rng(5).normal(size=(60, 2))
    scorer = KMeansScorer(n_clusters=3, random_state=0).fit(X)
    own = np.argmin(cdist(X, scorer.cluster_centers_), axis=1)
    for i in [0, 10, 59]:
        members = np.flatnonzero(own == own[i])
        centers = scorer.cluster_centers_.astype(np.float64).copy()
        centers[own[i]] = X[np.setdiff1d(members, [i])].mean(axis=0)
        expected = cdist(X[i : i + 1], centers, "sqeuclidean").min()
        assert -scorer.training_scores_[i] == pytest.approx(expected, rel=1e-3)


def test_kmeans_scores_distance_to_nearest_centroid():
    X = np.random.default_rng(6).normal(size=(100, 4))
    scorer = KMeansScorer(n_clusters=5, random_state=0).fit(X)
    Xt = np.random.default_rng(7).normal(size=(10, 4))
    expected = cdist(Xt, scorer.cluster_centers_, "sqeuclidean").min(axis=1)
    np.testing.assert_allclose(-scorer.score_samples(Xt), expected, rtol=1e-4)


def test_kmeans_clamps_clusters():
    with pytest.warns(UserWarning, match="n_clusters"):
        assert KMeansScorer(n_clusters=10).fit(np.eye(4)).n_clusters_ == 3


def test_cosine_ignores_feature_scale():
    X = np.random.default_rng(8).normal(size=(100, 6))
    Xt = np.random.default_rng(9).normal(size=(10, 6))
    a = KNNScorer(metric="cosine").fit(X).score_samples(Xt)
    b = KNNScorer(metric="cosine").fit(X * 7).score_samples(Xt * 3)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["brute", "faiss", "nndescent"])
def test_pickle_round_trip(blobs, algorithm):
    train, queries = blobs
    scorer = KNNScorer(algorithm=_algorithm(algorithm), random_state=0).fit(train)
    restored = pickle.loads(pickle.dumps(scorer))
    np.testing.assert_array_equal(restored.score_samples(queries), scorer.score_samples(queries))


def test_faiss_missing_gives_install_hint(monkeypatch):
    from sklearn_panda.scorers import _knn as scorers

    monkeypatch.setattr(scorers, "_faiss_available", lambda: False)
    with pytest.raises(ImportError, match=r"sklearn-panda\[faiss\]"):
        KNNScorer(algorithm="faiss").fit(np.eye(3))
    assert KNNScorer().fit(np.eye(3))._neighbors.algorithm == "brute"


class _FakeFaiss(types.ModuleType):
    """Stands in for faiss: an exact flat index that records the process-wide
    OpenMP thread count each call runs with."""

    def __init__(self, threads):
        super().__init__("faiss")
        self.threads = threads
        self.threads_seen = []

    def omp_get_max_threads(self):
        return self.threads

    def omp_set_num_threads(self, threads):
        self.threads = threads

    def index_factory(self, n_features, description):
        assert description == "Flat"
        return _FakeFlatIndex(self)


class _FakeFlatIndex:
    is_trained = True

    def __init__(self, faiss):
        self.faiss = faiss

    def add(self, X):
        self.faiss.threads_seen.append(self.faiss.threads)
        self.rows = X.copy()

    def search(self, queries, k):
        self.faiss.threads_seen.append(self.faiss.threads)
        squared = cdist(queries, self.rows, "sqeuclidean")
        indices = np.argsort(squared, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(squared, indices, axis=1), indices


@pytest.mark.parametrize("n_jobs, threads", [(-1, joblib.cpu_count()), (1, 1), (None, 7)])
def test_faiss_threads_follow_n_jobs_and_are_restored(blobs, monkeypatch, n_jobs, threads):
    # faiss's thread count is process-wide: -1 means all CPUs, as in joblib
    # (GNU OpenMP reads -1 as one thread), and other faiss users find the
    # count they had (7) once each call returns.
    fake = _FakeFaiss(threads=7)
    monkeypatch.setitem(sys.modules, "faiss", fake)
    train, queries = blobs
    scorer = KNNScorer(algorithm="faiss", n_jobs=n_jobs).fit(train)
    scores = scorer.score_samples(queries)
    np.testing.assert_allclose(scores, KNNScorer(algorithm="brute").fit(train).score_samples(queries), rtol=1e-5)
    assert fake.threads_seen and set(fake.threads_seen) == {threads}
    assert fake.threads == 7


feature_matrices = arrays(
    np.float64,
    st.tuples(st.integers(5, 30), st.integers(1, 6)),
    elements=st.floats(-100, 100, allow_nan=False, width=32),
)


@settings(max_examples=40, deadline=None)
@given(X=feature_matrices, seed=st.integers(0, 2**16))
def test_scores_invariant_to_training_row_order(X, seed):
    perm = np.random.default_rng(seed).permutation(len(X))
    queries = X[:3] + 0.5
    for Scorer in (KNNScorer, CenterScorer):
        a = Scorer().fit(X).score_samples(queries)
        b = Scorer().fit(X[perm]).score_samples(queries)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


@settings(max_examples=40, deadline=None)
@given(X=feature_matrices, shift=st.floats(-50, 50))
def test_scores_invariant_to_common_translation(X, shift):
    queries = X[:3] + 0.5
    for Scorer in (KNNScorer, CenterScorer):
        a = Scorer(metric="euclidean").fit(X).score_samples(queries)
        b = Scorer(metric="euclidean").fit(X + shift).score_samples(queries + shift)
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-2)


@settings(max_examples=40, deadline=None)
@given(X=feature_matrices)
def test_a_training_point_queried_has_distance_zero_to_itself(X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scorer = KNNScorer(n_neighbors=1, algorithm="brute").fit(X)
    dist, _ = scorer.kneighbors(X)
    assert np.allclose(dist[:, 0], 0.0)
