"""sklearn-panda: image anomaly detection with adapted pretrained features (PANDA).

Scikit-learn outlier detectors that fine-tune an ImageNet-pretrained network
on normal images (compactness loss with early stopping, EWC, sample-wise early
stopping or outlier exposure) and score new images by their distance to the
nearest normal features.
"""

from ._detector import PandaDetector
from ._oe import PandaOE
from ._persistence import load, save
from ._ses import PandaSES
from .model_selection import NormalOnlySplit
from .scorers import CenterScorer, KMeansScorer, KNNScorer, MahalanobisScorer

__version__ = "0.1.0"

__all__ = [
    "CenterScorer",
    "KMeansScorer",
    "KNNScorer",
    "MahalanobisScorer",
    "NormalOnlySplit",
    "PandaDetector",
    "PandaOE",
    "PandaSES",
    "__version__",
    "load",
    "save",
]
