"""What an estimator's input is, as data: its kind and channels (``InputSpec``), and the checked data.

Plain dataclasses, below every layer that reads them: the estimators' input
checks make them (:mod:`sklearn_panda._estimators.validation`), the engine
reads them, and a model file keeps a fitted ``InputSpec``
(:mod:`.persistence`). Pickles name them at
``sklearn_panda._estimators.validation``, which imports them from here.
"""

import sys
from dataclasses import dataclass


def tensor_as_array(X):
    """A torch tensor (any subclass, any device, requiring grad or not) as the numpy array it holds;
    anything else as it is. Imports no torch: a tensor exists only where torch was imported.

    Examples
    --------
    >>> from sklearn_panda._io.inputs import tensor_as_array
    >>> tensor_as_array([1, 2])
    [1, 2]
    """
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(X, torch.Tensor):
        return X
    X = X.detach().cpu()
    # bfloat16 has no numpy type.
    return (X.float() if X.dtype == torch.bfloat16 else X).numpy()


@dataclass(frozen=True)
class InputSpec:
    """What kind of input an estimator was fitted on.

    ``kind`` is ``"vectors"``, ``"array_images"`` or ``"file_images"``;
    ``channels`` is the number of colour channels of array images (the
    number of features for vectors; 3 for files, which are read as RGB).
    """

    kind: str
    channels: int


@dataclass(frozen=True)
class CheckedInput:
    """Validated input: the data in a known layout and its ``InputSpec``.

    ``data`` is ``(n, d)`` for vectors, ``(n, H, W, C)`` (a view of the
    caller's array, not a copy) for array images, and a list for files.
    """

    data: object
    spec: InputSpec

    def __len__(self):
        return len(self.data)
