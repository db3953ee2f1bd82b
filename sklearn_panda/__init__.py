"""sklearn-panda: image anomaly detection with adapted pretrained features (PANDA).

Scikit-learn outlier detectors that fine-tune an ImageNet-pretrained network
on normal images (compactness loss with early stopping, EWC, sample-wise early
stopping or outlier exposure) and score new images by their distance to the
nearest normal features; and the adapted features alone, as a transformer.

The public names are imported on first use (PEP 562): ``import
sklearn_panda.scorers`` (or ``.metrics``, the command line's ``--help``)
does not import torch.
"""

import importlib
import importlib.util
from typing import TYPE_CHECKING

from ._old_paths import alias_old_paths
from ._version import __version__

if TYPE_CHECKING:  # what static analysers and IDEs read; at run time, __getattr__ below
    from ._estimators.detector import PandaDetector
    from ._estimators.features import PandaFeatures
    from ._estimators.oe import PandaOE
    from ._estimators.patch import PandaPatchDetector
    from ._estimators.ses import PandaSES
    from ._io.persistence import load, save
    from .model_selection import NormalOnlySplit
    from .scorers import CenterScorer, KMeansScorer, KNNScorer, MahalanobisScorer

# Public name -> the module (under sklearn_panda) that defines it.
_PUBLIC = {
    "CenterScorer": "scorers",
    "KMeansScorer": "scorers",
    "KNNScorer": "scorers",
    "MahalanobisScorer": "scorers",
    "NormalOnlySplit": "model_selection",
    "PandaDetector": "_estimators.detector",
    "PandaFeatures": "_estimators.features",
    "PandaOE": "_estimators.oe",
    "PandaPatchDetector": "_estimators.patch",
    "PandaSES": "_estimators.ses",
    "load": "_io.persistence",
    "save": "_io.persistence",
}

# Pickles written before the private modules moved into subpackages name their old paths.
alias_old_paths()

__all__ = [
    "CenterScorer",
    "KMeansScorer",
    "KNNScorer",
    "MahalanobisScorer",
    "NormalOnlySplit",
    "PandaDetector",
    "PandaFeatures",
    "PandaOE",
    "PandaPatchDetector",
    "PandaSES",
    "__version__",
    "load",
    "save",
]


def __getattr__(name):
    if name not in _PUBLIC:
        # A subpackage or module (sklearn_panda.scorers, .callbacks, ...), as after a plain import.
        if importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return importlib.import_module(f"{__name__}.{name}")
    value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    globals()[name] = value  # once: later lookups find it directly
    return value


def __dir__():
    return sorted({*globals(), *__all__})
