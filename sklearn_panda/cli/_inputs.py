"""What the command line reads: backbone factories, model files, image files."""

import importlib
import warnings


def import_factory(spec):
    """The backbone factory named ``"module:function"`` (``"module:Class.method"`` works too).

    The module must be importable: installed, or on ``PYTHONPATH``
    (``python -m sklearn_panda`` also finds modules in the current folder).

    Parameters
    ----------
    spec : str
        ``"module:function"``, the module's import path and the factory's
        qualified name in it.

    Returns
    -------
    factory : callable
        The named object, called with no arguments to build the backbone.

    Raises
    ------
    ValueError
        When ``spec`` is malformed, cannot be imported, or is not callable.

    Examples
    --------
    >>> from sklearn_panda.cli import import_factory
    >>> import_factory("torch.nn:Identity")
    <class 'torch.nn.modules.linear.Identity'>
    """
    module_name, _, qualname = spec.partition(":")
    if not module_name or not qualname:
        raise ValueError(
            f"--backbone-factory must be MODULE:FUNCTION, e.g. my_models:small_net; got {spec!r}."
        )
    try:
        found = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"Cannot import the backbone factory {spec}: {error}") from None
    if not callable(found):
        raise ValueError(f"The backbone factory {spec} is not callable.")
    return found


def load_model(path, factory, device):
    from .._io.persistence import load

    # torch.load's warnings about a foreign file would add lines to the one-line error.
    with warnings.catch_warnings(record=True) as caught:
        try:
            estimator = load(path, backbone=factory, device=device)
        except ValueError as error:
            if factory is None and "backbone factory" in str(error):
                raise ValueError(
                    f"{error} On the command line: --backbone-factory MODULE:FUNCTION."
                ) from None
            raise
    for warning in caught:
        warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return estimator


def check_readable(paths):
    """Stop before the work, not after it, at an image file that cannot be decoded.

    Each file is decoded as the estimators will decode it (``read_image``), so
    that the command line refuses exactly the files the library refuses (a
    stricter check, PIL's ``verify``, refused PNGs whose chunk checksums the
    decoder tolerates). It costs one decoding more per image.
    """
    from .._io.images import read_image

    for path in paths:
        read_image(path)


def check_distinct(paths, command):
    """Refuse training images named twice (overlapping sources): a copy is its twin's nearest
    neighbour, which pulls the leave-one-out scores, and so the threshold, towards zero."""
    import os

    first, repeated = {}, []
    for path in paths:
        key = os.path.realpath(path)
        if key in first:
            repeated.append((first[key], path))
        else:
            first[key] = path
    if repeated:
        shown = "; ".join(f"{a} and {b}" for a, b in repeated[:3])
        raise ValueError(
            f"{command} got {len(repeated)} image file(s) more than once ({shown}{'; ...' if len(repeated) > 3 else ''}): "
            "the sources overlap (a folder and one inside it?). Name each training image once."
        )
