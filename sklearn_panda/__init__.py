"""sklearn-panda: image anomaly detection with adapted pretrained features (PANDA).

Scikit-learn outlier detectors that fine-tune an ImageNet-pretrained network
on normal images (compactness loss with early stopping, EWC, sample-wise early
stopping or outlier exposure) and score new images by their distance to the
nearest normal features; and the adapted features alone, as a transformer.
"""

from ._estimators.detector import PandaDetector
from ._estimators.features import PandaFeatures
from ._estimators.oe import PandaOE
from ._estimators.patch import PandaPatchDetector
from ._estimators.ses import PandaSES
from ._io.persistence import load, save
from ._old_paths import alias_old_paths
from ._version import __version__
from .model_selection import NormalOnlySplit
from .scorers import CenterScorer, KMeansScorer, KNNScorer, MahalanobisScorer

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
