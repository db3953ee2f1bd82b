"""PandaSES: checkpoints, the s_t normalisation, and surviving a forced collapse."""

import pickle
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_IMAGES, tiny_mlp
from scipy.spatial.distance import cdist
from sklearn.metrics import roc_auc_score
from torch.func import functional_call

import sklearn_panda._estimators.ses as ses_module
from sklearn_panda import PandaDetector, PandaFeatures, PandaSES
from sklearn_panda.callbacks import TrainingCallback


@pytest.fixture
def vectors():
    rng = np.random.default_rng(0)
    return rng.normal(size=(60, 6))


def test_checkpoints_are_taken_on_schedule(vectors):
    ses = PandaSES(backbone=tiny_mlp, weights=None, n_steps=7, checkpoint_every=3, random_state=0).fit(vectors)
    assert ses.checkpoint_steps_ == [0, 3, 6]
    assert len(ses.checkpoints_) == len(ses.normalizers_) == len(ses.scorers_) == 3
    assert all(t.device.type == "cpu" for t in ses.checkpoints_[1].values())


def test_half_precision_checkpoints(vectors):
    ses = PandaSES(
        backbone=tiny_mlp, weights=None, n_steps=2, checkpoint_every=1, checkpoint_dtype="float16", random_state=0
    ).fit(vectors)
    assert all(t.dtype == torch.float16 for t in ses.checkpoints_[-1].values())


def test_normalisation_matches_a_direct_numpy_computation(vectors):
    ses = PandaSES(backbone=tiny_mlp, weights=None, n_steps=6, checkpoint_every=3, random_state=0).fit(vectors)
    queries = np.random.default_rng(1).normal(size=(5, 6))
    validation = ses.validation_indices_
    gallery = np.setdiff1d(np.arange(len(vectors)), validation)
    expected_columns = []
    for t, checkpoint in enumerate(ses.checkpoints_):
        with torch.no_grad():
            def features(X):
                out = functional_call(ses.net_.stages, checkpoint, (torch.as_tensor(X, dtype=torch.float32),))
                return F.normalize(out, dim=1).numpy().astype(np.float64)

            train, test = features(vectors), features(queries)
        knn = lambda q: np.sort(cdist(q, train[gallery], "sqeuclidean"), axis=1)[:, :2].mean(axis=1)  # noqa: E731
        normalizer = knn(train[validation]).mean()
        assert ses.normalizers_[t] == pytest.approx(normalizer, rel=1e-4)
        assert ses.dispersions_[t] == pytest.approx(knn(train[validation]).std() / normalizer, rel=1e-3)
        expected_columns.append(knn(test) / normalizer)
    expected = np.stack(expected_columns, axis=1)
    np.testing.assert_allclose(ses.checkpoint_distances(queries), expected, rtol=1e-4, atol=1e-6)
    assert ses.active_checkpoints_.all()
    np.testing.assert_allclose(-ses.score_samples(queries), expected.max(axis=1), rtol=1e-4, atol=1e-6)


def test_dispersed_checkpoints_are_left_out_of_the_maximum(vectors):
    params = {"backbone": tiny_mlp, "weights": None, "n_steps": 6, "checkpoint_every": 3, "random_state": 0}
    queries = np.random.default_rng(1).normal(size=(5, 6))
    every = PandaSES(**params, max_dispersion=None).fit(vectors)
    distances = every.checkpoint_distances(queries)
    assert every.active_checkpoints_.all()
    # A threshold below every later checkpoint's dispersion leaves only the pretrained one.
    strict = PandaSES(**params, max_dispersion=1e-6).fit(vectors)
    assert strict.active_checkpoints_.tolist() == [True, False, False]
    np.testing.assert_array_equal(strict.checkpoint_distances(queries), distances)
    np.testing.assert_allclose(-strict.score_samples(queries), distances[:, 0], rtol=1e-6)
    # Training scores too take the maximum over fewer checkpoints: never lower.
    assert np.all(strict.training_scores_ >= every.training_scores_ - 1e-12)
    assert np.any(strict.training_scores_ > every.training_scores_)


def wide_mlp():
    """Random ReLU features wide enough to keep the input's structure (kNN ROC AUC ~0.96 here)."""
    return torch.nn.Sequential(torch.nn.Linear(6, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))


def test_ses_survives_a_forced_collapse():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(200, 6))
    test = np.vstack([rng.normal(size=(100, 6)), rng.normal(size=(100, 6)) + 2.0])
    y = np.r_[np.ones(100), -np.ones(100)]
    # Heavy weight decay drives every weight to zero: all features collapse onto
    # the centre (the bias), anomalies included.
    collapse = dict(
        backbone=wide_mlp, weights=None, n_steps=300, learning_rate=0.1, weight_decay=0.5,
        clip_norm=None, normalize_features=False, random_state=0,
    )
    unadapted = roc_auc_score(y, PandaDetector(**{**collapse, "n_steps": 0}).fit(normal).score_samples(test))
    last = roc_auc_score(y, PandaDetector(**collapse).fit(normal).score_samples(test))
    ses = roc_auc_score(y, PandaSES(checkpoint_every=50, **collapse).fit(normal).score_samples(test))
    assert last < unadapted - 0.1, "the toy setup must collapse for this test to mean anything"
    assert ses > last + 0.1
    assert ses >= unadapted - 0.01


def test_contamination_and_fit_predict(vectors):
    ses = PandaSES(backbone=tiny_mlp, weights=None, n_steps=2, checkpoint_every=1, contamination=0.1, random_state=0)
    assert np.sum(ses.fit_predict(vectors) == -1) == 6


def test_images_and_pickle(images):
    ses = PandaSES(**TINY_IMAGES, n_steps=2, checkpoint_every=1, random_state=0).fit(images)
    expected = ses.score_samples(images)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(ses)).score_samples(images), expected)
    assert ses.checkpoint_distances(images).shape == (len(images), 3)


def test_too_few_samples():
    with pytest.raises(ValueError, match="at least 3 training samples"):
        PandaSES(backbone=tiny_mlp, weights=None, n_steps=1, checkpoint_every=1).fit(np.ones((2, 3)))


def test_validation_samples_are_held_out_of_adaptation(images, monkeypatch):
    trained_on, adapting = [], []
    # Adaptation runs in the detector's PandaFeatures.
    trunk_batch, adapt = PandaFeatures._trunk_batch, PandaFeatures._adapt

    def recording_trunk_batch(self, net, preprocessor, hidden, indices):
        if adapting:
            trained_on.extend(np.asarray(indices).tolist())
        return trunk_batch(self, net, preprocessor, hidden, indices)

    def marking_adapt(self, *args):
        adapting.append(True)
        try:
            return adapt(self, *args)
        finally:
            adapting.clear()

    monkeypatch.setattr(PandaFeatures, "_trunk_batch", recording_trunk_batch)
    monkeypatch.setattr(PandaFeatures, "_adapt", marking_adapt)
    ses = PandaSES(
        **{**TINY_IMAGES, "batch_size": 4}, n_steps=12, checkpoint_every=4, trunk_cache_mb=0,
        regularization="ewc", n_fisher_batches=3, random_state=0,
    ).fit(images)
    validation = set(ses.validation_indices_.tolist())
    assert len(validation) == 2
    # Training batches (and the Fisher's) came from every gallery sample and no validation sample.
    assert set(trained_on) == set(range(len(images))) - validation


def test_checkpoints_are_moved_to_the_device_one_at_a_time(vectors, monkeypatch):
    # Half-precision checkpoints are copied to float32 for scoring, as they
    # would be copied to a GPU: at most one such copy may be alive at a time.
    ses = PandaSES(
        backbone=tiny_mlp, weights=None, n_steps=4, checkpoint_every=1, checkpoint_dtype="float16", random_state=0
    ).fit(vectors)
    copies, alive = [], []

    def counting_functional_call(module, parameters, args):
        tensor = next(iter(parameters.values()))
        if not any(copy() is tensor for copy in copies):
            copies.append(weakref.ref(tensor))
        alive.append(sum(copy() is not None for copy in copies))
        return functional_call(module, parameters, args)

    monkeypatch.setattr(ses_module, "functional_call", counting_functional_call)
    ses.checkpoint_distances(vectors)
    assert len(copies) == len(ses.checkpoints_) == 5
    assert max(alive) == 1


@pytest.mark.parametrize("trunk_cache_mb", [0, 0.1])
def test_scores_do_not_depend_on_the_trunk_cache(images, trunk_cache_mb):
    # 0: the trunk runs for every batch and checkpoint; 0.1 MB: the trunk
    # outputs (8 KiB per image here) are cached for 12 images at a time.
    params = {**TINY_IMAGES, "n_steps": 2, "checkpoint_every": 1, "random_state": 0}
    expected = PandaSES(**params).fit(images)
    ses = PandaSES(**params, trunk_cache_mb=trunk_cache_mb).fit(images)
    np.testing.assert_allclose(ses.training_scores_, expected.training_scores_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        ses.checkpoint_distances(images[:13]), expected.checkpoint_distances(images[:13]), rtol=1e-5, atol=1e-6
    )


def test_ses_is_a_sibling_of_the_detector_not_a_narrowed_subclass():
    """Both build on FeatureDetectorBase; SES does not inherit PandaDetector's single scorer_ contract."""
    from sklearn_panda import PandaDetector
    from sklearn_panda._estimators.detector import FeatureDetectorBase

    assert issubclass(PandaSES, FeatureDetectorBase) and issubclass(PandaDetector, FeatureDetectorBase)
    assert not issubclass(PandaSES, PandaDetector)


def test_max_dispersion_says_when_one_validation_image_leaves_it_nothing_to_measure():
    # Below 15 training images 10% rounds to one validation image: its distances have no spread, and
    # the guard against collapsed checkpoints was skipped without a word.
    import warnings

    X = np.random.default_rng(0).normal(size=(12, 6))
    options = dict(backbone=tiny_mlp, weights=None, n_steps=2, checkpoint_every=1, random_state=0)
    with pytest.warns(UserWarning, match="max_dispersion is not applied"):
        ses = PandaSES(**options).fit(X)
    assert len(ses.validation_indices_) == 1 and ses.active_checkpoints_.all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PandaSES(**options, max_dispersion=None).fit(X)  # asked for no guard: nothing to say
        assert len(PandaSES(**options, validation_fraction=0.2).fit(X).validation_indices_) == 2


class _StopAfter(TrainingCallback):
    """A training callback that stops the adaptation after ``n`` steps."""

    def __init__(self, n):
        self.n = n

    def on_step_end(self, net, *, step, **kwargs):
        return step + 1 == self.n


@pytest.mark.parametrize("stop_after, steps", [(6, [0, 4, 6]), (2, [0, 2]), (4, [0, 4])])
def test_a_callback_stopping_early_makes_its_step_a_checkpoint(vectors, stop_after, steps):
    ses = PandaSES(backbone=tiny_mlp, weights=None, n_steps=10, checkpoint_every=4, random_state=0)
    ses.fit(vectors, callbacks=[_StopAfter(stop_after)])
    assert ses.checkpoint_steps_ == steps and len(ses.history_["loss"]) == stop_after
    assert len(ses.checkpoints_) == len(ses.scorers_) == len(steps)
    trained = dict(ses.net_.stages.named_parameters())
    for name, value in ses.checkpoints_[-1].items():
        torch.testing.assert_close(value, trained[name].detach().cpu())
