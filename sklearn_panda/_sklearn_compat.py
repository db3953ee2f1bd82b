"""scikit-learn's private helpers that the estimators build on, imported in one place.

``_fit_context`` and ``sklearn.utils._param_validation`` are how scikit-learn's
own estimators validate their parameters, and the estimators here use them the
same way; but they are private, and a release may move them. Every module
imports them from here, so that such a release fails on ``import
sklearn_panda`` with a message naming the supported versions, not with an
ImportError from deep inside the package.
"""

import re

import sklearn

MINIMUM_SKLEARN = (1, 6)


def _install_advice(version):
    """A pip requirement for a supported scikit-learn, given the installed ``version``."""
    minimum = ".".join(map(str, MINIMUM_SKLEARN))
    installed = tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", version).groups())
    if installed < MINIMUM_SKLEARN:
        return f"scikit-learn>={minimum}"
    return f"scikit-learn>={minimum},<{installed[0]}.{installed[1]}"


try:
    from sklearn.base import _fit_context
    from sklearn.utils._param_validation import (
        HasMethods,
        Interval,
        StrOptions,
        validate_parameter_constraints,
        validate_params,
    )
except ImportError as error:
    raise ImportError(
        f"scikit-learn {sklearn.__version__} does not provide the private helpers sklearn-panda "
        f"validates its parameters with ({error}). sklearn-panda supports scikit-learn >= "
        f"{'.'.join(map(str, MINIMUM_SKLEARN))} in the releases that have them: "
        f"pip install '{_install_advice(sklearn.__version__)}'."
    ) from error

__all__ = ["HasMethods", "Interval", "StrOptions", "_fit_context", "validate_parameter_constraints", "validate_params"]
