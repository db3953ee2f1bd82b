"""Pickling and ``save`` of estimators that hold torch state: one declaration drives both.

Each estimator declares its torch state in ``_torch_attributes``: which fitted
attributes hold modules or tensors, and whether they live on ``device_`` or
on the CPU (as skorch declares its CUDA-dependent attributes). Pickling,
:func:`sklearn_panda.save` / :func:`sklearn_panda.load` and device moves read
that declaration alone, for the package's estimators and users' subclasses.
"""

import inspect
import io

import torch

from .._engine.device import loadable_device, place_torch_state
from .._io import persistence as _persistence

# The key of the pickled state that holds the torch state, saved by torch.
TORCH_STATE = "__torch_state__"


class TorchStateMixin:
    """``save``, pickling with the torch state in one ``torch.save`` blob, and registration for ``load``.

    Mix in left of ``BaseEstimator``.
    """

    # The fitted attributes that hold torch modules or tensors, each with where
    # it lives: ON_DEVICE (on ``device_``, moved with it) or ON_CPU. An
    # estimator that owns a network declares ``net_`` ON_DEVICE and sets
    # ``device_``. Subclasses extend the mapping,
    # ``_torch_attributes = {**Parent._torch_attributes, "extra_": ON_DEVICE}``,
    # so that pickling, save / load and device moves handle what they add.
    _torch_attributes = {}

    def save(self, path):
        """Write the fitted estimator to ``path`` without pickle.

        Read it back with :func:`sklearn_panda.load`, which uses
        ``torch.load(weights_only=True)`` and so runs no code from the file.
        A backbone given as a factory must be passed to ``load`` again.

        Parameters
        ----------
        path : str or path-like
            Destination file (conventionally ``.pt``); an existing file is
            replaced only once the new one is complete.

        See Also
        --------
        sklearn_panda.save : The same, as a function.
        sklearn_panda.load : Read the file back.

        Examples
        --------
        >>> import os
        >>> import tempfile
        >>> import numpy as np
        >>> from torch import nn
        >>> from sklearn_panda import PandaDetector, load
        >>> X = np.random.default_rng(0).normal(size=(20, 4))
        >>> det = PandaDetector(backbone=nn.Identity, weights=None, n_steps=0).fit(X)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     det.save(os.path.join(folder, "detector.pt"))
        ...     loaded = load(os.path.join(folder, "detector.pt"), backbone=nn.Identity)
        >>> bool(np.array_equal(loaded.score_samples(X), det.score_samples(X)))
        True
        """
        _persistence.save(self, path)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # load finds every estimator class by name, the package's and users' subclasses.
        _persistence.register(cls)

    def __getstate__(self):
        """The instance's state, with the declared torch state in one ``torch.save`` blob."""
        state = dict(super().__getstate__())
        torch_state = {name: state.pop(name) for name in self._torch_attributes if name in state}
        if torch_state:
            buffer = io.BytesIO()
            torch.save(torch_state, buffer)
            state[TORCH_STATE] = buffer.getvalue()
        return state

    def __setstate__(self, state):
        """Read the torch state onto the CPU, then place it on ``device_`` (the CPU,
        with a warning, when it was CUDA and CUDA is not available here)."""
        state = dict(state)
        blob = state.pop(TORCH_STATE, None)
        if blob is not None:
            # The bytes come from the pickle being loaded, which is trusted
            # already; weights_only=False adds no new risk (see docs/reliability.rst: never
            # unpickle files from untrusted sources).
            torch_state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
            if "device_" in state:
                state["device_"] = loadable_device(state["device_"])
            place_torch_state(torch_state, self._torch_attributes, state.get("device_"))
            state.update(torch_state)
        # A parameter added after the pickle was written takes its default.
        signature = inspect.signature(type(self).__init__).parameters
        for name in self._get_param_names():
            if signature[name].default is not inspect.Parameter.empty:
                state.setdefault(name, signature[name].default)
        super().__setstate__(state)
