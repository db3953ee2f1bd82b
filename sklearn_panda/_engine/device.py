"""Which torch device an estimator runs on, when fitted and when loaded, where its torch state lives,
and a seeded block of torch's global random generator that leaves it as it was."""

import contextlib
import warnings

import torch

# Where a fitted attribute holding torch modules or tensors lives, as an
# estimator declares it in ``_torch_attributes``:
# on the estimator's ``device_``, and moved with it (the network, a head);
ON_DEVICE = "device"
# on the CPU whatever ``device_`` is, to spare the device's memory (SES's
# checkpoints, moved there one at a time to score; the EWC Fisher).
ON_CPU = "cpu"


def resolve_device(device):
    """``"auto"`` -> CUDA when available, else CPU; refuse a device that is not there.

    The CPU, CUDA (a GPU index below the count of GPUs) and the backends torch
    reports available here (``"mps"``, ``"xpu"``); any other torch device
    (``"meta"``: tensors without data) is refused.

    Examples
    --------
    >>> from sklearn_panda._engine.device import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device={device!r} is not a torch device ('auto', 'cpu', 'cuda', 'cuda:1', ...): {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} was requested but CUDA is not available here; "
            "use device='cpu' or device='auto'."
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            f"device={str(device)!r} was requested but this machine has {torch.cuda.device_count()} CUDA "
            "device(s), numbered from 0."
        )
    if device.type not in ("cpu", "cuda") and not _backend_available(device.type):
        raise ValueError(
            f"device={str(device)!r} is not available here: give 'cpu', 'cuda' (where CUDA is available) "
            "or 'auto', or a device type whose torch backend is available ('mps', 'xpu', ...)."
        )
    return device


def _backend_available(device_type):
    """Whether torch can run on ``device_type`` here, where torch can tell (``mps``, ``xpu``, a backend
    module with ``is_available``); ``"meta"`` (tensors without data) never."""
    if device_type == "meta":
        return False
    backend = torch.backends.mps if device_type == "mps" else getattr(torch, device_type, None)
    is_available = getattr(backend, "is_available", None)
    return is_available() if callable(is_available) else True


def loadable_device(fitted_device):
    """Where a model fitted on ``fitted_device`` goes when loaded here: the CPU,
    with a warning, when it was fitted on CUDA and CUDA is not available (or
    on another backend that is not available here); the first GPU, with a
    warning, when it was fitted on a GPU index this machine does not have.

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.device import loadable_device
    >>> loadable_device(torch.device("cpu"))
    device(type='cpu')
    """
    if fitted_device.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(
            "This estimator was fitted on CUDA, which is not available here; "
            "its network is loaded on the CPU."
        )
        return torch.device("cpu")
    if fitted_device.type not in ("cpu", "cuda") and not _backend_available(fitted_device.type):
        warnings.warn(
            f"This estimator was fitted on {str(fitted_device)!r}, which is not available here; "
            "its network is loaded on the CPU."
        )
        return torch.device("cpu")
    if fitted_device.type == "cuda" and (fitted_device.index or 0) >= torch.cuda.device_count():
        warnings.warn(
            f"This estimator was fitted on {str(fitted_device)!r}, and this machine has "
            f"{torch.cuda.device_count()} CUDA device(s); its network is loaded on 'cuda:0' "
            "(load's device= chooses another)."
        )
        return torch.device("cuda", 0)
    return fitted_device


def place_torch_state(attributes, declaration, device):
    """Move the torch state among ``attributes`` (a dict, changed in place) where ``declaration`` says.

    ``declaration`` maps attribute names to :data:`ON_DEVICE` or :data:`ON_CPU`
    (an estimator's ``_torch_attributes``); an entry that ``attributes`` lacks is
    skipped. ``device`` is the estimator's ``device_``: unpickling and
    :func:`sklearn_panda.load` read torch state onto the CPU, so that state
    recorded on a GPU loads without CUDA, and put it in place here.

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.device import ON_CPU, ON_DEVICE, place_torch_state
    >>> attributes = {"head_": torch.nn.Linear(2, 1), "checkpoints_": [{"w": torch.zeros(2)}], "offset_": 0.5}
    >>> place_torch_state(attributes, {"head_": ON_DEVICE, "checkpoints_": ON_CPU}, torch.device("cpu"))
    >>> attributes["checkpoints_"][0]["w"].device
    device(type='cpu')
    """
    for name, placement in declaration.items():
        if name in attributes:
            target = device if placement == ON_DEVICE else torch.device("cpu")
            attributes[name] = _moved(attributes[name], target)


def _moved(value, device):
    """``value`` on ``device``: a module or tensor, a list or dict of them, or ``None``."""
    if isinstance(value, (torch.nn.Module, torch.Tensor)):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _moved(item, device) for key, item in value.items()}
    if isinstance(value, list):
        return [_moved(item, device) for item in value]
    return value


@contextlib.contextmanager
def seeded_cpu_generator(seed):
    """torch's global CPU generator seeded with ``seed`` for the block, and put back afterwards.

    For what draws from it and takes no generator: a module's random
    initialisation (networks are built on the CPU, then moved), torchvision's
    random transforms. Unlike ``torch.manual_seed``, this never reaches the
    accelerators' generators, which ``torch.manual_seed`` reseeds for good
    (even those not initialised yet).

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.device import seeded_cpu_generator
    >>> before = torch.random.get_rng_state()
    >>> with seeded_cpu_generator(0):
    ...     first = torch.rand(2)
    >>> with seeded_cpu_generator(0):
    ...     second = torch.rand(2)
    >>> bool(torch.equal(first, second)), bool(torch.equal(before, torch.random.get_rng_state()))
    (True, True)
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield
