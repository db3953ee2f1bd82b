"""Training callbacks: code of one's own that takes part in the adaptation.

``PandaFeatures.fit(X, callbacks=[...])`` (and ``fit_transform``; the
detectors' ``fit`` passes them on, ``PandaOE.fit(X, y, callbacks=[...])``
too) calls the hooks of each :class:`TrainingCallback` while it adapts the
network, in the order given, as skorch's callbacks are called:

* ``on_train_begin(net, n_samples=..., generator=...)``: once, before the
  first step (also when ``n_steps=0``). It may return the indices of the
  training samples to train on, to hold some out (``PandaSES`` holds out its
  validation images this way); ``None`` trains on all of them. At most one
  callback may choose.
* ``on_step_end(net, step=..., loss=..., details=...)``: after every SGD step
  (``step`` counts from 0; ``details`` holds the step's ``compactness`` and
  ``ewc_penalty``). Returning ``True`` ends the adaptation after this step
  (early stopping: the network is kept as this step left it; ``history_``
  holds the steps taken); every callback still sees the step.
* ``on_train_end(net, training_inputs=..., trunk_outputs=...)``: once, after
  the last step. ``training_inputs(indices)`` gives the preprocessed batch of
  those training samples on the network's device (``len(training_inputs)``
  samples in all); ``trunk_outputs`` holds the frozen trunk's outputs for every
  training sample, or ``None`` when they did not fit in ``trunk_cache_mb``.

``net`` is the network being adapted: ``net.trunk`` (frozen), ``net.stages``
(trained), and ``net(batch)`` the pooled features. A hook must not change
it; it may copy it. Every hook takes its arguments by keyword, so that a
callback names only those it needs and ignores the rest with ``**kwargs``.
An exception raised by a hook ends ``fit`` and leaves the transformer as it
was before.

This module imports neither torch nor any estimator.

Examples
--------
>>> import numpy as np
>>> from torch import nn
>>> from sklearn_panda import PandaFeatures
>>> from sklearn_panda.callbacks import TrainingCallback
>>> class EveryOtherLoss(TrainingCallback):
...     def __init__(self):
...         self.losses = []
...     def on_step_end(self, net, *, step, loss, **kwargs):
...         if step % 2 == 0:
...             self.losses.append(loss)
>>> def tiny_mlp():
...     return nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 4))
>>> log = EveryOtherLoss()
>>> features = PandaFeatures(backbone=tiny_mlp, weights=None, n_steps=6, random_state=0)
>>> features = features.fit(np.random.default_rng(0).normal(size=(40, 6)), callbacks=[log])
>>> len(log.losses)
3
>>> log.losses == features.history_["loss"][::2]
True
"""

import functools

import numpy as np

__all__ = ["TrainingCallback"]


class TrainingCallback:
    """Base class of the hooks ``PandaFeatures.fit`` calls: each does nothing.

    Subclass it and override the hooks you need; the module docstring says
    when each is called and with what.

    See Also
    --------
    sklearn_panda.PandaFeatures.fit : Takes a list of callbacks.

    Examples
    --------
    >>> from sklearn_panda.callbacks import TrainingCallback
    >>> class PrintLoss(TrainingCallback):
    ...     def on_step_end(self, net, *, step, loss, **kwargs):
    ...         print(f"step {step}: {loss:.3f}")
    >>> PrintLoss().on_step_end(None, step=0, loss=0.5, details={})
    step 0: 0.500
    """

    def on_train_begin(self, net, **kwargs):
        """Called once before training; may choose the samples to train on.

        Parameters
        ----------
        net : torch.nn.Module
            The network about to be adapted.
        **kwargs
            ``n_samples`` (int), the number of training samples, and
            ``generator`` (torch.Generator), the fit's seeded generator: draw
            from it to stay reproducible with ``random_state``.

        Returns
        -------
        indices : array-like of int or None
            The distinct indices of the training samples to train on; ``None``
            (the default) trains on all of them.

        Examples
        --------
        >>> from sklearn_panda.callbacks import TrainingCallback
        >>> class EvenSamples(TrainingCallback):
        ...     def on_train_begin(self, net, *, n_samples, **kwargs):
        ...         return range(0, n_samples, 2)
        >>> list(EvenSamples().on_train_begin(None, n_samples=5, generator=None))
        [0, 2, 4]
        """
        return None

    def on_step_end(self, net, **kwargs):
        """Called after every SGD step.

        Parameters
        ----------
        net : torch.nn.Module
            The network being adapted, after the step.
        **kwargs
            ``step`` (int, from 0), ``loss`` (float, the step's loss) and
            ``details`` (dict: the step's ``compactness`` and ``ewc_penalty``).

        Returns
        -------
        stop : bool or None
            ``True`` ends the adaptation after this step; ``None`` (or
            ``False``) goes on.

        Examples
        --------
        >>> from sklearn_panda.callbacks import TrainingCallback
        >>> class StopWhenCompact(TrainingCallback):
        ...     def on_step_end(self, net, *, details, **kwargs):
        ...         return details["compactness"] < 0.01
        >>> StopWhenCompact().on_step_end(None, step=3, loss=0.005, details={"compactness": 0.005})
        True
        """

    def on_train_end(self, net, **kwargs):
        """Called once after the last step.

        Parameters
        ----------
        net : torch.nn.Module
            The adapted network.
        **kwargs
            ``training_inputs``: ``training_inputs(indices)`` gives the
            preprocessed batch of those training samples on the network's
            device, ``len(training_inputs)`` samples in all; ``trunk_outputs``
            (torch.Tensor or None): the frozen trunk's outputs for every
            training sample, or ``None`` when they did not fit in
            ``trunk_cache_mb``.

        Examples
        --------
        >>> from sklearn_panda.callbacks import TrainingCallback
        >>> TrainingCallback().on_train_end(None, training_inputs=[], trunk_outputs=None) is None
        True
        """


def check_callbacks(callbacks):
    """``callbacks`` as a tuple of :class:`TrainingCallback`, or a ``TypeError`` naming the odd one."""
    if callbacks is None:
        return ()
    if isinstance(callbacks, TrainingCallback) or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"callbacks must be a list of TrainingCallback objects; got {type(callbacks).__name__}.")
    callbacks = tuple(callbacks)
    for callback in callbacks:
        if not isinstance(callback, TrainingCallback):
            raise TypeError(
                f"callbacks must be TrainingCallback objects (sklearn_panda.callbacks); got "
                f"{type(callback).__name__}."
            )
    return callbacks


def step_hooks(callbacks, net):
    """The training loop's ``hook(step, loss, details)`` for each callback: its ``on_step_end`` on ``net``,
    whose answer (true: stop after this step) the hook hands on."""
    return [functools.partial(_on_step_end, callback, net) for callback in callbacks]


def _on_step_end(callback, net, step, loss, details):
    stop = callback.on_step_end(net, step=step, loss=loss, details=details)
    if stop is not None and not isinstance(stop, (bool, np.bool_)):
        # A value returned by accident (a loss, self) would otherwise end the training at once.
        raise TypeError(
            f"{type(callback).__name__}.on_step_end must return None, True (end the adaptation after this "
            f"step) or False; got {type(stop).__name__}."
        )
    return bool(stop)


def training_indices(callbacks, net, n_samples, generator):
    """Call every ``on_train_begin`` in turn; the indices one of them chose, or ``None``.

    Raises
    ------
    ValueError
        When more than one callback chooses, or the choice is not a non-empty
        set of distinct sample indices in ``[0, n_samples)``.
    """
    chosen = chooser = None
    for callback in callbacks:
        indices = callback.on_train_begin(net, n_samples=n_samples, generator=generator)
        if indices is None:
            continue
        if chosen is not None:
            # An estimator's own callback names itself (PandaSES holds out its validation images).
            earlier = getattr(chooser, "_chooser_name", f"an earlier callback, {type(chooser).__name__}")
            raise ValueError(
                f"{type(callback).__name__}.on_train_begin chose the samples to train on, and so did "
                f"{earlier}: at most one callback may choose them."
            )
        chooser = callback
        indices = np.asarray(indices)
        if (
            indices.ndim != 1
            or not indices.size
            # Integers only: a boolean mask is no list of indices (True is an Integral in Python).
            or indices.dtype.kind not in "iu"
            or indices.min() < 0
            or indices.max() >= n_samples
            or len(np.unique(indices)) != indices.size
        ):
            raise ValueError(
                f"{type(callback).__name__}.on_train_begin must return None or distinct integer indices "
                f"of training samples in [0, {n_samples}); got {indices!r}."
            )
        chosen = indices
    return chosen
