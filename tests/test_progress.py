"""Progress output: tqdm bars on stderr with verbose > 0, nothing at all with verbose=0."""

import numpy as np
import torch

from sklearn_panda._engine.inference import extract_features
from sklearn_panda._engine.progress import ProgressBar


def test_disabled_bar_prints_nothing(capsys):
    progress = ProgressBar(3, "adaptation", enabled=False)
    for done in (1, 2, 3):
        progress.update(done, loss=0.25)
    assert capsys.readouterr() == ("", "")


def test_bar_shows_label_count_and_values_then_closes_on_its_own_line(capsys):
    progress = ProgressBar(3, "adaptation", enabled=True)
    for done in (1, 2, 3):
        progress.update(done, loss=0.25)
    captured = capsys.readouterr()
    assert captured.out == ""
    last_line = captured.err.rstrip("\n").split("\r")[-1]
    assert last_line.startswith("adaptation: 100%")
    assert "3/3" in last_line
    assert last_line.endswith("loss=0.25]")
    # Closed: the next output starts on a fresh line instead of overwriting the bar.
    assert captured.err.endswith("\n")


def test_done_counts_samples_not_calls(capsys):
    # Loops report how far they are; a batch retried after running out of memory is not counted twice.
    progress = ProgressBar(10, "features", enabled=True)
    for done in (4, 4, 10):
        progress.update(done)
    assert "10/10" in capsys.readouterr().err.split("\r")[-1]


def test_verbose_controls_the_output_of_a_loop(capsys):
    X = torch.arange(10.0).reshape(5, 2)
    for verbose in (0, 1):
        features = extract_features(
            lambda batch: 2 * batch, lambda indices: X[indices], 5, 2, verbose=verbose, label="gallery features"
        )
        np.testing.assert_array_equal(features, 2 * X.numpy())
        err = capsys.readouterr().err
        if verbose:
            assert "gallery features" in err and "5/5" in err
        else:
            assert err == ""
