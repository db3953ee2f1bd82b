"""Score image collections larger than one process on a Dask cluster.

:func:`score_dask` maps a fitted estimator's ``score_samples``,
``decision_function``, ``predict`` or ``transform`` over the partitions of a
dask array of images or a dask bag of image paths. On a ``distributed``
cluster the fitted model is sent once to every worker (``Client.scatter``
with ``broadcast=True``) and the tasks refer to it, so it travels once per
worker, not once per task; each task streams one partition through the
model, so a worker holds the model and the partitions it is working on.

Model selection needs nothing from this module: the estimators pickle, so
``GridSearchCV`` and ``cross_validate`` run on a cluster under
``joblib.parallel_backend("dask")``.

Needs the ``dask`` extra: ``pip install 'sklearn-panda[dask]'``.
"""

import contextlib
import threading

import numpy as np

__all__ = ["score_dask"]

METHODS = ("score_samples", "decision_function", "predict", "transform")

# The tasks of this process inside _one_torch_thread_per_task, and the setting they found.
_TASKS_LOCK = threading.Lock()
_TASKS = {"running": 0, "saved": None}


@contextlib.contextmanager
def _one_torch_thread_per_task():
    """One torch thread per task, for the task only, on a worker that runs several tasks at once.

    A worker with ``T`` threads runs ``T`` tasks concurrently; torch's default
    of one thread per core in each of them would oversubscribe the cores the
    cluster was given. A one-thread worker keeps torch's own setting
    (``distributed``'s worker processes start with ``OMP_NUM_THREADS=1``).
    The worker's setting is put back afterwards, for whatever else it runs.
    """
    try:
        from distributed import get_worker

        threads = get_worker().state.nthreads
    except (ImportError, ValueError):
        threads = 1  # not on a distributed worker (the local scheduler)
    if threads <= 1:
        yield
        return
    import torch

    # torch's setting is the process's: the first of overlapping tasks saves it, the last puts it back.
    with _TASKS_LOCK:
        if _TASKS["running"] == 0:
            _TASKS["saved"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _TASKS["running"] += 1
    try:
        yield
    finally:
        with _TASKS_LOCK:
            _TASKS["running"] -= 1
            if _TASKS["running"] == 0:
                torch.set_num_threads(_TASKS["saved"])


def _apply(samples, estimator, method):
    if len(samples) == 0:
        return np.empty((0,) if method != "transform" else (0, estimator._n_features_out))
    with _one_torch_thread_per_task():
        return getattr(estimator, method)(samples)


def _apply_to_partition(paths, estimator, method):
    return _apply(list(paths), estimator, method)


def _default_client():
    try:
        from distributed import get_client
    except ImportError:
        return None
    try:
        return get_client()
    except ValueError:
        return None


def _output_dtype(method):
    return np.int64 if method == "predict" else (np.float32 if method == "transform" else np.float64)


def score_dask(estimator, X, *, method="score_samples", client=None):
    """Apply a fitted estimator to a dask collection of images, partition by partition.

    Parameters
    ----------
    estimator : fitted estimator
        A fitted :class:`~sklearn_panda.PandaDetector`, :class:`~sklearn_panda.PandaSES`,
        :class:`~sklearn_panda.PandaOE`, :class:`~sklearn_panda.PandaPatchDetector` (its
        image scores and labels; anomaly maps are not a method here) or
        :class:`~sklearn_panda.PandaFeatures` (or any fitted estimator with ``method``).

    X : dask.array.Array or dask.bag.Bag
        The images: a dask array in a layout the estimator accepts (its first
        axis the samples; chunks along the other axes are merged), or a dask
        bag of image file paths (or of PIL images), one partition a batch. A
        dask dataframe column of paths can be given as ``column.to_bag()``.

    method : {"score_samples", "decision_function", "predict", "transform"}, \
default="score_samples"
        The estimator's method to apply.

    client : distributed.Client, default=None
        The cluster to run on. ``None`` takes the current client where there
        is one (``distributed.get_client()``), else the graph runs on
        whichever scheduler ``compute`` uses.

    Returns
    -------
    result : dask.array.Array
        Lazy; ``.compute()`` gives what ``getattr(estimator, method)`` gives on
        all of ``X`` in memory: shape ``(n_samples,)`` (``(n_samples,
        n_features_out)`` for ``transform``). For a bag the chunk sizes are
        unknown until computed.

    Notes
    -----
    With a client, the model is scattered to every worker once
    (``broadcast=True``) and each task refers to it. On a worker running
    several tasks at once (more than one thread) torch runs one thread per
    task. The model scores on the device it was fitted on (a GPU-fitted model
    on a worker without CUDA falls back to the CPU, with a warning).

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from torch import nn
    >>> from sklearn_panda import PandaDetector
    >>> from sklearn_panda.distributed import score_dask
    >>> def tiny_mlp():
    ...     return nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 4))
    >>> X = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    >>> det = PandaDetector(backbone=tiny_mlp, weights=None, n_steps=0).fit(X)
    >>> scores = score_dask(det, da.from_array(X, chunks=10))
    >>> bool(np.allclose(scores.compute(scheduler="synchronous"), det.score_samples(X)))
    True
    """
    import dask.array as da
    import dask.bag as db

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    if not hasattr(estimator, method):
        raise ValueError(f"{type(estimator).__name__} has no method {method!r}.")
    client = _default_client() if client is None else client
    # Scattered once to every worker; the tasks carry a reference to it.
    model = estimator if client is None else client.scatter(estimator, broadcast=True, hash=False)
    dtype = _output_dtype(method)
    if isinstance(X, da.Array):
        X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
        if method == "transform":
            n_out = estimator._n_features_out
            return X.map_blocks(
                _apply, model, method, dtype=dtype, chunks=(X.chunks[0], (n_out,)),
                drop_axis=list(range(2, X.ndim)) if X.ndim > 2 else None,
                meta=np.empty((0, 0), dtype=dtype),
            )
        return X.map_blocks(
            _apply, model, method, dtype=dtype, chunks=(X.chunks[0],),
            drop_axis=list(range(1, X.ndim)), meta=np.empty((0,), dtype=dtype),
        )
    if isinstance(X, db.Bag):
        parts = X.map_partitions(_apply_to_partition, model, method).to_delayed()
        width = (estimator._n_features_out,) if method == "transform" else ()
        return da.concatenate(
            [da.from_delayed(part, shape=(np.nan, *width), dtype=dtype) for part in parts]
        )
    raise TypeError(f"X must be a dask array or a dask bag; got {type(X).__name__}.")
