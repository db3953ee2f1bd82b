"""Any outlier detector as a detector's scorer: validated, cloned, never reconfigured; offset_ per kind."""

import warnings

import numpy as np
import pytest
from conftest import tiny_mlp
from sklearn.covariance import EllipticEnvelope
from sklearn.ensemble import IsolationForest
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import LocalOutlierFactor
from sklearn.pipeline import make_pipeline
from sklearn.svm import OneClassSVM
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_panda import KNNScorer, MahalanobisScorer, NormalOnlySplit, PandaDetector, PandaFeatures, PandaSES

ADAPTED = dict(backbone=tiny_mlp, weights=None, n_steps=3, random_state=0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(60, 6))
    anomalies = rng.normal(size=(20, 6)) + 3.0
    return normal, anomalies


FOREIGN = {
    "elliptic_envelope": lambda: EllipticEnvelope(random_state=0),
    "isolation_forest": lambda: IsolationForest(n_estimators=20, random_state=0),
    "lof": lambda: LocalOutlierFactor(n_neighbors=5, novelty=True),
    "one_class_svm": lambda: OneClassSVM(nu=0.2),
}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_scikit_learn_detectors_score_the_adapted_features(data, name):
    normal, anomalies = data
    scorer = FOREIGN[name]()
    detector = PandaDetector(**ADAPTED, scorer=scorer).fit(normal)
    queries = np.vstack([normal[:5], anomalies[:5]])
    features = detector.extract_features(queries)
    training_features = detector.extract_features(normal)
    np.testing.assert_allclose(detector.score_samples(queries), detector.scorer_.score_samples(features))
    # The scorer's own threshold, in the detector's score scale: predict is the scorer's predict.
    assert isinstance(detector.offset_, float)
    np.testing.assert_allclose(detector.decision_function(queries), detector.scorer_.decision_function(features))
    np.testing.assert_array_equal(detector.predict(queries), detector.scorer_.predict(features))
    # In-sample training scores: the scorer's score_samples of the training features.
    np.testing.assert_allclose(detector.training_scores_, detector.scorer_.score_samples(training_features))
    # Adapted by the same PandaFeatures as a pipeline would be.
    pipeline = make_pipeline(PandaFeatures(**ADAPTED), FOREIGN[name]()).fit(normal)
    np.testing.assert_allclose(pipeline.score_samples(queries), detector.score_samples(queries))
    assert not hasattr(scorer, "offset_"), "the user's instance must stay unfitted"


def test_the_users_contamination_is_kept_and_sets_the_threshold(data):
    normal, _ = data
    forest = IsolationForest(n_estimators=20, contamination=0.2, random_state=0)
    knn = KNNScorer(n_neighbors=3, contamination=0.25)
    for scorer, rate in ((forest, 0.2), (knn, 0.25)):
        detector = PandaDetector(**ADAPTED, scorer=scorer)
        labels = detector.fit_predict(normal)
        assert scorer.get_params()["contamination"] == rate and not hasattr(scorer, "offset_")
        assert detector.scorer_.contamination == rate
        assert detector.offset_ == detector.scorer_.offset_
        assert np.sum(labels == -1) == round(rate * len(normal))
    # The package's scorer keeps its leave-one-out training scores.
    np.testing.assert_array_equal(detector.training_scores_, detector.scorer_.training_scores_)


def test_a_scorer_by_name_takes_the_detectors_contamination(data):
    normal, _ = data
    for name in ("knn", "kmeans", "center", "mahalanobis"):
        detector = PandaDetector(**ADAPTED, scorer=name, contamination=0.1).fit(normal)
        assert detector.scorer_.contamination == 0.1
        assert detector.offset_ == detector.scorer_.offset_
        np.testing.assert_array_equal(detector.training_scores_, detector.scorer_.training_scores_)


def test_the_detectors_contamination_with_a_scorer_instance_warns(data):
    normal, _ = data
    with pytest.warns(UserWarning, match="contamination=0.1 is not used"):
        PandaDetector(**ADAPTED, scorer=MahalanobisScorer(), contamination=0.1).fit(normal)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PandaDetector(**ADAPTED, scorer=MahalanobisScorer()).fit(normal)


def test_a_nested_scorer_is_validated(data):
    normal, _ = data
    # Before nested validation, this computed squared Euclidean distances without a word.
    with pytest.raises(InvalidParameterError, match="'metric' parameter of KNNScorer"):
        PandaDetector(**ADAPTED, scorer=KNNScorer(metric="manhattan")).fit(normal)


@pytest.mark.parametrize("scorer", [LocalOutlierFactor(), "lof"], ids=["lof_without_novelty", "unknown_name"])
def test_what_is_not_an_outlier_detector_is_refused(data, scorer):
    normal, _ = data
    with pytest.raises(InvalidParameterError, match="'fit', 'score_samples' and 'decision_function'"):
        PandaDetector(**ADAPTED, scorer=scorer).fit(normal)
    with pytest.raises(TypeError, match="instead of a class"):
        PandaDetector(**ADAPTED, scorer=KNNScorer).fit(normal)


def test_ses_takes_only_the_packages_scorers(data):
    normal, _ = data
    with pytest.raises(ValueError, match="PandaSES needs one of the package's scorers"):
        PandaSES(**ADAPTED, checkpoint_every=1, scorer=IsolationForest()).fit(normal)
    ses = PandaSES(**ADAPTED, checkpoint_every=1, scorer=KNNScorer(n_neighbors=3), contamination=0.1).fit(normal)
    assert all(scorer.n_neighbors == 3 for scorer in ses.scorers_)
    assert np.sum(ses.training_scores_ < ses.offset_) == 6


def test_features_and_lof_in_a_pipeline_and_a_grid_search(data):
    normal, anomalies = data
    X = np.vstack([normal, anomalies])
    y = np.r_[np.ones(len(normal), dtype=int), -np.ones(len(anomalies), dtype=int)]
    pipeline = make_pipeline(PandaFeatures(**ADAPTED), LocalOutlierFactor(novelty=True))
    scores = pipeline.fit(normal).score_samples(anomalies)
    assert scores.shape == (len(anomalies),) and np.all(np.isfinite(scores))
    search = GridSearchCV(
        pipeline,
        {"pandafeatures__n_steps": [0, 3], "localoutlierfactor__n_neighbors": [5, 10]},
        scoring="roc_auc",
        cv=NormalOnlySplit(n_splits=2),
        refit=False,
    ).fit(X, y)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.best_score_ > 0.5
