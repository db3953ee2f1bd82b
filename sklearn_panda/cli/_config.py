"""``fit --config FILE``: a detector's parameters, and a scorer's, from a JSON or TOML file.

A config file names the detector (``PandaDetector``, the default;
``PandaSES``; ``PandaPatchDetector``, the same as ``--local``) and gives any
of its parameters; an optional ``scorer`` table makes a scorer instance of
the package (``KNNScorer``, ``KMeansScorer``, ``CenterScorer``,
``MahalanobisScorer``) with parameters of its own. In TOML (Python 3.11 or
later)::

    detector = "PandaSES"
    [parameters]
    n_steps = 300
    checkpoint_every = 30
    [scorer]
    class = "MahalanobisScorer"
    shrinkage = "oas"

and the same in JSON (any file not ending in ``.toml``)::

    {"detector": "PandaSES", "parameters": {"n_steps": 300, "checkpoint_every": 30},
     "scorer": {"class": "MahalanobisScorer", "shrinkage": "oas"}}

Options given on the command line override the file's parameters. Names that
the detector or scorer does not take are an error that lists the names it
does take; values are checked by the estimator itself when it fits.
"""

import json
import pathlib

KEYS = ("detector", "parameters", "scorer")
DETECTORS = ("PandaDetector", "PandaSES", "PandaPatchDetector")
SCORERS = ("KNNScorer", "KMeansScorer", "CenterScorer", "MahalanobisScorer")


def read_config(path):
    """The config file at ``path`` as a dict, its keys checked: ``.toml`` as TOML, any other as JSON."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"No such config file: {path}") from None
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:
            raise ValueError(
                f"--config {path}: TOML needs Python 3.11 or later (tomllib); write the same as JSON."
            ) from None
        try:
            config = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"--config {path} is not valid TOML: {error}") from None
    else:
        try:
            config = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"--config {path} is not valid JSON (a .toml name is read as TOML): {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"--config {path} must hold an object (a table) with the keys {', '.join(KEYS)}.")
    unknown = sorted(set(config) - set(KEYS))
    if unknown:
        raise ValueError(f"--config {path}: unknown keys {', '.join(unknown)}; a config file has {', '.join(KEYS)}.")
    for key, kind in (("detector", str), ("parameters", dict), ("scorer", dict)):
        if key in config and not isinstance(config[key], kind):
            raise ValueError(f"--config {path}: {key} must be a {'string' if kind is str else 'table'}.")
    if config.get("detector", DETECTORS[0]) not in DETECTORS:
        raise ValueError(
            f"--config {path}: unknown detector {config['detector']!r}; choose one of {', '.join(DETECTORS)}."
        )
    return config


def _checked_parameters(cls, parameters, where):
    unknown = sorted(set(parameters) - set(cls._get_param_names()))
    if unknown:
        raise ValueError(
            f"{where}: {cls.__name__} takes no parameter {', '.join(unknown)}; its parameters: "
            f"{', '.join(cls._get_param_names())}."
        )
    return dict(parameters)


def detector_parameters(config, path):
    """``(detector class, parameters)`` from a config read by :func:`read_config`, the scorer built."""
    from .. import PandaDetector, PandaPatchDetector, PandaSES, scorers

    cls = {"PandaDetector": PandaDetector, "PandaSES": PandaSES, "PandaPatchDetector": PandaPatchDetector}[
        config.get("detector", DETECTORS[0])
    ]
    parameters = _checked_parameters(cls, config.get("parameters", {}), f"--config {path}")
    if "scorer" in config:
        if "scorer" not in cls._get_param_names():
            raise ValueError(f"--config {path}: {cls.__name__} takes no scorer.")
        if "scorer" in parameters:
            raise ValueError(f"--config {path}: give the scorer once, as parameters.scorer or as the scorer table.")
        scorer = dict(config["scorer"])
        name = scorer.pop("class", None)
        if name not in SCORERS:
            raise ValueError(
                f"--config {path}: the scorer table needs class = one of {', '.join(SCORERS)}; got {name!r}."
            )
        scorer_cls = getattr(scorers, name)
        parameters["scorer"] = scorer_cls(**_checked_parameters(scorer_cls, scorer, f"--config {path}, scorer"))
    return cls, parameters
