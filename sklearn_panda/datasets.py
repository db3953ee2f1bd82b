"""One-class splits of public image datasets.

Each loader follows the one-class protocol of the PANDA paper: train on the images of
one normal class, test on the whole test split, where every other class is an anomaly.
:func:`load_deeppcb` gives defect masks too, for local (patch-level) detectors.
"""

import importlib.resources
import numbers
import os
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from ._io.dataset_files import (
    check_cap,
    check_seed,
    _IDX_FILES,
    _existing,
    _list_images,
    _read_cifar,
    _read_idx_split,
    _read_image_folder,
    _subfolders,
    _TorchvisionSource,
)
from ._io.deeppcb import convert_deeppcb, load_deeppcb

__all__ = [
    "MVTEC_CATEGORIES",
    "available_datasets",
    "fashion_mnist_or_sample",
    "convert_deeppcb",
    "load_deeppcb",
    "load_one_class",
]

MVTEC_CATEGORIES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)


# The Fashion-MNIST subset that ships with the package (made by
# benchmarks/make_fashion_mnist_sample.py; licence notice next to it).
_FASHION_MNIST_SAMPLE = "fashion_mnist_sample.npz"

# Set to anything but "" or "0" to skip system folders such as /usr/share/datasets,
# and so see what a machine without the Debian package sees.
_NO_SYSTEM_DATA = "SKLEARN_PANDA_NO_SYSTEM_DATA"

# The paper's CatsVsDogs split: the first 10,000 of each class's 12,500 images train.
_CATS_VS_DOGS_TRAIN_FRACTION = 0.8


_MNIST = _TorchvisionSource("MNIST", "MNIST", "MNIST/raw", _IDX_FILES)
_FASHION_MNIST = _TorchvisionSource(
    "Fashion-MNIST",
    "FashionMNIST",
    "FashionMNIST/raw",
    _IDX_FILES,
    system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
    manual="apt-get install dataset-fashion-mnist (Debian/Ubuntu), "
    "which puts it in /usr/share/datasets/fashion-mnist",
)
_CIFAR10 = _TorchvisionSource(
    "CIFAR-10",
    "CIFAR10",
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
    manual="extract cifar-10-python.tar.gz from "
    "https://www.cs.toronto.edu/~kriz/cifar.html into root",
)
_CIFAR100 = _TorchvisionSource(
    "CIFAR-100",
    "CIFAR100",
    "cifar-100-python",
    ("train", "test"),
    manual="extract cifar-100-python.tar.gz from "
    "https://www.cs.toronto.edu/~kriz/cifar.html into root",
)


def available_datasets():
    """Return the names of the datasets that :func:`load_one_class` knows.

    Returns
    -------
    names : tuple of str
        Valid values of the ``name`` argument of :func:`load_one_class`.

    See Also
    --------
    load_one_class : Load one of them as a one-class split.

    Examples
    --------
    >>> from sklearn_panda.datasets import available_datasets
    >>> available_datasets()  # doctest: +NORMALIZE_WHITESPACE
    ('fashion_mnist', 'fashion_mnist_sample', 'mnist', 'cifar10', 'cifar100',
     'cats_vs_dogs', 'mvtec', 'image_folder', 'digits')
    """
    return tuple(_DATASETS)


def fashion_mnist_or_sample(root=None):
    """The full Fashion-MNIST when it is on this machine, else the shipped sample.

    For scripts meant to run anywhere: they get the full data set where it is
    installed and the sample that ships with the package elsewhere. The name is
    returned, not the data, so that the caller says which it used:
    :func:`load_one_class` never swaps one data set for another by itself.

    Parameters
    ----------
    root : str or path-like, default=None
        Where to look for the full set, as in :func:`load_one_class`.

    Returns
    -------
    name : {"fashion_mnist", "fashion_mnist_sample"}
        ``"fashion_mnist"`` when its four files are found (in ``root``, in the data
        home or where the Debian package puts them), else ``"fashion_mnist_sample"``.
        Nothing is downloaded.

    See Also
    --------
    load_one_class : Load either as a one-class split.

    Examples
    --------
    >>> from sklearn_panda.datasets import fashion_mnist_or_sample, load_one_class
    >>> name = fashion_mnist_or_sample()
    >>> name in ("fashion_mnist", "fashion_mnist_sample")
    True
    >>> X_train, X_test, y_test = load_one_class(name, 0, max_train=200, max_test=400)
    >>> X_train.shape, X_test.shape
    ((200, 28, 28), (400, 28, 28))
    """
    try:
        _find_or_fetch(_FASHION_MNIST, root, download=False)
    except FileNotFoundError:
        return "fashion_mnist_sample"
    return "fashion_mnist"


def load_one_class(
    name,
    normal_class,
    *,
    root=None,
    max_train=None,
    max_test=None,
    random_state=0,
    download=False,
):
    """Load a dataset as a one-class anomaly detection split.

    The training set holds only the images of ``normal_class`` from the training split.
    The test set is the whole test split: its images of ``normal_class`` are normal and
    the images of every other class are anomalies.

    ==========================  ================  ==========================
    name                        normal_class      images
    ==========================  ================  ==========================
    ``"fashion_mnist"``         0 to 9            uint8 array (n, 28, 28)
    ``"fashion_mnist_sample"``  0 to 9            uint8 array (n, 28, 28)
    ``"mnist"``                 0 to 9            uint8 array (n, 28, 28)
    ``"cifar10"``               0 to 9            uint8 array (n, 32, 32, 3)
    ``"cifar100"``              0 to 19           uint8 array (n, 32, 32, 3)
    ``"cats_vs_dogs"``          0 (cat), 1 (dog)  list of file paths
    ``"mvtec"``                 a category name   list of file paths
    ``"image_folder"``          a folder name     list of file paths
    ``"digits"``                0 to 9            uint8 array (n, 8, 8)
    ==========================  ================  ==========================

    Parameters
    ----------
    name : str
        Dataset name, one of :func:`available_datasets`.

    normal_class : int or str or None
        The normal class. For ``"cifar100"`` it is one of the 20 coarse superclasses,
        as in the paper. For ``"mvtec"`` it is a category of
        :data:`MVTEC_CATEGORIES`, such as ``"bottle"``. For ``"image_folder"`` it is the
        name of the folder of normal images; None means ``"good"``.

    root : str or path-like, default=None
        Folder that holds the data, in the layout described in the Notes. None means
        scikit-learn's data home: ``$SCIKIT_LEARN_DATA`` if set, else
        ``~/scikit_learn_data``. Required for ``"image_folder"``; ignored for
        ``"digits"``, which ships with scikit-learn, and ``"fashion_mnist_sample"``,
        which ships with this package.

    max_train : int, default=None
        Keep at most this many training images, a random subset. None keeps them all.

    max_test : int, default=None
        Keep at most this many test images, a random subset with the same share of
        normal images as the whole test set, and at least one normal and one anomalous
        image when ``max_test >= 2``. None keeps them all.

    random_state : int, numpy.random.Generator or None, default=0
        Seeds the train/test split of ``"digits"`` and the subsets taken for
        ``max_train`` and ``max_test``. These three draws are independent: capping the
        training set does not change which test images are kept.

    download : bool, default=False
        When the data are not found, fetch them with torchvision into ``root`` (needs
        internet). Only ``"fashion_mnist"``, ``"mnist"``, ``"cifar10"`` and
        ``"cifar100"`` can be downloaded; the other datasets ignore it.

    Returns
    -------
    X_train : ndarray of uint8 or list of str
        Training images of the normal class, in the order of the dataset's files.

    X_test : ndarray of uint8 or list of str
        Test images, in the order of the dataset's files.

    y_test : ndarray of int of shape (n_test,)
        +1 for a normal test image, -1 for an anomaly, the labels of
        scikit-learn's outlier detectors.

    Raises
    ------
    ValueError
        If ``name``, ``normal_class``, ``max_train`` or ``max_test`` is not valid; the
        message lists the valid values.

    FileNotFoundError
        If the data are not found; the message lists every place looked in and how to
        get the data.

    See Also
    --------
    available_datasets : The valid dataset names.

    Notes
    -----
    Where each dataset is looked for, with ``root`` as given (or the data home):

    * ``"fashion_mnist"``, ``"mnist"``: the four IDX files (``train-images-idx3-ubyte``,
      ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
      ``t10k-labels-idx1-ubyte``, each may be gzipped) in ``root`` or in torchvision's
      ``root/FashionMNIST/raw`` (``root/MNIST/raw``). Fashion-MNIST is also looked for
      in ``/usr/share/datasets/fashion-mnist``, where the Debian package
      ``dataset-fashion-mnist`` installs it (set the environment variable
      ``SKLEARN_PANDA_NO_SYSTEM_DATA=1`` to skip that folder and see what a machine
      without the package sees). Official splits: 60,000 train and 10,000 test
      images.
    * ``"fashion_mnist_sample"``: a seeded, stratified subset of Fashion-MNIST that
      ships inside this package (about 2 MB, MIT licence: see
      ``sklearn_panda/data/LICENSE-fashion-mnist.txt``): 300 training images of each
      class and 200 test images of each class (2,000), in the order of the full
      files, so that a one-class split has 300 training images and a 10 % normal
      test set as in the full one. It needs no download; use it where the full set
      cannot be installed. :func:`fashion_mnist_or_sample` picks the full set when
      it is there and the sample otherwise.
    * ``"cifar10"``, ``"cifar100"``: the python version's pickled batches in ``root``
      or in ``root/cifar-10-batches-py`` (``root/cifar-100-python``), where torchvision
      extracts them. Official splits: 50,000 train and 10,000 test images. The batches
      are pickles: load only files you trust.
    * ``"cats_vs_dogs"``: the Microsoft "Kaggle Cats and Dogs" archive extracted so
      that ``root/PetImages/Cat/*.jpg`` and ``root/PetImages/Dog/*.jpg`` exist (or
      ``root/Cat``, ``root/Dog``). It has no official split; as in the paper, the first
      80 % of each class by file number train (10,000 of 12,500) and the rest test. The
      empty files of the published archive are then left out.
    * ``"mvtec"``: MVTec AD extracted so that ``root/<category>/train/good/*.png`` and
      ``root/<category>/test/<good or defect>/*.png`` exist (or
      ``root/mvtec_anomaly_detection/<category>/...``). Test images in ``good`` are
      normal, those in every defect folder are anomalies.
    * ``"image_folder"``: ``root/train/<normal_class>/*`` for training and
      ``root/test/<folder>/*`` for testing, where test images in
      ``root/test/<normal_class>`` (which must exist) are normal and all others
      anomalies; images directly in ``root/test`` are refused (they have no label). An MVTec
      category folder or any ImageFolder-style dataset with ``train`` and ``test``
      folders fits. Files count as images by their suffix: .bmp, .jpeg, .jpg, .png,
      .tif, .tiff, .webp; hidden files and folders (names starting with ".") are skipped.
    * ``"digits"``: :func:`sklearn.datasets.load_digits`, its 1,797 8x8 images scaled
      from 0..16 to 0..255. It has no official split: half of each class (rounded
      down), drawn with ``random_state``, is the test set.

    References
    ----------
    .. [1] Reiss, T., Cohen, N., Bergman, L., Hoshen, Y. "PANDA: Adapting Pretrained
       Features for Anomaly Detection and Segmentation." CVPR 2021.

    Examples
    --------
    >>> from sklearn_panda.datasets import load_one_class
    >>> X_train, X_test, y_test = load_one_class("digits", normal_class=3)
    >>> X_train.shape, X_test.shape, X_train.dtype
    ((92, 8, 8), (896, 8, 8), dtype('uint8'))
    >>> int((y_test == 1).sum()), int((y_test == -1).sum())
    (91, 805)

    The Fashion-MNIST sample that ships with the package:

    >>> X_train, X_test, y_test = load_one_class("fashion_mnist_sample", 0)
    >>> X_train.shape, X_test.shape, int((y_test == 1).sum())
    ((300, 28, 28), (2000, 28, 28), 200)

    The full Fashion-MNIST, from the Debian package or a torchvision download, capped:

    >>> X_train, X_test, y_test = load_one_class(
    ...     "fashion_mnist", 0, max_train=1000, max_test=2000)  # doctest: +SKIP
    >>> X_train.shape, X_test.shape  # doctest: +SKIP
    ((1000, 28, 28), (2000, 28, 28))

    MVTec AD gives file paths:

    >>> X_train, X_test, y_test = load_one_class(
    ...     "mvtec", "bottle", root="~/data/mvtec_anomaly_detection")  # doctest: +SKIP
    >>> X_train[0]  # doctest: +SKIP
    '/home/me/data/mvtec_anomaly_detection/bottle/train/good/000.png'
    """
    if not isinstance(name, str) or name not in _DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}; valid names are {', '.join(_DATASETS)}."
        )
    classes, load = _DATASETS[name]
    if classes is not None:
        _check_normal_class(name, normal_class, classes)
    check_cap("max_train", max_train)
    check_cap("max_test", max_test)
    check_seed(random_state)
    # Separate streams, so that one draw does not shift the others.
    split_rng, train_rng, test_rng = np.random.default_rng(random_state).spawn(3)

    X_train, X_test, test_is_normal = load(normal_class, root, download, split_rng)
    everything_normal = np.ones(len(X_train), dtype=bool)
    X_train = _take(X_train, _subsample(everything_normal, max_train, train_rng))
    kept = _subsample(test_is_normal, max_test, test_rng)
    return X_train, _take(X_test, kept), np.where(test_is_normal[kept], 1, -1)


def _check_normal_class(name, normal_class, classes):
    if isinstance(classes, range):
        # bool is an Integral and 3.0 == 3, yet neither names a class.
        valid = (
            isinstance(normal_class, numbers.Integral)
            and not isinstance(normal_class, bool)
            and normal_class in classes
        )
        expected = f"an integer from {classes[0]} to {classes[-1]}"
    else:
        valid = isinstance(normal_class, str) and normal_class in classes
        expected = "one of " + ", ".join(map(repr, classes))
    if not valid:
        raise ValueError(
            f"normal_class for {name!r} must be {expected}; got {normal_class!r}."
        )


def _subsample(is_normal, cap, rng):
    """Sorted indices of at most ``cap`` samples, keeping the share of normal ones."""
    n_samples = len(is_normal)
    if cap is None or cap >= n_samples:
        return np.arange(n_samples)
    normal, anomalous = np.flatnonzero(is_normal), np.flatnonzero(~is_normal)
    n_normal = round(cap * normal.size / n_samples)
    if cap >= 2 and normal.size and anomalous.size:
        # One of each kind at least, so that ROC AUC stays defined on a tiny test set.
        n_normal = min(max(n_normal, 1), cap - 1)
    chosen = np.concatenate(
        [
            rng.choice(normal, n_normal, replace=False),
            rng.choice(anomalous, cap - n_normal, replace=False),
        ]
    )
    return np.sort(chosen)


def _take(images, indices):
    if isinstance(images, np.ndarray):
        return images[indices]
    return [images[i] for i in indices]


def _one_class(train, train_labels, test, test_labels, normal_class):
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    X_train = _take(train, np.flatnonzero(train_labels == normal_class))
    return X_train, test, test_labels == normal_class


def _base(root):
    if root is None:
        # sklearn.datasets.get_data_home's folder, without creating it just to look.
        root = os.environ.get("SCIKIT_LEARN_DATA", Path("~", "scikit_learn_data"))
    return Path(root).expanduser()


def _first(candidates, is_present):
    return next((directory for directory in candidates if is_present(directory)), None)


def _not_found(title, candidates, wanted, ways):
    looked = "".join(f"\n  {directory}" for directory in candidates)
    how = "".join(f"\n  - {way}" for way in ways)
    return FileNotFoundError(
        f"{title} not found: no folder holds {wanted}. "
        f"Looked in:{looked}\nTo get it:{how}"
    )


def _find_or_fetch(source, root, download):
    base = _base(root)
    skip_system = os.environ.get(_NO_SYSTEM_DATA, "") not in ("", "0")
    candidates = [base, base / source.subdir, *(() if skip_system else source.system_dirs)]

    def is_present(directory):
        return all(_existing(directory, filename) for filename in source.files)

    found = _first(candidates, is_present)
    if found is None and download:
        _download(source, base)
        found = _first(candidates, is_present)
    if found is None:
        ways = [source.manual] if source.manual else []
        ways.append(f"pass download=True (needs internet) to fetch it into {base}")
        wanted = ", ".join(f"{filename}[.gz]" for filename in source.files)
        raise _not_found(source.title, candidates, wanted, ways)
    return found


def _download(source, base):
    # Imported here: torch is heavy and only downloading needs it.
    import torchvision.datasets

    getattr(torchvision.datasets, source.torchvision_class)(str(base), download=True)


# Every loader takes (normal_class, root, download, split_rng) so that load_one_class
# can dispatch on the name, and returns (X_train, X_test, test_is_normal).


def _load_fashion_mnist(normal_class, root, download, split_rng):
    directory = _find_or_fetch(_FASHION_MNIST, root, download)
    return _one_class(*_read_idx_split(directory), normal_class)


def _load_fashion_mnist_sample(normal_class, root, download, split_rng):
    resource = importlib.resources.files("sklearn_panda") / "data" / _FASHION_MNIST_SAMPLE
    with importlib.resources.as_file(resource) as path, np.load(path) as sample:
        split = [
            sample[key]
            for key in ("train_images", "train_labels", "test_images", "test_labels")
        ]
    return _one_class(*split, normal_class)


def _load_mnist(normal_class, root, download, split_rng):
    directory = _find_or_fetch(_MNIST, root, download)
    return _one_class(*_read_idx_split(directory), normal_class)


def _load_cifar10(normal_class, root, download, split_rng):
    directory = _find_or_fetch(_CIFAR10, root, download)
    split = _read_cifar(directory, _CIFAR10.files[:5], "test_batch", "labels")
    return _one_class(*split, normal_class)


def _load_cifar100(normal_class, root, download, split_rng):
    directory = _find_or_fetch(_CIFAR100, root, download)
    split = _read_cifar(directory, ["train"], "test", "coarse_labels")
    return _one_class(*split, normal_class)


def _load_cats_vs_dogs(normal_class, root, download, split_rng):
    base = _base(root)
    candidates = [base / "PetImages", base]
    directory = _first(
        candidates, lambda d: (d / "Cat").is_dir() and (d / "Dog").is_dir()
    )
    if directory is None:
        raise _not_found(
            "Cats vs Dogs",
            candidates,
            "Cat/ and Dog/ folders",
            [
                "download the Kaggle Cats and Dogs dataset from Microsoft "
                "(https://www.microsoft.com/en-us/download/details.aspx?id=54765), "
                "extract it and pass root=the folder that holds PetImages/",
            ],
        )
    train, train_labels, test, test_labels = [], [], [], []
    for label, animal in enumerate(("Cat", "Dog")):
        images = _list_images(directory / animal)
        n_train = round(_CATS_VS_DOGS_TRAIN_FRACTION * len(images))
        # Dropped after the split, so that the split stays the paper's by file number.
        first = [path for path in images[:n_train] if os.path.getsize(path)]
        rest = [path for path in images[n_train:] if os.path.getsize(path)]
        train += first
        train_labels += [label] * len(first)
        test += rest
        test_labels += [label] * len(rest)
    return _one_class(train, train_labels, test, test_labels, normal_class)


def _load_mvtec(normal_class, root, download, split_rng):
    base = _base(root)
    candidates = [base / normal_class, base / "mvtec_anomaly_detection" / normal_class]
    directory = _first(
        candidates, lambda d: (d / "train" / "good").is_dir() and (d / "test").is_dir()
    )
    if directory is None:
        raise _not_found(
            f"MVTec AD category {normal_class!r}",
            candidates,
            "train/good/ and test/ folders",
            [
                "download MVTec AD from "
                "https://www.mvtec.com/company/research/datasets/mvtec-ad, "
                "extract it and pass root=the folder that holds the category folders",
            ],
        )
    return _read_image_folder(directory, "good")


def _load_image_folder(normal_class, root, download, split_rng):
    if root is None:
        raise ValueError(
            "'image_folder' needs root=, the folder that holds train/ and test/."
        )
    directory = Path(root).expanduser()
    if not ((directory / "train").is_dir() and (directory / "test").is_dir()):
        raise _not_found(
            "Image folder",
            [directory],
            "train/ and test/ folders",
            [
                "arrange the images as root/train/<normal folder>/* and "
                "root/test/<any folder>/*, with normal test images in "
                "root/test/<normal folder>",
            ],
        )
    normal_folder = "good" if normal_class is None else normal_class
    folders = [folder.name for folder in _subfolders(directory / "train")]
    if normal_folder not in folders:
        raise ValueError(
            f"normal_class for 'image_folder' must name a folder in "
            f"{directory / 'train'}: one of {', '.join(map(repr, folders))} "
            f"(None means 'good'); got {normal_class!r}."
        )
    return _read_image_folder(directory, normal_folder)


def _stratified_halves(labels, rng):
    """Train and test indices; half of each class, rounded down, drawn for the test."""
    is_test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        is_test[members[: members.size // 2]] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _load_digits(normal_class, root, download, split_rng):
    digits = load_digits()
    images = (digits.images * 255 / 16).round().astype(np.uint8)
    labels = digits.target
    train, test = _stratified_halves(labels, split_rng)
    return _one_class(
        images[train], labels[train], images[test], labels[test], normal_class
    )


# name -> (valid normal classes, or None when only the files on disk tell, loader)
_DATASETS = {
    "fashion_mnist": (range(10), _load_fashion_mnist),
    "fashion_mnist_sample": (range(10), _load_fashion_mnist_sample),
    "mnist": (range(10), _load_mnist),
    "cifar10": (range(10), _load_cifar10),
    "cifar100": (range(20), _load_cifar100),
    "cats_vs_dogs": (range(2), _load_cats_vs_dogs),
    "mvtec": (MVTEC_CATEGORIES, _load_mvtec),
    "image_folder": (None, _load_image_folder),
    "digits": (range(10), _load_digits),
}
