"""Input checks: accepted layouts and the errors for everything else."""

import numpy as np
import pytest

from sklearn_panda._estimators.validation import InputSpec, check_consistent, check_input


@pytest.mark.parametrize(
    "shape, channels",
    [((4, 9, 7), 1), ((4, 9, 7, 1), 1), ((4, 9, 7, 3), 3), ((4, 1, 9, 7), 1), ((4, 3, 9, 7), 3)],
)
def test_image_layouts_become_channels_last(shape, channels):
    checked = check_input(np.zeros(shape, dtype=np.uint8))
    assert checked.spec == InputSpec("array_images", channels)
    assert checked.data.shape == (4, 9, 7, channels)


def test_channels_first_is_a_view_not_a_copy():
    X = np.zeros((2, 3, 5, 5), dtype=np.uint8)
    assert np.shares_memory(check_input(X).data, X)


def test_vectors_and_paths():
    assert check_input(np.zeros((3, 5))).spec == InputSpec("vectors", 5)
    assert check_input(["a.png", "b.png"]).spec == InputSpec("file_images", 3)


@pytest.mark.parametrize(
    "X, message",
    [
        (np.zeros(5), "1 dimension"),
        (np.zeros((2, 3, 4, 5, 6)), "5 dimension"),
        (np.zeros((2, 8, 8, 4)), "RGBA"),
        (np.zeros((2, 8, 8, 2)), "neither 1 nor 3"),
        (np.full((2, 8, 8), 1.5), r"\[0, 1\]"),
        (np.full((2, 8, 8), -0.1), r"\[0, 1\]"),
        (np.full((2, 8, 8), 300, dtype=np.int64), r"\[0, 255\]"),
        (np.full((2, 8, 8), np.nan), "NaN"),
        (np.full((2, 8, 8), np.inf), "infinity"),
        (np.zeros((0, 8, 8)), "0 sample"),
        ([], "empty list"),
    ],
)
def test_bad_input_is_named(X, message):
    with pytest.raises(ValueError, match=message):
        check_input(X)


def test_consistency_between_fit_and_score():
    rgb, gray = InputSpec("array_images", 3), InputSpec("array_images", 1)
    check_consistent(rgb, rgb)
    with pytest.raises(ValueError, match="fitted on 3-channel images; got 1-channel"):
        check_consistent(gray, rgb)
    with pytest.raises(ValueError, match="vectors with 5 features"):
        check_consistent(rgb, InputSpec("vectors", 5))
