"""sklearn-panda: image anomaly detection with adapted pretrained features (PANDA).

Scikit-learn outlier detectors that fine-tune an ImageNet-pretrained network
on normal images (compactness loss with early stopping, EWC, sample-wise early
stopping or outlier exposure) and score new images by their distance to the
nearest normal features; and the adapted features alone, as a transformer.
"""

from ._detector import PandaDetector
from ._features import PandaFeatures
from ._oe import PandaOE
from ._patch import PandaPatchDetector
from ._persistence import load, save
from ._ses import PandaSES
from ._version import __version__
from .model_selection import NormalOnlySplit
from .scorers import CenterScorer, KMeansScorer, KNNScorer, MahalanobisScorer

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
