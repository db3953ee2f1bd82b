"""BatchNorm folded into convolutions for inference: same outputs, the original untouched."""

import pytest
import torch
from torch import nn

from sklearn_panda._engine.folding import (
    ConvolutionWithActivation,
    _pointwise_convolutions_available,
    fold_batchnorm,
    folded,
)
from sklearn_panda._engine.patch_net import build_patch_net, stage_outputs


def batchnorms(module):
    return sum(isinstance(part, nn.BatchNorm2d) for part in module.modules())


def with_statistics(module, seed=0):
    """``module`` with non-trivial BatchNorm statistics and affine parameters (fresh ones are identities)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for part in module.modules():
            if isinstance(part, nn.BatchNorm2d):
                part.running_mean.normal_(generator=generator)
                part.running_var.uniform_(0.5, 2.0, generator=generator)
                part.weight.normal_(generator=generator)
                part.bias.normal_(generator=generator)
    return module.eval()


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_folded_patch_net_has_no_batchnorm_and_the_same_stage_outputs(backbone):
    pytest.importorskip("efficientnet_lite_pytorch") if backbone == "efficientnet_lite0" else None
    net, _ = build_patch_net(backbone, None, "auto")
    net = with_statistics(net)
    weights = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    fast = folded(net)
    assert batchnorms(net) > 0
    assert batchnorms(fast) == 0
    images = torch.rand(2, 3, 72, 88).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for slow_map, fast_map in zip(stage_outputs(net, images), stage_outputs(fast, images), strict=True):
            scale = slow_map.abs().max()
            torch.testing.assert_close(fast_map, slow_map, atol=1e-5 * float(scale), rtol=1e-4)
    # The original keeps its BatchNorm and its weights (what save() stores).
    assert all(torch.equal(tensor, weights[name]) for name, tensor in net.state_dict().items())


def test_folded_copy_is_kept_and_made_again_when_the_weights_change():
    net, _ = build_patch_net("resnet18", None, "auto")
    net = with_statistics(net)
    first = folded(net)
    assert folded(net) is first
    images = torch.rand(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        net.trunk[0][0].weight.mul_(2.0)
    second = folded(net)
    assert second is not first
    with torch.inference_mode():
        expected = stage_outputs(net, images)[0]
        torch.testing.assert_close(stage_outputs(second, images)[0], expected, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(stage_outputs(first, images)[0], expected, atol=1e-3)


class ConvolutionAndBatchNorm(nn.Module):
    """A convolution and a BatchNorm; each subclass wires them in its own ``forward``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)


class SharedConvolutionOutput(ConvolutionAndBatchNorm):
    """A convolution whose output the BatchNorm and a skip connection both read: not foldable."""

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class ConvolutionCalledTwice(ConvolutionAndBatchNorm):
    """One convolution module used at two places, only one followed by a BatchNorm: not foldable."""

    def forward(self, x):
        return self.bn(self.conv(x)) + self.conv(x)


class DataDependent(ConvolutionAndBatchNorm):
    """Control flow on a tensor's values: torch.fx cannot trace it."""

    def forward(self, x):
        y = self.bn(self.conv(x))
        return y if y.sum() > 0 else -y


class ActivationBesideSkip(ConvolutionAndBatchNorm):
    """A convolution's output read by an activation and by a skip connection: not overwritten."""

    def __init__(self):
        super().__init__()
        self.act = nn.ReLU6()

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.act(y) + y


def test_activations_overwrite_only_what_nothing_else_reads():
    network = with_statistics(ActivationBesideSkip())
    copy = fold_batchnorm(network)
    assert batchnorms(copy) == 0 and not copy.act.inplace
    images = torch.rand(2, 3, 8, 8) - 0.5
    with torch.no_grad():
        torch.testing.assert_close(copy(images), network(images), atol=1e-5, rtol=1e-4)
    # An activation oneDNN cannot apply inside the convolution overwrites the convolution's output.
    chain = fold_batchnorm(with_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.SiLU())))
    assert chain.get_submodule("2").inplace


def activation_calls(graph_module):
    modules = dict(graph_module.named_modules(remove_duplicate=False))
    return sum(
        node.op == "call_module" and isinstance(modules[node.target], (nn.ReLU, nn.ReLU6))
        for node in graph_module.graph.nodes
    )


class ActivationAfterConvolutionCalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x)) + self.conv(x)


@pytest.mark.skipif(not _pointwise_convolutions_available(), reason="this torch has no oneDNN convolution with an activation")
@pytest.mark.parametrize("activation", [nn.ReLU, nn.ReLU6])
def test_activations_after_convolutions_are_applied_by_the_convolution(activation):
    network = with_statistics(
        nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), activation(), nn.Conv2d(8, 4, 1), activation())
    )
    copy = fold_batchnorm(network)
    assert activation_calls(copy) == 0
    assert sum(isinstance(part, ConvolutionWithActivation) for part in copy.modules()) == 2
    images = (torch.rand(2, 3, 17, 20) * 4 - 2).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(copy(images), network(images), atol=1e-5, rtol=1e-4)
    # What the oneDNN kernel does not take goes through the modules: gradients wanted ...
    wanted = images.clone().requires_grad_()
    with torch.no_grad():
        expected = network(images)
    torch.testing.assert_close(copy(wanted), expected, atol=1e-5, rtol=1e-4)
    copy(wanted).sum().backward()
    assert wanted.grad is not None
    # ... or autocast on ...
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert copy(images).dtype == network(images).dtype == torch.bfloat16
    # ... or another dtype.
    with torch.no_grad():
        torch.testing.assert_close(copy.double()(images.double()), network.double()(images.double()))


class SharedActivation(ConvolutionAndBatchNorm):
    """One ReLU module called at two places: after the convolution, and after a sum another activation reads."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()
        self.act = nn.ReLU6()

    def forward(self, x):
        y = self.relu(self.bn(self.conv(x)))
        return self.act(self.relu(y + x))


@pytest.mark.parametrize("error", [RuntimeError, TypeError])
def test_a_fused_convolution_that_fails_its_check_stays_apart(error, monkeypatch):
    from sklearn_panda._engine import folding

    def fails(self, x):
        raise error("this torch's oneDNN operator takes other arguments")

    monkeypatch.setattr(folding.ConvolutionWithActivation, "forward", fails)
    network = with_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU6()))
    copy = fold_batchnorm(network)
    assert activation_calls(copy) == 1
    assert not any(isinstance(part, folding.ConvolutionWithActivation) for part in copy.modules())
    images = torch.rand(2, 3, 8, 8) - 0.5
    with torch.no_grad():
        torch.testing.assert_close(copy(images), network(images), atol=1e-5, rtol=1e-4)


def test_a_shared_activation_joins_its_convolution_and_stays_at_its_other_call():
    network = with_statistics(SharedActivation())
    copy = fold_batchnorm(network)
    images = torch.rand(2, 3, 8, 8) - 0.5
    with torch.no_grad():
        torch.testing.assert_close(copy(images), network(images), atol=1e-5, rtol=1e-4)
    if _pointwise_convolutions_available():
        assert activation_calls(copy) == 2 and isinstance(copy.conv, ConvolutionWithActivation)


@pytest.mark.skipif(not _pointwise_convolutions_available(), reason="this torch has no oneDNN convolution with an activation")
def test_an_activation_after_a_convolution_called_twice_stays_apart():
    network = ActivationAfterConvolutionCalledTwice().eval()
    copy = fold_batchnorm(network)
    assert activation_calls(copy) == 1
    assert not any(isinstance(part, ConvolutionWithActivation) for part in copy.modules())
    images = torch.rand(2, 3, 8, 8) - 0.5
    with torch.no_grad():
        torch.testing.assert_close(copy(images), network(images))


@pytest.mark.parametrize("module", [SharedConvolutionOutput, ConvolutionCalledTwice, DataDependent])
def test_batchnorm_that_cannot_be_folded_exactly_is_kept(module):
    network = with_statistics(module())
    copy = fold_batchnorm(network)
    assert batchnorms(copy) == 1
    images = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(copy(images), network(images))


def test_subclassed_convolutions_are_folded():
    class SamePadding(nn.Conv2d):
        def forward(self, x):
            return nn.functional.conv2d(nn.functional.pad(x, [1, 1, 1, 1]), self.weight, self.bias, self.stride)

    network = with_statistics(nn.Sequential(SamePadding(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU6()))
    copy = fold_batchnorm(network)
    assert batchnorms(copy) == 0
    assert all(not parameter.requires_grad for parameter in copy.parameters())
    images = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(copy(images), network(images), atol=1e-5, rtol=1e-4)


class StaticSamePadding(nn.Conv2d):
    """A convolution that zero-pads in a module of its own first (EfficientNet-Lite's "same" padding)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding):
        super().__init__(in_channels, out_channels, kernel_size, stride, bias=False)
        self.static_padding = padding if isinstance(padding, nn.Module) else nn.ZeroPad2d(padding)

    def forward(self, x):
        return nn.functional.conv2d(self.static_padding(x), self.weight, self.bias, self.stride)


class PassThrough(nn.Module):
    """An identity of its own (EfficientNet-Lite's 1 x 1 convolutions pad with one)."""

    def forward(self, x):
        return x


@pytest.mark.parametrize(
    ("padding", "kernel", "stride", "folded_in"),
    [
        ((1, 1, 1, 1), 3, 1, True),
        ((2, 2, 1, 1), (3, 5), 1, True),
        # Uneven: stride-2 "same" padding of an even map, then one wider after than before.
        ((0, 1, 0, 1), 3, 2, True),
        ((1, 2, 1, 2), 5, 2, True),
        ((2, 1, 0, 1), 3, 1, True),
        # Negative padding crops: kept as it is.
        ((-1, -1, 0, 0), 3, 1, False),
        # No padding at all, through a module of its own ...
        (PassThrough(), 1, 1, True),
        (PassThrough(), 3, 2, True),
        # ... but not another kind of padding.
        (nn.ReflectionPad2d(1), 3, 1, False),
    ],
)
@pytest.mark.parametrize("size", [(9, 11), (10, 12)])
def test_zero_padding_of_its_own_becomes_the_convolutions(padding, kernel, stride, folded_in, size):
    network = with_statistics(nn.Sequential(StaticSamePadding(3, 4, kernel, stride, padding), nn.BatchNorm2d(4)))
    copy = fold_batchnorm(network)
    assert batchnorms(copy) == 0
    assert (type(copy.get_submodule("0")) is nn.Conv2d) == folded_in
    images = torch.rand(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(copy(images), network(images), atol=1e-5, rtol=1e-4)
