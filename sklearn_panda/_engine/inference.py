"""Batched forward passes without autograd: features, and the frozen trunk's cache.

A forward pass that runs out of GPU memory is retried on the same samples
with half the batch, down to one sample at a time, so that a ``batch_size``
chosen for a bigger GPU still works (more slowly) on a smaller one.
"""

import functools
import os
import threading
import warnings

import numpy as np
import torch

from .progress import ProgressBar


def _release_cached_memory():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_in_batches(forward, store, n_samples, batch_size, progress, label, *, progress_offset=0):
    """``store(indices, forward(indices))`` over consecutive batches covering every sample once.

    On ``torch.OutOfMemoryError`` the same samples are tried again with half
    the batch, and the smaller batch is kept for the rest; at a batch of one
    sample the error is raised with advice. ``progress`` is updated with
    ``progress_offset`` plus the samples done (a pass that is part of a larger one).
    """
    start = 0
    while start < n_samples:
        indices = np.arange(start, min(start + batch_size, n_samples))
        out_of_memory = False
        try:
            result = forward(indices)
        except torch.OutOfMemoryError as error:
            if batch_size == 1:
                raise torch.OutOfMemoryError(
                    f"Out of memory computing {label} even one sample at a time. Use "
                    "precision='bfloat16' or 'float16', a smaller crop_size or backbone, "
                    f"or device='cpu'. ({error})"
                ) from error
            # Retried below, once the except block has dropped the failed batch's tensors.
            out_of_memory = True
        if out_of_memory:
            smaller = max(1, batch_size // 2)
            warnings.warn(
                f"Out of memory computing {label} with batch_size={batch_size}; retrying "
                f"with {smaller}. A smaller batch_size avoids these retries.",
                RuntimeWarning,
                stacklevel=3,
            )
            batch_size = smaller
            _release_cached_memory()
            continue
        store(indices, result)
        progress.update(progress_offset + int(indices[-1]) + 1)
        start = int(indices[-1]) + 1


def extract_features(module, batch_source, n_samples, batch_size, *, verbose=0, label="features"):
    """Run ``module`` over all samples; return float32 ``(n_samples, d)``.

    A batch that runs out of GPU memory is retried with half as many samples
    (a ``RuntimeWarning`` says so); the features are the same.

    Parameters
    ----------
    module : callable
        Maps an input batch to features ``(batch, d)``.
    batch_source : callable
        Maps an index array to an input batch (a ``Preprocessor``, or a lookup
        into cached trunk outputs).
    n_samples, batch_size : int
    verbose : int
        Shows a progress bar when > 0.

    Raises
    ------
    torch.OutOfMemoryError
        When even a single sample does not fit.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn_panda._engine.inference import extract_features
    >>> X = torch.arange(10.0).reshape(5, 2)
    >>> extract_features(lambda batch: 2 * batch, lambda indices: X[indices], 5, 2)[:, 0]
    array([ 0.,  4.,  8., 12., 16.], dtype=float32)
    """
    progress = ProgressBar(n_samples, label, verbose > 0)
    output = None

    def store(indices, features):
        nonlocal output
        if output is None:
            output = np.empty((n_samples, features.shape[1]), dtype=np.float32)
        output[indices[0] : indices[-1] + 1] = features.cpu().numpy()

    with torch.inference_mode():
        run_in_batches(
            lambda indices: module(batch_source(indices)).float(),
            store,
            n_samples,
            batch_size,
            progress,
            label,
        )
    return output


def cache_trunk_outputs(trunk, preprocessor, batch_size, budget_mb, autocast, *, verbose=0):
    """The frozen trunk's output for every sample, kept on the device, or ``None``.

    The trunk never changes during adaptation (frozen weights, BatchNorm in
    eval mode, no augmentation), so each training image needs it only once
    instead of once per step. Skipped (``None``) when the outputs would take
    more than ``budget_mb`` megabytes, or when the device has no room for
    them; results are the same either way.

    Parameters
    ----------
    trunk : nn.Module
    preprocessor : Preprocessor
    batch_size : int
    budget_mb : float
    autocast : context manager factory
        The precision context of the forward passes.
    """
    n_samples = len(preprocessor)
    if budget_mb <= 0:
        return None
    with torch.inference_mode(), autocast():
        # One sample tells the size, type and device of every output.
        first = trunk(preprocessor(np.arange(1)))
    per_sample = first[0].numel() * first.element_size()
    if per_sample * n_samples > budget_mb * 2**20:
        return None
    try:
        cache = torch.empty((n_samples,) + tuple(first.shape[1:]), dtype=first.dtype, device=first.device)
        if first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last):
            # The stages then read the same layout from the cache as from the trunk.
            cache = cache.contiguous(memory_format=torch.channels_last)
    except torch.OutOfMemoryError:
        cache = None
    if cache is None:
        _release_cached_memory()
        return None
    progress = ProgressBar(n_samples, "trunk", verbose > 0)

    def store(indices, outputs):
        cache[indices[0] : indices[-1] + 1] = outputs

    with torch.inference_mode(), autocast():
        run_in_batches(
            lambda indices: trunk(preprocessor(indices)), store, n_samples, batch_size, progress, "trunk outputs"
        )
    return cache


def trunk_output_chunks(trunk, preprocessor, batch_size, budget_mb, autocast, *, verbose=0):
    """Consecutive chunks of samples with their trunk outputs: ``(indices, outputs)`` pairs.

    Each chunk holds as many samples as ``budget_mb`` megabytes of trunk
    outputs (at least a batch; every sample in one chunk where the budget is
    0 or below); ``outputs(positions)`` gives the trunk outputs of
    ``indices[positions]``, cached on the device for the chunk by
    :func:`cache_trunk_outputs`, or computed again on each call where they
    find no room. A pass that runs several networks over the same trunk
    (checkpoints of one adaptation) so runs the trunk once per sample. The
    arguments are those of :func:`cache_trunk_outputs`.
    """
    n_samples = len(preprocessor)
    if budget_mb <= 0:
        size = n_samples
    else:
        with torch.inference_mode(), autocast():
            first = trunk(preprocessor(np.arange(1)))
        per_sample = first[0].numel() * first.element_size()
        # Below a batch, chunks would shrink the batches; the trunk outputs
        # of such a chunk are computed for each batch instead of cached.
        size = max(batch_size, int(budget_mb * 2**20 // per_sample))
    for start in range(0, n_samples, size):
        indices = np.arange(start, min(start + size, n_samples))
        chunk = _Chunk(preprocessor, indices)
        cache = cache_trunk_outputs(trunk, chunk, batch_size, budget_mb, autocast, verbose=verbose)
        if cache is not None:
            yield indices, functools.partial(rows_of, cache)
        else:
            yield indices, functools.partial(_computed_trunk_outputs, trunk, chunk, autocast)
        # Freed before the next chunk's outputs are computed.
        del cache


def rows_of(outputs, indices):
    """``outputs[indices]``, with ``indices`` a NumPy array, on the outputs' device."""
    return outputs[torch.as_tensor(indices, device=outputs.device)]


def _computed_trunk_outputs(trunk, chunk, autocast, indices):
    with autocast():
        return trunk(chunk(indices))


class _Chunk:
    """The samples ``indices`` of ``preprocessor``, as a preprocessor of their own."""

    def __init__(self, preprocessor, indices):
        self.preprocessor = preprocessor
        self.indices = indices
        self.device = preprocessor.device

    def __len__(self):
        return len(self.indices)

    def __call__(self, indices):
        return self.preprocessor(self.indices[indices])


def peak_activation_bytes(modules, run):
    """Bytes of the largest tensor any submodule of ``modules`` outputs during ``run()``.

    Parameters
    ----------
    modules : iterable of nn.Module
        Every submodule (at any depth) is watched.
    run : callable
        Runs the forward pass to watch, e.g. on a single sample.

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.inference import peak_activation_bytes
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 100), torch.nn.Linear(100, 2))
    >>> peak_activation_bytes([net], lambda: net(torch.ones(1, 3)))  # 100 float32 values
    400
    """
    peak = 0
    watched = {id(submodule) for module in modules for submodule in module.modules()}
    thread = threading.get_ident()

    def watch(module, inputs, output):
        nonlocal peak
        # Only this call's pass: another thread may run the same modules meanwhile.
        if id(module) not in watched or threading.get_ident() != thread:
            return
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                peak = max(peak, tensor.numel() * tensor.element_size())

    # A global hook, not one on each module: the modules stay as they are (another thread
    # may pickle them meanwhile, and a hook that is a local function does not pickle).
    handle = torch.nn.modules.module.register_module_forward_hook(watch)
    try:
        run()
    finally:
        handle.remove()
    return peak


# When the operating system does not say (32 MiB: one AMD Zen 4/5 core complex's L3).
DEFAULT_LAST_LEVEL_CACHE_BYTES = 32 * 2**20


def last_level_cache_bytes(root="/sys/devices/system/cpu/cpu0/cache"):
    """Size of the CPU's last-level cache as Linux reports it for CPU 0.

    Falls back to ``DEFAULT_LAST_LEVEL_CACHE_BYTES`` where the sizes cannot be
    read (other operating systems, containers that hide ``/sys``).
    """
    levels = {}
    try:
        for index in os.scandir(root):
            if index.name.startswith("index"):
                with open(os.path.join(index.path, "level")) as level, open(os.path.join(index.path, "size")) as size:
                    levels[int(level.read())] = _parse_cache_size(size.read())
    except (OSError, ValueError):
        return DEFAULT_LAST_LEVEL_CACHE_BYTES
    return levels[max(levels)] if levels else DEFAULT_LAST_LEVEL_CACHE_BYTES


def _parse_cache_size(text):
    """``"32768K"`` -> 33554432; raises ``ValueError`` for anything else."""
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(text[:-1] if scale > 1 else text) * scale


def cache_sized_batch(per_sample_bytes, largest, cache_bytes=None):
    """The most samples (1 to ``largest``) whose biggest activation fills at most half the cache.

    On a CPU a forward pass runs fastest when each layer's output stays in
    the last-level cache for the next layer to read, and slows down steeply
    once it does not (measurements: ``benchmarks/RESULTS.md``, "Cache-sized
    inference batches"). Half the cache stays on the safe side of that
    cliff and leaves room for the weights and the layer's input.

    Parameters
    ----------
    per_sample_bytes : int
        The largest activation of one sample (:func:`peak_activation_bytes`).
    largest : int
        Upper bound.
    cache_bytes : int, optional
        Default: :func:`last_level_cache_bytes`.

    Examples
    --------
    >>> from sklearn_panda._engine.inference import cache_sized_batch
    >>> cache_sized_batch(3_211_264, largest=32, cache_bytes=32 * 2**20)
    5
    >>> cache_sized_batch(100, largest=32, cache_bytes=32 * 2**20)
    32
    >>> cache_sized_batch(2**30, largest=32, cache_bytes=32 * 2**20)
    1
    """
    if cache_bytes is None:
        cache_bytes = last_level_cache_bytes()
    return int(max(1, min(largest, cache_bytes // 2 // max(per_sample_bytes, 1))))
