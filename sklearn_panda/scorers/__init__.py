"""Anomaly scorers for feature matrices: k nearest neighbours, k-means, centre, Mahalanobis.

Each scorer is a scikit-learn outlier detector on a 2-D feature matrix. They
follow the scikit-learn outlier contract: ``score_samples`` is higher for more
normal points (a negated distance), ``decision_function`` subtracts
``offset_`` and ``predict`` returns +1 for inliers and -1 for outliers.

The package never imports torch here: the scorers work on any embedding,
whichever model produced it. They compute in float32, as a network's features
are: values too large for float32 squared distances are refused, and ``fit``
warns where float32 cannot resolve a feature's spread (large values that vary
little, float64 or integer: centre or scale them first). Its modules, each with one job:

* ``_contract``: the outlier contract every scorer shares (``_BaseScorer``),
  metrics and the offset from leave-one-out training scores;
* ``_exact``: exact float32 k-nearest-neighbour search, blocked, with
  self-exclusion;
* ``_faiss``: building, moving, configuring and serialising faiss indexes;
* ``_neighbors``: the search backends behind one interface (build, search
  with self-exclusion, what a file keeps): exact, faiss, pynndescent;
* ``_knn``: :class:`KNNScorer`, which picks a backend by its ``algorithm``;
* ``_centroids``: :class:`KMeansScorer` and :class:`CenterScorer`;
* ``_gaussian``: :class:`MahalanobisScorer`.
"""

from ._centroids import CenterScorer, KMeansScorer
from ._contract import offset_from_training_scores
from ._exact import brute_force_kneighbors
from ._gaussian import MahalanobisScorer
from ._knn import KNNScorer

__all__ = ["KNNScorer", "KMeansScorer", "CenterScorer", "MahalanobisScorer"]
