"""Which torch device an estimator runs on, when fitted and when loaded."""

import warnings

import torch


def resolve_device(device):
    """``"auto"`` -> CUDA when available, else CPU; refuse CUDA that is not there.

    Examples
    --------
    >>> from sklearn_panda._device import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} was requested but CUDA is not available here; "
            "use device='cpu' or device='auto'."
        )
    return device


def loadable_device(fitted_device):
    """Where a model fitted on ``fitted_device`` goes when loaded here: the CPU,
    with a warning, when it was fitted on CUDA and CUDA is not available.

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._device import loadable_device
    >>> loadable_device(torch.device("cpu"))
    device(type='cpu')
    """
    if fitted_device.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(
            "This estimator was fitted on CUDA, which is not available here; "
            "its network is loaded on the CPU."
        )
        return torch.device("cpu")
    return fitted_device
