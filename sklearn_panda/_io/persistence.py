"""Save and load fitted estimators without pickle.

``pickle.load`` and ``joblib.load`` run whatever code the file asks for: a
pickle or joblib file from a source you do not trust can take over your
machine, and these estimators (like every scikit-learn estimator) pickle.
:func:`save` and :func:`load` are the safe path for sharing a fitted model.
The file holds only tensors, numbers, strings, lists and dicts: the network's
``state_dict``, the fitted arrays (as tensors), the parameters, the package
and format versions. :func:`load` reads it with
``torch.load(..., weights_only=True)``, which refuses anything else, rebuilds
the network from the backbone's name with ``weights=None`` (no download) and
loads the saved weights into it.

A backbone given as a factory is recorded only by its import path (module and
qualified name) and must be passed to :func:`load` again: a file never makes
:func:`load` import or call code. Estimator and scorer classes are recorded by
name too, and :func:`load` builds only classes defined in the process already:
the package's, and users' subclasses once their module is imported. Where
torch state goes on load is what each estimator declares in
``_torch_attributes``; what a scorer's fitted state is, the scorer says
(``_saved_state`` / ``_restore_saved_state``).
"""

import importlib
import inspect
import io
import numbers
import os
import pathlib
import pickle
import warnings
import zipfile

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from .._engine.device import loadable_device, place_torch_state, resolve_device
from .inputs import InputSpec
from .._version import __version__
from ..scorers._contract import _BaseScorer
from .images import write_files
from .saved_networks import network_entry, rebuilt_network

FORMAT = "sklearn-panda"
# 2: a detector's adaptation is a nested PandaFeatures (``features_``).
# 3: the network is stored unsplit (its own state dict and the builder arguments its
#    weights imply) and split again on load; the torchvision version is recorded.
# 4: a KNNScorer keeps its search as one ``_search`` entry (backend, faiss settings,
#    faiss's bytes); format 3's separate ``_algorithm`` / ``_faiss_*`` entries load too.
FORMAT_VERSION = 4
# Files of these formats load too.
READABLE_FORMATS = (2, 3, 4)
# Marks an encoded value that is not a plain number, string, list or tensor.
TAG = "__panda_type__"
# The estimator classes load can build, by the name a file gives them (filled by ``register``).
ESTIMATORS = {}


def register(cls):
    """Let :func:`save` and :func:`load` handle the estimator class ``cls``, found again by its name.

    ``BasePanda`` registers each of its subclasses as it is defined, the
    package's and users', so that this module needs no import of the
    estimator modules, and a file never makes :func:`load` import one.
    """
    ESTIMATORS[_class_name(cls)] = cls


def _class_name(cls):
    """How a file names an estimator or scorer class: the package's own by
    their public name (``"PandaDetector"``, as files of format 2 do), any other
    by module and qualified name (``"mypackage.models.MyDetector"``)."""
    if cls.__module__.partition(".")[0] == __name__.partition(".")[0]:
        return cls.__name__
    return f"{cls.__module__}.{cls.__qualname__}"


def _saved_class_name(cls, classes, where):
    """``_class_name(cls)``, or a TypeError when :func:`load` would not find
    ``cls`` by that name among ``classes``."""
    name = _class_name(cls)
    if "<locals>" in cls.__qualname__:
        raise TypeError(
            f"{where} is a {cls.__qualname__}, a class defined inside a function, which load "
            "cannot find again by name. Define the class at module level."
        )
    if classes.get(name) is not cls:
        raise TypeError(
            f"{where} is a {cls.__module__}.{cls.__qualname__}; save supports {_known(classes)} "
            "and their subclasses."
        )
    return name


def _known(classes):
    """The package's own classes among ``classes``, which name no module; the package's public
    estimators are imported first (they register as they are imported, on first use)."""
    package = importlib.import_module(__name__.partition(".")[0])
    for name in getattr(package, "__all__", ()):
        getattr(package, name)
    return ", ".join(sorted(name for name, cls in classes.items() if "." not in name and not inspect.isabstract(cls)))


def _scorer_classes():
    """The package's scorers and every subclass of them defined so far, by the name a file gives them."""
    found, pending = {}, [_BaseScorer]
    while pending:
        cls = pending.pop(0)
        found[_class_name(cls)] = cls
        pending.extend(cls.__subclasses__())
    return found


def _compatible(saved, current):
    """Same major version (and, before 1.0, the same minor version)."""
    saved_parts, current_parts = saved.split(".")[:2], current.split(".")[:2]
    if saved_parts[0] != current_parts[0]:
        return False
    return saved_parts[0] != "0" or saved_parts[1:2] == current_parts[1:2]


# ------------------------------------------------------------------- encoding


def _factory_path(factory):
    """``(module, qualname)`` of a module-level function or class, or a ValueError."""
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", None)
    problem = None
    if not isinstance(module, str) or not isinstance(qualname, str):
        problem = f"{factory!r} has no importable name"
    elif "<lambda>" in qualname or "<locals>" in qualname:
        problem = f"{module}.{qualname} is a lambda or a function defined inside another function"
    else:
        try:
            found = _resolve(module, qualname)
        except (ImportError, AttributeError):
            found = None
        if found is not factory:
            problem = f"{module}.{qualname} does not lead back to the backbone factory"
    if problem is not None:
        raise ValueError(
            f"Cannot save a backbone factory that cannot be found again by name: {problem}. "
            "Define the factory as a module-level function (or an nn.Module class) in an "
            "importable module."
        )
    return module, qualname


def _resolve(module, qualname):
    found = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _encode_array(array, where):
    if array.dtype == object:
        if all(isinstance(item, str) for item in array.ravel()):
            return {TAG: "str_array", "value": array.tolist()}
        raise TypeError(f"{where}: an object array that is not all strings cannot be saved safely.")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    try:
        tensor = torch.from_numpy(np.array(array, order="C", copy=True))
    except TypeError:
        raise TypeError(f"{where}: arrays of dtype {array.dtype} cannot be saved.") from None
    return {TAG: "ndarray", "value": tensor}


def _encode(value, where):
    """``value`` as tensors, numbers, strings, lists and dicts; TypeError for anything else."""
    if value is None or isinstance(value, bool):
        return value
    # Subclasses (enums, torch's version string) would be pickled as their class.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, np.generic) and not isinstance(value, np.object_):
        return value.item()
    if isinstance(value, numbers.Integral) and isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        # A view would save its whole storage; a copy saves only itself.
        if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        return tensor
    if isinstance(value, np.ndarray):
        return _encode_array(value, where)
    if isinstance(value, list):
        return [_encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, tuple):
        return {TAG: "tuple", "value": [_encode(item, f"{where}[{i}]") for i, item in enumerate(value)]}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"{where}: only dicts with string keys can be saved; found key {key!r}.")
        return {TAG: "dict", "value": {key: _encode(item, f"{where}[{key!r}]") for key, item in value.items()}}
    if isinstance(value, torch.device):
        return {TAG: "device", "value": str(value)}
    if isinstance(value, pathlib.PurePath):
        return {TAG: "path", "value": str(value)}
    if isinstance(value, InputSpec):
        return {TAG: "input_spec", "value": {"kind": value.kind, "channels": value.channels}}
    if isinstance(value, np.random.RandomState):
        return {TAG: "random_state", "value": _encode(value.get_state(), where)}
    if isinstance(value, _BaseScorer):
        return _encode_scorer(value, where)
    if _class_name(type(value)) in ESTIMATORS:
        return {TAG: "estimator", "value": _encode_estimator(value, f"{where}.")}
    if type(value) is torch.nn.Linear:
        return {
            TAG: "linear",
            "in_features": value.in_features,
            "out_features": value.out_features,
            "bias": value.bias is not None,
            "state_dict": {key: _encode(tensor, where) for key, tensor in value.state_dict().items()},
            "trainable": [key for key, parameter in value.named_parameters() if parameter.requires_grad],
        }
    raise TypeError(
        f"{where} is a {type(value).__name__}, which cannot be saved without pickle. "
        "Supported: numbers, strings, arrays, tensors, lists, dicts, torch.nn.Linear and "
        "the package's estimators and scorers."
    )


def _encode_scorer(scorer, where):
    return {
        TAG: "scorer",
        "class": _saved_class_name(type(scorer), _scorer_classes(), where),
        "params": _encode(scorer.get_params(deep=False), f"{where}.get_params()"),
        "state": _encode(scorer._saved_state(), where),
    }


def _decode(value, nested=None):
    """The value ``_encode`` encoded; ``nested(payload)`` rebuilds an encoded estimator."""
    if isinstance(value, list):
        return [_decode(item, nested) for item in value]
    if not isinstance(value, dict):
        return value
    kind, payload = value.get(TAG), value.get("value")
    if kind == "ndarray":
        return payload.numpy()
    if kind == "str_array":
        return np.asarray(payload, dtype=object)
    if kind == "tuple":
        return tuple(_decode(item, nested) for item in payload)
    if kind == "dict":
        return {key: _decode(item, nested) for key, item in payload.items()}
    if kind == "device":
        return torch.device(payload)
    if kind == "path":
        return pathlib.Path(payload)
    if kind == "input_spec":
        return InputSpec(payload["kind"], payload["channels"])
    if kind == "random_state":
        random_state = np.random.RandomState()
        random_state.set_state(_decode(payload))
        return random_state
    if kind == "scorer":
        return _decode_scorer(value)
    if kind == "estimator" and nested is not None:
        return nested(payload)
    if kind == "linear":
        with torch.device("meta"):
            layer = torch.nn.Linear(value["in_features"], value["out_features"], bias=value["bias"])
        layer.load_state_dict(value["state_dict"], assign=True)
        for key, parameter in layer.named_parameters():
            parameter.requires_grad_(key in value["trainable"])
        return layer
    raise ValueError(f"Unknown entry {kind!r} in the file; it was not written by this version of save().")


def _decode_scorer(value):
    classes = _scorer_classes()
    cls = classes.get(value["class"])
    if cls is None:
        raise ValueError(f"Unknown scorer {value['class']!r} in the file; {_not_defined(classes)}")
    scorer = cls(**_decode(value["params"]))
    state = _decode(value["state"])
    _check_fitted_names(state)
    scorer._restore_saved_state(state)
    return scorer


def _not_defined(classes):
    return (
        f"known: {_known(classes)}, and the subclasses defined so far. load never imports "
        "the module a file names: import the module that defines the class first."
    )


def _check_fitted_names(attributes):
    for name in attributes:
        # Fitted attributes only (``offset_``, ``_fit_X``): a file must not reach
        # parameters, methods or dunders.
        fitted_name = name.endswith("_") or name.startswith("_")
        if not name.isidentifier() or name.startswith("__") or not fitted_name:
            raise ValueError(f"The file sets an attribute {name!r}, which no fitted estimator has.")


def _set_attributes(target, attributes):
    _check_fitted_names(attributes)
    for name, value in attributes.items():
        setattr(target, name, value)


# ----------------------------------------------------------------- the files


def save(estimator, path):
    """Write ``estimator`` to ``path`` in a format that loads without running code.

    Pickle and joblib files can execute arbitrary code when loaded: never load
    one from a source you do not trust. A file from :func:`save` holds only
    tensors, numbers, strings, lists and dicts, and :func:`load` reads it with
    ``torch.load(..., weights_only=True)``.

    The network is stored as its ``state_dict``; a named backbone is rebuilt
    from its name on load. A kNN scorer's search index is rebuilt from its
    training features (``algorithm="nndescent"`` rebuilds the approximate
    index, identical only with an integer ``random_state``; ``"faiss"``
    falls back to the exact brute-force search where faiss is missing). A backbone factory (``backbone=callable``) is
    recorded by its import path only, and has to be a module-level function
    or class (not a lambda or a local function); pass it to :func:`load`
    again. The file is written to a temporary file first and then renamed, so
    an interrupted save leaves an existing file at ``path`` intact.

    Parameters
    ----------
    estimator : PandaFeatures, PandaDetector, PandaSES, PandaOE, PandaPatchDetector or a subclass
        Fitted or not (an unfitted one keeps only its parameters). A subclass
        must be defined at module level, and its module imported before
        :func:`load` reads the file.
    path : str or path-like
        Destination file (conventionally ``.pt``).

    Raises
    ------
    TypeError
        For another estimator class or a class defined inside a function, or
        a parameter or fitted attribute that cannot be stored without pickle
        (the message names it).
    ValueError
        For a backbone factory that cannot be found again by name.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from torch import nn
    >>> from sklearn_panda import PandaDetector
    >>> from sklearn_panda import load, save
    >>> X = np.random.default_rng(0).normal(size=(20, 4))
    >>> det = PandaDetector(backbone=nn.Identity, weights=None, n_steps=0).fit(X)
    >>> path = os.path.join(tempfile.mkdtemp(), "detector.pt")
    >>> save(det, path)
    >>> bool(np.array_equal(load(path, backbone=nn.Identity).score_samples(X), det.score_samples(X)))
    True
    """
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "torch_version": str(torch.__version__),
        "torchvision_version": _torchvision_version(),
        **_encode_estimator(estimator, ""),
    }
    _check_one_factory(payload)
    _write_atomically(payload, path)


def _check_one_factory(payload):
    """Refuse a file that would name two backbone factories: :func:`load` takes one.

    A fitted estimator whose ``backbone`` factory was changed by ``set_params`` keeps the fitted one
    in a nested estimator (PandaDetector's and PandaSES's ``features_``)."""
    named = {}

    def visit(value, where):
        if isinstance(value, dict):
            if value.get(TAG) == "factory":
                named.setdefault(f"{value['module']}.{value['qualname']}", where)
                return
            for key, item in value.items():
                visit(item, where + [key] if key not in ("value", "params", "attributes") else where)
        elif isinstance(value, list):
            for item in value:
                visit(item, where)

    visit(payload, [])
    if len(named) > 1:
        (first, first_where), (second, second_where) = list(named.items())[:2]
        raise ValueError(
            f"Cannot save: the file would name two backbone factories, {first} "
            f"({'.'.join(first_where)}) and {second} ({'.'.join(second_where)}), and load takes one. "
            "backbone was changed by set_params after fit (the fitted network is the nested "
            "estimator's): set it back to the fitted one, or fit again, before saving."
        )


def _encode_estimator(estimator, where):
    """Class name, parameters, network and other fitted attributes of ``estimator``, encoded."""
    name = _saved_class_name(type(estimator), ESTIMATORS, where.rstrip(".") or "the estimator")
    params = estimator.get_params(deep=False)
    encoded_params = {}
    for key, value in params.items():
        if key == "backbone" and callable(value):
            module, qualname = _factory_path(value)
            encoded_params[key] = {TAG: "factory", "module": module, "qualname": qualname}
        else:
            encoded_params[key] = _encode(value, f"{where}parameter {key}")
    attributes = {key: value for key, value in vars(estimator).items() if key not in params}
    net = attributes.pop("net_", None)
    if net is not None:
        check_is_fitted(estimator)
        net = network_entry(estimator, net, where, _encode)
    return {
        "estimator": name,
        "params": encoded_params,
        "net": net,
        "attributes": {key: _encode(value, f"{where}attribute {key}") for key, value in attributes.items()},
    }


def _write_atomically(payload, path):
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_files({os.fspath(path): buffer.getvalue()})


def load(path, *, backbone=None, device=None):
    """Read an estimator written by :func:`save`, without unpickling anything.

    The file is read with ``torch.load(..., weights_only=True)``; the
    network is rebuilt with ``weights=None`` (no download) and the saved
    weights are loaded into it. Estimators fitted on a GPU load on a
    CPU-only machine (with a warning).

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`save`.
    backbone : callable, default=None
        Required when the estimator was saved with a backbone factory: that
        factory (the file names it, e.g. ``mypackage.models.small_net``, but
        never imports or calls it by itself). Must be ``None`` otherwise.
    device : str or torch.device, default=None
        Where the network goes (``"auto"``, ``"cpu"``, ``"cuda"``, ...).
        ``None``: the device it was fitted on, or the CPU (with a warning)
        when that is CUDA and CUDA is not available.

    Returns
    -------
    estimator : PandaFeatures, PandaDetector, PandaSES, PandaOE, PandaPatchDetector or a subclass
        The estimator as it was saved: its parameters and, when it was
        fitted, its fitted attributes, on ``device``.

    Raises
    ------
    FileNotFoundError
        When there is no file at ``path``.
    ValueError
        When the file is not a sklearn-panda file (another kind of file, cut
        short or damaged), comes from an incompatible format or package
        version, or needs a ``backbone``.

    See Also
    --------
    save : Write an estimator to such a file.

    Examples
    --------
    >>> import os
    >>> import tempfile
    >>> import numpy as np
    >>> from torch import nn
    >>> from sklearn_panda import PandaFeatures, load, save
    >>> X = np.random.default_rng(0).normal(size=(20, 4))
    >>> features = PandaFeatures(backbone=nn.Identity, weights=None, n_steps=0).fit(X)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     save(features, os.path.join(folder, "features.pt"))
    ...     loaded = load(os.path.join(folder, "features.pt"), backbone=nn.Identity, device="cpu")
    >>> type(loaded).__name__, loaded.transform(X).shape
    ('PandaFeatures', (20, 4))
    """
    payload = _read_payload(path)
    _check_header(payload, path)
    return _decode_estimator(payload, backbone, device, path)


def _read_payload(path):
    """``torch.load``'s dictionary, or an error that says the file is not a model."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such model file: {path}")
    # save() writes torch's zip archive; anything else would fail inside the unpickler
    # with whatever error the stray bytes happen to cause.
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a model file written by sklearn-panda (not a torch archive: "
            "another kind of file, or cut short)."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as error:
        # torch's own message would suggest weights_only=False, which would run the file's code.
        reason = "not a weights-only file" if isinstance(error, pickle.UnpicklingError) else "damaged"
        raise ValueError(f"{path} is not a model file written by sklearn-panda (a torch archive, {reason}).") from None


def _package_estimator(name):
    """The registered class of that name; one of the package's own public estimators is imported first
    where it was not yet (the package imports them on first use): only those, never a module a file names."""
    if name not in ESTIMATORS:
        package = importlib.import_module(__name__.partition(".")[0])
        if name in getattr(package, "__all__", ()):
            getattr(package, name)
    return ESTIMATORS.get(name)


def _decode_estimator(payload, backbone, device, path):
    cls = _package_estimator(payload["estimator"])
    if cls is None:
        raise ValueError(
            f"{path} holds a {payload['estimator']!r}, which is not defined here; {_not_defined(ESTIMATORS)}"
        )
    params = dict(payload["params"])
    saved_backbone = params.pop("backbone")
    params = {key: _decode(value) for key, value in params.items()}
    params["backbone"] = _backbone(saved_backbone, backbone, path)
    estimator = cls(**params)

    def nested(value):
        return _decode_estimator(value, backbone, device, path)

    attributes = {key: _decode(value, nested) for key, value in payload["attributes"].items()}
    if payload["net"] is not None:
        attributes["net_"] = rebuilt_network(estimator, attributes, payload["net"], path, _decode)
    if "device_" in attributes:
        attributes["device_"] = _target_device(attributes["device_"], device)
    # Everything was read onto the CPU; the torch state goes where the estimator declares it.
    place_torch_state(attributes, cls._torch_attributes, attributes.get("device_"))
    _set_attributes(estimator, attributes)
    return estimator


def _check_header(payload, path):
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a file written by sklearn_panda's save().")
    current = __version__
    saved_format, saved_version = payload.get("format_version"), str(payload.get("package_version"))
    if saved_format not in READABLE_FORMATS or not _compatible(saved_version, current):
        raise ValueError(
            f"{path} was written by sklearn-panda {saved_version} (file format "
            f"{saved_format}); this is sklearn-panda {current} (file formats "
            f"{', '.join(map(str, READABLE_FORMATS))}), "
            "which cannot read it. Load it with a compatible version and save it again, "
            "or refit the estimator."
        )


def _backbone(saved, given, path):
    if isinstance(saved, str):
        if given is not None:
            raise ValueError(f"{path} was saved with backbone={saved!r}; do not pass backbone to load.")
        return saved
    name = f"{saved['module']}.{saved['qualname']}"
    if given is None:
        raise ValueError(
            f"{path} was saved with the backbone factory {name}. Loading never imports or "
            f"calls code named by a file: pass the factory, load(path, backbone={saved['qualname']})."
        )
    if not callable(given):
        raise TypeError(f"backbone must be the backbone factory {name}; got {given!r}.")
    given_name = f"{getattr(given, '__module__', '?')}.{getattr(given, '__qualname__', '?')}"
    if given_name != name:
        warnings.warn(
            f"{path} was saved with the backbone factory {name}; building the network with "
            f"{given_name} instead (its weights must fit the saved ones)."
        )
    return given


def _target_device(saved, requested):
    return resolve_device(requested) if requested is not None else loadable_device(saved)


def _torchvision_version():
    import torchvision

    return str(torchvision.__version__)
