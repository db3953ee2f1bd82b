"""faiss glue for :class:`~sklearn_panda.KNNScorer`: build, configure, move to a GPU, serialise.

faiss is optional (the ``faiss`` extra); nothing here imports it at module
level, and every function takes the imported module as its first argument.
"""

import contextlib

from joblib import effective_n_jobs


def _faiss_available():
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _faiss_threads(faiss, n_jobs):
    """Run faiss with ``n_jobs`` threads (joblib's convention: -1 is every CPU) for the block.

    faiss's OpenMP thread count is process-wide, so the previous count is
    restored afterwards for other faiss users. ``None`` leaves it alone.
    """
    if n_jobs is None:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(effective_n_jobs(n_jobs))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


# algorithm="auto": the index it searches a large gallery with, where faiss is
# installed. On the pooled EfficientNet-Lite0 features of Fashion-MNIST (1280-d),
# 10,000 queries: 6x faster than the exact search at 20,000 rows, 18x at
# 60,000, recall@2 >= 0.997, ROC AUC the exact one's (benchmarks/RESULTS.md,
# "faiss indexes"); below 20,000 rows building the index costs more than the
# exact search of fit's leave-one-out scores saves. Narrow features (fewer
# than 512) were not measured: they stay exact.
AUTO_INDEX = "PCA128,HNSW32"
AUTO_INDEX_PARAMS = {"efSearch": 32, "k_factor": 8}
AUTO_INDEX_MIN_SAMPLES = 20_000
AUTO_INDEX_MIN_FEATURES = 512

# Settings KNNScorer applies itself rather than through faiss's parameter space.
_OWN_FAISS_PARAMS = ("efConstruction", "k_factor")


def _build_faiss_index(faiss, X, description, params, seed):
    """A faiss index of ``X`` (L2) from its factory ``description``, trained, filled and set.

    ``params`` are faiss's names: ``efConstruction`` before the rows are
    added, the rest through faiss's parameter space afterwards (see
    :func:`_set_faiss_search_params`). ``seed`` seeds an IVF index's k-means.
    """
    index = faiss.index_factory(X.shape[1], description)
    params = dict(params or {})
    ef_construction = params.pop("efConstruction", None)
    if ef_construction is not None:
        # The graph itself, also behind a transform such as "PCA128,HNSW32".
        graph = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
        if not hasattr(graph, "hnsw"):
            raise ValueError(f"efConstruction is a setting of HNSW indexes; {description!r} is not one.")
        graph.hnsw.efConstruction = int(ef_construction)
    ivf = faiss.try_extract_index_ivf(index) if hasattr(faiss, "try_extract_index_ivf") else None
    if ivf is not None and seed is not None:
        ivf.cp.seed = seed
    if not index.is_trained:
        index.train(X)
    index.add(X)
    index = _faiss_to_gpu(faiss, index)
    _set_faiss_search_params(faiss, index, params)
    return index


def _set_faiss_search_params(faiss, index, params):
    """Set search-time settings (``nprobe``, ``efSearch``, ...) by faiss's names."""
    params = {name: value for name, value in (params or {}).items() if name not in _OWN_FAISS_PARAMS}
    if not params:
        return
    space = faiss.GpuParameterSpace() if _is_faiss_gpu_index(faiss, index) else faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, value)


def _is_faiss_gpu_index(faiss, index):
    return hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex)


def _faiss_to_gpu(faiss, index):
    """``index`` on GPU 0 where faiss was built with GPUs and sees one; else ``index``."""
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return index
    try:
        # faiss keeps the resources alive with the index it returns.
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    except RuntimeError:
        # No GPU version of this index (HNSW): it is searched on the CPU.
        return index


def _serialize_faiss_index(faiss, index):
    """The index as a uint8 array (faiss's own format; a GPU index is copied to the CPU first)."""
    if _is_faiss_gpu_index(faiss, index):
        index = faiss.index_gpu_to_cpu(index)
    return faiss.serialize_index(index)
