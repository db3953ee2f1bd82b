"""A fitted network in a file written by :func:`~sklearn_panda.save`, and rebuilt from it.

The file holds the unsplit network's ``state_dict`` under its own names
(torch.fx's tracing never shows in it), the backbone and builder arguments
``fit`` built it from (:func:`architecture_arguments`: what some weights change
in the architecture), the arguments it was split with, which parameters train,
and its memory format.
:func:`rebuilt_network` builds the architecture again with random values (no
download), loads the saved ones into it and splits it as ``fit`` did. The
encoding of tensors and small values is the caller's (``encode`` / ``decode``:
:mod:`sklearn_panda._io.persistence`'s).
"""

import collections

import torch

from .._engine.backbones import (
    architecture_arguments,
    build_architecture,
    build_feature_net,
    materialize_lazy_modules,
    split_feature_net,
)


def network_entry(estimator, net, where, encode):
    """The file's entry for ``estimator``'s fitted network ``net`` (a ``FeatureNet``).

    Raises ValueError where the network was built by another backbone factory than the estimator's
    ``backbone`` parameter names (changed by ``set_params`` after fit): a file names one factory.
    """
    model = net.model
    state = model.state_dict()
    return {
        "model_state_dict": {key: encode(tensor, f"{where}net_.model.{key}") for key, tensor in state.items()},
        # Modules' state-dict versions (MNASNet reads its own when loading).
        "model_state_metadata": encode(
            {prefix: dict(values) for prefix, values in getattr(state, "_metadata", {}).items()}, where
        ),
        **_built_from(estimator, net, where),
        "trainable": [key for key, parameter in model.named_parameters() if parameter.requires_grad],
        "channels_last": _is_channels_last(net),
    }


def rebuilt_network(estimator, attributes, saved, path, decode):
    """The network of a file's entry ``saved`` (format 3 and later, or format 2), for ``estimator``
    (its parameters and its fitted ``attributes`` read from the file)."""
    if "model_state_dict" in saved:
        return _rebuild_net(estimator, attributes, saved, path, decode)
    return _rebuild_net_of_format_2(estimator, attributes, saved, path)


def _built_from(estimator, net, where):
    """The backbone name (``None``: the parameter's factory), builder arguments and split arguments
    that rebuild ``net``.

    What ``fit`` built the network from, which a later ``set_params(backbone=...)``,
    ``set_params(weights=...)`` or ``set_params(feature_node=...)`` does not change (a network built
    elsewhere: the parameters).
    """
    built = getattr(net, "built_from", None) or {"backbone": estimator.backbone, "weights": estimator.weights}
    backbone = built["backbone"]
    if "architecture" in built:
        architecture = built["architecture"]
    else:
        architecture = architecture_arguments(backbone, built["weights"])
    # How fit split the network (an older network, or one split by fitted state: the estimator's say).
    split = {"split": built["split"]} if built.get("split") is not None else {}
    if isinstance(backbone, str):
        return {"backbone": backbone, "architecture": architecture, **split}
    if backbone is not estimator.backbone:
        raise ValueError(
            f"Cannot save {where or 'the estimator'}: its network was built by the backbone factory "
            f"{_describe_backbone(backbone)}, but its backbone parameter is now "
            f"{_describe_backbone(estimator.backbone)} (set after fit). A file names one factory: set "
            "backbone back to the fitted one, or fit again, before saving."
        )
    return {"backbone": None, "architecture": architecture, **split}


def _describe_backbone(backbone):
    if isinstance(backbone, str):
        return repr(backbone)
    return f"{getattr(backbone, '__module__', '?')}.{getattr(backbone, '__qualname__', repr(backbone))}"


def _is_channels_last(net):
    """Whether the convolution weights are stored channels-last (it changes the last bits of results)."""
    return any(
        p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
        for p in net.parameters()
    )


def _rebuild_net(estimator, attributes, saved, path, decode):
    """The network of a format-3 file: rebuilt unsplit, its saved values loaded, split as ``fit`` split it."""
    spec = attributes["input_spec_"]
    # Lazy layers of a vector backbone take their width from one example row.
    example = torch.zeros(1, spec.channels) if spec.kind == "vectors" else None
    # The backbone fit built the network from (files before it was recorded: the parameter's).
    backbone = saved.get("backbone") or estimator.backbone
    # Random initialisation, overwritten just below, must not move the global generator.
    with torch.random.fork_rng(devices=[]):
        model = build_architecture(backbone, saved["architecture"])
        materialize_lazy_modules(model, example)
    state = collections.OrderedDict(saved["model_state_dict"])
    state._metadata = decode(saved["model_state_metadata"])
    _load_checked(model, state, backbone, path)
    # Split as fit split it (files before the split was recorded: as the parameters say).
    split = saved.get("split") or estimator._split_arguments(attributes)
    net = split_feature_net(model, example=example, **split)
    net.built_from = {"backbone": backbone, "architecture": saved["architecture"], "split": split}
    return _as_saved(net, model, saved)


def _load_checked(module, state, backbone, path):
    own = module.state_dict()
    mismatched = sorted(set(own) ^ set(state)) + sorted(
        key for key in set(own) & set(state) if own[key].shape != state[key].shape
    )
    if mismatched:
        raise ValueError(
            f"The network saved in {path} does not fit the rebuilt backbone "
            f"{backbone if isinstance(backbone, str) else 'factory'}: "
            f"{len(mismatched)} keys differ "
            f"({', '.join(mismatched[:5])}{' ...' if len(mismatched) > 5 else ''})."
        )
    module.load_state_dict(state)


def _rebuild_net_of_format_2(estimator, attributes, saved, path):
    """The network of a format-2 file, which holds the split network's state dict.

    Its keys are those torch.fx gave the split network when it was saved; a
    network whose weights change its architecture (GoogLeNet, Inception V3,
    ViT with SWAG weights) cannot load from it: refit and save it again.
    """
    spec = attributes["input_spec_"]
    example = torch.zeros(1, spec.channels) if spec.kind == "vectors" else None
    with torch.random.fork_rng(devices=[]):
        net = build_feature_net(estimator.backbone, None, example=example, **estimator._split_arguments(attributes))
    _load_checked(net, saved["state_dict"], estimator.backbone, path)
    return _as_saved(net, net, saved)


def _as_saved(net, module, saved):
    """``net`` with the parameters of ``module`` (whose names the file's list uses) trainable as
    saved, and channels-last where it was."""
    trainable = set(saved["trainable"])
    for key, parameter in module.named_parameters():
        parameter.requires_grad_(key in trainable)
    return net.to(memory_format=torch.channels_last) if saved["channels_last"] else net
