"""Backbones split by node name: every torchvision classifier, factories (timm), clear errors.

The test over every torchvision classifier builds each on the ``meta`` device
(parameters without storage, so ViT-H/14 and RegNetY-128GF cost no memory or
compute) and checks the split structurally: a forward pass gives the feature
width, exactly the trainable stages require gradients, BatchNorm stays in eval
mode. Real forward passes and SGD steps run on the smaller models that stand
for their families in ``test_done_means_families_fit_and_score`` and on tiny
networks.
"""

import contextlib
import functools
import pickle

import numpy as np
import pytest
import torch
import torchvision
from conftest import tiny_resnet
from torch import nn

from sklearn_panda import PandaDetector, PandaFeatures
from sklearn_panda._engine.backbones import build_feature_net
from sklearn_panda._engine.stages import split_model
from sklearn_panda.callbacks import TrainingCallback

CLASSIFIERS = torchvision.models.list_models(module=torchvision.models)
# 32 pixels, or the smallest size the network accepts when that is larger.
SMALLEST_INPUT = {"alexnet": 63, "inception_v3": 75, "maxvit_t": 224}
SMALLEST_INPUT.update({name: 224 for name in CLASSIFIERS if name.startswith("vit_")})
TINY = dict(weights=None, resize=32, crop_size=32, batch_size=4, random_state=0)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return (rng.random((8, 20, 20, 3)) * 255).astype(np.uint8)


@contextlib.contextmanager
def parameters_on_meta():
    """Modules built inside get their parameters and buffers on the meta device (no storage, no init cost)."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter(module, name, value):
        register_parameter(module, name, None if value is None else nn.Parameter(value.to("meta"), value.requires_grad))

    def buffer(module, name, value, persistent=True):
        register_buffer(module, name, None if value is None else value.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter, buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_torchvision_classifier_splits_by_name(name):
    with parameters_on_meta():
        net = build_feature_net(name, None, 2)
    size = SMALLEST_INPUT.get(name, 32)
    with torch.no_grad():
        hidden = torch.zeros(1, 3, size, size, device="meta")
        for stage in net.trunk:  # the Trunk's float32 guard has no autocast on the meta device
            hidden = stage(hidden)
        features = net.stages(hidden)
    # The penultimate features, not the class count: the input of the classifier.
    if name.startswith("squeezenet"):
        # A convolution classifier on the feature map: the features are that map, pooled; no head.
        assert features.shape == (1, 512) and net.head is None
    else:
        assert isinstance(net.head, nn.Linear) and net.head.out_features == 1000
        assert features.shape == (1, net.head.in_features) and net.head.in_features != 1000
    trainable = {id(parameter) for parameter in net.trainable_parameters()}
    assert trainable and len(net.trunk) >= 1
    # A step changes only what requires gradients: exactly the trainable stages.
    assert trainable == {id(parameter) for parameter in net.parameters() if parameter.requires_grad}
    assert trainable == {id(parameter) for parameter in net.stages.parameters()}
    net.train()
    assert not any(module.training for module in net.modules())  # BatchNorm statistics stay frozen


# --------------------------------------------------------------- real networks


def tiny_vit():
    """A torchvision ViT at toy size: the ViT family's split, at 32 pixels."""
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    )


def small_cnn():
    """A network of no known family: it needs stage_ends."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    )


def mlp():
    """A vector network of any input width, in three layers."""
    return nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


class InitialState(TrainingCallback):
    """Keeps the state of the network as its training begins."""

    def on_train_begin(self, net, **kwargs):
        self.state = {key: value.clone() for key, value in net.state_dict().items()}


def _assert_only_the_stages_trained(net, initial):
    """Against the network's ``initial`` state: trunk, head and BatchNorm statistics unchanged, stages changed."""
    changed = {key for key, value in net.state_dict().items() if not torch.equal(value, initial.state[key])}
    assert changed and all(key.startswith("stages.") for key in changed)


@pytest.mark.parametrize(
    "name, width",
    [("mobilenet_v2", 1280), ("convnext_tiny", 768), ("regnet_y_400mf", 440), ("swin_t", 768), ("densenet121", 1024)],
)
def test_done_means_families_fit_and_score(name, width, images):
    initial = InitialState()
    detector = PandaDetector(backbone=name, n_steps=2, learning_rate=0.1, clip_norm=None, **TINY)
    detector.fit(images, callbacks=[initial])
    assert np.isfinite(detector.score_samples(images[:3])).all()
    assert detector.features_.transform(images[:2]).shape == (2, width)
    _assert_only_the_stages_trained(detector.net_, initial)


def test_vit_features_are_the_class_token_and_the_last_blocks_train(images):
    initial = InitialState()
    detector = PandaDetector(backbone=tiny_vit, n_steps=2, learning_rate=0.1, clip_norm=None, **TINY)
    detector.fit(images, callbacks=[initial])
    assert detector.features_.transform(images[:2]).shape == (2, 16)
    _assert_only_the_stages_trained(detector.net_, initial)
    # Unadapted, the network is a copy of the model: its trainable tensors are found among the model's by
    # value (each drawn at random, so that no two are equal).
    model = tiny_vit().eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    net = PandaDetector(backbone=lambda: model, n_steps=0, **TINY).fit(images).net_
    trainable = list(net.stages.parameters())
    trained = {
        key.rsplit(".", 1)[0]
        for key, value in model.named_parameters()
        if any(value.shape == tensor.shape and torch.equal(value, tensor) for tensor in trainable)
    }
    blocks = {key.split(".")[2] for key in trained if key.startswith("encoder.layers")}
    assert blocks == {"encoder_layer_1", "encoder_layer_2"}
    assert {key for key in trained if not key.startswith("encoder.layers")} == {"encoder.ln"}
    # The class token after the final norm, as torchvision's head reads it.
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        np.testing.assert_allclose(net.head(net(x)).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_vit_b_16_gives_768_features():
    with parameters_on_meta():
        net = build_feature_net("vit_b_16", None, 2)
    hidden = torch.zeros(1, 3, 224, 224, device="meta")
    for stage in net.trunk:
        hidden = stage(hidden)
    assert net.stages(hidden).shape == (1, 768)


def test_timm_model_as_a_factory_fits_and_scores(images):
    timm = pytest.importorskip("timm")
    factory = functools.partial(timm.create_model, "vit_tiny_patch16_224", img_size=32, num_classes=3)
    initial = InitialState()
    detector = PandaDetector(
        backbone=factory, stage_ends=["blocks.9", "blocks.10", "blocks.11"], n_steps=2,
        learning_rate=0.1, clip_norm=None, **{**TINY, "weights": "imagenet"},
    ).fit(images, callbacks=[initial])
    assert np.isfinite(detector.score_samples(images[:3])).all()
    assert detector.features_.transform(images[:2]).shape == (2, 192)
    _assert_only_the_stages_trained(detector.net_, initial)


def test_a_factory_keeps_its_own_weights(images):
    pretrained = tiny_resnet()
    with torch.no_grad():
        pretrained.conv1.weight.fill_(0.5)
    for weights in ("imagenet", None):
        features = PandaFeatures(backbone=lambda: pretrained, n_steps=0, **{**TINY, "weights": weights})
        stem = features.fit(images).net_.trunk[0][0]
        assert stem is not pretrained.conv1 and bool((stem.weight == 0.5).all())  # a copy of it, as it was


def test_a_network_of_no_family_takes_stage_ends(images):
    # Without stage_ends a plain Sequential is split by its children (tests/test_own_networks.py).
    assert PandaDetector(backbone=small_cnn, n_steps=0, **TINY).fit(images).extract_features(images).shape[1] == 8
    detector = PandaDetector(backbone=small_cnn, stage_ends=["1", "3"], n_trainable_stages=1, n_steps=1, **TINY)
    net = detector.fit(images).net_
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 8) and isinstance(net.head, nn.Linear)


def test_a_vector_network_with_stage_ends_trains_only_its_last_stages():
    rng = np.random.default_rng(0)
    features = PandaFeatures(backbone=mlp, stage_ends=["1", "3"], n_trainable_stages=1, n_steps=1, **TINY)
    net = features.fit(rng.normal(size=(12, 5))).net_
    assert not net.expects_images and isinstance(net.head, nn.Linear)
    assert features.transform(rng.normal(size=(3, 5))).shape == (3, 8)
    assert [parameter.shape for parameter in net.stages.parameters()] == [(8, 8), (8,)]


def test_custom_feature_node_and_stage_ends(images):
    net = build_feature_net(tiny_resnet, None, 2, feature_node="layer3")
    # The family's stage ends up to the feature node: layer2 and layer3 train, layer3's map is pooled.
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 256) and net.head is None
    assert net.stages[1] is not None and len(net.trunk) == 2
    with pytest.raises(ValueError, match="needs the Fisher information of a classifier head"):
        PandaDetector(
            backbone=tiny_resnet, feature_node="layer3", regularization="ewc", n_fisher_batches=1, n_steps=1, **TINY
        ).fit(images)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(stage_ends=["layer3.0.conv1", "layer4"]), r"cannot be cut after 'layer3.0.conv1'.*also read"),
        (dict(stage_ends=["layer9"]), r"stage_ends: ResNet has no node or module 'layer9'.*layer4"),
        (dict(stage_ends=["layer3", "layer2"]), "stage_ends must be in forward order"),
        (dict(stage_ends="layer3"), "stage_ends must be a non-empty list"),
        (dict(feature_node="nowhere"), "feature_node: ResNet has no node or module 'nowhere'"),
        (dict(stage_ends=["layer3", "layer4"], n_trainable_stages=2), r"between 1 and 1 .*stage_ends"),
        (dict(stage_ends=["layer3", "layer4", "avgpool"], n_trainable_stages=1), "has no parameters"),
    ],
)
def test_a_network_that_cannot_be_split_so_is_an_error(options, message):
    with pytest.raises(ValueError, match=message):
        build_feature_net(tiny_resnet, None, options.pop("n_trainable_stages", 2), **options)


def test_a_network_without_a_classifier_needs_feature_node():
    headless = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"last layer with parameters, 3 \(BatchNorm2d\).*without a classifier: '3'"):
        split_model(headless, 1, stage_ends=["1", "3"])
    net = split_model(headless, 1, stage_ends=["1", "3"], feature_node="3")
    assert net(torch.rand(2, 3, 8, 8)).shape == (2, 4) and net.head is None


def test_token_features_are_an_error_that_names_feature_node(images):
    detector = PandaDetector(backbone=tiny_vit, feature_node="encoder.layers.encoder_layer_2", n_steps=0, **TINY)
    with pytest.raises(ValueError, match=r"gives outputs of shape \(\d+, 17, 16\).*Set feature_node"):
        detector.fit(images)


def test_graph_stages_pickle_save_and_load(images, tmp_path):
    from sklearn_panda import load, save

    detector = PandaDetector(backbone=tiny_vit, stage_ends=None, n_steps=1, **TINY).fit(images)
    expected = detector.score_samples(images[:3])
    assert isinstance(detector.net_.trunk[0], torch.fx.GraphModule)  # patch embedding, class token, first block
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(detector)).score_samples(images[:3]), expected)
    save(detector, tmp_path / "vit.pt")
    np.testing.assert_array_equal(load(tmp_path / "vit.pt", backbone=tiny_vit).score_samples(images[:3]), expected)


def test_split_model_keeps_the_cut_modules_and_their_names():
    model = tiny_resnet()
    net = split_model(model, 2)
    assert net.trunk[1] is model.layer1 and net.stages[0] is model.layer3 and net.stages[1] is model.layer4
    # The names from before the node-name split: Fisher keys and saved files still fit.
    assert next(iter(net.stages.state_dict())) == "0.0.conv1.weight"
