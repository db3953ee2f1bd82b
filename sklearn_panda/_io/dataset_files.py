"""Reading the files of public image datasets: IDX (MNIST-like), CIFAR batches, folders of images.

Only the formats: where the files lie and which split they make is
:mod:`sklearn_panda.datasets`' part.
"""

import gzip
import numbers
import pickle
from dataclasses import dataclass

import numpy as np

from .images import IMAGE_EXTENSIONS, image_files


def check_cap(param, value, minimum=1):
    """Raise unless ``value`` is None or an integer of at least ``minimum`` (a loader's ``max_train``, ``max_test``).

    Examples
    --------
    >>> from sklearn_panda._io.dataset_files import check_cap
    >>> check_cap("max_test", 2, minimum=2)
    >>> check_cap("max_test", 1, minimum=2)
    Traceback (most recent call last):
    ...
    ValueError: max_test must be None or an integer of at least 2; got 1.
    """
    # bool is an Integral, and 3.0 == 3, yet neither is a count.
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum):
        what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        raise ValueError(f"{param} must be None or {what}; got {value!r}.")


def check_seed(random_state):
    """Raise unless ``random_state`` is None, a non-negative integer or a ``numpy.random.Generator``
    (a loader's seed).

    Examples
    --------
    >>> from sklearn_panda._io.dataset_files import check_seed
    >>> check_seed(0)
    >>> check_seed(-1)
    Traceback (most recent call last):
    ...
    ValueError: random_state must be a non-negative integer, a numpy.random.Generator or None; got -1.
    """
    if not (
        random_state is None
        or isinstance(random_state, np.random.Generator)
        or isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool) and random_state >= 0
    ):
        raise ValueError(
            f"random_state must be a non-negative integer, a numpy.random.Generator or None; got {random_state!r}."
        )


@dataclass(frozen=True)
class _TorchvisionSource:
    """Where a dataset that torchvision can download lies on disk, and how to get it."""

    title: str
    torchvision_class: str
    subdir: str  # where torchvision's download leaves the files, under root
    files: tuple
    system_dirs: tuple = ()
    manual: str = ""


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _existing(directory, filename):
    """The path of ``filename`` or of its gzipped copy in ``directory``, or None."""
    for path in (directory / filename, directory / f"{filename}.gz"):
        if path.is_file():
            return path
    return None


def _open(path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_idx(path):
    """Parse an IDX file of unsigned bytes (the MNIST format) into an array."""
    with _open(path) as file:
        # bytearray, not bytes, so that the array is writable.
        data = bytearray(file.read())
    # Header: two zero bytes, the type code (0x08 = unsigned byte), the number of
    # dimensions, then each dimension as a big-endian 32-bit integer.
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes.")
    n_dims = data[3]
    shape = np.frombuffer(data, ">u4", count=n_dims, offset=4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * n_dims).reshape(shape)


def _read_idx_split(directory):
    """Train images, train labels, test images and test labels of an MNIST-like set."""
    return tuple(_read_idx(_existing(directory, filename)) for filename in _IDX_FILES)


def _read_cifar_batch(path, label_key):
    with _open(path) as file:
        # latin1: the batches were pickled by Python 2.
        batch = pickle.load(file, encoding="latin1")
    # Each row holds the red, green and blue 32x32 planes in turn.
    planes = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return planes.transpose(0, 2, 3, 1), np.asarray(batch[label_key])


def _read_cifar(directory, train_files, test_file, label_key):
    train = [_read_cifar_batch(_existing(directory, f), label_key) for f in train_files]
    test, test_labels = _read_cifar_batch(_existing(directory, test_file), label_key)
    return (
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        np.ascontiguousarray(test),
        test_labels,
    )


def _file_number_order(path):
    # 2.jpg before 10.jpg; names that are not numbers after all numbered ones.
    return (0, int(path.stem), path.name) if path.stem.isdigit() else (1, 0, path.name)


def _list_images(directory):
    """The images of one class folder of a data set, by file number; images in its subfolders are an
    error (the command line would read them, this loader would not)."""
    paths = image_files(directory)
    nested = [path for path in paths if path.parent != directory]
    if nested:
        raise ValueError(
            f"{directory} holds images in subfolders ({len(nested)}, e.g. {nested[0]}); a data set's class "
            "folder holds its images directly. Move them up, or out of the data set."
        )
    return [str(path) for path in sorted(paths, key=_file_number_order)]


def _subfolders(directory):
    return sorted(path for path in directory.iterdir() if path.is_dir() and not path.name.startswith("."))


def _read_image_folder(directory, normal_folder):
    X_train = _list_images(directory / "train" / normal_folder)
    if not X_train:
        raise FileNotFoundError(
            f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in "
            f"{directory / 'train' / normal_folder}."
        )
    test = directory / "test"
    loose = sorted(path for path in image_files(test) if path.parent == test)
    if loose:
        raise ValueError(
            f"{test} holds images outside class folders ({len(loose)}, e.g. {loose[0].name}), which have no "
            f"label: move them into {test / normal_folder} (normal) or a folder of their own (anomalies)."
        )
    folders = _subfolders(test)
    if normal_folder not in [folder.name for folder in folders]:
        raise ValueError(
            f"{test} has no folder {normal_folder!r} (its normal test images, named as the training "
            f"folder), so every test image would be an anomaly; it has {', '.join(repr(f.name) for f in folders) or 'none'}."
        )
    X_test, test_labels = [], []
    for folder in folders:
        images = _list_images(folder)
        X_test += images
        test_labels += [folder.name] * len(images)
    return X_train, X_test, np.array(test_labels, dtype=object) == normal_folder
