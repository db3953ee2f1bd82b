"""average_mirror: each image's output features averaged with its mirror image's."""

import pickle

import numpy as np
import pytest
import torch
from conftest import TINY_IMAGES, tiny_mlp

from sklearn_panda import PandaDetector, PandaFeatures, PandaSES, load

# No resize or crop: flipping the raw images flips the network's input exactly.
PLAIN = dict(TINY_IMAGES, resize=None, crop_size=None, n_steps=3, learning_rate=0.1, clip_norm=None, random_state=0)


def _images(n, seed):
    return (np.random.default_rng(seed).random((n, 20, 20, 3)) * 255).astype(np.uint8)


def _flipped(images):
    return np.ascontiguousarray(images[:, :, ::-1])


@pytest.fixture(scope="module")
def pair():
    """The same adaptation with and without the mirror average, and new images."""
    train = _images(16, 0)
    return (PandaFeatures(**PLAIN).fit(train), PandaFeatures(**PLAIN, average_mirror=True).fit(train), train,
            _images(5, 1))


def test_features_are_the_mean_of_the_image_and_its_mirror_image(pair):
    plain, mirror, _, queries = pair
    expected = (plain.transform(queries) + plain.transform(_flipped(queries))) / 2
    np.testing.assert_allclose(mirror.transform(queries), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(mirror.transform(queries), plain.transform(queries), atol=1e-4)


def test_the_adaptation_itself_is_unchanged(pair):
    plain, mirror, train, _ = pair
    for (name, a), (_, b) in zip(plain.net_.state_dict().items(), mirror.net_.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert plain.history_["loss"] == mirror.history_["loss"]
    np.testing.assert_allclose(mirror.fit_transform(train), mirror.transform(train), rtol=1e-5, atol=1e-6)


def test_the_detector_scores_the_averaged_features():
    train, queries = _images(16, 0), _images(5, 1)
    params = dict(PLAIN, scorer="mahalanobis")
    detector = PandaDetector(**params, average_mirror=True).fit(train)
    features = PandaFeatures(**PLAIN, average_mirror=True).fit(train)
    np.testing.assert_allclose(detector.extract_features(queries), features.transform(queries), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        detector.score_samples(queries), detector.scorer_.score_samples(features.transform(queries)), rtol=1e-4
    )
    np.testing.assert_allclose(
        detector.training_scores_, detector.scorer_.fit(features.transform(train)).training_scores_, rtol=1e-4
    )


def test_ses_averages_every_checkpoints_features():
    train, queries = _images(16, 0), _images(5, 1)
    ses = PandaSES(**PLAIN, average_mirror=True, checkpoint_every=3).fit(train)
    # Checkpoint 0 is the network before adaptation: its features are an unadapted PandaFeatures'.
    unadapted = PandaFeatures(**{**PLAIN, "n_steps": 0}, average_mirror=True).fit(train)
    expected = -ses.scorers_[0].score_samples(unadapted.transform(queries)) / ses.normalizers_[0]
    np.testing.assert_allclose(ses.checkpoint_distances(queries)[:, 0], expected, rtol=1e-4)
    plain = PandaSES(**PLAIN, checkpoint_every=3).fit(train)
    assert not np.allclose(plain.score_samples(queries), ses.score_samples(queries))


def test_vectors_have_no_mirror_image():
    with pytest.raises(ValueError, match="average_mirror=True.*vectors"):
        PandaFeatures(backbone=tiny_mlp, weights=None, n_steps=1, average_mirror=True).fit(np.zeros((8, 4)))


def test_save_load_and_pickles_from_before_the_parameter(tmp_path):
    train, queries = _images(16, 0), _images(5, 1)
    detector = PandaDetector(**PLAIN, average_mirror=True).fit(train)
    detector.save(tmp_path / "mirror.pt")
    loaded = load(tmp_path / "mirror.pt", backbone=PLAIN["backbone"])
    assert loaded.average_mirror is True
    np.testing.assert_array_equal(loaded.score_samples(queries), detector.score_samples(queries))
    # A pickle written before the parameter existed has no such attribute: it scores as before.
    old = PandaDetector(**PLAIN).fit(train)
    del old.__dict__["average_mirror"]
    unpickled = pickle.loads(pickle.dumps(old))
    assert unpickled.get_params()["average_mirror"] is False
    np.testing.assert_array_equal(unpickled.score_samples(queries), PandaDetector(**PLAIN).fit(train).score_samples(queries))


def test_the_exported_graph_averages_too(tmp_path):
    pytest.importorskip("onnxruntime")
    from sklearn_panda.deploy import OnnxDetector, export_onnx

    train, queries = _images(16, 0), _images(6, 1)
    detector = PandaDetector(**{**PLAIN, "resize": 24, "crop_size": 22}, average_mirror=True).fit(train)
    path = export_onnx(detector, tmp_path / "mirror.onnx", image_size=(20, 20))
    np.testing.assert_allclose(OnnxDetector(path).score_samples(queries), detector.score_samples(queries), rtol=0,
                               atol=1e-5)
