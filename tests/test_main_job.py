"""The README's main job picks its data and says which: benchmarks/one_class.py.

``--dataset auto`` (the default) is the full Fashion-MNIST when it is installed
and the sample shipped with the package otherwise; ``--dataset fashion_mnist``
stays strict. The full set is hidden with ``SKLEARN_PANDA_NO_SYSTEM_DATA`` and an
empty data home, as on a fresh machine.
"""

import csv
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SAMPLE_LINE = (
    "Data: Fashion-MNIST full set not found; using the sample shipped with the package "
    "(3,000 train / 2,000 test images)."
)


@pytest.fixture(scope="module")
def one_class():
    spec = importlib.util.spec_from_file_location("one_class", ROOT / "benchmarks" / "one_class.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fresh_machine(monkeypatch, tmp_path):
    """No full Fashion-MNIST anywhere: system folders skipped, an empty data home."""
    monkeypatch.setenv("SKLEARN_PANDA_NO_SYSTEM_DATA", "1")
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "data-home"))
    return tmp_path


def test_auto_is_the_default_and_takes_the_sample_without_the_full_set(one_class, fresh_machine):
    args = one_class.parse_args([])
    assert args.dataset == "auto"
    # The preprocessing is the backbone's recipe unless given; "none" skips a step.
    assert (args.resize, args.crop_size) == ("auto", "auto")
    assert one_class.parse_args(["--resize", "224", "--crop-size", "none"]).crop_size is None
    name, line = one_class.resolve_dataset(args)
    assert name == "fashion_mnist_sample"
    assert line.startswith(SAMPLE_LINE)
    assert "apt-get install dataset-fashion-mnist" in line


def test_auto_takes_the_full_set_when_found(one_class, fresh_machine):
    raw = fresh_machine / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / f"{name}.gz").touch()  # found by name; this test reads none of them
    name, line = one_class.resolve_dataset(one_class.parse_args(["--root", str(fresh_machine)]))
    assert name == "fashion_mnist"
    assert line == "Data: the full Fashion-MNIST (60,000 train / 10,000 test images)."
    # --download asks for the full set, fetched when missing.
    name, _ = one_class.resolve_dataset(one_class.parse_args(["--download"]))
    assert name == "fashion_mnist"


def test_a_named_dataset_is_taken_as_named(one_class, fresh_machine):
    for name in ("fashion_mnist", "fashion_mnist_sample", "digits"):
        assert one_class.resolve_dataset(one_class.parse_args(["--dataset", name])) == (name, None)
    # The full set, named, is required: no fallback to the sample.
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST not found"):
        one_class.main(["--dataset", "fashion_mnist", "--classes", "0", "--methods", "iforest-pixels",
                        "--out", str(fresh_machine / "out")])


def test_main_job_on_a_fresh_machine_runs_on_the_sample(one_class, fresh_machine, capsys):
    out = fresh_machine / "out"
    one_class.main(["--classes", "0", "1", "--max-train", "30", "--max-test", "60",
                    "--methods", "iforest-pixels", "--out", str(out)])
    printed = capsys.readouterr().out
    assert printed.startswith(SAMPLE_LINE)
    assert "| **mean** |" in printed
    stem = out / "one_class_fashion_mnist_sample_efficientnet_lite0"
    assert (out / f"{stem.name}.md").read_text().startswith(SAMPLE_LINE)
    with open(out / f"{stem.name}.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["class"], row["n_train"], row["n_test"]) for row in rows] == [("0", "30", "60"), ("1", "30", "60")]
    assert all(0 <= float(row["iforest-pixels"]) <= 100 for row in rows)
