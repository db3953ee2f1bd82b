"""PandaFeatures: the adaptation alone, as a transformer, and the detectors built on it."""

import pickle

import numpy as np
import pytest
from conftest import TINY_IMAGES, tiny_mlp
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline

import sklearn_panda._estimators.base as base_module
from sklearn_panda import KNNScorer, PandaDetector, PandaFeatures, PandaSES, load, save

# A few steps at a large rate, so that adaptation visibly moves the features.
ADAPTATION = dict(TINY_IMAGES, n_steps=3, learning_rate=0.1, clip_norm=None, random_state=0)


def _images(n, seed):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 20, 20, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def train():
    return _images(24, 0)


@pytest.fixture(scope="module")
def queries():
    return _images(5, 1)


@pytest.fixture(scope="module")
def fitted(train):
    return PandaFeatures(**ADAPTATION).fit(train)


def test_transform_gives_float32_features_of_the_adapted_network(fitted, queries):
    features = fitted.transform(queries)
    assert features.shape == (5, 512) and features.dtype == np.float32
    # normalize_features=True: rows of unit length.
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    unadapted = PandaFeatures(**{**ADAPTATION, "n_steps": 0}).fit(_images(24, 0)).transform(queries)
    assert not np.allclose(features, unadapted, atol=1e-4)
    assert fitted.center_.shape == (512,) and len(fitted.history_["loss"]) == 3


def test_fit_transform_is_fit_then_transform(fitted, train):
    np.testing.assert_allclose(PandaFeatures(**ADAPTATION).fit_transform(train), fitted.transform(train), rtol=1e-5, atol=1e-6)


def test_feature_names_and_set_output(fitted):
    names = fitted.get_feature_names_out()
    assert len(names) == 512 and names[0] == "pandafeatures0" and names[-1] == "pandafeatures511"
    with pytest.raises(NotFittedError):
        PandaFeatures().get_feature_names_out()
    transformer = clone(fitted).set_output(transform="default")
    assert isinstance(transformer, PandaFeatures)
    assert type(transformer.fit_transform(_images(6, 2))) is np.ndarray


def test_the_detector_adapts_through_features_with_its_own_parameters(train, queries):
    params = dict(ADAPTATION, regularization="ewc", n_fisher_batches=2, ewc_lambda=10.0, contamination=0.1)
    detector = PandaDetector(**params).fit(train)
    assert isinstance(detector.features_, PandaFeatures)
    own = detector.get_params(deep=False)
    assert detector.features_.get_params(deep=False) == {name: own[name] for name in PandaFeatures._get_param_names()}
    for name in ("net_", "center_", "history_", "fisher_", "device_", "input_spec_"):
        assert getattr(detector, name) is getattr(detector.features_, name)
    np.testing.assert_array_equal(detector.extract_features(queries), detector.features_.transform(queries))
    with pytest.raises(AttributeError, match="features_.net_"):
        detector.net_ = None
    assert not hasattr(PandaDetector(), "net_")


@pytest.mark.parametrize("regularization", [None, "ewc"])
def test_a_pipeline_of_features_and_knn_scores_as_the_detector(train, queries, regularization):
    params = dict(ADAPTATION, regularization=regularization, n_fisher_batches=2, ewc_lambda=10.0)
    pipeline = make_pipeline(PandaFeatures(**params), KNNScorer()).fit(train)
    detector = PandaDetector(**params, scorer=KNNScorer()).fit(train)
    np.testing.assert_array_equal(pipeline.score_samples(queries), detector.score_samples(queries))
    np.testing.assert_array_equal(pipeline.predict(queries), detector.predict(queries))


def test_ses_trains_its_features_on_the_gallery_only(train):
    ses = PandaSES(**{**ADAPTATION, "n_steps": 2}, checkpoint_every=1).fit(train)
    n_gallery = len(train) - len(ses.validation_indices_)
    # The centre is the mean pretrained feature of the gallery.
    pretrained = PandaFeatures(**{**ADAPTATION, "n_steps": 0}).fit(train).transform(train)
    gallery = np.setdiff1d(np.arange(len(train)), ses.validation_indices_)
    assert len(gallery) == n_gallery
    np.testing.assert_allclose(ses.features_.center_, pretrained[gallery].mean(axis=0), rtol=1e-4, atol=1e-6)
    assert len(ses.checkpoints_) == 3


def test_vectors_pickle_and_save(tmp_path):
    X = np.random.default_rng(0).normal(size=(30, 6))
    features = PandaFeatures(backbone=tiny_mlp, weights=None, n_steps=2, random_state=0).fit(X)
    expected = features.transform(X)
    assert features.n_features_in_ == 6
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(features)).transform(X), expected)
    save(features, tmp_path / "features.pt")
    restored = load(tmp_path / "features.pt", backbone=tiny_mlp)
    assert type(restored) is PandaFeatures
    np.testing.assert_array_equal(restored.transform(X), expected)
    np.testing.assert_array_equal(restored.get_feature_names_out(), features.get_feature_names_out())
    with pytest.raises(ValueError, match="X has 5 features"):
        features.transform(X[:, :5])


def test_a_detector_saves_and_loads_with_its_features(train, queries, tmp_path):
    detector = PandaDetector(**ADAPTATION).fit(train)
    detector.save(tmp_path / "detector.pt")
    restored = load(tmp_path / "detector.pt", backbone=ADAPTATION["backbone"])
    assert type(restored.features_) is PandaFeatures
    np.testing.assert_array_equal(restored.score_samples(queries), detector.score_samples(queries))
    np.testing.assert_array_equal(restored.features_.transform(queries), detector.features_.transform(queries))


def test_an_interrupted_fit_leaves_the_features_as_they_were(fitted, train, queries, monkeypatch):
    refitted = pickle.loads(pickle.dumps(fitted))
    expected = refitted.transform(queries)
    attributes = dict(vars(refitted))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(base_module, "run_sgd", interrupted)
    with pytest.raises(KeyboardInterrupt):
        refitted.fit(train[:10])
    assert vars(refitted).keys() == attributes.keys()
    assert all(vars(refitted)[key] is value for key, value in attributes.items())
    np.testing.assert_array_equal(refitted.transform(queries), expected)


def test_adaptation_parameters_are_validated():
    with pytest.raises(ValueError, match="loss"):
        PandaFeatures(backbone=tiny_mlp, weights=None, loss="triplet").fit(np.ones((4, 3)))
    with pytest.raises(ValueError, match="takes vectors"):
        PandaFeatures(backbone=tiny_mlp, weights=None, loss="mean_shifted", n_steps=1).fit(np.ones((4, 3)))


def test_n_steps_zero_gives_the_pretrained_features(train, queries):
    features = PandaFeatures(**{**ADAPTATION, "n_steps": 0}).fit(train)
    assert features.center_ is None and features.fisher_ is None and features.history_["loss"] == []
    detector = PandaDetector(**{**ADAPTATION, "n_steps": 0}).fit(train)
    np.testing.assert_array_equal(features.transform(queries), detector.extract_features(queries))
