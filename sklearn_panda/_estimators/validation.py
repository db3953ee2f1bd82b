"""Input checks shared by every estimator: what was given, and is it usable.

Images come as numpy arrays ``(n, H, W)``, ``(n, H, W, C)`` or ``(n, C, H, W)``
with ``C`` in {1, 3} (uint8 in [0, 255]; uint16 in [0, 65535], divided by
65,535 as 16-bit files are; other integers in [0, 255], for they carry no bit
depth; float in [0, 1]; or bool: binary images, True white), or as a list (or
1-D array or pandas Series) of file paths / PIL images. A 2-D array
``(n, d)`` is a batch of vectors for a vector backbone. torch tensors are
read as the arrays they hold (on the CPU, detached). Everything here is
numpy; no torch.
"""

import numbers
import os
import warnings

import numpy as np
from sklearn.utils import check_array
from sklearn.utils.validation import validate_data

from .._io.inputs import CheckedInput, InputSpec, tensor_as_array

IMAGE_SHAPES = "(n, H, W), (n, H, W, C) or (n, C, H, W) with C in {1, 3}"


def _is_image_like(item):
    return isinstance(item, (str, os.PathLike)) or hasattr(item, "convert")


def check_input(X, fitted_spec=None):
    """Validate images or vectors and return them as a :class:`CheckedInput`.

    Parameters
    ----------
    X : array-like or list of paths / PIL images
        See the module docstring for the accepted layouts.
    fitted_spec : InputSpec, default=None
        The fitted estimator's input, for new input: an array that reads as
        grayscale images but looks like one colour image warns only where
        :func:`check_consistent` will not refuse it.

    Returns
    -------
    checked : CheckedInput

    Raises
    ------
    ValueError
        With a message naming the problem: empty input, wrong rank, wrong
        channel count, NaN or infinite values, float images outside [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda._estimators.validation import check_input
    >>> check_input(np.zeros((2, 28, 28), dtype=np.uint8)).data.shape
    (2, 28, 28, 1)
    >>> check_input(np.zeros((2, 3, 8, 8))).spec
    InputSpec(kind='array_images', channels=3)
    """
    if isinstance(X, (str, os.PathLike)) and os.path.isdir(X):
        raise ValueError(
            f"Got a folder ({os.fspath(X)}), not images: pass a list of its image files, e.g. "
            "sorted(map(str, pathlib.Path(folder).glob('*.png'))) (the command line reads folders)."
        )
    if _is_image_like(X):
        raise ValueError(f"Got one image ({type(X).__name__}), not a list of them; for one image, pass [X].")
    if getattr(X, "ndim", None) == 1 and len(X) and all(map(_is_image_like, X)):
        # A numpy array or pandas Series of file paths: a list of them.
        X = list(X)
    elif getattr(X, "ndim", None) == 2 and X.shape[1] == 1 and len(X):
        # One column of them (a DataFrame read from a CSV file): the same.
        column = np.asarray(X)[:, 0]
        if all(map(_is_image_like, column)):
            X = list(column)
    if isinstance(X, (list, tuple)):
        X = [tensor_as_array(item) for item in X]
        if len(X) == 0:
            raise ValueError("Found an empty list of images; at least one image is required.")
        if all(_is_image_like(item) for item in X):
            return CheckedInput(list(X), InputSpec("file_images", 3))
        if any(_is_image_like(item) for item in X):
            raise ValueError(
                "A list must hold only file paths / PIL images, or only arrays of one shape; got a mix."
            )
        shapes = sorted({np.shape(item) for item in X})
        if len(shapes) > 1:
            raise ValueError(
                f"The arrays in the list have different shapes ({', '.join(map(str, shapes[:3]))}"
                f"{', ...' if len(shapes) > 3 else ''}); stack images of one size into one array, "
                "or pass file paths or PIL images ([PIL.Image.fromarray(image) for image in X] for uint8 "
                "or uint16 grey images), which may differ in size (each is brought to the estimator's "
                "resize and crop_size, or scored at its own size by PandaPatchDetector)."
            )
        X = np.asarray(X)
    X = _as_numeric_array(X)
    if X.ndim not in (2, 3, 4):
        raise ValueError(
            f"Expected images of shape {IMAGE_SHAPES}, or vectors of shape "
            f"(n_samples, n_features); got an array with {X.ndim} dimension(s), "
            f"shape {X.shape}."
        )
    if X.ndim == 2:
        return CheckedInput(X, InputSpec("vectors", X.shape[1]))
    refused = fitted_spec is not None and fitted_spec.kind != "vectors" and fitted_spec.channels == 3
    if X.ndim == 3 and X.shape[-1] in (3, 4) and X.shape[1] > X.shape[-1] and not refused:
        # An estimator fitted on colour images refuses it (check_consistent); a fit or a grayscale model reads it.
        warnings.warn(
            f"An array of shape {X.shape} is read as {X.shape[0]} grayscale images of {X.shape[1]} x "
            f"{X.shape[2]} pixels. For one colour image, add the batch axis: X[None].",
            UserWarning,
        )
    images = _to_channels_last(X)
    if images.dtype == bool:
        # Binary images: False black, True white.
        images = images.astype(np.uint8) * np.uint8(255)
    _check_pixel_range(images)
    return CheckedInput(images, InputSpec("array_images", images.shape[-1]))


def _as_numeric_array(X):
    """scikit-learn's checks (sparse, complex, object, empty, NaN / inf), any rank; in native byte order."""
    X = tensor_as_array(X)
    X_array = np.asarray(X) if not hasattr(X, "tocsr") else X
    if getattr(X_array, "ndim", 2) < 2:
        raise ValueError(
            f"Expected images of shape {IMAGE_SHAPES}, or vectors of shape "
            f"(n_samples, n_features); got an array with {X_array.ndim} dimension(s), "
            f"shape {X_array.shape}. Reshape your data, e.g. X.reshape(-1, 1) for one "
            "feature or X.reshape(1, -1) for one sample."
        )
    X = check_array(X, dtype="numeric", allow_nd=True, ensure_min_features=1)
    if not X.dtype.isnative:
        # Big-endian data (FITS, np.fromfile(..., ">u2")): the same values, as numpy and torch compute.
        X = X.astype(X.dtype.newbyteorder("="))
    return X


def _to_channels_last(X):
    if X.ndim == 3:
        return X[..., None]
    if X.shape[-1] in (1, 3):
        if X.shape[1] in (1, 3):
            warnings.warn(
                f"An array of shape {X.shape} could hold its channels on axis 1 or last; it is read as "
                f"{X.shape[0]} images of {X.shape[1]} x {X.shape[2]} pixels with {X.shape[3]} channel(s). If "
                "the channels are on axis 1, pass np.moveaxis(X, 1, -1).",
                UserWarning,
                stacklevel=3,
            )
        return X
    if X.shape[1] in (1, 3):
        return np.moveaxis(X, 1, -1)
    channel_hint = ""
    if 4 in (X.shape[1], X.shape[-1]):
        channel_hint = " An RGBA image has 4: drop the alpha channel first (X[..., :3])."
    raise ValueError(
        f"Expected images of shape {IMAGE_SHAPES}; got shape {X.shape}, whose "
        f"channel axis (axis 1 or the last) is neither 1 nor 3.{channel_hint}"
    )


def _check_pixel_range(images):
    low, high = images.min(), images.max()
    if images.dtype.kind in "ui" and high == 1 and low == 0:
        warnings.warn(
            "These integer images hold only 0 and 1, which read as black and almost black "
            "(integer images hold values in [0, 255], uint16 ones in [0, 65535]). For binary images, "
            "multiply by 255 or pass booleans (True is white).",
            UserWarning,
            stacklevel=3,
        )
    if images.dtype == np.uint16 and 1 < high <= 255:
        warnings.warn(
            f"These uint16 images hold values up to {high} only, which read as almost black (uint16 images "
            "are divided by 65,535, as 16-bit files are). If they hold 8-bit values, pass X.astype(np.uint8).",
            UserWarning,
            stacklevel=3,
        )
    if images.dtype in (np.uint8, np.uint16):
        # Every value of these is a pixel value: 8-bit and 16-bit images.
        return
    if images.dtype.kind == "f":
        if low < 0 or high > 1:
            raise ValueError(
                f"Float images must hold values in [0, 1]; got values in "
                f"[{low:.4g}, {high:.4g}]. Divide 0-255 images by 255, or pass them as uint8."
            )
        return
    if low < 0 or high > 255:
        raise ValueError(
            f"Integer images must hold values in [0, 255]; got values in [{low}, {high}]. Pass "
            "16-bit images as uint16 (read as 16-bit files are: divided by 65,535)."
        )


def check_geometry(resize, crop_size=None):
    """``resize`` (and ``crop_size``) as given, once checked: sides are integers >= 1, never booleans.

    Integers, ``None`` and ``"auto"`` pass as they are, a pair ``(height,
    width)`` of ``resize`` comes back as a tuple. scikit-learn's integer
    constraint takes ``True`` as 1: ``resize=True`` would reach torch, and
    ``crop_size=True`` would crop every image to one pixel.

    Examples
    --------
    >>> from sklearn_panda._estimators.validation import check_geometry
    >>> check_geometry([32, 48], 24)
    ((32, 48), 24)
    >>> check_geometry(True)
    Traceback (most recent call last):
    ...
    ValueError: resize must be an integer (the shorter side), a pair (height, width) of integers >= 1, None or 'auto'; got True.
    """

    def side(value):
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1

    if isinstance(resize, (tuple, list)) and len(resize) == 2 and all(side(value) for value in resize):
        resize = (int(resize[0]), int(resize[1]))
    elif not (resize is None or isinstance(resize, str) or side(resize)):
        raise ValueError(
            f"resize must be an integer (the shorter side), a pair (height, width) of integers >= 1, "
            f"None or 'auto'; got {resize!r}."
        )
    if isinstance(crop_size, bool):
        raise ValueError(f"crop_size must be an integer (the side of the centre square), None or 'auto'; got {crop_size!r}.")
    return resize, crop_size


def check_new_input(estimator, X):
    """Check ``X`` given to a fitted ``estimator`` against what it was fitted on.

    The same kind of input (vectors, array images of as many channels, or
    files), checked by :func:`check_input` and :func:`check_consistent`;
    vectors also by scikit-learn's ``validate_data`` (``n_features_in_``,
    feature names).

    Returns
    -------
    CheckedInput

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_panda import PandaPatchDetector
    >>> normal = np.random.default_rng(0).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    >>> detector = PandaPatchDetector(backbone="resnet18", weights=None, resize=None).fit(normal)
    >>> check_new_input(detector, np.zeros((2, 32, 32), np.uint8)).data.shape
    (2, 32, 32, 1)
    >>> check_new_input(detector, np.zeros((2, 32, 32, 3), np.uint8))
    Traceback (most recent call last):
    ...
    ValueError: The estimator was fitted on 1-channel images; got 3-channel images. ...
    """
    fitted_spec = estimator.input_spec_
    checked = check_input(X, fitted_spec=fitted_spec)
    if checked.spec.kind == fitted_spec.kind == "vectors":
        validate_data(estimator, X, dtype=None, reset=False)
    check_consistent(checked.spec, fitted_spec, getattr(checked.data, "shape", None))
    return checked


def check_consistent(spec, fitted_spec, shape=None):
    """Raise if new input is of another kind than the input seen in ``fit``.

    ``shape``, the checked data's shape ``(n, H, W, C)``, lets it catch one
    colour image given without its batch axis: ``(H, W, 3)`` reads as ``H``
    grayscale images of ``W x 3`` pixels.
    """
    if (
        shape is not None
        and spec.kind == "array_images"
        and spec.channels == 1
        and fitted_spec.channels == 3
        and fitted_spec.kind != "vectors"
        and shape[2] in (3, 4)
    ):
        raise ValueError(
            f"Got an array of shape {shape[:3]}, which reads as {shape[0]} grayscale images of "
            f"{shape[1]} x {shape[2]} pixels; the estimator was fitted on colour images. For one "
            "image of shape (H, W, C), add the batch axis: X[None]."
        )
    if spec == fitted_spec:
        return
    if fitted_spec.kind == "vectors" or spec.kind == "vectors":
        raise ValueError(
            f"The estimator was fitted on {_describe(fitted_spec)}; got {_describe(spec)}."
        )
    if "array_images" == spec.kind == fitted_spec.kind:
        raise ValueError(
            f"The estimator was fitted on {fitted_spec.channels}-channel images; got "
            f"{spec.channels}-channel images. Convert them to the training layout first"
            + (
                " (grayscale to colour: np.repeat(X[..., None], 3, axis=-1) for (n, H, W) arrays, "
                "np.repeat(X, 3, axis=-1) for (n, H, W, 1); image files and PIL images are converted as they "
                "are read)."
                if (spec.channels, fitted_spec.channels) == (1, 3)
                else "."
            )
        )


def _describe(spec):
    if spec.kind == "vectors":
        return f"vectors with {spec.channels} features"
    if spec.kind == "array_images":
        return f"{spec.channels}-channel images"
    return "images from files or PIL"
