"""``torch.compile`` for the inference passes, compiled once per module and batch size.

Each distinct input shape costs ``torch.compile`` a new compilation (for a
large network, far longer than the passes it speeds up), so a batch smaller than ``batch_size``, such
as the last one of a dataset, is zero-padded to ``batch_size`` and the padding
is cut from the output. This is exact because no layer mixes samples at
inference time (BatchNorm runs on its running statistics). The compiled
wrappers are stored on the module itself (they go when the module goes), so
``fit`` and later ``score_samples`` calls share one compilation.

Compilation uses Inductor's "freezing": the weights are treated as constants,
so that BatchNorm folds into the convolutions and the weights are pre-packed
for the CPU's convolution kernels (faster than compiling without freezing,
which is faster than eager: ``benchmarks/RESULTS.md``). Constants go stale when the
weights change, so the module is compiled again once its parameters have been
modified in place (adaptation does so between the passes before and after
training). Compiled code is also guarded on each parameter's
``requires_grad``, which adaptation switches on and off; every call therefore
runs with ``requires_grad`` off (restored afterwards).
"""

import contextlib
import itertools
import threading

import torch

_CACHE_ATTRIBUTE = "_sklearn_panda_compiled"


class _Compilations(dict):
    """A module's compiled wrappers by batch size, stored as an attribute of the module.

    Not in a ``WeakKeyDictionary`` keyed by the module: the compiled module
    holds the original strongly, so such an entry would keep its key alive for
    ever. On the module they form a reference cycle that the garbage collector
    frees with the module. Copies and pickles of the module start empty:
    compiled code does not pickle, and a copy has weights of its own.
    """

    def __reduce__(self):
        return type(self), ()


class _PaddedBatches:
    """Call a compiled module on batches padded to one fixed size."""

    def __init__(self, module, batch_size):
        self.module = module
        self.compiled = torch.compile(module, dynamic=False, options={"freezing": True})
        self.batch_size = batch_size
        self.weights_version = weights_version(module)
        # Calls switch requires_grad on shared parameters: one at a time.
        self.lock = threading.Lock()

    def __call__(self, batch):
        n_samples = batch.shape[0]
        with self.lock, _without_requires_grad(self.module):
            if n_samples >= self.batch_size:
                return self.compiled(batch)
            padding = batch.new_zeros((self.batch_size - n_samples,) + tuple(batch.shape[1:]))
            padded = torch.cat([batch, padding]).contiguous(memory_format=_memory_format(batch))
            return self.compiled(padded)[:n_samples]


def weights_version(module):
    """Changes whenever a parameter or buffer of ``module`` is modified in place."""
    return tuple(tensor._version for tensor in itertools.chain(module.parameters(), module.buffers()))


@contextlib.contextmanager
def _without_requires_grad(module):
    switched = [parameter for parameter in module.parameters() if parameter.requires_grad]
    for parameter in switched:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in switched:
            parameter.requires_grad_(True)


def _memory_format(batch):
    if batch.dim() == 4 and batch.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def compiled(module, batch_size):
    """``module`` compiled with ``torch.compile``; smaller batches are padded to ``batch_size``.

    The compilation itself happens on the first call. Once the parameters
    have been updated in place (as adaptation does), the next ``compiled``
    call compiles the module again with the new weights.

    Parameters
    ----------
    module : nn.Module
    batch_size : int
        The batch size every call is padded to.

    Returns
    -------
    forward : callable
        Same outputs as ``module`` (up to floating-point reassociation).

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.compilation import compiled
    >>> layer = torch.nn.Linear(3, 2)
    >>> forward = compiled(layer, batch_size=4)
    >>> forward(torch.ones(3, 3)).shape
    torch.Size([3, 2])
    """
    per_size = module.__dict__.setdefault(_CACHE_ATTRIBUTE, _Compilations())
    forward = per_size.get(batch_size)
    if forward is None or forward.weights_version != weights_version(module):
        forward = per_size[batch_size] = _PaddedBatches(module, batch_size)
    return forward
