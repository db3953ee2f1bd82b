"""Where each torchvision classifier family's stages end, by node name; and a plain Sequential's.

:func:`family_stage_ends` gives the default stage ends (and, where it departs
from the defaults, the feature node and the classifier head) of every
torchvision classifier family and of EfficientNet-Lite; networks of no known
family need ``stage_ends``, except a plain ``nn.Sequential``, whose children
holding parameters are its stages (:func:`sequential_stage_ends`). Torch
only; no estimator code.
"""

from typing import NamedTuple

import torchvision
from torch import nn


def has_parameters(module):
    """Whether ``module`` (or any module inside it) holds a parameter."""
    return next(module.parameters(), None) is not None


class FamilyStages(NamedTuple):
    """A family's default split: stage ends, and where it departs from the defaults.

    ``feature_node`` ``None``: the input of the classifier. ``head`` ``None``:
    the layers from the feature node to the output when the classifier is
    linear; otherwise the name of the module that maps features to logits.
    """

    ends: list
    feature_node: str | None = None
    head: str | None = None


def _resnet(model):
    return ["maxpool", "layer1", "layer2", "layer3", "layer4"]


def _efficientnet(model):
    # features[0] is the stem, each later entry one stage; the last entry, the
    # 1x1 convolution head, belongs with the last stage.
    last = len(model.features) - 1
    return [f"features.{index}" for index in range(last - 1)] + [f"features.{last}"]


def _mobilenet(model):
    # Blocks are listed one by one: a stage is a run of blocks of one output
    # width (the rows of the architecture's table), the head joins the last.
    blocks = list(model.features)
    ends = ["features.0"]
    for index in range(1, len(blocks) - 1):
        if index == len(blocks) - 2 or blocks[index].out_channels != blocks[index + 1].out_channels:
            ends.append(f"features.{index}")
    ends[-1] = f"features.{len(blocks) - 1}"
    return ends


def _mnasnet(model):
    # layers: stem convolutions, one nn.Sequential per stage, then the head convolution.
    layers = list(model.layers)
    stacks = [index for index, layer in enumerate(layers) if isinstance(layer, nn.Sequential)]
    return [f"layers.{stacks[0] - 1}"] + [f"layers.{index}" for index in stacks[:-1]] + [f"layers.{len(layers) - 1}"]


def _shufflenet(model):
    return ["maxpool", "stage2", "stage3", "conv5"]


def _regnet(model):
    return ["stem"] + [f"trunk_output.{name}" for name, _ in model.trunk_output.named_children()]


def _densenet(model):
    # A transition (downsampling) opens the next stage, as in ResNets; norm5 closes the last.
    names = [name for name, _ in model.features.named_children()]
    blocks = [name for name in names if name.startswith("denseblock")]
    return ["features.pool0"] + [f"features.{name}" for name in blocks[:-1]] + [f"features.{names[-1]}"]


def _convnext(model):
    # features: the stem, then each stage preceded by its downsampling layer.
    return ["features.0"] + [f"features.{index}" for index in range(1, len(model.features), 2)]


def _swin(model):
    # Every block is a stage, as in ViTs; patch merging opens the next block.
    ends = ["features.0"]
    for index in range(1, len(model.features), 2):
        ends += [f"features.{index}.{block}" for block in range(len(model.features[index]))]
    return ends


def _vit(model):
    return [f"encoder.layers.{name}" for name, _ in model.encoder.layers.named_children()]


def _maxvit(model):
    return ["stem"] + [f"blocks.{index}" for index in range(len(model.blocks))]


def _vgg(model):
    # Convolution blocks end at their max pooling; then the two hidden fully
    # connected layers, each a stage ending before the next Linear.
    pools = [f"features.{index}" for index, layer in enumerate(model.features) if isinstance(layer, nn.MaxPool2d)]
    linears = [index for index, layer in enumerate(model.classifier) if isinstance(layer, nn.Linear)]
    return pools + [f"classifier.{index - 1}" for index in linears[1:]]


def _squeezenet(model):
    # The first max pooling closes the stem; each later one opens a stage.
    pools = [index for index, layer in enumerate(model.features) if isinstance(layer, nn.MaxPool2d)]
    ends = [pools[0]] + [index - 1 for index in pools[1:]] + [len(model.features) - 1]
    return [f"features.{index}" for index in ends]


def _googlenet(model):
    return ["maxpool2", "inception3b", "inception4e", "inception5b"]


def _inception3(model):
    return ["maxpool2", "Mixed_5d", "Mixed_6e", "Mixed_7c"]


def _efficientnet_lite(model):
    # As torchvision's EfficientNets: the stem, one stage per group of blocks,
    # the 1x1 convolution head with the last group. The features are that
    # head's output, pooled, as the package always took them (the model's own
    # pooling reads the batch size from its input, which no cut can carry).
    ends, last = ["_swish"], -1
    for arguments in model._blocks_args:
        last += arguments.num_repeat
        ends.append(f"_blocks.{last}")
    ends[-1] = "_swish_1"
    return FamilyStages(ends, feature_node="_swish_1", head="_fc")


def _families():
    models = torchvision.models
    families = [
        (models.ResNet, _resnet),
        (models.EfficientNet, _efficientnet),
        ((models.MobileNetV2, models.MobileNetV3), _mobilenet),
        (models.MNASNet, _mnasnet),
        (models.ShuffleNetV2, _shufflenet),
        (models.RegNet, _regnet),
        (models.DenseNet, _densenet),
        (models.ConvNeXt, _convnext),
        (models.SwinTransformer, _swin),
        (models.VisionTransformer, _vit),
        (models.MaxVit, _maxvit),
        ((models.VGG, models.AlexNet), _vgg),
        (models.SqueezeNet, _squeezenet),
        (models.GoogLeNet, _googlenet),
        (models.Inception3, _inception3),
    ]
    try:
        from efficientnet_lite_pytorch import EfficientNet as EfficientNetLite
    except ImportError:
        pass
    else:
        families.append((EfficientNetLite, _efficientnet_lite))
    return families


def family_stage_ends(model):
    """The default :class:`FamilyStages` of ``model``'s family, or ``None`` for another network.

    Families are recognised by class (a factory may return them too):
    torchvision's ResNet (ResNeXt, Wide ResNet), EfficientNet (V1, V2),
    MobileNetV2 / V3, MNASNet, ShuffleNetV2, RegNet, DenseNet, ConvNeXt, Swin
    (V1, V2), ViT, MaxViT, VGG, AlexNet, SqueezeNet, GoogLeNet, Inception V3,
    and EfficientNet-Lite.

    Examples
    --------
    >>> import torchvision
    >>> from sklearn_panda._engine.families import family_stage_ends
    >>> family_stage_ends(torchvision.models.resnet18()).ends
    ['maxpool', 'layer1', 'layer2', 'layer3', 'layer4']
    >>> family_stage_ends(torchvision.models.mobilenet_v2()).ends
    ['features.0', 'features.1', 'features.3', 'features.6', 'features.10', 'features.13', 'features.16', 'features.18']
    """
    for classes, stages in _families():
        if isinstance(model, classes):
            found = stages(model)
            return found if isinstance(found, FamilyStages) else FamilyStages(found)
    return None


def sequential_stage_ends(model):
    """A plain ``nn.Sequential``'s stages: each child that holds parameters, with the children
    without parameters (activations, pooling) that follow it; the names of their last children."""
    ends, current = [], None
    for name, child in model.named_children():
        if has_parameters(child) and current is not None:
            ends.append(current)
        current = name
    return ends + [current] if current is not None else ends
