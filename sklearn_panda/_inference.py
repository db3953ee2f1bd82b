"""Batched forward passes without autograd: features, and the frozen trunk's cache."""

import numpy as np
import torch

from ._data import batch_indices
from ._progress import ProgressBar


def extract_features(module, batch_source, n_samples, batch_size, *, verbose=0, label="features"):
    """Run ``module`` over all samples; return float32 ``(n_samples, d)``.

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
    """
    progress = ProgressBar(n_samples, label, verbose > 0)
    output = None
    with torch.inference_mode():
        for indices in batch_indices(n_samples, batch_size):
            features = module(batch_source(indices)).float()
            if output is None:
                output = np.empty((n_samples, features.shape[1]), dtype=np.float32)
            output[indices[0] : indices[-1] + 1] = features.cpu().numpy()
            progress.update(indices[-1] + 1)
    return output


def cache_trunk_outputs(trunk, preprocessor, batch_size, budget_mb, autocast, *, verbose=0):
    """The frozen trunk's output for every sample, kept on the device, or ``None``.

    The trunk never changes during adaptation (frozen weights, BatchNorm in
    eval mode, no augmentation), so each training image needs it only once
    instead of once per step. Skipped (``None``) when the outputs would take
    more than ``budget_mb`` megabytes.

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
        first = trunk(preprocessor(np.arange(min(batch_size, n_samples))))
    per_sample = first[0].numel() * first.element_size()
    if per_sample * n_samples > budget_mb * 2**20:
        return None
    cache = torch.empty((n_samples,) + tuple(first.shape[1:]), dtype=first.dtype, device=first.device)
    progress = ProgressBar(n_samples, "trunk", verbose > 0)
    with torch.inference_mode(), autocast():
        for indices in batch_indices(n_samples, batch_size):
            cache[indices[0] : indices[-1] + 1] = trunk(preprocessor(indices))
            progress.update(indices[-1] + 1)
    return cache
