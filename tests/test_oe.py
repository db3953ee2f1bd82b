"""PandaOE: labels, the contract, and exposure that resembles the anomalies."""

import pickle

import numpy as np
import pytest
import torch
from conftest import TINY_IMAGES, tiny_mlp
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_panda import PandaDetector, PandaOE


def wide_mlp():
    return torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))


@pytest.fixture
def exposure_task():
    """Anomalies differ from normal data along one direction; exposure does too, more weakly."""
    rng = np.random.default_rng(0)
    direction = np.zeros(6)
    direction[0] = 1.0
    normal = rng.normal(size=(120, 6))
    exposure = rng.normal(size=(120, 6)) + 1.5 * direction
    test = np.vstack([rng.normal(size=(100, 6)), rng.normal(size=(100, 6)) + 1.0 * direction])
    y_test = np.r_[np.ones(100, dtype=int), -np.ones(100, dtype=int)]
    return normal, exposure, test, y_test


def test_exposure_resembling_anomalies_lifts_roc_auc(exposure_task):
    normal, exposure, test, y_test = exposure_task
    common = dict(backbone=wide_mlp, weights=None, random_state=0)
    unadapted = roc_auc_score(y_test, PandaDetector(n_steps=0, **common).fit(normal).score_samples(test))
    X = np.vstack([normal, exposure])
    y = np.r_[np.ones(len(normal), dtype=int), -np.ones(len(exposure), dtype=int)]
    oe = PandaOE(n_steps=200, clip_norm=None, learning_rate=0.05, **common).fit(X, y)
    exposed = roc_auc_score(y_test, oe.score_samples(test))
    assert exposed > unadapted + 0.05


@pytest.mark.parametrize(
    "y, message",
    [
        (None, "requires y to be passed"),
        (np.ones(10), "one class only, the normal label"),
        (-np.ones(10), "one class only, no normal label"),
        (np.array(["good"] * 5 + ["bad"] * 5), r"no normal label \(normal_label=1"),
        (np.ones(3), r"shape \(10,\)"),
        # Missing labels became exposure images without a word.
        (np.r_[np.ones(5), -np.ones(4), np.nan], r"1 missing label\(s\) \(NaN or None; first at index 9\)"),
        (np.array([1] * 5 + [None] + [-1] * 4, dtype=object), r"first at index 5"),
        (["good"] * 5 + ["bad"] * 4 + [float("nan")], r"first at index 9"),
    ],
)
def test_label_errors(y, message):
    X = np.random.default_rng(0).normal(size=(10, 4))
    with pytest.raises(ValueError, match=message):
        PandaOE(backbone=tiny_mlp, weights=None, n_steps=1).fit(X, y)


def test_any_labels_with_the_normal_one_named():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(12, 4)), rng.normal(size=(12, 4)) + 2])
    common = dict(backbone=tiny_mlp, weights=None, n_steps=3, random_state=0)
    expected = PandaOE(**common).fit(X, np.r_[np.ones(12), -np.ones(12)]).score_samples(X)
    for y, normal_label in [
        (np.r_[np.zeros(12), np.ones(12)], 0),  # PyOD's labels: 0 normal, 1 anomalous
        (np.array(["shirt"] * 12 + ["shoe"] * 6 + ["bag"] * 6), "shirt"),  # the classes of an exposure set
        (np.r_[np.ones(12), np.tile([0, 2, 3], 4)], 1),
    ]:
        oe = PandaOE(**common, normal_label=normal_label).fit(X, y)
        np.testing.assert_array_equal(oe.score_samples(X), expected)


def test_zero_steps_are_refused():
    # Without a step the head would score with its random initial weights.
    X = np.random.default_rng(0).normal(size=(10, 4))
    y = np.r_[np.ones(5), -np.ones(5)]
    with pytest.raises(InvalidParameterError, match=r"'n_steps' parameter of PandaOE must be .* \[1, inf\)"):
        PandaOE(backbone=tiny_mlp, weights=None, n_steps=0).fit(X, y)


def test_contract_scores_and_offset():
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(size=(40, 5)), rng.normal(size=(40, 5)) + 3])
    y = np.r_[np.ones(40, dtype=int), -np.ones(40, dtype=int)]
    oe = PandaOE(backbone=tiny_mlp, weights=None, n_steps=30, contamination=0.1, random_state=0).fit(X, y)
    assert oe.training_scores_.shape == (40,)
    np.testing.assert_allclose(oe.decision_function(X), oe.score_samples(X) - oe.offset_)
    assert np.sum(oe.training_scores_ < oe.offset_) == 4
    # Normal samples score higher than exposure samples after training.
    assert oe.score_samples(X[:40]).mean() > oe.score_samples(X[40:]).mean()


def test_grid_search_roc_auc_with_the_same_labels():
    rng = np.random.default_rng(2)
    X = np.vstack([rng.normal(size=(30, 5)), rng.normal(size=(30, 5)) + 3])
    y = np.r_[np.ones(30, dtype=int), -np.ones(30, dtype=int)]
    search = GridSearchCV(
        PandaOE(backbone=tiny_mlp, weights=None, random_state=0),
        {"n_steps": [1, 20]},
        scoring="roc_auc",
        cv=StratifiedKFold(3),
    ).fit(X, y)
    assert search.best_score_ > 0.5


def test_only_the_last_stage_trains_and_pickle(images):
    labels = np.r_[np.ones(12, dtype=int), -np.ones(12, dtype=int)]
    reference = PandaDetector(**TINY_IMAGES, n_steps=0, random_state=0).fit(images).net_
    oe = PandaOE(**TINY_IMAGES, n_steps=3, clip_norm=None, random_state=0).fit(images, labels)
    for before, after in zip(reference.trunk.state_dict().values(), oe.net_.trunk.state_dict().values()):
        assert torch.equal(before, after)
    assert len(oe.net_.stages) == 2  # layer4 and the pooling
    expected = oe.score_samples(images)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(oe)).score_samples(images), expected)


def test_combined_score_is_the_standardised_sum_of_head_and_knn(exposure_task, tmp_path):
    from scipy.spatial.distance import cdist

    from sklearn_panda import load

    normal, exposure, test, _ = exposure_task
    X = np.vstack([normal, exposure])
    y = np.r_[np.ones(len(normal), dtype=int), -np.ones(len(exposure), dtype=int)]
    oe = PandaOE(backbone=wide_mlp, weights=None, n_steps=20, combine_knn=True, random_state=0).fit(X, y)

    def head_and_knn(samples, leave_one_out=False):
        features = oe.extract_features(samples).astype(np.float64)
        with torch.no_grad():
            logits = oe.head_(torch.as_tensor(features, dtype=torch.float32)).squeeze(1).numpy()
        train = oe.extract_features(normal).astype(np.float64)
        unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
        distances = cdist(unit(features), unit(train), "sqeuclidean")
        if leave_one_out:
            np.fill_diagonal(distances, np.inf)
        return logits, -np.sort(distances, axis=1)[:, :2].mean(axis=1)

    train_logits, train_knn = head_and_knn(normal, leave_one_out=True)
    logits, knn = head_and_knn(test)
    expected = (logits - train_logits.mean()) / train_logits.std() + (knn - train_knn.mean()) / train_knn.std()
    np.testing.assert_allclose(oe.score_samples(test), expected, rtol=1e-4, atol=1e-4)
    assert oe.training_scores_ == pytest.approx(
        (train_logits - train_logits.mean()) / train_logits.std() + (train_knn - train_knn.mean()) / train_knn.std(),
        abs=1e-4,
    )
    oe.save(tmp_path / "oe.pt")
    np.testing.assert_array_equal(load(tmp_path / "oe.pt", backbone=wide_mlp).score_samples(test), oe.score_samples(test))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(oe)).score_samples(test), oe.score_samples(test))


def test_combine_knn_refuses_normal_images_whose_scores_have_no_spread():
    # Standardised by a floor of 2e-308 instead, new images scored about 1e304.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 6))
    options = dict(backbone=wide_mlp, weights=None, n_steps=2, combine_knn=True, random_state=0)
    with pytest.raises(ValueError, match="at least 3 normal training images .*got 2"):
        PandaOE(**options).fit(X, np.r_[1, 1, -np.ones(8, dtype=int)])
    identical = np.vstack([np.repeat(X[:1], 4, axis=0), X[4:]])  # four identical normal rows
    with pytest.raises(ValueError, match="the logits and the kNN distances do not vary"):
        PandaOE(**options).fit(identical, np.r_[np.ones(4, dtype=int), -np.ones(6, dtype=int)])
    oe = PandaOE(**options).fit(X, np.r_[1, 1, 1, -np.ones(7, dtype=int)])
    assert np.abs(oe.score_samples(X)).max() < 1e3


def test_a_column_of_labels_is_taken_with_scikit_learn_s_warning():
    # y of shape (n, 1) was refused; scikit-learn's classifiers ravel it with a DataConversionWarning.
    from sklearn.exceptions import DataConversionWarning

    X = np.random.default_rng(0).normal(size=(10, 4))
    y = np.r_[np.ones(6), -np.ones(4)]
    settings = dict(backbone=tiny_mlp, weights=None, n_steps=1, random_state=0)
    with pytest.warns(DataConversionWarning):
        column = PandaOE(**settings).fit(X, y[:, None])
    np.testing.assert_array_equal(column.score_samples(X), PandaOE(**settings).fit(X, y).score_samples(X))
