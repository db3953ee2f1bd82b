"""PandaDetector with tiny backbones: layouts, adaptation, EWC, the scikit-learn contract."""

import pickle
import urllib.error

import joblib
import numpy as np
import pytest
import torch
from conftest import TINY_IMAGES, tiny_mlp, tiny_resnet
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_panda import KMeansScorer, NormalOnlySplit, PandaDetector


def detector(**params):
    return PandaDetector(**{**TINY_IMAGES, "n_steps": 3, "random_state": 0, **params})


def test_accepts_the_three_image_layouts(images):
    gray = images[..., 0]
    for X in (images, np.moveaxis(images, -1, 1).astype(np.float32) / 255, gray):
        scores = detector().fit(X).score_samples(X[:5])
        assert scores.shape == (5,) and np.all(np.isfinite(scores))


def test_grayscale_layouts_agree(images):
    gray = images[..., 0]
    a = detector().fit(gray).score_samples(gray[:4])
    b = detector().fit(gray[..., None]).score_samples(gray[:4, ..., None])
    c = detector().fit(gray[:, None]).score_samples(gray[:4, None])
    np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_allclose(a, c, rtol=1e-5)
    # Float images are resampled in float, uint8 ones in uint8 rounded after
    # each pass (as PIL does): the inputs then differ by up to a grey level.
    d = detector().fit(gray.astype(np.float32) / 255).score_samples(gray[:4].astype(np.float32) / 255)
    np.testing.assert_allclose(a, d, rtol=2e-2)


def test_vectors_to_an_image_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="expects images of shape"):
        detector().fit(np.zeros((10, 5)))


def test_vector_backbone_sets_n_features_in():
    X = np.random.default_rng(0).normal(size=(30, 6))
    det = PandaDetector(backbone=tiny_mlp, weights=None, n_steps=3, random_state=0).fit(X)
    assert det.n_features_in_ == 6
    with pytest.raises(ValueError, match="6 features"):
        det.score_samples(np.zeros((2, 5)))


def test_same_random_state_same_scores(images):
    a = detector(random_state=3).fit(images).score_samples(images)
    b = detector(random_state=3).fit(images).score_samples(images)
    np.testing.assert_array_equal(a, b)


def test_fit_does_not_touch_the_global_torch_generator(images):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    detector().fit(images)
    np.testing.assert_array_equal(torch.rand(3), expected)


def test_frozen_part_unchanged_trainable_part_changed(images):
    reference = PandaDetector(**{**TINY_IMAGES, "n_steps": 0, "random_state": 0}).fit(images).net_
    adapted = detector(n_steps=5, learning_rate=1.0, clip_norm=None).fit(images).net_
    for (name, before), after in zip(reference.trunk.state_dict().items(), adapted.trunk.state_dict().values()):
        assert torch.equal(before, after), name
    changed = [
        not torch.equal(before, after)
        for before, after in zip(reference.stages.state_dict().values(), adapted.stages.state_dict().values())
    ]
    assert any(changed)
    # BatchNorm running statistics stay frozen (eval mode) even in trained stages.
    for name, value in adapted.stages.state_dict().items():
        if "running_mean" in name:
            assert torch.equal(value, reference.stages.state_dict()[name]), name


def test_center_is_the_mean_of_pretrained_features(images):
    unadapted = PandaDetector(**{**TINY_IMAGES, "n_steps": 0, "random_state": 0}).fit(images)
    det = detector().fit(images)
    np.testing.assert_allclose(det.center_, unadapted.extract_features(images).mean(axis=0), rtol=1e-4, atol=1e-6)
    assert unadapted.center_ is None


def test_history_records_every_step(images):
    det = detector(n_steps=4).fit(images)
    assert all(len(values) == 4 for values in det.history_.values())
    assert det.history_["compactness_ratio"][0] == pytest.approx(1.0, abs=0.5)


def test_compactness_falls_with_adaptation(images):
    det = detector(n_steps=30, learning_rate=0.1, clip_norm=None).fit(images)
    assert np.mean(det.history_["compactness"][-5:]) < np.mean(det.history_["compactness"][:5])


def test_ewc_penalty_zero_at_start_positive_after(images):
    det = detector(n_steps=4, regularization="ewc", n_fisher_batches=2).fit(images)
    penalty = det.history_["ewc_penalty"]
    assert penalty[0] == 0.0
    assert penalty[-1] > 0.0
    assert set(det.fisher_) == {name for name, _ in det.net_.stages.named_parameters()}


def test_ewc_holds_parameters_closer_to_pretrained(images):
    start = PandaDetector(**{**TINY_IMAGES, "n_steps": 0, "random_state": 0}).fit(images).net_
    common = dict(n_steps=10, learning_rate=0.5, clip_norm=None, n_fisher_batches=2)
    free = detector(**common).fit(images).net_
    fisher = {name: torch.ones_like(p) for name, p in start.stages.named_parameters()}
    held = detector(regularization="ewc", fisher=fisher, ewc_lambda=2.0, **common).fit(images).net_

    def drift(net):
        return sum(
            (a - b).pow(2).sum().item()
            for a, b in zip(net.stages.parameters(), start.stages.parameters())
        )

    assert drift(held) < drift(free)


def test_given_fisher_must_cover_trainable_parameters(images, tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        detector(regularization="ewc", fisher={"nope": np.ones(3)}).fit(images)
    fitted = detector(regularization="ewc", n_fisher_batches=2).fit(images)
    path = tmp_path / "fisher.pt"
    torch.save(fitted.fisher_, path)
    again = detector(regularization="ewc", fisher=str(path)).fit(images)
    np.testing.assert_allclose(again.score_samples(images), fitted.score_samples(images), rtol=1e-5)


def test_trunk_cache_gives_the_same_scores(images):
    cached = detector(regularization="ewc", n_fisher_batches=2).fit(images)
    uncached = detector(regularization="ewc", n_fisher_batches=2, trunk_cache_mb=0).fit(images)
    np.testing.assert_allclose(cached.score_samples(images), uncached.score_samples(images), rtol=1e-5, atol=1e-7)


def test_diverging_training_stops_with_a_clear_error(images):
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        detector(n_steps=50, learning_rate=1e12, clip_norm=None, normalize_features=False).fit(images)


@pytest.mark.parametrize("scorer", ["kmeans", "center", KMeansScorer(n_clusters=2)])
def test_other_scorers(images, scorer):
    det = detector(scorer=scorer).fit(images)
    assert det.score_samples(images).shape == (len(images),)
    assert det.scorer_ is not scorer


def test_contamination_sets_the_fraction_flagged_in_fit_predict(images):
    labels = detector(contamination=0.25).fit_predict(images)
    assert np.sum(labels == -1) == 6


def test_pickle_and_joblib_round_trips_give_identical_scores(images, tmp_path):
    det = detector().fit(images)
    expected = det.score_samples(images)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(det)).score_samples(images), expected)
    joblib.dump(det, tmp_path / "det.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "det.joblib").score_samples(images), expected)


def test_fitted_on_cuda_loads_on_cpu(images, monkeypatch):
    det = detector().fit(images)
    expected = det.score_samples(images)
    det.features_.device_ = torch.device("cuda")  # as if fitted on a GPU
    blob = pickle.dumps(det)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="CUDA"):
        restored = pickle.loads(blob)
    assert restored.device_.type == "cpu"
    np.testing.assert_array_equal(restored.score_samples(images), expected)


def test_cuda_without_cuda_is_a_clear_error(images, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        detector(device="cuda").fit(images)


def test_unfitted_scoring_raises(images):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        detector().score_samples(images)


def test_channel_count_must_match_training(images):
    det = detector().fit(images)
    with pytest.raises(ValueError, match="3-channel"):
        det.score_samples(images[..., 0])


def test_offline_imagenet_weights_error_names_the_cache_file(monkeypatch, tmp_path, images, capsys):
    def offline(url, destination, hash_prefix, progress=True):
        assert hash_prefix == "f37072fd" and not progress
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(OSError, match=r"resnet18-f37072fd\.pth") as error:
        PandaDetector(backbone="resnet18", n_steps=0).fit(images)
    assert str(tmp_path) in str(error.value)
    assert "weights=None" in str(error.value)
    assert capsys.readouterr().err == ""  # verbose=0: not even torch hub's "Downloading: ..."


def test_a_download_that_is_not_a_state_dict_is_not_kept(monkeypatch, tmp_path, images):
    def pickled_object(url, destination, hash_prefix, progress=True):
        torch.save({"weights": object()}, destination)

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", pickled_object)
    with pytest.raises(OSError, match="download failed"):
        PandaDetector(backbone="resnet18", n_steps=0).fit(images)
    assert not any(tmp_path.rglob("*.pth"))


def test_pipeline_and_grid_search_with_normal_only_split():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(60, 5))
    anomalies = rng.normal(size=(20, 5)) * 3 + 4
    X = np.vstack([normal, anomalies])
    y = np.r_[np.ones(60, dtype=int), -np.ones(20, dtype=int)]
    pipeline = make_pipeline(
        StandardScaler(), PandaDetector(backbone=tiny_mlp, weights=None, n_steps=2, random_state=0)
    )
    search = GridSearchCV(
        pipeline,
        {"pandadetector__n_steps": [0, 3]},
        scoring="roc_auc",
        cv=NormalOnlySplit(n_splits=3),
    )
    search.fit(X, y)
    assert search.best_score_ > 0.5
    assert roc_auc_score(y, search.score_samples(X)) > 0.5


def test_normal_only_split_keeps_anomalies_out_of_training():
    y = np.array([1, -1, 1, 1, -1, 1, 1, 1])
    for train, test in NormalOnlySplit(n_splits=3, shuffle=True, random_state=0).split(np.zeros(8), y):
        assert np.all(y[train] == 1)
        assert set(np.flatnonzero(y == -1)) <= set(test)
    with pytest.raises(ValueError, match="1 \\(normal\\) and -1"):
        next(NormalOnlySplit().split(np.zeros(3), [0, 1, 1]))


def test_bfloat16_precision_with_ewc(images):
    det = detector(precision="bfloat16", regularization="ewc", n_fisher_batches=2).fit(images)
    assert np.all(np.isfinite(det.score_samples(images)))


def test_fisher_is_the_mean_squared_per_sample_gradient():
    """Per-sample gradients (torch.func) against a loop of one-sample backward passes."""
    import torch.nn.functional as F

    from sklearn_panda._engine.backbones import build_feature_net
    from sklearn_panda._engine.losses import fisher_diagonal, sample_labels

    torch.manual_seed(0)
    net = build_feature_net(tiny_resnet, None, 2)
    parameters = net.trainable_parameters()
    with torch.no_grad():
        batches = [net.trunk(torch.randn(5, 3, 32, 32)), net.trunk(torch.randn(3, 3, 32, 32))]
    fisher = fisher_diagonal(net, batches, parameters, torch.Generator().manual_seed(7))

    generator = torch.Generator().manual_seed(7)
    expected = [torch.zeros_like(p) for p in parameters]
    for hidden in batches:
        with torch.no_grad():
            labels = sample_labels(net.head(net.stages(hidden)), generator)
        for sample, label in zip(hidden, labels):
            loss = F.cross_entropy(net.head(net.stages(sample[None])), label[None])
            for total, gradient in zip(expected, torch.autograd.grad(loss, parameters)):
                total += gradient.pow(2)
    for value, reference in zip(fisher, expected):
        torch.testing.assert_close(value, reference / 8, rtol=1e-4, atol=1e-10)


def test_fisher_scale_does_not_depend_on_the_batch_size(images):
    # The same samples (one epoch, fixed labels) give the same Fisher in batches of 4 or 12.
    from sklearn_panda._engine.backbones import build_feature_net
    from sklearn_panda._engine.losses import per_sample_squared_gradients

    torch.manual_seed(0)
    net = build_feature_net(tiny_resnet, None, 2)
    parameters = net.trainable_parameters()
    with torch.no_grad():
        hidden = net.trunk(torch.randn(12, 3, 32, 32))
    labels = torch.arange(12) % 10
    whole = per_sample_squared_gradients(net, hidden, labels, parameters)
    parts = [per_sample_squared_gradients(net, hidden[i : i + 4], labels[i : i + 4], parameters) for i in (0, 4, 8)]
    for total, pieces in zip(whole, zip(*parts)):
        torch.testing.assert_close(total, sum(pieces), rtol=1e-4, atol=1e-10)
