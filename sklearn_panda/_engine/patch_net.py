"""The patch detector's network: a backbone split at its ``layers``, and the feature maps it gives.

The backbone is split by node name (:func:`~sklearn_panda._engine.stages.split_model`)
with the chosen layers as its stage ends, so that the same network can be
saved, moved and adapted as the image-level detectors' are. Default layers
come from the family's stage ends: the last one at stride 8 and the last at
stride 16 (PatchCore's choice, Roth et al. CVPR 2022: ResNet ``layer2`` and
``layer3``), measured on a blank image. No estimator code here.
"""

import torch
from torchvision.transforms.v2 import functional as TF

from .backbones import build_feature_net, build_model
from .data import IMAGENET_MEAN, IMAGENET_STD
from .device import seeded_cpu_generator
from .families import family_stage_ends
from .stages import split_model

# The strides of the default layers: the finest maps that still carry mid-level meaning.
DEFAULT_STRIDES = (8, 16)

# Side of the blank image the stage ends' strides are measured on.
PROBE_SIZE = 224

LAYERS_HINT = (
    "Set layers to the names of two nodes or modules whose outputs are feature maps (n, C, H, W), "
    "such as the ends of whole blocks (torchvision.models.feature_extraction.get_graph_node_names "
    "lists them)."
)


def stage_outputs(net, images):
    """The output of every stage of a split network for ``images``, in order.

    The last entry of ``net.stages`` (the pooling to vectors) is not run.

    Examples
    --------
    >>> import torch, torchvision
    >>> from sklearn_panda._engine.patch_net import split_patch_net, stage_outputs
    >>> net = split_patch_net(torchvision.models.resnet18(), ["layer1", "layer2"])
    >>> [tuple(output.shape) for output in stage_outputs(net, torch.zeros(1, 3, 64, 64))]
    [(1, 64, 16, 16), (1, 128, 8, 8)]
    """
    outputs = []
    for stage in (*net.trunk, *list(net.stages)[:-1]):
        images = stage(images)
        outputs.append(images)
    return outputs


def normalized_stage_outputs(net, images):
    """:func:`stage_outputs` of ``images`` in [0, 1], normalised with the ImageNet mean and standard deviation."""
    images = TF.normalize(images, list(IMAGENET_MEAN), list(IMAGENET_STD))
    return stage_outputs(net, images.contiguous(memory_format=torch.channels_last))


def default_layers(model):
    """The family's stage ends at strides 8 and 16 (the last of each), for ``model``.

    Examples
    --------
    >>> import torchvision
    >>> from sklearn_panda._engine.patch_net import default_layers
    >>> default_layers(torchvision.models.resnet18())
    ['layer2', 'layer3']
    >>> default_layers(torchvision.models.mobilenet_v2())
    ['features.6', 'features.13']
    """
    family = family_stage_ends(model)
    if family is None:
        raise ValueError(
            f"{type(model).__name__} is not a network whose stages are known (torchvision's classifiers, "
            f"EfficientNet-Lite), so there are no default layers. {LAYERS_HINT}"
        )
    net = split_model(model, 1, stage_ends=family.ends, feature_node=family.ends[-1])
    with torch.no_grad():
        outputs = stage_outputs(net, torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE))
    strides = {
        name: PROBE_SIZE // output.shape[-1]
        for name, output in zip(family.ends, outputs)
        if output.ndim == 4 and output.shape[-1] == output.shape[-2]
    }
    layers = []
    for stride in DEFAULT_STRIDES:
        at_stride = [name for name, found in strides.items() if found == stride]
        if not at_stride:
            raise ValueError(
                f"{type(model).__name__} has no stage ending in a feature map at stride {stride} "
                f"(found {strides or 'none'}). {LAYERS_HINT}"
            )
        layers.append(at_stride[-1])
    return layers


def build_patch_net(backbone, weights, layers, *, vector_length=None, seed=0, device="cpu"):
    """The backbone split at ``layers`` (``"auto"``: :func:`default_layers`), and the layers.

    The first layer's stage is frozen (the trunk), the last stage ends at the
    last layer; nothing after it is kept. With ``vector_length`` (inputs are
    vectors of that length) the whole backbone is one stage and ``layers``
    is ``[]``. Random initialisation (``weights=None``) is seeded with
    ``seed`` without touching torch's global generator. The network comes
    frozen, in eval mode, on ``device`` (image networks channels-last).

    Returns
    -------
    net : FeatureNet
    layers : list of str

    Examples
    --------
    >>> from sklearn_panda._engine.patch_net import build_patch_net
    >>> net, layers = build_patch_net("resnet18", None, "auto")
    >>> layers
    ['layer2', 'layer3']
    """
    with seeded_cpu_generator(seed):
        if vector_length is not None:
            if layers != "auto":
                raise ValueError("layers names feature maps of images; with vectors (n, d) leave it 'auto'.")
            net = build_feature_net(backbone, weights, 1, torch.zeros(1, vector_length))
            if net.expects_images:
                raise ValueError(
                    f"The backbone {backbone!r} expects images of shape (n, H, W), (n, H, W, C) or "
                    f"(n, C, H, W); got a 2-D array, which is read as vectors (n_samples, n_features)."
                )
            layers = []
        else:
            model = build_model(backbone, weights)
            layers = default_layers(model) if layers == "auto" else list(layers)
            net = split_patch_net(model, layers)
            net.built_from = {"backbone": backbone, "weights": weights}
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    if net.expects_images:
        net = net.to(memory_format=torch.channels_last)
    return net.to(device).eval(), layers


def split_patch_net(model, layers):
    """``model`` split with ``layers`` as its stage ends; every parameter frozen."""
    if isinstance(layers, str) or not layers or not all(isinstance(name, str) for name in layers):
        raise ValueError(
            f"layers must be 'auto' or a non-empty list of node or module names, in forward order "
            f"(their maps are combined); got {layers!r}."
        )
    try:
        net = split_model(model, 0, stage_ends=layers, feature_node=layers[-1])
    except ValueError as error:
        # split_model's words are its own (stage ends, feature node): here they are the layers.
        raise ValueError(
            f"layers={layers!r} cannot split {type(model).__name__} (each layer ends a stage, in forward "
            f"order; the last ends the network): {error}"
        ) from None
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net.eval()
