"""The scikit-learn estimators and what they share.

* ``features`` (:class:`~sklearn_panda.PandaFeatures`, the adaptation as a transformer),
  ``detector`` (:class:`~sklearn_panda.PandaDetector`, and the base it shares with
  ``ses``, :class:`~sklearn_panda.PandaSES`), ``oe`` (:class:`~sklearn_panda.PandaOE`),
  ``patch`` (:class:`~sklearn_panda.PandaPatchDetector`).
* ``base``: the fit skeleton (validate, fit, assign at the end) and the network's passes;
  ``outlier``: scikit-learn's outlier contract; ``torch_state``: pickling and ``save``;
  ``validation``: input checks (numpy only); ``recipes``: per-backbone defaults;
  ``docstrings``: parameter texts written once; ``regions``: the connected defect
  regions of a map (numpy and scipy).

The estimators drive the torch engine (``sklearn_panda._engine``) and the scorers
(``sklearn_panda.scorers``); neither imports them.
"""
