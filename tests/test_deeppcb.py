"""DeepPCB's one-class split with defect masks: the shipped sample and the full folder's layout."""

import numpy as np
import pytest
from PIL import Image

from sklearn_panda._io.deeppcb import TEST_GROUPS, TRAIN_GROUPS
from sklearn_panda.datasets import load_deeppcb


def test_the_sample_ships_with_the_package():
    X_train, X_test, y_test, masks = load_deeppcb()
    assert X_train.shape == (300, 320, 320) and X_train.dtype == np.uint8
    assert set(np.unique(X_train)) == {0, 255}
    assert X_test.shape == masks.shape == (60, 320, 320) and masks.dtype == bool
    assert (y_test == 1).sum() == (y_test == -1).sum() == 30
    assert not masks[y_test == 1].any()
    assert masks[y_test == -1].any(axis=(1, 2)).all()
    # Each test region twice: its template, then the same crop with defects (and a scan of its own).
    changed = X_test[:30] != X_test[30:]
    assert changed.any(axis=(1, 2)).all() and (changed & masks[30:]).any(axis=(1, 2)).all()
    capped = load_deeppcb(max_train=10, max_test=6)
    assert len(capped[0]) == 10 and list(capped[2]) == [1, 1, 1, -1, -1, -1]


def make_folder(root, pairs_per_group=4, size=16):
    rng = np.random.default_rng(0)
    for group in TRAIN_GROUPS + TEST_GROUPS:
        for kind in ("template", "tested", "mask"):
            (root / group / kind).mkdir(parents=True)
        for index in range(pairs_per_group):
            name = f"{group}{index:03d}.png"
            image = (rng.random((size, size)) > 0.5).astype(np.uint8) * 255
            mask = np.zeros((size, size), dtype=np.uint8)
            mask[2:5, 3:7] = 1
            Image.fromarray(image).save(root / group / "template" / name)
            Image.fromarray(255 - image).save(root / group / "tested" / name)
            Image.fromarray(mask).save(root / group / "mask" / name)


def test_the_full_folder_splits_by_board_and_tests_both_halves_of_each_pair(tmp_path):
    make_folder(tmp_path)
    X_train, X_test, y_test, masks = load_deeppcb(tmp_path)
    assert len(X_train) == 4 * len(TRAIN_GROUPS)
    assert all(path.split("/")[-3] in TRAIN_GROUPS for path in X_train)
    assert all(path.split("/")[-3] in TEST_GROUPS and path not in X_train for path in X_test)
    normal = [path for path, label in zip(X_test, y_test) if label == 1]
    defective = [path for path, label in zip(X_test, y_test) if label == -1]
    assert all("/template/" in path for path in normal) and all("/tested/" in path for path in defective)
    # The same regions in both halves, in the same order.
    assert [path.replace("/template/", "/tested/") for path in normal] == defective
    assert len(normal) == 4 * len(TEST_GROUPS)
    assert not masks[y_test == 1].any() and masks[y_test == -1][:, 2:5, 3:7].all()
    capped = load_deeppcb(tmp_path, max_train=5, max_test=4)
    assert len(capped[0]) == 5 and list(capped[2]) == [1, 1, -1, -1]


def test_a_folder_without_deeppcb_says_what_it_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="template/, tested/ and mask/"):
        load_deeppcb(tmp_path)


def test_the_validation_split_uses_training_boards_only(tmp_path):
    from sklearn_panda._io.deeppcb import VALIDATION_SPLIT

    make_folder(tmp_path)
    X_train, X_test, y_test, _ = load_deeppcb(tmp_path, split="validation")
    fit_groups, evaluation_groups = VALIDATION_SPLIT
    assert {path.split("/")[-3] for path in X_train} == set(fit_groups)
    assert {path.split("/")[-3] for path in X_test} == set(evaluation_groups) and set(evaluation_groups) <= set(
        TRAIN_GROUPS
    )
    with pytest.raises(ValueError, match="full set"):
        load_deeppcb(split="validation")
