"""Tests for sklearn_panda.datasets.

Real data: the Fashion-MNIST sample that ships with the package, Fashion-MNIST from
the Debian package when installed, and scikit-learn's digits. Every other loader
reads a tiny fake copy of its on-disk layout made here.
"""

import dataclasses
import gzip
import importlib.resources
import importlib.util
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from sklearn_panda import datasets
from sklearn_panda.datasets import (
    available_datasets,
    fashion_mnist_or_sample,
    load_one_class,
)

ROOT = Path(__file__).resolve().parents[1]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# --- fake on-disk layouts -------------------------------------------------------------


def write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim])
    header += np.array(array.shape, dtype=">u4").tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def fake_mnist_split(n_train_per_class=3, n_test_per_class=10):
    """Images 4x5 (not square, so a swapped height and width shows); pixel = index."""
    train_labels = np.tile(np.arange(10), n_train_per_class)
    test_labels = np.tile(np.arange(10), n_test_per_class)
    train = np.repeat(np.arange(train_labels.size), 20).reshape(-1, 4, 5)
    test = np.repeat(np.arange(test_labels.size) + 100, 20).reshape(-1, 4, 5)
    return train, train_labels, test, test_labels


def write_mnist_files(directory, split, compress=True):
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in zip(IDX_NAMES, split, strict=True):
        write_idx(directory / (name + ".gz" if compress else name), array, compress)


def cifar_rows(images):
    """CIFAR's row layout: the red, then green, then blue 32x32 plane."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def fake_cifar_images(n_images, offset):
    images = np.zeros((n_images, 32, 32, 3), dtype=np.uint8)
    images[..., 0] = 10
    images[..., 1] = 20
    images[..., 2] = 30
    images[:, 0, 1, 0] = 200  # one red pixel in row 0, column 1
    images[:, 5, 5, 2] = np.arange(n_images) + offset  # identifies each image
    return images


def write_pickle(path, batch):
    with open(path, "wb") as file:
        pickle.dump(batch, file, protocol=2)


def write_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (120, 60, 30)).save(path)


@pytest.fixture
def no_system_fashion_mnist(monkeypatch, tmp_path):
    """Hide the Debian copy, so that a test sees only its own files."""
    monkeypatch.delenv("SKLEARN_PANDA_NO_SYSTEM_DATA", raising=False)
    missing = tmp_path / "not-installed"
    source = dataclasses.replace(datasets._FASHION_MNIST, system_dirs=(missing,))
    monkeypatch.setattr(datasets, "_FASHION_MNIST", source)
    return missing


# --- names and argument checks --------------------------------------------------------


def test_available_datasets_names_every_dataset():
    assert available_datasets() == (
        "fashion_mnist",
        "fashion_mnist_sample",
        "mnist",
        "cifar10",
        "cifar100",
        "cats_vs_dogs",
        "mvtec",
        "image_folder",
        "digits",
    )


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'") as error:
        load_one_class("imagenet", 0)
    for name in available_datasets():
        assert name in str(error.value)


@pytest.mark.parametrize(
    "name, normal_class, expected",
    [
        ("fashion_mnist", 10, "an integer from 0 to 9; got 10"),
        ("fashion_mnist_sample", "0", "an integer from 0 to 9; got '0'"),
        ("mnist", -1, "an integer from 0 to 9; got -1"),
        ("cifar10", 3.0, "an integer from 0 to 9; got 3.0"),
        ("cifar100", 20, "an integer from 0 to 19; got 20"),
        ("cats_vs_dogs", 2, "an integer from 0 to 1; got 2"),
        ("digits", True, "an integer from 0 to 9; got True"),
        ("digits", "3", "an integer from 0 to 9; got '3'"),
        ("mvtec", "botle", "one of 'bottle', 'cable'.*'zipper'; got 'botle'"),
    ],
)
def test_invalid_normal_class_names_valid_range(name, normal_class, expected):
    with pytest.raises(
        ValueError, match=f"normal_class for '{name}' must be {expected}"
    ):
        load_one_class(name, normal_class, root="/nonexistent")


@pytest.mark.parametrize("param", ["max_train", "max_test"])
@pytest.mark.parametrize("value", [0, -5, 2.5, True])
def test_invalid_caps(param, value):
    with pytest.raises(ValueError, match=f"{param} must be None or a positive integer"):
        load_one_class("digits", 0, **{param: value})


def test_numpy_integer_normal_class_is_accepted():
    expected = load_one_class("digits", 4)
    got = load_one_class("digits", np.int64(4))
    for got_part, expected_part in zip(got, expected, strict=True):
        np.testing.assert_array_equal(got_part, expected_part)


def test_module_does_not_import_torch():
    # An empty stand-in for the package, so that its __init__ (which imports torch) does not count.
    code = (
        "import os, sys, types\n"
        "package = types.ModuleType('sklearn_panda')\n"
        f"package.__path__ = [os.path.dirname({datasets.__file__!r})]\n"
        "sys.modules['sklearn_panda'] = package\n"
        "import sklearn_panda.datasets\n"
        "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- Fashion-MNIST and MNIST ----------------------------------------------------------


@pytest.fixture(scope="module")
def debian_fashion_mnist():
    if os.environ.get("SKLEARN_PANDA_NO_SYSTEM_DATA", "") not in ("", "0"):
        pytest.skip("SKLEARN_PANDA_NO_SYSTEM_DATA hides the Debian Fashion-MNIST")
    if not all((DEBIAN_FASHION_MNIST / f"{n}.gz").is_file() for n in IDX_NAMES):
        pytest.skip(
            "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
        )

    def read(name, header_size):
        with gzip.open(DEBIAN_FASHION_MNIST / f"{name}.gz") as file:
            return np.frombuffer(file.read(), np.uint8, offset=header_size)

    return (
        read(IDX_NAMES[0], 16).reshape(-1, 28, 28),
        read(IDX_NAMES[1], 8),
        read(IDX_NAMES[2], 16).reshape(-1, 28, 28),
        read(IDX_NAMES[3], 8),
    )


def test_fashion_mnist_from_debian_package(debian_fashion_mnist, tmp_path):
    train, train_labels, test, test_labels = debian_fashion_mnist
    X_train, X_test, y_test = load_one_class("fashion_mnist", 9, root=tmp_path)
    assert X_train.shape == (6000, 28, 28) and X_train.dtype == np.uint8
    assert X_test.shape == (10000, 28, 28) and X_test.dtype == np.uint8
    np.testing.assert_array_equal(X_train, train[train_labels == 9])
    np.testing.assert_array_equal(X_test, test)
    np.testing.assert_array_equal(y_test, np.where(test_labels == 9, 1, -1))
    assert y_test.dtype.kind == "i" and (y_test == 1).sum() == 1000


def test_fashion_mnist_caps_on_real_data(debian_fashion_mnist, tmp_path):
    X_train, X_test, y_test = load_one_class(
        "fashion_mnist", 0, root=tmp_path, max_train=100, max_test=500
    )
    assert X_train.shape == (100, 28, 28)
    assert X_test.shape == (500, 28, 28)
    assert (y_test == 1).sum() == 50  # the full test set is 10 % normal


def test_fashion_mnist_from_torchvision_layout(tmp_path, no_system_fashion_mnist):
    train, train_labels, test, test_labels = split = fake_mnist_split()
    write_mnist_files(tmp_path / "FashionMNIST" / "raw", split)
    X_train, X_test, y_test = load_one_class("fashion_mnist", 7, root=tmp_path)
    np.testing.assert_array_equal(X_train, train[train_labels == 7])
    np.testing.assert_array_equal(X_test, test)
    np.testing.assert_array_equal(y_test, np.where(test_labels == 7, 1, -1))


def test_mnist_from_uncompressed_files_in_root(tmp_path):
    train, train_labels, test, test_labels = split = fake_mnist_split()
    write_mnist_files(tmp_path, split, compress=False)
    X_train, X_test, y_test = load_one_class("mnist", 2, root=tmp_path)
    assert X_train.shape == (3, 4, 5)
    np.testing.assert_array_equal(X_train, train[train_labels == 2])
    np.testing.assert_array_equal(X_test, test)
    np.testing.assert_array_equal(y_test, np.where(test_labels == 2, 1, -1))
    X_train[0, 0, 0] = 1  # the arrays are the caller's to change


def test_default_root_is_scikit_learn_data_home(tmp_path, monkeypatch):
    train, train_labels, _, _ = split = fake_mnist_split()
    write_mnist_files(tmp_path / "MNIST" / "raw", split)
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path))
    X_train, _, _ = load_one_class("mnist", 5)
    np.testing.assert_array_equal(X_train, train[train_labels == 5])


def test_not_an_idx_file(tmp_path):
    write_mnist_files(tmp_path, fake_mnist_split())
    # Type code 0x0D: an IDX file of floats, not of unsigned bytes.
    float_header = bytes([0, 0, 0x0D, 1]) + np.array([4], ">u4").tobytes()
    floats = float_header + np.zeros(4, ">f4").tobytes()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(floats))
    with pytest.raises(ValueError, match="is not an IDX file of unsigned bytes"):
        load_one_class("mnist", 0, root=tmp_path)


def test_missing_mnist_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_one_class("mnist", 0, root=tmp_path)
    message = str(error.value)
    assert message.startswith("MNIST not found")
    assert f"\n  {tmp_path}\n" in message
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte[.gz]" in message
    assert f"pass download=True (needs internet) to fetch it into {tmp_path}" in message


def test_missing_fashion_mnist_says_where_it_looked(tmp_path, no_system_fashion_mnist):
    with pytest.raises(FileNotFoundError) as error:
        load_one_class("fashion_mnist", 0, root=tmp_path)
    message = str(error.value)
    for place in (tmp_path, tmp_path / "FashionMNIST" / "raw", no_system_fashion_mnist):
        assert str(place) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "download=True" in message


@pytest.mark.parametrize("value, skipped", [("1", True), ("0", False), ("", False)])
def test_no_system_data_variable_skips_system_folders(
    tmp_path, no_system_fashion_mnist, monkeypatch, value, skipped
):
    monkeypatch.setenv("SKLEARN_PANDA_NO_SYSTEM_DATA", value)
    with pytest.raises(FileNotFoundError) as error:
        load_one_class("fashion_mnist", 0, root=tmp_path)
    assert (str(no_system_fashion_mnist) not in str(error.value)) == skipped


@pytest.fixture
def fake_torchvision(monkeypatch):
    """A torchvision whose FashionMNIST 'downloads' a fake copy; records its calls."""
    calls = []

    def fashion_mnist(root, download):
        calls.append((root, download))
        write_mnist_files(Path(root) / "FashionMNIST" / "raw", fake_mnist_split())

    fake_datasets = types.SimpleNamespace(FashionMNIST=fashion_mnist)
    fake = types.SimpleNamespace(datasets=fake_datasets)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake_datasets)
    return calls


def test_download_fetches_with_torchvision_into_root(
    tmp_path, no_system_fashion_mnist, fake_torchvision
):
    train, train_labels, _, _ = fake_mnist_split()
    X_train, _, _ = load_one_class("fashion_mnist", 1, root=tmp_path, download=True)
    assert fake_torchvision == [(str(tmp_path), True)]
    np.testing.assert_array_equal(X_train, train[train_labels == 1])

    # Once there, the files are read without another download.
    load_one_class("fashion_mnist", 1, root=tmp_path, download=True)
    assert len(fake_torchvision) == 1


def test_no_download_unless_asked(tmp_path, no_system_fashion_mnist, fake_torchvision):
    with pytest.raises(FileNotFoundError):
        load_one_class("fashion_mnist", 1, root=tmp_path)
    assert fake_torchvision == []


# --- the Fashion-MNIST sample shipped with the package --------------------------------


def test_fashion_mnist_sample_every_class():
    X_test_first = None
    for normal_class in range(10):
        X_train, X_test, y_test = load_one_class("fashion_mnist_sample", normal_class)
        assert X_train.shape == (300, 28, 28) and X_train.dtype == np.uint8
        assert X_test.shape == (2000, 28, 28) and X_test.dtype == np.uint8
        assert y_test.dtype.kind == "i" and set(np.unique(y_test)) == {-1, 1}
        assert (y_test == 1).sum() == 200  # 10 % normal, as in the full test set
        assert 0 < X_train.mean() < 255 and X_train.max() == 255  # real images
        # The test set is the same whichever class is normal.
        if X_test_first is None:
            X_test_first = X_test
        np.testing.assert_array_equal(X_test, X_test_first)
        X_train[0, 0, 0] = 1  # the arrays are the caller's to change


def test_fashion_mnist_sample_is_deterministic_and_capped():
    def draw(seed, **caps):
        return load_one_class("fashion_mnist_sample", 4, random_state=seed, **caps)

    for got, want in zip(draw(0), draw(0), strict=True):
        np.testing.assert_array_equal(got, want)
    X_train, X_test, y_test = draw(0, max_train=100, max_test=500)
    assert X_train.shape == (100, 28, 28) and X_test.shape == (500, 28, 28)
    assert (y_test == 1).sum() == 50
    X_train_again, X_test_again, _ = draw(0, max_train=100, max_test=500)
    np.testing.assert_array_equal(X_train, X_train_again)
    np.testing.assert_array_equal(X_test, X_test_again)
    other_train, other_test, _ = draw(1, max_train=100, max_test=500)
    assert not np.array_equal(X_train, other_train)
    assert not np.array_equal(X_test, other_test)


def test_fashion_mnist_sample_ignores_root_and_download(tmp_path, no_system_fashion_mnist):
    # No full set anywhere, nothing fetched: the sample needs neither.
    got = load_one_class("fashion_mnist_sample", 2, root=tmp_path, download=True)
    want = load_one_class("fashion_mnist_sample", 2)
    for got_part, want_part in zip(got, want, strict=True):
        np.testing.assert_array_equal(got_part, want_part)
    assert not any(tmp_path.iterdir())


def test_fashion_mnist_sample_ships_with_its_licence():
    data = importlib.resources.files("sklearn_panda") / "data"
    assert data.joinpath("fashion_mnist_sample.npz").is_file()
    notice = data.joinpath("LICENSE-fashion-mnist.txt").read_text(encoding="utf-8")
    assert "MIT" in notice and "Zalando SE" in notice
    assert "Permission is hereby granted, free of charge" in notice
    # Small enough to ship: a few MB at most.
    with importlib.resources.as_file(data / "fashion_mnist_sample.npz") as path:
        assert path.stat().st_size < 4 * 2**20


def test_fashion_mnist_sample_is_the_full_set_at_its_indices(debian_fashion_mnist):
    train, train_labels, test, test_labels = debian_fashion_mnist
    path = importlib.resources.files("sklearn_panda") / "data" / "fashion_mnist_sample.npz"
    with importlib.resources.as_file(path) as file, np.load(file) as sample:
        sample = dict(sample)
    for split, images, labels in (("train", train, train_labels), ("test", test, test_labels)):
        index = sample[f"{split}_index"].astype(np.int64)
        assert np.all(np.diff(index) > 0)  # the order of the full files
        np.testing.assert_array_equal(sample[f"{split}_images"], images[index])
        np.testing.assert_array_equal(sample[f"{split}_labels"], labels[index])
    assert np.all(np.bincount(sample["train_labels"]) == 300)
    assert np.all(np.bincount(sample["test_labels"]) == 200)

    # The committed script makes exactly these arrays again.
    spec = importlib.util.spec_from_file_location(
        "make_fashion_mnist_sample", ROOT / "benchmarks" / "make_fashion_mnist_sample.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    remade = script.make_sample(DEBIAN_FASHION_MNIST)
    assert remade.keys() == sample.keys()
    for key, array in remade.items():
        np.testing.assert_array_equal(array, sample[key], err_msg=key)
        assert array.dtype == sample[key].dtype


def test_fashion_mnist_or_sample(tmp_path, no_system_fashion_mnist, monkeypatch):
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "data-home"))
    assert fashion_mnist_or_sample() == "fashion_mnist_sample"
    assert fashion_mnist_or_sample(tmp_path) == "fashion_mnist_sample"
    # Not a silent swap: the full set, asked for by name, is still required.
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST not found"):
        load_one_class("fashion_mnist", 0, root=tmp_path)

    write_mnist_files(tmp_path / "FashionMNIST" / "raw", fake_mnist_split())
    assert fashion_mnist_or_sample(tmp_path) == "fashion_mnist"
    assert fashion_mnist_or_sample() == "fashion_mnist_sample"  # not in the data home


# --- CIFAR ----------------------------------------------------------------------------


def test_cifar10_reads_pickled_batches(tmp_path):
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    train = fake_cifar_images(20, offset=0)
    train_labels = np.array([3, 0, 9, 1] * 4 + [3, 3, 2, 5])
    for i in range(5):
        batch = slice(4 * i, 4 * i + 4)
        write_pickle(
            directory / f"data_batch_{i + 1}",
            {"data": cifar_rows(train[batch]), "labels": list(train_labels[batch])},
        )
    test = fake_cifar_images(6, offset=100)
    test_labels = [3, 0, 3, 9, 1, 2]
    write_pickle(
        directory / "test_batch", {"data": cifar_rows(test), "labels": test_labels}
    )

    X_train, X_test, y_test = load_one_class("cifar10", 3, root=tmp_path)
    assert X_train.shape == (6, 32, 32, 3) and X_train.dtype == np.uint8
    np.testing.assert_array_equal(X_train, train[train_labels == 3])
    # Rows and columns in place, channels last.
    np.testing.assert_array_equal(X_train[0, 0, 1], [200, 20, 30])
    np.testing.assert_array_equal(X_train[0, 1, 0], [10, 20, 30])
    np.testing.assert_array_equal(X_test, test)
    np.testing.assert_array_equal(y_test, [1, -1, 1, -1, -1, -1])


def test_cifar100_uses_the_20_coarse_superclasses(tmp_path):
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    train, test = fake_cifar_images(8, offset=0), fake_cifar_images(5, offset=50)
    train_coarse = np.array([19, 0, 19, 4, 7, 19, 1, 2])
    test_coarse = np.array([0, 19, 19, 3, 19])
    # Fine labels that would pick other images, to show which key is read.
    for name, images, coarse in (
        ("train", train, train_coarse),
        ("test", test, test_coarse),
    ):
        batch = {
            "data": cifar_rows(images),
            "fine_labels": list((coarse + 1) % 100),
            "coarse_labels": list(coarse),
        }
        write_pickle(directory / name, batch)

    X_train, X_test, y_test = load_one_class("cifar100", 19, root=tmp_path)
    np.testing.assert_array_equal(X_train, train[[0, 2, 5]])
    np.testing.assert_array_equal(X_test, test)
    np.testing.assert_array_equal(y_test, [-1, 1, 1, -1, 1])


def test_missing_cifar_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_one_class("cifar100", 0, root=tmp_path)
    message = str(error.value)
    assert message.startswith("CIFAR-100 not found")
    assert str(tmp_path / "cifar-100-python") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message
    assert "download=True" in message


# --- folders of image files -----------------------------------------------------------


@pytest.fixture
def pet_images(tmp_path):
    """Cat and Dog folders of 10 numbered images; 10.jpg sorts before 2.jpg as text."""
    directory = tmp_path / "PetImages"
    for animal in ("Cat", "Dog"):
        for number in [0, 1, 2, 3, 4, 5, 6, 7, 8, 10]:
            write_image(directory / animal / f"{number}.jpg")
        (directory / animal / "Thumbs.db").write_bytes(b"not an image")
    # As in the published archive, some files are empty.
    (directory / "Cat" / "5.jpg").write_bytes(b"")
    (directory / "Dog" / "10.jpg").write_bytes(b"")
    return directory


def names(paths):
    return [Path(path).parent.name + "/" + Path(path).name for path in paths]


@pytest.mark.parametrize("root_is_pet_images", [False, True])
def test_cats_vs_dogs_first_80_percent_by_number_train(pet_images, root_is_pet_images):
    root = pet_images if root_is_pet_images else pet_images.parent
    X_train, X_test, y_test = load_one_class("cats_vs_dogs", 0, root=root)
    assert all(isinstance(path, str) for path in X_train + X_test)
    assert names(X_train) == [f"Cat/{n}.jpg" for n in (0, 1, 2, 3, 4, 6, 7)]
    assert names(X_test) == ["Cat/8.jpg", "Cat/10.jpg", "Dog/8.jpg"]
    np.testing.assert_array_equal(y_test, [1, 1, -1])

    X_train, X_test, y_test = load_one_class("cats_vs_dogs", 1, root=root)
    assert names(X_train) == [f"Dog/{n}.jpg" for n in range(8)]
    np.testing.assert_array_equal(y_test, [-1, -1, 1])


def test_missing_cats_vs_dogs_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_one_class("cats_vs_dogs", 0, root=tmp_path)
    message = str(error.value)
    assert str(tmp_path / "PetImages") in message and f"\n  {tmp_path}\n" in message
    assert "microsoft.com" in message


def make_mvtec_category(directory):
    for name in ("000.png", "001.png", "002.png"):
        write_image(directory / "train" / "good" / name)
    for folder, count in (("good", 2), ("broken_large", 2), ("contamination", 1)):
        for number in range(count):
            write_image(directory / "test" / folder / f"{number:03d}.png")
    write_image(directory / "ground_truth" / "broken_large" / "000_mask.png")


@pytest.mark.parametrize("subdir", ["", "mvtec_anomaly_detection"])
def test_mvtec_good_is_normal_every_defect_is_an_anomaly(tmp_path, subdir):
    make_mvtec_category(tmp_path / subdir / "bottle")
    X_train, X_test, y_test = load_one_class("mvtec", "bottle", root=tmp_path)
    assert names(X_train) == ["good/000.png", "good/001.png", "good/002.png"]
    assert all(f"{Path('bottle', 'train')}" in path for path in X_train)
    assert names(X_test) == [
        "broken_large/000.png",
        "broken_large/001.png",
        "contamination/000.png",
        "good/000.png",
        "good/001.png",
    ]
    assert all(f"{Path('bottle', 'test')}" in path for path in X_test)
    np.testing.assert_array_equal(y_test, [-1, -1, -1, 1, 1])


def test_missing_mvtec_category_says_where_it_looked(tmp_path):
    make_mvtec_category(tmp_path / "bottle")
    with pytest.raises(FileNotFoundError) as error:
        load_one_class("mvtec", "zipper", root=tmp_path)
    message = str(error.value)
    assert "MVTec AD category 'zipper' not found" in message
    assert str(tmp_path / "zipper") in message
    assert str(tmp_path / "mvtec_anomaly_detection" / "zipper") in message
    assert "mvtec.com" in message and "pass root=" in message


def test_image_folder_defaults_to_good(tmp_path):
    write_image(tmp_path / "train" / "good" / "b.png")
    write_image(tmp_path / "train" / "good" / "a.JPG")
    (tmp_path / "train" / "good" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "test" / "good" / "c.bmp")
    write_image(tmp_path / "test" / "scratch" / "d.jpeg")
    X_train, X_test, y_test = load_one_class("image_folder", None, root=tmp_path)
    assert names(X_train) == ["good/a.JPG", "good/b.png"]
    assert names(X_test) == ["good/c.bmp", "scratch/d.jpeg"]
    np.testing.assert_array_equal(y_test, [1, -1])


def test_image_folder_any_class_folder_can_be_normal(tmp_path):
    for split in ("train", "test"):
        for animal in ("bird", "cat", "dog"):
            write_image(tmp_path / split / animal / "0.png")
    X_train, X_test, y_test = load_one_class("image_folder", "cat", root=tmp_path)
    assert names(X_train) == ["cat/0.png"]
    assert names(X_test) == ["bird/0.png", "cat/0.png", "dog/0.png"]
    np.testing.assert_array_equal(y_test, [-1, 1, -1])


def test_image_folder_skips_hidden_files_and_folders(tmp_path):
    # A macOS resource fork beside an image, a tool's hidden folder among the classes: neither an
    # image of the set nor a class of anomalies.
    write_image(tmp_path / "train" / "good" / "a.png")
    write_image(tmp_path / "train" / "good" / "._a.png")
    write_image(tmp_path / "test" / "good" / "b.png")
    write_image(tmp_path / "test" / ".ipynb_checkpoints" / "c.png")
    X_train, X_test, y_test = load_one_class("image_folder", None, root=tmp_path)
    assert names(X_train) == ["good/a.png"] and names(X_test) == ["good/b.png"]
    np.testing.assert_array_equal(y_test, [1])


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="'image_folder' needs root="):
        load_one_class("image_folder", None)
    with pytest.raises(FileNotFoundError, match="no folder holds train/ and test/"):
        load_one_class("image_folder", None, root=tmp_path)

    write_image(tmp_path / "train" / "cat" / "0.png")
    (tmp_path / "train" / "dog").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(
        ValueError, match="one of 'cat', 'dog' .None means 'good'.; got None"
    ):
        load_one_class("image_folder", None, root=tmp_path)
    with pytest.raises(FileNotFoundError, match="No image files"):
        load_one_class("image_folder", "dog", root=tmp_path)


def test_image_folder_refuses_test_images_it_cannot_label(tmp_path):
    # A normal test folder spelt otherwise made every test image an anomaly; images directly in
    # test/ were dropped. Neither said a word.
    write_image(tmp_path / "train" / "good" / "0.png")
    write_image(tmp_path / "test" / "Good" / "0.png")
    write_image(tmp_path / "test" / "scratch" / "0.png")
    with pytest.raises(ValueError, match=r"has no folder 'good' .*every test image would be an anomaly; it has "
                                         r"'Good', 'scratch'"):
        load_one_class("image_folder", None, root=tmp_path)
    (tmp_path / "test" / "Good").rename(tmp_path / "test" / "good")
    write_image(tmp_path / "test" / "loose.png")
    with pytest.raises(ValueError, match=r"images outside class folders \(1, e.g. loose.png\)"):
        load_one_class("image_folder", None, root=tmp_path)
    (tmp_path / "test" / "loose.png").unlink()
    assert len(load_one_class("image_folder", None, root=tmp_path)[1]) == 2


# --- digits ---------------------------------------------------------------------------


def test_digits_half_of_each_class_is_the_test_set():
    digits = load_digits()
    scaled = (digits.images * 255 / 16).round().astype(np.uint8)
    _, X_test, _ = load_one_class("digits", 0)
    assert X_test.shape == (sum(np.bincount(digits.target) // 2), 8, 8)
    assert X_test.dtype == np.uint8 and X_test.max() == 255

    train_parts = []
    for digit in range(10):
        X_train, X_test_again, y_test = load_one_class("digits", digit)
        np.testing.assert_array_equal(X_test_again, X_test)
        count = (digits.target == digit).sum()
        assert (y_test == 1).sum() == count // 2
        assert len(X_train) == count - count // 2
        train_parts.append(X_train)
    # Train and test split the scaled images exactly: none lost, none in both.
    split = np.concatenate(train_parts + [X_test])
    assert sorted(image.tobytes() for image in split) == sorted(
        image.tobytes() for image in scaled
    )


def test_digits_split_follows_random_state():
    _, test_a, _ = load_one_class("digits", 0, random_state=0)
    _, test_b, _ = load_one_class("digits", 0, random_state=0)
    _, test_c, _ = load_one_class("digits", 0, random_state=1)
    np.testing.assert_array_equal(test_a, test_b)
    assert not np.array_equal(test_a, test_c)


# --- capping --------------------------------------------------------------------------


@pytest.fixture
def mnist_root(tmp_path):
    """10 training images of each class, 10 test images of each class; pixel = index."""
    write_mnist_files(tmp_path, fake_mnist_split(n_train_per_class=10))
    return tmp_path


def test_caps_take_sorted_subsets(mnist_root):
    X_train, X_test, y_test = load_one_class("mnist", 6, root=mnist_root)
    X_train_cap, X_test_cap, y_test_cap = load_one_class(
        "mnist", 6, root=mnist_root, max_train=4, max_test=20
    )
    assert len(X_train_cap) == 4 and len(X_test_cap) == 20
    # Each image holds its index: kept images are distinct, in the original order.
    train_ids, test_ids = X_train_cap[:, 0, 0], X_test_cap[:, 0, 0]
    assert set(train_ids) <= set(X_train[:, 0, 0]) and np.all(np.diff(train_ids) > 0)
    assert set(test_ids) <= set(X_test[:, 0, 0]) and np.all(np.diff(test_ids) > 0)
    np.testing.assert_array_equal(y_test_cap, y_test[test_ids - 100])


def test_test_cap_keeps_the_share_of_normal_images(mnist_root):
    _, _, y_test = load_one_class("mnist", 0, root=mnist_root, max_test=50)
    assert (y_test == 1).sum() == 5  # 10 % normal, as in the whole test set
    # A tiny test set still holds both kinds.
    _, _, y_test = load_one_class("mnist", 0, root=mnist_root, max_test=2)
    assert sorted(y_test) == [-1, 1]


def test_caps_above_the_size_keep_everything(mnist_root):
    uncapped = load_one_class("mnist", 3, root=mnist_root)
    capped = load_one_class("mnist", 3, root=mnist_root, max_train=10, max_test=1000)
    for got, want in zip(capped, uncapped, strict=True):
        np.testing.assert_array_equal(got, want)


def test_caps_follow_random_state(mnist_root):
    def draw(seed, max_train=5):
        return load_one_class(
            "mnist",
            3,
            root=mnist_root,
            max_train=max_train,
            max_test=30,
            random_state=seed,
        )

    for got, want in zip(draw(0), draw(0), strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(draw(0)[0], draw(1)[0])
    assert not np.array_equal(draw(0)[1], draw(1)[1])
    # Capping the training set does not move the test draw.
    np.testing.assert_array_equal(draw(0, max_train=None)[1], draw(0)[1])


def test_caps_on_file_paths(pet_images):
    X_train, X_test, y_test = load_one_class(
        "cats_vs_dogs", 1, root=pet_images, max_train=3, max_test=2
    )
    assert isinstance(X_train, list) and isinstance(X_test, list)
    assert len(X_train) == 3 and len(X_test) == 2
    assert names(X_train) == sorted(names(X_train), key=lambda n: int(n[4:-4]))
    assert sorted(y_test) == [-1, 1]
