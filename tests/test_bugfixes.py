"""Regression tests for fixes that have no module of their own to be tested with.

The scikit-learn compatibility shim (``sklearn_panda/_sklearn_compat.py``):
the private helpers the estimators use may move in a scikit-learn release,
and the error must then say which versions are supported.
"""

import importlib
import sys

import pytest
import sklearn.base

from sklearn_panda import _sklearn_compat


@pytest.mark.parametrize(
    "break_import",
    [
        lambda m: m.delattr(sklearn.base, "_fit_context"),
        lambda m: m.setitem(sys.modules, "sklearn.utils._param_validation", None),
    ],
    ids=["_fit_context moved", "_param_validation moved"],
)
def test_moved_private_helpers_name_the_supported_scikit_learn_versions(break_import):
    message = rf"scikit-learn {sklearn.__version__} .* sklearn-panda supports scikit-learn >= 1\.6"
    with pytest.MonkeyPatch.context() as monkeypatch:
        break_import(monkeypatch)
        with pytest.raises(ImportError, match=message):
            importlib.reload(_sklearn_compat)
    importlib.reload(_sklearn_compat)
    assert _sklearn_compat._fit_context is sklearn.base._fit_context
