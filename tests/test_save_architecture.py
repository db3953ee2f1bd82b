"""save / load and pickle keep the network exactly: the unsplit model, rebuilt as its weights built it."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from conftest import tiny_cnn, tiny_resnet

from sklearn_panda import PandaDetector, PandaFeatures, PandaOE, PandaPatchDetector, load, save
from sklearn_panda._engine.backbones import architecture_arguments, build_architecture

TINY = dict(n_steps=0, resize=32, crop_size=32, batch_size=4, random_state=0)
# One small network of each torchvision family (VGG, AlexNet, ViT and MaxViT: same code
# paths at a cost of hundreds of megabytes or 224-pixel inputs; ViT's graph stages are
# saved and loaded in test_backbone_nodes.py with a tiny ViT).
FAMILIES = [
    "resnet18", "efficientnet_b0", "mobilenet_v3_small", "mnasnet0_5", "shufflenet_v2_x0_5", "regnet_x_400mf",
    "densenet121", "convnext_tiny", "swin_t", "squeezenet1_0", "googlenet",
]  # fmt: skip


@pytest.fixture
def images():
    return (np.random.default_rng(0).random((4, 20, 20, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("name", FAMILIES)
def test_save_load_and_pickle_give_the_same_scores_for_each_family(name, images, tmp_path):
    detector = PandaDetector(backbone=name, weights=None, **TINY).fit(images)
    expected = detector.score_samples(images)
    save(detector, tmp_path / "model.pt")
    np.testing.assert_array_equal(load(tmp_path / "model.pt").score_samples(images), expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(detector)).score_samples(images), expected)


def test_the_file_holds_the_unsplit_network_under_its_own_names(images, tmp_path):
    detector = PandaDetector(backbone="resnet18", weights=None, **TINY).fit(images)
    save(detector, tmp_path / "model.pt")
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    saved = payload["attributes"]["features_"]["value"]["net"]["model_state_dict"]
    assert set(saved) == set(torchvision.models.resnet18().state_dict())
    assert payload["format_version"] == 4 and payload["torchvision_version"] == torchvision.__version__


def _stand_in_weights(name, monkeypatch, tmp_path):
    """Random weights with the right keys where torch's hub cache looks for the named weights (no download)."""
    weights_enum = torchvision.models.get_model_weights(name).DEFAULT
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    checkpoints.mkdir(parents=True)
    # The builder loads the file before it drops the auxiliary classifiers: the file has them.
    model = torchvision.models.get_model(name, weights=None, transform_input=True, aux_logits=True, init_weights=False)
    torch.save(model.state_dict(), checkpoints / Path(weights_enum.url).name)


@pytest.mark.parametrize("name, size", [("googlenet", 32), ("inception_v3", 80)])
def test_networks_whose_weights_change_their_architecture_load_back(name, size, images, monkeypatch, tmp_path):
    """GoogLeNet and Inception V3 with ImageNet weights transform their input and drop their
    auxiliary classifiers: rebuilt from the name alone they did not fit their saved weights."""
    _stand_in_weights(name, monkeypatch, tmp_path)
    detector = PandaDetector(backbone=name, weights="imagenet", **{**TINY, "resize": size, "crop_size": size})
    detector.fit(images)
    assert detector.net_.model.transform_input and detector.net_.model.aux_logits is (name == "inception_v3")
    expected = detector.score_samples(images)
    save(detector, tmp_path / "model.pt")
    loaded = load(tmp_path / "model.pt")
    assert loaded.net_.model.transform_input
    np.testing.assert_array_equal(loaded.score_samples(images), expected)


@pytest.mark.parametrize("estimator", [
    PandaDetector(backbone="resnet18", weights=None, **TINY),
    PandaPatchDetector(backbone="resnet18", weights=None, resize=None, random_state=0),
], ids=["detector", "patch"])  # fmt: skip
def test_a_backbone_set_after_fit_leaves_the_saved_network_as_fitted(estimator, images, tmp_path):
    # The file wrote the new parameter's architecture for the fitted network's values, and load
    # refused it ("does not fit the rebuilt backbone resnet34"); now the file says what fit built.
    estimator.fit(images)
    expected = estimator.score_samples(images)
    estimator.set_params(backbone="resnet34")
    save(estimator, tmp_path / "model.pt")
    loaded = load(tmp_path / "model.pt")
    assert loaded.get_params()["backbone"] == "resnet34"  # as in memory: the next fit builds resnet34
    np.testing.assert_array_equal(loaded.score_samples(images), expected)
    save(loaded, tmp_path / "again.pt")  # a loaded network remembers what it was built from
    np.testing.assert_array_equal(load(tmp_path / "again.pt").score_samples(images), expected)


def test_weights_set_after_fit_leave_the_saved_architecture_as_fitted(images, monkeypatch, tmp_path):
    # GoogLeNet's ImageNet weights change its architecture: the file took it from the parameter.
    _stand_in_weights("googlenet", monkeypatch, tmp_path)
    detector = PandaPatchDetector(backbone="googlenet", weights="imagenet", resize=None, random_state=0).fit(images)
    expected = detector.score_samples(images)
    detector.set_params(weights=None)
    save(detector, tmp_path / "model.pt")
    loaded = load(tmp_path / "model.pt")
    assert loaded.weights is None and loaded.net_.model.transform_input
    np.testing.assert_array_equal(loaded.score_samples(images), expected)


def test_a_backbone_factory_set_after_fit_is_refused_by_save(images, tmp_path):
    # PandaPatchDetector: its network is its own (PandaDetector's is in its fitted features_).
    detector = PandaPatchDetector(backbone=tiny_resnet, weights=None, resize=None, random_state=0).fit(images)
    detector.set_params(backbone=tiny_cnn)
    with pytest.raises(ValueError, match=r"built by the backbone factory conftest\.tiny_resnet.*now conftest\.tiny_cnn"):
        save(detector, tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()
    detector.set_params(backbone=tiny_resnet)
    save(detector, tmp_path / "model.pt")
    np.testing.assert_array_equal(
        load(tmp_path / "model.pt", backbone=tiny_resnet).score_samples(images), detector.score_samples(images)
    )


@pytest.mark.parametrize("cls", [PandaFeatures, PandaOE])
def test_the_split_set_after_fit_leaves_the_saved_network_as_fitted(cls, tmp_path):
    # load split the rebuilt network as the parameters then said: PandaFeatures gave 128 features
    # instead of 512, PandaOE's head (512 inputs) could not score, other stage_ends did not load.
    X = (np.random.default_rng(0).random((12, 32, 32, 3)) * 255).astype(np.uint8)
    estimator = cls(backbone=tiny_resnet, weights=None, **{**TINY, "n_steps": 1})
    estimator.fit(X, np.r_[np.ones(8, int), -np.ones(4, int)]) if cls is PandaOE else estimator.fit(X)
    output = estimator.transform if cls is PandaFeatures else estimator.score_samples
    expected = output(X)
    estimator.set_params(feature_node="layer2", stage_ends=["layer1", "layer2"], n_trainable_stages=2)
    save(estimator, tmp_path / "model.pt")
    loaded = load(tmp_path / "model.pt", backbone=tiny_resnet)
    assert loaded.get_params()["feature_node"] == "layer2"  # the parameters as in memory
    reloaded_output = loaded.transform if cls is PandaFeatures else loaded.score_samples
    np.testing.assert_array_equal(reloaded_output(X), expected)


def test_a_file_naming_two_backbone_factories_is_refused(images, tmp_path):
    # PandaDetector keeps its network in features_, fitted with the first factory: the file named
    # both, and load(path, backbone=...) could take only one (the parameter's failed to load).
    detector = PandaDetector(backbone=tiny_resnet, weights=None, **TINY).fit(images)
    detector.set_params(backbone=tiny_cnn)
    with pytest.raises(ValueError, match=r"two backbone factories, conftest\.tiny_cnn \(backbone\) and "
                                         r"conftest\.tiny_resnet \(features_\.backbone\)"):
        save(detector, tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()


def _built_with_weights(name, monkeypatch):
    """The architecture torchvision's builder makes for the DEFAULT weights, on the meta device, no values loaded."""
    weights_enum = torchvision.models.get_model_weights(name).DEFAULT
    monkeypatch.setattr(type(weights_enum), "get_state_dict", lambda self, *args, **kwargs: {})
    monkeypatch.setattr(nn.Module, "load_state_dict", lambda self, *args, **kwargs: None)
    with torch.device("meta"):
        return torchvision.models.get_model(name, weights=weights_enum)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3", "vit_b_16", "vit_h_14", "maxvit_t", "resnet50", "swin_v2_t"])
def test_architecture_arguments_rebuild_what_the_weights_built(name, monkeypatch):
    arguments = architecture_arguments(name, "imagenet")
    with torch.device("meta"):
        rebuilt = build_architecture(name, arguments)
    expected = _built_with_weights(name, monkeypatch)
    assert {key: value.shape for key, value in rebuilt.state_dict().items()} == {
        key: value.shape for key, value in expected.state_dict().items()
    }
    for attribute in ("transform_input", "image_size"):
        assert getattr(rebuilt, attribute, None) == getattr(expected, attribute, None)


def test_files_of_format_2_still_load(images, tmp_path):
    from sklearn_panda._io import persistence as _persistence

    detector = PandaDetector(backbone="resnet18", weights=None, **TINY).fit(images)
    save(detector, tmp_path / "model.pt")
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    # Format 2 stored the split network's state dict.
    net = payload["attributes"]["features_"]["value"]["net"]
    features = detector.features_.net_
    payload["attributes"]["features_"]["value"]["net"] = {
        "state_dict": {key: value.clone() for key, value in features.state_dict().items()},
        "trainable": [],
        "channels_last": net["channels_last"],
    }
    payload["format_version"] = 2
    torch.save(payload, tmp_path / "format2.pt")
    np.testing.assert_array_equal(
        load(tmp_path / "format2.pt").score_samples(images), detector.score_samples(images)
    )
    payload["format_version"] = 1
    torch.save(payload, tmp_path / "format1.pt")
    with pytest.raises(ValueError, match=r"file format 1\).*file formats 2, 3, 4"):
        load(tmp_path / "format1.pt")
    assert _persistence.FORMAT_VERSION == 4
