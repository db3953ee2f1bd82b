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


def _published(root, groups, rng, size=48):
    """A stand-in for DeepPCB as published: PCBData/groupNNNNN/NNNNN/NAME_temp.jpg, NAME_test.jpg and
    groupNNNNN/NNNNN_not/NAME.txt; returns each pair's one-bit template, tested image and boxes."""
    pairs = {}
    for group in groups:
        images, notes = root / "PCBData" / f"group{group}" / group, root / "PCBData" / f"group{group}" / f"{group}_not"
        images.mkdir(parents=True)
        notes.mkdir(parents=True)
        for number in range(2):
            stem = f"{group}{number:03d}"
            template = np.kron(rng.random((size // 8, size // 8)) < 0.5, np.ones((8, 8), dtype=bool))
            tested = template.copy()
            tested[10:14, 20:26] ^= True
            boxes = [(20, 10, 25, 13, 2), (0, 40, 3, 47, 6)]  # x1 y1 x2 y2 type, corners included
            for image, suffix in ((template, "temp"), (tested, "test")):
                Image.fromarray(np.where(image, 250, 5).astype(np.uint8)).save(images / f"{stem}_{suffix}.jpg", quality=90)
            (notes / f"{stem}.txt").write_text("".join(f"{x1} {y1} {x2} {y2} {kind}\n" for x1, y1, x2, y2, kind in boxes))
            pairs[(group, stem)] = (template, tested, boxes)
    return pairs


def test_convert_deeppcb_writes_the_layout_load_deeppcb_reads(tmp_path, monkeypatch):
    from sklearn_panda.datasets import convert_deeppcb

    pairs = _published(tmp_path / "published", ["00041", "12000"], np.random.default_rng(0))
    with pytest.raises(FileNotFoundError, match=r"convert_deeppcb\(source, target\)"):
        load_deeppcb(tmp_path / "published")  # the published layout: the error says how to convert it
    assert convert_deeppcb(tmp_path / "published", tmp_path / "png") == len(pairs)  # PCBData's parent or itself
    for (group, stem), (template, tested, boxes) in pairs.items():
        folder = tmp_path / "png" / group
        np.testing.assert_array_equal(np.asarray(Image.open(folder / "template" / f"{stem}.png")), template)
        np.testing.assert_array_equal(np.asarray(Image.open(folder / "tested" / f"{stem}.png")), tested)
        expected = np.zeros(template.shape, dtype=bool)
        expected[10:14, 20:26] = expected[40:48, 0:4] = True
        np.testing.assert_array_equal(np.asarray(Image.open(folder / "mask" / f"{stem}.png")), expected)
        assert (folder / "boxes" / f"{stem}.txt").read_text().startswith("20 10 25 13 2")
    # Two of eleven groups: a partial copy is refused, not read as a smaller split.
    with pytest.raises(FileNotFoundError, match=r"incomplete: no templates in the group\(s\) 12300, 20085, 50600, 90100\."):
        load_deeppcb(tmp_path / "png")
    others = [group for group in TRAIN_GROUPS + TEST_GROUPS if group not in ("00041", "12000")]
    _published(tmp_path / "others", others, np.random.default_rng(1))
    convert_deeppcb(tmp_path / "others", tmp_path / "png")
    X_train, X_test, y_test, masks = load_deeppcb(tmp_path / "png")
    assert len(X_train) == 2 * 5 and len(X_test) == 2 * 2 * 6 and masks[y_test == -1].any(axis=(1, 2)).all()
    # A pair half written (its template without its mask, or a tested image without its template) is
    # refused too, and so is a folder a conversion left unfinished, whatever it holds.
    (tmp_path / "png" / "12000" / "mask" / "12000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) without their template, tested image or mask, e\.g\. .*12000001\.png"):
        load_deeppcb(tmp_path / "png")
    convert_deeppcb(tmp_path / "others", tmp_path / "png")
    (tmp_path / "png" / "12000" / "template" / "12000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) without .*/tested/12000001\.png"):
        load_deeppcb(tmp_path / "png")
    # Interrupted after its second pair: the pairs it wrote are whole, and the folder says it is unfinished.
    from sklearn_panda._io import deeppcb

    written, write = [], deeppcb.write_files

    def interrupted(contents):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(write(contents))

    monkeypatch.setattr(deeppcb, "write_files", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_deeppcb(tmp_path / "published", tmp_path / "png")
    with pytest.raises(FileNotFoundError, match=r"A conversion into .*png did not finish"):
        load_deeppcb(tmp_path / "png")
    monkeypatch.setattr(deeppcb, "write_files", write)
    convert_deeppcb(tmp_path / "published", tmp_path / "png")
    assert len(load_deeppcb(tmp_path / "png")[0]) == 2 * 5


def test_convert_deeppcb_names_what_it_cannot_read(tmp_path):
    from sklearn_panda.datasets import convert_deeppcb

    with pytest.raises(FileNotFoundError, match="No DeepPCB groups under"):
        convert_deeppcb(tmp_path, tmp_path / "png")
    _published(tmp_path / "published", ["00041"], np.random.default_rng(0))
    note = tmp_path / "published" / "PCBData" / "group00041" / "00041_not" / "00041001.txt"
    note.write_text("20,10,25,13,2\n1 2 3\n")  # commas are read; a line of three fields is not
    with pytest.raises(ValueError, match=r"00041001\.txt, line 2: expected 'x1 y1 x2 y2 type'; got '1 2 3'"):
        convert_deeppcb(tmp_path / "published" / "PCBData", tmp_path / "png")
    for text, problem in (
        ("25 10 20 13 2\n", r"line 1: the box 25 10 20 13 has its corners swapped or lies outside the 48 x 48 image"),
        ("-9 -9 -1 -1 2\n", r"line 1: the box -9 -9 -1 -1 .* lies outside"),  # wrapped round to 49 pixels before
        ("\n", r"00041001\.txt holds no box"),
    ):
        note.write_text(text)
        with pytest.raises(ValueError, match=problem):
            convert_deeppcb(tmp_path / "published", tmp_path / "png")
    note.write_text("-5 40 3 60 6\n")  # partly outside: cut off at the border
    convert_deeppcb(tmp_path / "published", tmp_path / "png")
    mask = np.asarray(Image.open(tmp_path / "png" / "00041" / "mask" / "00041001.png"))
    assert mask[40:, :4].all() and mask.sum() == 8 * 4
    (tmp_path / "published" / "PCBData" / "group12000" / "12000").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"group12000 holds no pairs"):
        convert_deeppcb(tmp_path / "published", tmp_path / "png")
    (tmp_path / "published" / "PCBData" / "group00041" / "00041" / "00041001_temp.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"00041001_test\.jpg has no 00041001_temp\.jpg"):
        convert_deeppcb(tmp_path / "published", tmp_path / "png")
