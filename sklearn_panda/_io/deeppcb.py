"""DeepPCB: printed-circuit-board images with defect masks, for local-defect detection.

DeepPCB (Tang et al., "Online PCB Defect Detector On A New PCB Defect Dataset",
2019; MIT licence) holds 1,500 aligned pairs of 640 x 640 board images from a
linear-scan CCD, in 11 groups (boards): a defect-free template and the same
region with defects (opens, shorts, mousebites, spurs, spurious copper,
pin-holes), each annotated by a box. The one-class protocol here fits on
templates of some boards and tests on templates (normal) and defective images
(anomalous) of the *other* boards, so that no test board was seen in training:
each test region gives both its template and its defective image, so that
normal and defective test images come from the same mix of boards. A test
image's mask is 1 inside its defect boxes (0 everywhere for templates).

``load_deeppcb(root)`` reads the set in one folder per group, each with
``template/``, ``tested/`` and ``mask/`` PNG files of the same names;
:func:`convert_deeppcb` writes that layout from the set as published (its
``PCBData`` folder: JPEG pairs and box annotations).

``load_deeppcb()`` without ``root`` reads the small sample that ships with the
package (made by ``benchmarks/make_deeppcb_sample.py``): 320 x 320 crops at the
native resolution, so that defects keep their size in pixels; a defective crop
is centred near a defect.
"""

import importlib.resources
import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from .dataset_files import check_cap, check_seed
from .images import read_binary_mask, write_files

# Boards (group folders) for training and for testing, each set about half the pairs.
TRAIN_GROUPS = ("00041", "12300", "20085", "50600", "90100")
TEST_GROUPS = ("12000", "12100", "13000", "44000", "77000", "92000")
# split="validation": the training boards again, split into boards to fit on and boards to
# evaluate on, for choosing settings without the test boards' labels.
VALIDATION_SPLIT = (("00041", "12300", "20085"), ("50600", "90100"))
SAMPLE_FILE = "deeppcb_sample.npz"
# Written into the target folder while convert_deeppcb runs, removed when it ends.
UNFINISHED = "CONVERSION_UNFINISHED"


# The published JPEGs are near-binary: a pixel above this grey level is foreground.
THRESHOLD = 127


def convert_deeppcb(source, target):
    """Write DeepPCB as published in the layout :func:`load_deeppcb` reads.

    The published set (github.com/tangsanli5201/DeepPCB) holds, under
    ``PCBData/groupNNNNN/``, the pairs ``NNNNN/NAME_temp.jpg`` (the
    defect-free template) and ``NNNNN/NAME_test.jpg`` (the same region with
    defects), and each pair's defect boxes in ``NNNNN_not/NAME.txt``, one a
    line: ``x1 y1 x2 y2 type`` (corners included; commas are read too). This
    writes, for each group, ``target/NNNNN/template/NAME.png`` and
    ``tested/NAME.png`` (one bit a pixel: grey levels above 127, which removes
    the JPEG noise only), ``mask/NAME.png`` (1 inside the boxes) and
    ``boxes/NAME.txt`` (the annotation, copied).

    Parameters
    ----------
    source : str or path-like
        The published ``PCBData`` folder, or the folder that holds it.
    target : str or path-like
        Where to write the converted set (created; files of the same names
        are overwritten).

    Returns
    -------
    n_pairs : int
        The pairs written.

    Examples
    --------
    >>> from sklearn_panda.datasets import convert_deeppcb, load_deeppcb
    >>> convert_deeppcb("~/data/DeepPCB", "~/data/deeppcb_png")  # doctest: +SKIP
    1500
    >>> X_train, X_test, y_test, masks = load_deeppcb("~/data/deeppcb_png")  # doctest: +SKIP
    """
    source, target = Path(source).expanduser(), Path(target).expanduser()
    if (source / "PCBData").is_dir():
        source = source / "PCBData"
    groups = sorted(folder for folder in source.glob("group*") if folder.is_dir())
    if not groups:
        raise FileNotFoundError(
            f"No DeepPCB groups under {source}: expected the published PCBData folder, holding "
            "groupNNNNN/NNNNN/NAME_temp.jpg, NAME_test.jpg and groupNNNNN/NNNNN_not/NAME.txt."
        )
    # Until the last pair is written, the target says a conversion is under way: load_deeppcb refuses
    # a folder a conversion left unfinished (the pairs it holds then look like a whole, smaller set).
    target.mkdir(parents=True, exist_ok=True)
    (target / UNFINISHED).write_text(f"convert_deeppcb({os.fspath(source)!r}, ...) has not finished.\n")
    n_pairs = 0
    for group in groups:
        name = group.name.removeprefix("group")
        images, notes = group / name, group / f"{name}_not"
        if not any(images.glob("*_test.jpg")):
            raise FileNotFoundError(f"{group} holds no pairs: expected {images}/NAME_test.jpg and NAME_temp.jpg.")
        out = target / name
        for folder in ("template", "tested", "mask", "boxes"):
            (out / folder).mkdir(parents=True, exist_ok=True)
        for tested in sorted(images.glob("*_test.jpg")):
            stem = tested.name.removesuffix("_test.jpg")
            template, note = images / f"{stem}_temp.jpg", notes / f"{stem}.txt"
            if not (template.is_file() and note.is_file()):
                raise FileNotFoundError(f"{tested} has no {template.name} beside it or no {note} for its boxes.")
            pictures = {}
            for path, folder in ((tested, "tested"), (template, "template")):
                with Image.open(path) as image:
                    pictures[folder] = np.asarray(image.convert("L")) > THRESHOLD
            text = note.read_text()
            # A pair is written whole or not at all, its template last: the loader finds pairs by
            # their templates, and refuses a template without its tested image and mask.
            write_files({
                out / "boxes" / f"{stem}.txt": text.encode(),
                out / "mask" / f"{stem}.png": _png(_box_mask(text, pictures["tested"].shape, note)),
                out / "tested" / f"{stem}.png": _png(pictures["tested"]),
                out / "template" / f"{stem}.png": _png(pictures["template"]),
            })
            n_pairs += 1
    (target / UNFINISHED).unlink()
    return n_pairs


def _png(values):
    """A PNG file's bytes of a bool (one bit a pixel) or uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    return buffer.getvalue()


def _box_mask(text, shape, where):
    """A bool mask of ``shape``, True inside each box of an annotation's ``text`` (corners included).

    Every line must be ``x1 y1 x2 y2 type`` with ``x1 <= x2``, ``y1 <= y2`` and
    the box at least partly inside the image (a part outside is cut off); an
    annotation without a box is refused: every tested image has a defect.
    """
    mask = np.zeros(shape, dtype=bool)
    height, width = shape
    n_boxes = 0
    for number, line in enumerate(text.splitlines(), start=1):
        fields = [field for field in re.split(r"[,\s]+", line.strip()) if field]
        if not fields:
            continue
        try:
            if len(fields) < 5:
                raise ValueError
            x1, y1, x2, y2 = (int(float(field)) for field in fields[:4])
        except ValueError:
            raise ValueError(f"{where}, line {number}: expected 'x1 y1 x2 y2 type'; got {line!r}.") from None
        if x1 > x2 or y1 > y2 or x2 < 0 or y2 < 0 or x1 >= width or y1 >= height:
            raise ValueError(
                f"{where}, line {number}: the box {x1} {y1} {x2} {y2} has its corners swapped or lies outside "
                f"the {width} x {height} image."
            )
        mask[max(y1, 0) : y2 + 1, max(x1, 0) : x2 + 1] = True
        n_boxes += 1
    if not n_boxes:
        raise ValueError(f"{where} holds no box; every tested image of DeepPCB has at least one defect.")
    return mask


def _pairs(root, groups):
    """``(template, tested, mask)`` paths of every pair in ``groups``, sorted by name.

    Every group must be there, each template with its tested image and mask:
    a partial copy (an interrupted download or conversion) is an error, not
    a smaller split. No group at all gives ``[]``.
    """
    if (root / UNFINISHED).exists():
        raise FileNotFoundError(
            f"A conversion into {root} did not finish ({root / UNFINISHED} is there): run "
            "sklearn_panda.datasets.convert_deeppcb into it again."
        )
    found, missing, incomplete = [], [], []
    for group in groups:
        folder = root / group
        templates = sorted((folder / "template").glob("*.png"))
        if not templates:
            missing.append(group)
        for template in templates:
            tested, mask = folder / "tested" / template.name, folder / "mask" / template.name
            if tested.is_file() and mask.is_file():
                found.append((str(template), str(tested), str(mask)))
            else:
                incomplete.append(str(template))
        names = {template.name for template in templates}
        for part in ("tested", "mask"):
            incomplete += [str(path) for path in sorted((folder / part).glob("*.png")) if path.name not in names]
    if found and (missing or incomplete):
        raise FileNotFoundError(
            f"The DeepPCB folder {root} is incomplete: "
            + "; ".join(
                part
                for part in (
                    f"no templates in the group(s) {', '.join(missing)}" if missing else "",
                    f"{len(incomplete)} image(s) without their template, tested image or mask, e.g. {incomplete[0]}"
                    if incomplete
                    else "",
                )
                if part
            )
            + ". Copy or convert it again (sklearn_panda.datasets.convert_deeppcb)."
        )
    return found


def load_deeppcb(root=None, *, split="test", max_train=None, max_test=None, random_state=0):
    """A one-class split of DeepPCB with defect masks: normal templates to fit on, boards unseen to test.

    Parameters
    ----------
    root : str, path-like or None, default=None
        The DeepPCB folder (one subfolder per group, each with ``template/``,
        ``tested/`` and ``mask/`` holding PNG files of the same names; the set
        as published converts to it once, :func:`convert_deeppcb`). ``None``:
        the sample shipped with the package (uint8 arrays of 320 x 320 crops:
        300 training templates; 30 test regions, each as a template and as a
        defective image).
    split : {"test", "validation"}, default="test"
        ``"test"``: fit on the training boards, test on the test boards.
        ``"validation"`` (the full set only): fit on three of the training
        boards and evaluate on the other two, so that settings can be
        chosen without looking at the test boards.
    max_train : int >= 1 or None, default=None
        Keep at most this many training templates, a random subset.
    max_test : int >= 2 or None, default=None
        Keep at most this many test images: the templates (normal) and the
        defective images of ``max_test // 2`` board regions, a random subset.
    random_state : int, numpy.random.Generator or None, default=0
        Seeds the subsets. The test regions are drawn after the training
        templates, from the same stream, so ``max_train`` (where it caps)
        changes which test regions ``max_test`` keeps; unlike
        :func:`~sklearn_panda.datasets.load_one_class`'s, kept so that the
        benchmarks' DeepPCB splits (``benchmarks/patch_study.py``) stay the
        ones their figures were measured on. To compare training caps on one
        test set, draw the test set once (``max_train=None``) and subset the
        training templates yourself.

    Returns
    -------
    X_train : list of str or ndarray of shape (n_train, H, W), uint8
        Normal templates of the training boards (file paths; arrays for the sample).
    X_test : list of str or ndarray of shape (n_test, H, W), uint8
        Templates and defective images of the test boards.
    y_test : ndarray of shape (n_test,)
        +1 for a template (normal), -1 for a defective image.
    masks : ndarray of shape (n_test, H, W), bool
        True inside a defect box.

    Examples
    --------
    >>> from sklearn_panda.datasets import load_deeppcb
    >>> X_train, X_test, y_test, masks = load_deeppcb()
    >>> X_train.shape, X_test.shape, masks.shape, int((y_test == -1).sum())
    ((300, 320, 320), (60, 320, 320), (60, 320, 320), 30)
    >>> bool(masks[y_test == 1].any()), bool(masks[y_test == -1].any(axis=(1, 2)).all())
    (False, True)
    """
    if split not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation'; got {split!r}.")
    check_cap("max_train", max_train)
    # A test set holds a template and a defective image of each region it keeps.
    check_cap("max_test", max_test, minimum=2)
    check_seed(random_state)
    rng = np.random.default_rng(random_state)
    if root is None:
        if split != "test":
            raise ValueError("The sample has a test split only; split='validation' needs the full set (root=).")
        return _load_sample(max_train, max_test, rng)
    root = Path(root).expanduser()
    fit_groups, evaluation_groups = VALIDATION_SPLIT if split == "validation" else (TRAIN_GROUPS, TEST_GROUPS)
    train_pairs, test_pairs = _pairs(root, fit_groups), _pairs(root, evaluation_groups)
    if not train_pairs or not test_pairs:
        raise FileNotFoundError(
            f"No DeepPCB pairs under {root}: expected the group folders {', '.join(TRAIN_GROUPS + TEST_GROUPS)}, "
            "each with template/, tested/ and mask/ folders of PNG files. The set as published (PCBData/"
            "groupNNNNN/...) converts to that once: sklearn_panda.datasets.convert_deeppcb(source, target)."
        )
    train = [train_pairs[i][0] for i in _subset(len(train_pairs), max_train, rng)]
    # Each test region gives both its template and its defective image: the two halves hold
    # the same board regions, so that an image's score is compared with the same mix of boards
    # (boards differ far more from each other than a defect changes an image).
    regions = [test_pairs[i] for i in _subset(len(test_pairs), None if max_test is None else max_test // 2, rng)]
    X_test = [template for template, _, _ in regions] + [tested for _, tested, _ in regions]
    y_test = np.r_[np.ones(len(regions), dtype=int), -np.ones(len(regions), dtype=int)]
    defect_masks = [read_binary_mask(mask) for _, _, mask in regions]
    return train, X_test, y_test, np.stack([np.zeros_like(mask) for mask in defect_masks] + defect_masks)


def _subset(n, cap, rng):
    if cap is None or cap >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=cap, replace=False))


def _load_sample(max_train, max_test, rng):
    with importlib.resources.files("sklearn_panda").joinpath("data", SAMPLE_FILE).open("rb") as file:
        saved = np.load(file)
        size = tuple(saved["size"])
        train = np.unpackbits(saved["train"], axis=1)[:, : size[0] * size[1]].reshape(-1, *size) * np.uint8(255)
        test = np.unpackbits(saved["test"], axis=1)[:, : size[0] * size[1]].reshape(-1, *size) * np.uint8(255)
        masks = np.unpackbits(saved["masks"], axis=1)[:, : size[0] * size[1]].reshape(-1, *size).astype(bool)
        y_test = saved["y_test"].astype(int)
    train = train[_subset(len(train), max_train, rng)]
    # The sample holds the templates of its regions, then their defective images in the same order.
    normal, defective = np.flatnonzero(y_test == 1), np.flatnonzero(y_test == -1)
    regions = _subset(len(normal), None if max_test is None else max_test // 2, rng)
    keep = np.r_[normal[regions], defective[regions]]
    return train, test[keep], y_test[keep], masks[keep]
