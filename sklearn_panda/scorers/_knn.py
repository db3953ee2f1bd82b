"""The paper's scorer: distance to the ``k`` nearest normal training features."""

import numbers
import pickle
import warnings

from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .._sklearn_compat import Interval, StrOptions
from ._contract import GallerySearch, _BaseScorer, _finish_distance
from ._faiss import AUTO_INDEX, AUTO_INDEX_MIN_FEATURES, AUTO_INDEX_MIN_SAMPLES, AUTO_INDEX_PARAMS, _faiss_available
from ._neighbors import BACKENDS, ExactSearch, FaissSearch, NNDescentSearch


class KNNScorer(_BaseScorer):
    """Anomaly distance to the ``k`` nearest normal training features.

    The PANDA paper scores a test image by its distance to its ``k = 2`` nearest
    neighbours among the (adapted) features of the normal training images. The
    anomaly distance is the mean of the ``k`` neighbour distances;
    ``score_samples`` returns its negation, so higher means more normal.

    Parameters
    ----------
    n_neighbors : int, default=2
        Number of neighbours. The paper uses 2. If larger than the number of
        training samples minus one, it is reduced (with a warning) and stored in
        ``n_neighbors_``.

    algorithm : {"auto", "brute", "faiss", "nndescent"}, default="auto"
        Nearest-neighbour search:

        - ``"brute"``: exact, chunked float32 matrix products with bounded memory.
        - ``"faiss"``: the faiss index that ``faiss_index`` describes (needs the
          ``faiss`` extra); the default ``"Flat"`` is exact.
        - ``"nndescent"``: approximate, ``pynndescent``; may miss true neighbours.
          Its first index in a new environment compiles pynndescent's numba
          code, once: about 100 s on 2 cores of an Intel Xeon (27 s in later
          processes, whose compiled code is partly cached).
        - ``"auto"``: ``"brute"`` below 20,000 training rows, for features of
          fewer than 512 dimensions, and where faiss is not installed;
          otherwise ``"faiss"`` with the index ``"PCA128,HNSW32"``
          (``efSearch=32``, ``k_factor=8``): a graph on 128 principal
          components whose ``8 * k`` candidates per query are re-ranked by
          their exact distances. On 60,000 real 1280-d features it answered
          18x faster than the exact search at recall@2 0.998 with the exact
          ROC AUC, and from 20,000 rows on, building it costs less than the
          exact leave-one-out search of ``fit`` that it replaces
          (``benchmarks/faiss_scale.py``, ``benchmarks/RESULTS.md``). A missed
          neighbour can only raise a distance, never lower it.
          ``faiss_index`` and ``faiss_params`` apply to ``"faiss"`` only.
          The exact search runs close to the machine's matrix-product bound
          and kept up with faiss's exact search (``benchmarks/knn_speed.py``).

    metric : {"sqeuclidean", "euclidean", "cosine"}, default="sqeuclidean"
        Distance between features. The default is the paper's: its code sums
        squared L2 distances to the 2 neighbours (the mean used here ranks
        identically). ``"cosine"`` compares L2-normalised features
        (``1 - cos``), which often helps with pooled CNN features.

    contamination : "auto" or float in (0, 0.5], default="auto"
        Sets ``offset_``. A float: the fraction of training points to call
        outliers, using each training point's leave-one-out score (it is not its
        own neighbour). ``"auto"``: the same as ``0.01``; distances have no
        natural scale to threshold, so "auto" fixes a small false-alarm rate:
        about 1% of new normal data is flagged.

    faiss_index : str, default="Flat"
        The index of ``algorithm="faiss"``, as a ``faiss.index_factory``
        description: ``"Flat"`` (exact), ``"HNSW32"`` (a graph with ``M = 32``
        links per vector; no training), ``"IVF1024,Flat"`` (``nlist = 1024``
        k-means cells, trained on the gallery, which needs at least ``nlist``
        rows and about 40 times more to train well) or ``"IVF1024,PQ64"``
        (the same cells with each vector compressed to 64 one-byte codes; the
        dimension must be a multiple of the code count). Approximate indexes
        may miss true neighbours; the distances of the neighbours they return
        are computed exactly from the training rows, and a query for which an
        index returns too few neighbours (an IVF index whose ``nprobe``
        visited cells hold fewer than ``k`` rows) is searched exactly.
        Where faiss sees a GPU (``faiss-gpu``), the index is moved to GPU 0
        if faiss has a GPU version of it (Flat, IVF; not HNSW).

    faiss_params : dict, default=None
        Settings of the faiss index, by faiss's names: ``"efConstruction"`` is
        set on an HNSW graph before the gallery is added; every other name
        (``"nprobe"``: IVF cells visited per query, ``"efSearch"``: HNSW
        candidate list size, ...) through ``faiss.ParameterSpace`` once the
        index is built, except ``"k_factor"``: the index proposes
        ``k_factor`` times ``k`` candidates, which are re-ranked by their exact
        distances to the training rows (as faiss's ``IndexRefineFlat`` does,
        without a second copy of the rows); it makes up for the coarse
        distances of PQ codes. ``None``: faiss's defaults (``nprobe=1``,
        ``efSearch=16``, ``k_factor=1``), fast and inaccurate.

    working_memory : float, default=256
        Megabytes for one chunk of the brute-force distance block.

    n_jobs : int, default=None
        Threads for ``"nndescent"`` and ``"faiss"``; ``-1`` means every CPU and
        ``None`` leaves their defaults. faiss's thread count is process-wide: it
        is set for each of this scorer's calls and restored afterwards.
        The brute-force search uses the BLAS thread pool (see ``threadpoolctl``).

    random_state : int, RandomState instance or None, default=None
        Seeds ``"nndescent"``'s index construction and the k-means of a faiss
        IVF index (faiss's own seed when ``None``). With a seed, a faiss HNSW
        graph (also ``algorithm="auto"``'s) is built on one thread, since the
        order in which several threads insert rows changes the graph.

    Attributes
    ----------
    n_neighbors_ : int
        Number of neighbours actually used.
    metric_ : str
        The ``metric`` fitted with, which scoring reads.
    offset_ : float
        Threshold on ``score_samples``; see ``contamination``.
    training_scores_ : ndarray of shape (n_samples,)
        Leave-one-out ``score_samples`` of the training points.
    n_features_in_ : int
        Number of features seen in ``fit``.
    n_samples_fit_ : int
        Number of training samples.

    See Also
    --------
    KMeansScorer : Distance to the nearest of a few centroids; cheaper.
    CenterScorer : Distance to the mean of the training features.
    sklearn.neighbors.LocalOutlierFactor : Density-ratio outlier detection.

    References
    ----------
    Reiss, Cohen, Bergman, Hoshen. "PANDA: Adapting Pretrained Features for
    Anomaly Detection and Segmentation", CVPR 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda import KNNScorer
    >>> rng = np.random.default_rng(0)
    >>> normal = rng.normal(size=(200, 8))
    >>> scorer = KNNScorer(n_neighbors=2).fit(normal)
    >>> scorer.predict(np.array([np.zeros(8), np.full(8, 10.0)]))
    array([ 1, -1])

    An approximate faiss index for a large gallery (needs the ``faiss`` extra):

    >>> hnsw = KNNScorer(algorithm="faiss", faiss_index="HNSW32",
    ...                  faiss_params={"efSearch": 64})  # doctest: +SKIP
    >>> hnsw.fit(normal).predict(np.array([np.zeros(8)]))  # doctest: +SKIP
    array([1])
    """

    _parameter_constraints = {
        **_BaseScorer._parameter_constraints,
        "n_neighbors": [Interval(numbers.Integral, 1, None, closed="left")],
        "algorithm": [StrOptions({"auto", "brute", "faiss", "nndescent"})],
        "faiss_index": [str],
        "faiss_params": [dict, None],
        "working_memory": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_jobs": [Interval(numbers.Integral, None, -1, closed="right"), Interval(numbers.Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_neighbors=2,
        *,
        algorithm="auto",
        metric="sqeuclidean",
        contamination="auto",
        faiss_index="Flat",
        faiss_params=None,
        working_memory=256,
        n_jobs=None,
        random_state=None,
    ):
        super().__init__(metric=metric, contamination=contamination)
        self.n_neighbors = n_neighbors
        self.algorithm = algorithm
        self.faiss_index = faiss_index
        self.faiss_params = faiss_params
        self.working_memory = working_memory
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _fit_distances(self, X):
        n_samples = X.shape[0]
        if self.n_neighbors > n_samples - 1:
            warnings.warn(
                f"n_neighbors ({self.n_neighbors}) is greater than the number of "
                f"training samples minus one ({n_samples - 1}); using "
                f"n_neighbors={n_samples - 1}."
            )
        self.n_neighbors_ = min(self.n_neighbors, n_samples - 1)
        self.n_samples_fit_ = n_samples
        self._fit_X = X
        backend, options = self._backend_and_options()
        self._neighbors = backend(X, **options)
        squared, _ = self._neighbors.search(None, self.n_neighbors_)
        return _finish_distance(squared, self._fitted_metric).mean(axis=1)

    def _gallery_search(self):
        """The search that reproduces these distances, as a :class:`GallerySearch`.

        ``exact`` is False where the fitted search is approximate (an
        nndescent graph or a faiss index other than ``"Flat"``), whose
        neighbours an exact search over ``gallery`` may not find.
        """
        return GallerySearch(self._fit_X, self.n_neighbors_, self._fitted_metric, self._neighbors.exact)

    def _faiss_seed(self):
        if self.random_state is None:
            return None
        return int(check_random_state(self.random_state).randint(2**31 - 1))

    def _backend_and_options(self):
        """The :mod:`._neighbors` backend that ``algorithm`` chooses for ``_fit_X``, and its options."""
        algorithm = self.algorithm
        # A copy: the fitted search must not follow later changes to the caller's dict.
        description, params = self.faiss_index, None if self.faiss_params is None else dict(self.faiss_params)
        k_factor = (params or {}).get("k_factor", 1)
        if not isinstance(k_factor, numbers.Integral) or isinstance(k_factor, bool) or k_factor < 1:
            raise ValueError(f"faiss_params['k_factor'] must be an integer >= 1; got {k_factor!r}.")
        if algorithm == "auto":
            n_samples, n_features = self._fit_X.shape
            if n_samples >= AUTO_INDEX_MIN_SAMPLES and n_features >= AUTO_INDEX_MIN_FEATURES and _faiss_available():
                algorithm, description, params = "faiss", AUTO_INDEX, dict(AUTO_INDEX_PARAMS)
            else:
                algorithm = "brute"
        if algorithm == "faiss" and not _faiss_available():
            raise ImportError(
                "algorithm='faiss' needs faiss: pip install 'sklearn-panda[faiss]' "
                "(or use algorithm='brute', which is also exact)."
            )
        seed = self._faiss_seed() if algorithm == "faiss" else None
        return BACKENDS[algorithm], self._search_options(algorithm, description, params, seed)

    def _search_options(self, algorithm, description=None, params=None, seed=None):
        """The options of ``algorithm``'s backend from this scorer's parameters (and a faiss index's settings)."""
        if algorithm == "faiss":
            # An HNSW graph built on several threads depends on their timing: with a seed the
            # graph is built on one thread, so that the same seed gives the same index.
            reproducible = self.random_state is not None and "HNSW" in description
            return {
                "description": description,
                "params": params,
                "seed": seed,
                "build_threads": 1 if reproducible else self.n_jobs,
                "search_threads": self.n_jobs,
            }
        if algorithm == "nndescent":
            return {"n_neighbors": max(30, self.n_neighbors_ + 1), "random_state": self.random_state, "n_jobs": self.n_jobs}
        return {"working_memory_mb": self.working_memory}

    def _distances(self, X):
        squared, _ = self._neighbors.search(X, self.n_neighbors_)
        return _finish_distance(squared, self._fitted_metric).mean(axis=1)

    def __setstate__(self, state):
        if "_fit_X" in state and "_neighbors" not in state:
            state = _state_of_an_earlier_version(state, state.get("faiss_params"))
        self.__dict__.update(state)
        if isinstance(self.__dict__.get("_neighbors"), FaissSearch) and not _faiss_available():
            self._neighbors = _exact_instead(self._fit_X, self.working_memory)

    def _saved_state(self):
        state = super()._saved_state()
        # The search is kept as numbers, strings and arrays: no pickle in a file.
        neighbors = state.pop("_neighbors", None)
        if neighbors is not None:
            # Only a faiss index's settings: the other backends rebuild from the scorer's parameters.
            options = {name: neighbors.options[name] for name in ("description", "params", "seed")
                       if name in neighbors.options}
            state["_search"] = {"algorithm": neighbors.algorithm, "options": options, "saved": neighbors.saved()}
        return state

    def _restore_saved_state(self, state):
        state = dict(state)
        search = state.pop("_search", None)
        if search is None and "_fit_X" in state:
            # A file of an earlier version: the search's settings were attributes of their own.
            search = {
                "algorithm": state.pop("_algorithm"),
                "options": {
                    "description": state.pop("_faiss_description", "Flat"),
                    "params": state.pop("_faiss_params", None if self.faiss_params is None else dict(self.faiss_params)),
                },
                "saved": state.pop("_faiss_bytes", None),
            }
        super()._restore_saved_state(state)
        if search is not None:
            self._neighbors = _restored_search(self, search["algorithm"], search["options"], search["saved"])

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        """Find the nearest training neighbours of each point.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features), default=None
            Query points. ``None`` queries the training points, each of which is
            then not counted as its own neighbour.

        n_neighbors : int, default=None
            Number of neighbours; defaults to ``n_neighbors_``.

        return_distance : bool, default=True
            Whether to return the distances (in ``metric``).

        Returns
        -------
        neigh_dist : ndarray of shape (n_queries, n_neighbors)
            Distances in ascending order; only when ``return_distance=True``.

        neigh_ind : ndarray of shape (n_queries, n_neighbors)
            Indices of the neighbours in the training set.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_panda import KNNScorer
        >>> scorer = KNNScorer(n_neighbors=1).fit(np.array([[0.0], [1.0], [3.0]]))
        >>> scorer.kneighbors()[1].ravel().tolist()
        [1, 0, 1]
        """
        check_is_fitted(self)
        n_neighbors = self.n_neighbors_ if n_neighbors is None else n_neighbors
        if not isinstance(n_neighbors, numbers.Integral) or n_neighbors < 1:
            raise ValueError(f"n_neighbors must be a positive integer; got {n_neighbors!r}.")
        available = self.n_samples_fit_ - (1 if X is None else 0)
        if n_neighbors > available:
            raise ValueError(
                f"Expected n_neighbors <= {available} (the training samples"
                f"{' other than the query itself' if X is None else ''}); got {n_neighbors}."
            )
        queries = None if X is None else self._validate_new(X)
        squared, indices = self._neighbors.search(queries, n_neighbors)
        if return_distance:
            return _finish_distance(squared, self._fitted_metric), indices
        return indices


def _exact_instead(gallery, working_memory):
    warnings.warn(
        "This KNNScorer searched with faiss, which is not installed here; it uses "
        "the exact brute-force search instead."
    )
    return ExactSearch(gallery, working_memory_mb=working_memory)


def _restored_search(scorer, algorithm, options, saved):
    """The saved search of ``scorer._fit_X``: loaded or rebuilt; exact where faiss is missing.

    A faiss index other than a flat one comes back from faiss's bytes (and
    moves to a GPU where faiss sees one), so that loading neither repeats its
    training nor finds other neighbours; a flat index, the exact search and
    an nndescent graph are rebuilt from the training rows (the graph
    identically only with an integer ``random_state``). Where faiss is
    missing the search becomes the exact brute-force one (the neighbours of a
    flat index; an approximate index's scores become the exact ones).
    """
    if algorithm == "faiss" and not _faiss_available():
        return _exact_instead(scorer._fit_X, scorer.working_memory)
    options = scorer._search_options(algorithm, options.get("description"), options.get("params"), options.get("seed"))
    return BACKENDS[algorithm].from_saved(scorer._fit_X, saved, **options)


def _state_of_an_earlier_version(state, faiss_params):
    """The pickled state of a KNNScorer from before the search backends, as it is now."""
    state = dict(state)
    algorithm = state.pop("_algorithm")
    index = state.pop("_index", None)
    description = state.pop("_faiss_description", "Flat")
    params = state.pop("_faiss_params", faiss_params)
    n_jobs = state.get("n_jobs")
    if algorithm == "faiss":
        options = {"description": description, "params": params, "seed": None, "build_threads": n_jobs,
                   "search_threads": n_jobs}
        if _faiss_available():
            state["_neighbors"] = FaissSearch.from_saved(state["_fit_X"], index, **options)
        else:
            state["_neighbors"] = _exact_instead(state["_fit_X"], state.get("working_memory", 256))
    elif algorithm == "nndescent":
        search = NNDescentSearch.__new__(NNDescentSearch)
        search.gallery = state["_fit_X"]
        search.options = {"n_neighbors": max(30, state["n_neighbors_"] + 1), "random_state": state.get("random_state"),
                          "n_jobs": n_jobs}
        # Pickled by the earlier version itself; unpickling a pickle trusts it already.
        search._built = pickle.loads(index)
        state["_neighbors"] = search
    else:
        state["_neighbors"] = ExactSearch(state["_fit_X"], working_memory_mb=state.get("working_memory", 256))
    return state
