"""BatchNorm folded into the convolution before it, for networks that only infer.

In eval mode a BatchNorm is an affine map per channel, so a convolution
followed by one is a single convolution with rescaled weights and a shifted
bias. Folding saves a pass over every feature map the network makes: on
EfficientNet-Lite0 at 640 x 640 on a CPU, BatchNorm took about a sixth of the
forward pass (``benchmarks/RESULTS.md``). torch's own fusion
(``torch.fx.experimental.optimization.fuse``) looks for ``nn.Conv2d`` modules
in a graph traced with torch's default leaves, so it misses convolutions that
subclass ``nn.Conv2d`` (EfficientNet-Lite's "same" padding convolutions are
traced through, down to ``F.conv2d``); here every ``nn.Conv2d`` and
``nn.BatchNorm2d``, subclass or not, is a leaf. Three more passes go the same
way: a convolution that zero-pads in a module of its own (EfficientNet-Lite's
``static_padding``) pads as it convolves; on a CPU a ReLU or ReLU6 that alone
reads a convolution's output is applied by oneDNN as the convolution writes
it (:class:`ConvolutionWithActivation`); any other such activation
overwrites it.

The folded network is a copy: the original keeps its weights (what ``save``
stores and adaptation trains). :func:`folded` keeps one copy per network and
makes it again once the original's weights have changed.
"""

import copy
import functools
import weakref

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .compilation import weights_version
from .stages import FeatureNet, Trunk

_FOLDED = weakref.WeakKeyDictionary()


class _ConvolutionLeaves(fx.Tracer):
    """torch's default leaves, and every convolution and BatchNorm, subclasses included."""

    def is_leaf_module(self, module, qualified_name):
        return isinstance(module, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(module, qualified_name)


def fold_batchnorm(module):
    """A copy of ``module`` (in eval mode) with each BatchNorm after a convolution folded into it.

    A BatchNorm is folded where its only input is the output of a
    convolution module called once in the network whose output nothing else
    reads; an activation module with an ``inplace`` flag whose every call
    reads such an output alone then overwrites it, or on a CPU, for a ReLU or ReLU6, is applied by
    oneDNN as the convolution writes it (:class:`ConvolutionWithActivation`). The copy computes what
    ``module`` computes in eval mode, up to float rounding, and is in eval mode with every parameter
    frozen. A
    module that ``torch.fx`` cannot trace is copied unfolded.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sklearn_panda._engine.folding import fold_batchnorm
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    >>> with torch.no_grad():
    ...     _ = net[1].running_mean.normal_()
    >>> folded = fold_batchnorm(net)
    >>> sum(isinstance(part, nn.BatchNorm2d) for part in folded.modules())
    0
    >>> x = torch.randn(1, 3, 8, 8)
    >>> torch.allclose(folded(x), net(x), atol=1e-5)
    True
    """
    module = copy.deepcopy(module).eval()
    try:
        graph = _ConvolutionLeaves().trace(module)
    except Exception:  # noqa: BLE001 - any network fx cannot trace runs as it is
        return _frozen(module)
    traced = fx.GraphModule(module, graph)
    _padding_into_convolutions(traced)
    modules = _modules_by_target(traced)
    calls = {}
    for node in traced.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in list(traced.graph.nodes):
        source = node.args[0] if node.op == "call_module" and node.args else None
        if (
            isinstance(modules.get(node.target), nn.BatchNorm2d)
            and len(node.args) == 1
            and not node.kwargs
            and isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], nn.Conv2d)
            and calls[source.target] == 1
            and len(source.users) == 1
            and modules[node.target].track_running_stats
        ):
            _replace(traced, source.target, fuse_conv_bn_eval(modules[source.target], modules[node.target]))
            node.replace_all_uses_with(source)
            traced.graph.erase_node(node)
    _activations_into_convolutions(traced, calls)
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    _activations_in_place(traced)
    traced.recompile()
    return _frozen(traced)


def _padding_into_convolutions(traced):
    """Convolutions that zero-pad their input in a module of their own (``static_padding``, as the
    "same"-padding convolutions of EfficientNet-Lite, or an identity there where nothing is padded)
    become plain ``nn.Conv2d`` padding as they convolve: one copy of the padded feature map fewer.
    Each is checked on a random input and kept where the results differ.

    Uneven padding (one pixel more after than before, as a stride-2 "same" convolution of an
    even map has) becomes the larger padding on both sides with a kernel grown by the difference,
    the new taps zero: they meet only the extra padding, so every output is the same sum. (At
    640 x 640 the pad before EfficientNet-Lite0's first stride-2 depthwise convolution took
    15 ms, the convolution with a 4 x 4 kernel 1.2 ms.)
    """
    for node in traced.graph.nodes:
        if node.op != "call_module":
            continue
        convolution = traced.get_submodule(node.target)
        padding = getattr(convolution, "static_padding", None)
        if (
            type(convolution) is nn.Conv2d
            or not isinstance(convolution, nn.Conv2d)
            or not isinstance(padding, nn.Module)
            or tuple(convolution.padding) != (0, 0)
            or convolution.padding_mode != "zeros"
        ):
            continue
        # Another module there is taken to pad nothing (EfficientNet-Lite's 1 x 1 convolutions hold an
        # identity of their own): the check on a random input below keeps the convolution where that
        # is wrong (a check, not a proof). A plain convolution can take the activation after it
        # (_activations_into_convolutions).
        left, right, top, bottom = padding.padding if isinstance(padding, nn.ZeroPad2d) else (0, 0, 0, 0)
        if min(left, right, top, bottom) < 0 or tuple(convolution.dilation) != (1, 1):
            continue
        # The kernel grows towards the side padded less, by the difference.
        (kernel_height, kernel_width), weight = convolution.kernel_size, convolution.weight
        rows = slice(bottom - top, None) if bottom >= top else slice(0, kernel_height)
        columns = slice(right - left, None) if right >= left else slice(0, kernel_width)
        plain = nn.Conv2d(
            convolution.in_channels, convolution.out_channels,
            (kernel_height + abs(bottom - top), kernel_width + abs(right - left)), convolution.stride,
            (max(top, bottom), max(left, right)), 1, convolution.groups, convolution.bias is not None,
        ).to(weight.device, weight.dtype)
        with torch.no_grad():
            plain.weight.zero_()
            plain.weight[:, :, rows, columns] = weight
            if convolution.bias is not None:
                plain.bias.copy_(convolution.bias)
        plain.eval()
        probe = _probe(convolution)
        with torch.no_grad():
            expected, found = convolution(probe), plain(probe)
            same = expected.shape == found.shape and torch.allclose(found, expected, rtol=1e-4, atol=1e-5)
        if same:
            _replace(traced, node.target, plain)


class ConvolutionWithActivation(nn.Module):
    """A plain ``nn.Conv2d`` and the ReLU or ReLU6 after it, one oneDNN call on a CPU.

    ``torch.ops.mkldnn._convolution_pointwise`` (the kernel that
    ``torch.compile``'s CPU backend calls for the same pattern) applies the
    activation as the convolution writes its output: one pass over the
    feature map fewer (EfficientNet-Lite0 to its stride-16 block at
    640 x 640, 2 cores of an Intel Xeon (Sapphire Rapids): 1.06x to 1.14x
    the forward pass with the activations in place;
    ``benchmarks/patch_scoring_speed.py --forward-only``). Inputs that
    the kernel does not take (another device, another dtype, gradients
    wanted, autocast on) go through the convolution and the activation as they are.
    """

    def __init__(self, convolution, activation):
        super().__init__()
        self.convolution = convolution
        self.activation = activation
        self.attribute, self.scalars = _POINTWISE[type(activation)]

    def forward(self, x):
        weight, bias = self.convolution.weight, self.convolution.bias
        if (
            x.device.type == weight.device.type == "cpu"
            and x.dtype == weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and not torch.is_autocast_enabled("cpu")
        ):
            convolution = self.convolution
            return torch.ops.mkldnn._convolution_pointwise(
                x, weight, bias, list(convolution.padding), list(convolution.stride), list(convolution.dilation),
                convolution.groups, self.attribute, self.scalars, None,
            )
        return self.activation(self.convolution(x))


# The activations oneDNN applies inside a convolution: type -> (its name there, its scalars).
_POINTWISE = {nn.ReLU: ("relu", []), nn.ReLU6: ("hardtanh", [0.0, 6.0])}


@functools.cache
def _pointwise_convolutions_available():
    """Whether this torch has oneDNN's convolution with a fused activation (CPU builds with mkldnn)."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    except (AttributeError, RuntimeError):
        return False


def _activations_into_convolutions(traced, calls):
    """ReLUs and ReLU6s that alone read a plain convolution's output (called once) become part of it
    (:class:`ConvolutionWithActivation`); each is checked on a random input, kept apart where the
    results differ. ``calls``: how often each module is called in the graph."""
    if not _pointwise_convolutions_available():
        return
    modules = _modules_by_target(traced)
    for node in list(traced.graph.nodes):
        activation = modules.get(node.target) if node.op == "call_module" else None
        source = node.args[0] if node.op == "call_module" and len(node.args) == 1 else None
        if type(activation) not in _POINTWISE or node.kwargs or not isinstance(source, fx.Node):
            continue
        convolution = modules.get(source.target) if source.op == "call_module" else None
        if (
            type(convolution) is not nn.Conv2d
            or calls[source.target] != 1
            or len(source.users) != 1
            or isinstance(convolution.padding, str)
            or convolution.padding_mode != "zeros"
            or convolution.weight.device.type != "cpu"
        ):
            continue
        fused = ConvolutionWithActivation(convolution, activation).eval()
        probe = _probe(convolution)
        try:
            with torch.inference_mode():
                same = torch.allclose(fused(probe), activation(convolution(probe)), rtol=1e-4, atol=1e-5)
        except (RuntimeError, TypeError):  # another torch's operator schema: the modules stay apart
            same = False
        if same:
            _replace(traced, source.target, fused)
            node.replace_all_uses_with(source)
            traced.graph.erase_node(node)


def _activations_in_place(traced):
    """Activations (``nn.ReLU6`` and the like) that only ever read a convolution's output, nothing
    else reading it, overwrite it: one feature map fewer allocated and written per activation."""
    modules = _modules_by_target(traced)
    sites = {}
    for node in traced.graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        if type(module).__module__ == "torch.nn.modules.activation" and isinstance(getattr(module, "inplace", None), bool):
            sites.setdefault(node.target, []).append(node)
    for target, nodes in sites.items():
        if all(
            len(node.args) == 1
            and not node.kwargs
            and isinstance(node.args[0], fx.Node)
            and node.args[0].op == "call_module"
            and isinstance(modules[node.args[0].target], nn.Conv2d)
            and len(node.args[0].users) == 1
            for node in nodes
        ):
            modules[target].inplace = True


def folded(net):
    """:func:`fold_batchnorm` of each stage of a :class:`~sklearn_panda._engine.stages.FeatureNet`
    (the last, its pooling, shared), as a ``FeatureNet`` for inference without a head; one copy per
    ``net``, made again when its weights change."""
    version = weights_version(net)
    cached = _FOLDED.get(net)
    if cached is None or cached[0] != version:
        trunk = Trunk(*[fold_batchnorm(stage) for stage in net.trunk], float32_stages=net.trunk.float32_stages)
        stages = nn.Sequential(*[fold_batchnorm(stage) for stage in list(net.stages)[:-1]], net.stages[-1])
        copy_ = FeatureNet(trunk, stages, None, expects_images=net.expects_images)
        if net.expects_images:
            copy_ = copy_.to(memory_format=torch.channels_last)
        cached = (version, copy_.eval())
        _FOLDED[net] = cached
    return cached[1]


def _probe(convolution):
    """A random input for ``convolution`` (seeded, on its device and in its dtype), a few strides
    past its kernel on each side: what each replacement of a pass is checked on."""
    side = max(convolution.kernel_size) + 2 * max(convolution.stride) + 3
    probe = torch.randn(1, convolution.in_channels, side, side + 1, generator=torch.Generator().manual_seed(0))
    return probe.to(convolution.weight.device, convolution.weight.dtype)


def _modules_by_target(traced):
    """Every module of ``traced`` under every name a graph node may call it by (a module held at
    two places, such as a ReLU shared by several calls and kept in a fused convolution, has both)."""
    return dict(traced.named_modules(remove_duplicate=False))


def _replace(graph_module, target, new):
    parent, _, name = target.rpartition(".")
    setattr(graph_module.get_submodule(parent) if parent else graph_module, name, new)


def _frozen(module):
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.eval()
