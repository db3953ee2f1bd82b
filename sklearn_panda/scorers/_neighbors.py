"""Nearest-neighbour search behind one small interface: exact float32, faiss, pynndescent.

A backend is built on a gallery of float32 rows and answers
``search(queries, k) -> (squared distances, indices)``, the ``k`` nearest
gallery rows of each query in ascending order, with distances recomputed
exactly for the rows found; ``queries=None`` asks for the gallery's own rows,
each left out of its own neighbours (leave-one-out training scores).
``saved()`` is what a file keeps of the built search beyond the gallery (a
uint8 array, nothing whose loading runs code; ``None``: it is rebuilt from the
gallery), and ``from_saved(gallery, saved, **options)`` builds it back. A
backend pickles as its gallery, its options and what it keeps of its index.

:class:`~sklearn_panda.KNNScorer` chooses a backend by its ``algorithm``.
"""

import contextlib
import pickle
from abc import ABC, abstractmethod

import numpy as np
from threadpoolctl import ThreadpoolController

from ._exact import _drop_self, _squared_to_candidates, brute_force_kneighbors
from ._faiss import (
    _build_faiss_index,
    _faiss_available,
    _faiss_threads,
    _faiss_to_gpu,
    _serialize_faiss_index,
    _set_faiss_search_params,
)


class NeighborSearch(ABC):
    """The k nearest gallery rows by squared Euclidean distance.

    Parameters
    ----------
    gallery : ndarray of shape (n_gallery, d), float32
        The rows searched; kept by reference, never changed.
    **options
        The backend's settings (see each backend).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda.scorers._neighbors import ExactSearch
    >>> search = ExactSearch(np.array([[0.0], [1.0], [3.0]], dtype=np.float32))
    >>> squared, indices = search.search(None, 1)
    >>> indices.ravel().tolist(), squared.ravel().tolist()
    ([1, 0, 1], [1.0, 1.0, 4.0])
    """

    #: the ``algorithm`` of :class:`~sklearn_panda.KNNScorer` that builds it
    algorithm = None

    def __init__(self, gallery, **options):
        self.gallery = gallery
        self.options = options
        self._built = self._build()

    @property
    def exact(self):
        """Whether ``search`` finds the true nearest rows (not only near ones)."""
        return True

    @abstractmethod
    def _build(self):
        """Build what the search needs beyond the gallery (``None``: nothing)."""

    @abstractmethod
    def _candidates(self, queries, width):
        """Indices ``(n_queries, width)`` of candidate neighbours of each query."""

    def search(self, queries, k):
        """Squared Euclidean distances and indices of the ``k`` nearest gallery rows.

        Parameters
        ----------
        queries : ndarray of shape (n_queries, d), float32, or None
            ``None``: the gallery's rows, each left out of its own neighbours.
        k : int

        Returns
        -------
        squared : ndarray of shape (n_queries, k)
        indices : ndarray of shape (n_queries, k)
        """
        # Approximate searches ask for one extra neighbour, drop each point
        # itself, then recompute exact distances for the indices kept.
        exclude_self = queries is None
        if exclude_self:
            queries = self.gallery
        extra = 1 if exclude_self else 0
        indices = self._candidates(queries, k + extra).astype(np.intp)
        if exclude_self:
            indices = _drop_self(indices, indices.shape[1] - extra)
        squared = _squared_to_candidates(queries, self.gallery, indices)
        order = np.argsort(squared, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(squared, order, 1), np.take_along_axis(indices, order, 1)

    def saved(self):
        """What a file keeps of the built search: a uint8 array, or ``None`` (rebuilt on loading)."""
        return None

    @classmethod
    def from_saved(cls, gallery, saved, **options):
        """The search of ``gallery`` as it was saved: loaded from ``saved``, or rebuilt where it is ``None``."""
        search = cls.__new__(cls)
        search.gallery, search.options = gallery, options
        search._built = search._build() if saved is None else search._load(saved)
        return search

    def _load(self, saved):
        raise ValueError(f"A {type(self).__name__} keeps nothing in a file; this one holds {len(saved)} bytes.")

    def _pickled(self):
        return self.saved()

    def _unpickled(self, value):
        return self._build() if value is None else self._load(value)

    def __getstate__(self):
        return {"gallery": self.gallery, "options": self.options, "built": self._pickled()}

    def __setstate__(self, state):
        self.gallery, self.options = state["gallery"], state["options"]
        self._built = self._unpickled(state["built"])


class ExactSearch(NeighborSearch):
    """Exact search by blocked float32 matrix products (:func:`brute_force_kneighbors`).

    Options: ``working_memory_mb`` (default 256), the memory a block of
    queries may take.
    """

    algorithm = "brute"

    def _build(self):
        return None

    def _candidates(self, queries, width):
        raise AssertionError("ExactSearch searches directly")

    def search(self, queries, k):
        exclude_self = queries is None
        return brute_force_kneighbors(
            self.gallery if exclude_self else queries,
            self.gallery,
            k,
            exclude_self=exclude_self,
            working_memory_mb=self.options.get("working_memory_mb", 256),
        )


class FaissSearch(NeighborSearch):
    """A faiss index (the ``faiss`` extra), on a GPU where faiss sees one.

    Options: ``description`` (a faiss factory string), ``params`` (faiss's
    settings by name, and ``k_factor``: how many times ``k`` candidates the
    index returns for exact re-ranking), ``seed`` (an IVF index's k-means),
    ``build_threads`` and ``search_threads`` (joblib's convention; ``None``
    leaves faiss's process-wide setting alone). A flat index is rebuilt
    on restoring; another is kept as faiss's own bytes.
    """

    algorithm = "faiss"

    @property
    def exact(self):
        return self.options["description"].replace(" ", "") == "Flat"

    def _build(self):
        import faiss

        with _faiss_threads(faiss, self.options.get("build_threads")):
            return _build_faiss_index(
                faiss, self.gallery, self.options["description"], self.options.get("params"), self.options.get("seed")
            )

    @property
    def index(self):
        """The faiss index."""
        return self._built

    def _candidates(self, queries, width):
        import faiss

        k_factor = int((self.options.get("params") or {}).get("k_factor", 1))
        width = min(len(self.gallery), width * k_factor)
        with _faiss_threads(faiss, self.options.get("search_threads")):
            _, indices = self._built.search(queries, width)
        indices = indices.astype(np.intp)
        # An IVF index returns -1 where the cells it visited hold too few rows.
        short = np.flatnonzero((indices < 0).any(axis=1))
        if short.size:
            _, indices[short] = brute_force_kneighbors(queries[short], self.gallery, width)
        return indices

    def saved(self):
        import faiss

        return None if self.exact else _serialize_faiss_index(faiss, self._built)

    def _unpickled(self, value):
        # Without faiss nothing can be built: the scorer that holds it searches exactly instead.
        return super()._unpickled(value) if _faiss_available() else None

    def _load(self, saved):
        import faiss

        index = _faiss_to_gpu(faiss, faiss.deserialize_index(np.asarray(saved, dtype=np.uint8)))
        _set_faiss_search_params(faiss, index, self.options.get("params"))
        return index


@contextlib.contextmanager
def _openmp_threads_kept():
    """Give every OpenMP runtime loaded before the block its thread count back afterwards.

    numba, which compiles pynndescent, sets the thread count of the OpenMP
    runtime its threading layer starts on; where that runtime is torch's (seen
    with faiss imported first), torch's thread count (``torch.set_num_threads``)
    would otherwise change for the rest of the process: on a machine shared by
    several processes that oversubscribes the cores, several times slower.
    """
    # Only the OpenMP runtimes: a BLAS limit another thread sets meanwhile stays as it is.
    with ThreadpoolController().select(user_api="openmp").limit(limits=None):
        yield


class NNDescentSearch(NeighborSearch):
    """A pynndescent graph. Options: ``n_neighbors`` (of the graph), ``random_state``, ``n_jobs``.

    A pickle keeps the graph as pickled bytes (joblib may load arrays as
    read-only memmaps, which crash pynndescent's compiled search); a file
    keeps nothing of it, and loading rebuilds it, identically only with an
    integer ``random_state``.
    """

    algorithm = "nndescent"

    @property
    def exact(self):
        return False

    def _build(self):
        from pynndescent import NNDescent

        n_jobs = self.options.get("n_jobs")
        with _openmp_threads_kept():
            return NNDescent(
                self.gallery,
                metric="euclidean",
                n_neighbors=self.options["n_neighbors"],
                random_state=self.options.get("random_state"),
                n_jobs=n_jobs if n_jobs is not None else -1,
                compressed=False,
            )

    def _candidates(self, queries, width):
        with _openmp_threads_kept():
            indices, _ = self._built.query(queries, k=width, epsilon=0.3)
        return indices

    def _pickled(self):
        return pickle.dumps(self._built)

    def _unpickled(self, value):
        return pickle.loads(value)


BACKENDS = {backend.algorithm: backend for backend in (ExactSearch, FaissSearch, NNDescentSearch)}
