"""MahalanobisScorer against direct numpy computations."""

import numpy as np
import pytest
from sklearn.covariance import EllipticEnvelope, LedoitWolf, OAS, ledoit_wolf_shrinkage

from conftest import tiny_mlp

from sklearn_panda import MahalanobisScorer, PandaDetector


def _shrunk_covariance(X, shrinkage):
    covariance = np.cov(X, rowvar=False, bias=True)
    dimension = covariance.shape[0]
    return (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / dimension * np.eye(dimension)


def _squared_mahalanobis(points, mean, covariance):
    centered = points - mean
    return np.einsum("ij,ij->i", centered @ np.linalg.inv(covariance), centered)


@pytest.fixture
def correlated():
    rng = np.random.default_rng(0)
    return rng.normal(size=(60, 8)) @ rng.normal(size=(8, 8))


@pytest.mark.parametrize("shrinkage, estimator", [("ledoit_wolf", LedoitWolf), ("oas", OAS)])
def test_scores_are_minus_squared_distance_under_sklearn_covariance(correlated, shrinkage, estimator):
    scorer = MahalanobisScorer(shrinkage=shrinkage).fit(correlated)
    reference = estimator().fit(correlated)
    assert scorer.shrinkage_ == pytest.approx(reference.shrinkage_)
    queries = np.random.default_rng(1).normal(size=(20, 8)) * 3
    np.testing.assert_allclose(-scorer.score_samples(queries), reference.mahalanobis(queries), rtol=1e-5)


def test_fixed_shrinkage_and_more_features_than_samples():
    # p > n: the sample covariance is singular; the shrunk one is not, and
    # directions outside the data's span get the floor variance.
    rng = np.random.default_rng(2)
    X = rng.normal(size=(15, 40)) @ rng.normal(size=(40, 40))
    scorer = MahalanobisScorer(shrinkage=0.3).fit(X)
    assert scorer.residual_variance_ is not None
    queries = rng.normal(size=(10, 40)) * 5
    expected = _squared_mahalanobis(queries, X.mean(axis=0), _shrunk_covariance(X, 0.3))
    np.testing.assert_allclose(-scorer.score_samples(queries), expected, rtol=1e-5)


@pytest.mark.parametrize("n_samples, n_features, n_components", [(40, 6, None), (12, 30, None), (50, 12, 4)])
def test_leave_one_out_matches_refitting_without_each_point(n_samples, n_features, n_components):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n_samples, n_features)) @ rng.normal(size=(n_features, n_features))
    scorer = MahalanobisScorer(n_components=n_components).fit(X)
    X = X.astype(np.float32).astype(np.float64)  # what the scorer sees
    expected = []
    for i in range(n_samples):
        rest = np.delete(X, i, axis=0)
        if n_components is not None:
            # Documented: the principal axes of the whole training set are kept.
            rest = (rest - scorer.location_) @ scorer.components_.T
            point = (X[i] - scorer.location_) @ scorer.components_.T
        else:
            point = X[i]
        covariance = _shrunk_covariance(rest, scorer.shrinkage_)
        expected.append(_squared_mahalanobis(point[None], rest.mean(axis=0), covariance)[0])
    np.testing.assert_allclose(-scorer.training_scores_, expected, rtol=1e-6)


def test_n_components_keeps_the_leading_axes_and_warns_when_too_many(correlated):
    scorer = MahalanobisScorer(n_components=3).fit(correlated)
    assert scorer.components_.shape == (3, 8)
    projected = (correlated - correlated.mean(axis=0)) @ scorer.components_.T
    expected = _squared_mahalanobis(projected, 0.0, _shrunk_covariance(projected, scorer.shrinkage_))
    training = scorer.score_samples(correlated)
    np.testing.assert_allclose(-training, expected, rtol=1e-5)
    assert scorer.shrinkage_ == pytest.approx(ledoit_wolf_shrinkage(projected))
    with pytest.warns(UserWarning, match="n_components"):
        assert MahalanobisScorer(n_components=20).fit(correlated).n_components_ == 8


def test_ranks_like_elliptic_envelope_on_gaussian_data():
    rng = np.random.default_rng(4)
    X = rng.multivariate_normal([0, 0, 0], [[2, 0.8, 0], [0.8, 1, 0], [0, 0, 0.1]], size=2000)
    queries = rng.normal(size=(200, 3)) * 2
    ours = MahalanobisScorer().fit(X).score_samples(queries)
    theirs = EllipticEnvelope(random_state=0).fit(X).score_samples(queries)
    assert np.corrcoef(np.argsort(np.argsort(ours)), np.argsort(np.argsort(theirs)))[0, 1] > 0.99


def test_offset_from_leave_one_out_scores(correlated):
    scorer = MahalanobisScorer(contamination=0.1).fit(correlated)
    assert np.mean(scorer.training_scores_ < scorer.offset_) == pytest.approx(0.1, abs=1 / 60)
    np.testing.assert_array_equal(scorer.predict(correlated), np.where(scorer.decision_function(correlated) < 0, -1, 1))


def test_detector_scores_with_mahalanobis_on_its_features():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(40, 6))
    detector = PandaDetector(backbone=tiny_mlp, weights=None, n_steps=2, scorer="mahalanobis", random_state=0).fit(X)
    assert isinstance(detector.scorer_, MahalanobisScorer)
    queries = rng.normal(size=(5, 6))
    expected = MahalanobisScorer().fit(detector.extract_features(X)).score_samples(detector.extract_features(queries))
    np.testing.assert_allclose(detector.score_samples(queries), expected, rtol=1e-6)


def test_detector_with_mahalanobis_saves_and_loads(tmp_path):
    from sklearn_panda import load

    rng = np.random.default_rng(6)
    X = rng.normal(size=(30, 6))
    detector = PandaDetector(backbone=tiny_mlp, weights=None, n_steps=1, scorer="mahalanobis", random_state=0).fit(X)
    path = tmp_path / "model.pt"
    detector.save(path)
    loaded = load(path, backbone=tiny_mlp)
    queries = rng.normal(size=(4, 6))
    np.testing.assert_array_equal(loaded.score_samples(queries), detector.score_samples(queries))
    assert loaded.offset_ == detector.offset_


def test_two_samples_are_refused_as_they_define_no_leave_one_out_gaussian():
    # Left out of two, a sample was scored against one point: NaN training scores, an offset above
    # zero and -inf for every new sample, without a word.
    with pytest.raises(ValueError, match="needs at least 3 samples.*got 2"):
        MahalanobisScorer().fit(np.random.default_rng(0).normal(size=(2, 16)))
    scorer = MahalanobisScorer().fit(np.random.default_rng(0).normal(size=(3, 16)))
    assert np.isfinite(scorer.training_scores_).all() and np.isfinite(scorer.score_samples(np.zeros((2, 16)))).all()
