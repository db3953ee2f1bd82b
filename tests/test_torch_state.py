"""Torch state: the estimators' declared torch state in pickling, save / load and device
moves (fitted on a GPU, loaded without CUDA); subclasses pickle, save and load; no import cycle."""

import ast
import importlib
import json
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_IMAGES, tiny_mlp, tiny_resnet
from sklearn.base import BaseEstimator
from torch import nn

import sklearn_panda
from sklearn_panda import KNNScorer, PandaDetector, PandaFeatures, PandaOE, PandaSES, load, save
from sklearn_panda._io import persistence as _persistence
from sklearn_panda._engine.device import ON_DEVICE
from sklearn_panda._old_paths import MOVED

MOVED_FROM = {f"sklearn_panda.{moved}": flat for flat, moved in MOVED.items()}

TESTS = os.path.dirname(os.path.abspath(__file__))


class SubFeatures(PandaFeatures):
    """A user's subclass, as a test module defines one: found again by its module and name."""


class SubDetector(PandaDetector):
    """A user's subclass of PandaDetector."""


class SubSES(PandaSES):
    """A user's subclass of PandaSES."""


class SubOE(PandaOE):
    """A user's subclass of PandaOE."""


class SubKNN(KNNScorer):
    """A user's subclass of a scorer."""


class ProjectedFeatures(PandaFeatures):
    """A subclass with torch state of its own: a fixed random projection of the features, on the device."""

    _torch_attributes = {**PandaFeatures._torch_attributes, "projection_": ON_DEVICE}

    def fit(self, X, y=None):
        super().fit(X)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.projection_ = nn.Linear(4, 2).to(self.device_)
        return self

    def transform(self, X):
        features = torch.from_numpy(super().transform(X)).to(self.device_)
        with torch.inference_mode():
            return self.projection_(features).cpu().numpy()


VECTORS = np.random.default_rng(1).normal(size=(30, 6))
OE_LABELS = np.r_[np.ones(20, dtype=int), -np.ones(10, dtype=int)]
SMALL = {"backbone": tiny_mlp, "weights": None, "n_steps": 3, "random_state": 0}
IMAGES = (np.random.default_rng(0).random((8, 20, 20, 3)) * 255).astype(np.uint8)


def _fitted(name):
    """``(estimator, X)``: a tiny fitted estimator of each kind, and what it transforms or scores."""
    if name == "detector-images":
        return PandaDetector(**{**TINY_IMAGES, "n_steps": 2, "random_state": 0}).fit(IMAGES), IMAGES
    if name == "features-ewc":
        # EWC adds the Fisher, torch state that fit keeps on the CPU.
        ewc = {"regularization": "ewc", "n_fisher_batches": 2}
        return PandaFeatures(**{**TINY_IMAGES, "n_steps": 2, "random_state": 0, **ewc}).fit(IMAGES), IMAGES
    cls = {
        "features": PandaFeatures, "detector": PandaDetector, "ses": PandaSES, "oe": PandaOE,
        "SubFeatures": SubFeatures, "SubDetector": SubDetector, "SubSES": SubSES, "SubOE": SubOE,
        "ProjectedFeatures": ProjectedFeatures,
    }[name]
    params = dict(SMALL)
    if cls is SubDetector:
        params.update(scorer=SubKNN(n_neighbors=3))
    if issubclass(cls, PandaSES):
        params.update(n_steps=4, checkpoint_every=2)
    if issubclass(cls, PandaOE):
        return cls(**params).fit(VECTORS, OE_LABELS), VECTORS
    return cls(**params).fit(VECTORS), VECTORS


def _output(estimator, X):
    return estimator.transform(X) if hasattr(estimator, "transform") else estimator.score_samples(X)


SUBCLASSES = ["SubFeatures", "SubDetector", "SubSES", "SubOE", "ProjectedFeatures"]
ESTIMATORS = ["features", "features-ewc", "detector", "detector-images", "ses", "oe", *SUBCLASSES]


# ------------------------------------------------- fitted on a GPU, loaded without CUDA


def _estimators_in(estimator):
    """``estimator`` and the estimators among its fitted attributes (a detector's ``features_``)."""
    found = [estimator]
    for value in vars(estimator).values():
        if isinstance(value, BaseEstimator):
            found.extend(_estimators_in(value))
    return found


def _on_the_gpu(estimator):
    """Relabel ``estimator`` as fitted on ``cuda:0``; return the tensors a GPU fit leaves there.

    Those are every parameter and buffer of its modules (the network, PandaOE's
    head); the Fisher and SES's checkpoints are kept on the CPU by fit.
    """
    tensors = []
    for part in _estimators_in(estimator):
        if "device_" in vars(part):
            part.device_ = torch.device("cuda", 0)
        for value in vars(part).values():
            if isinstance(value, nn.Module):
                tensors.extend(value.state_dict().values())
    return tensors


def _pickled_as_on_cuda(estimator, tensors):
    """``pickle.dumps(estimator)`` with the storages of ``tensors`` recorded as ``cuda:0``.

    torch's serialization asks the taggers of ``torch.serialization._package_registry``,
    in order, where each storage lives; one put first answers ``"cuda:0"`` for these
    storages, so the bytes are those a GPU machine writes, while loading goes
    through torch's own deserializers, which refuse CUDA storages without CUDA.
    """
    pointers = {tensor.untyped_storage().data_ptr() for tensor in tensors}
    tagged = set()

    def tag(storage):
        if storage.data_ptr() not in pointers:
            return None
        tagged.add(storage.data_ptr())
        return "cuda:0"

    def deserialize(storage, location):
        return None

    with pytest.MonkeyPatch.context() as patch:
        registry = torch.serialization._package_registry
        patch.setattr(torch.serialization, "_package_registry", [(0, tag, deserialize), *registry])
        blob = pickle.dumps(estimator)
    # Every such tensor went through torch's serialization, tagged.
    assert tagged == pointers
    return blob


UNPICKLE_WITHOUT_CUDA = """
import json, pickle, sys, warnings

import numpy as np
import torch

assert not torch.cuda.is_available()
with open(sys.argv[1], "rb") as file:
    cases = pickle.load(file)
results = {}
for name, (blob, X, expected) in cases.items():
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            estimator = pickle.loads(blob)
        assert any("CUDA" in str(warning.message) for warning in caught), "no warning about CUDA"
        assert estimator.device_.type == "cpu", estimator.device_
        output = estimator.transform(X) if hasattr(estimator, "transform") else estimator.score_samples(X)
        np.testing.assert_array_equal(output, expected)
        results[name] = "ok"
    except Exception as error:
        results[name] = f"{type(error).__name__}: {error}"
with open(sys.argv[2], "w") as file:
    json.dump(results, file)
"""


@pytest.fixture(scope="module")
def unpickled_without_cuda(tmp_path_factory):
    """Each estimator fitted here, pickled as if fitted on a GPU, and unpickled
    and scored in a process that sees no CUDA: name -> "ok" or the error."""
    directory = tmp_path_factory.mktemp("cuda")
    cases = {}
    for name in ESTIMATORS:
        estimator, X = _fitted(name)
        expected = _output(estimator, X)
        cases[name] = (_pickled_as_on_cuda(estimator, _on_the_gpu(estimator)), X, expected)
    with open(directory / "cases.pkl", "wb") as file:
        pickle.dump(cases, file)
    # No GPU is visible to the child, whatever this machine has; the test
    # module and conftest (the backbone, the subclasses) import from TESTS.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join([TESTS, *sys.path])}
    subprocess.run(
        [sys.executable, "-c", UNPICKLE_WITHOUT_CUDA, str(directory / "cases.pkl"), str(directory / "results.json")],
        env=env, cwd=directory, check=True, timeout=300,
    )
    return json.loads((directory / "results.json").read_text())


@pytest.mark.parametrize("name", ESTIMATORS)
def test_fitted_on_a_gpu_unpickles_without_cuda(unpickled_without_cuda, name):
    assert unpickled_without_cuda[name] == "ok"


# ------------------------------------------------- pickles of the flat layout


@pytest.mark.parametrize("name", ["features", "detector-images", "ses", "oe"])
def test_pickles_naming_the_old_flat_module_paths_still_load(name, monkeypatch):
    """Pickles written before the private modules moved into subpackages name
    ``sklearn_panda._detector.PandaDetector`` and the like."""
    estimator, X = _fitted(name)
    expected = _output(estimator, X)
    with monkeypatch.context() as patch:
        # Written as then: every class of a moved module under its flat path.
        for flat, moved in MOVED.items():
            module = importlib.import_module(f"sklearn_panda.{moved}")
            for value in vars(module).values():
                if isinstance(value, type) and value.__module__ == module.__name__:
                    patch.setattr(value, "__module__", f"sklearn_panda.{flat}")
        written = pickle.dumps(estimator)
    assert f"sklearn_panda.{MOVED_FROM[type(estimator).__module__]}".encode() in written
    assert b"sklearn_panda._estimators" not in written and b"sklearn_panda._engine" not in written
    unpickled = pickle.loads(written)
    assert type(unpickled) is type(estimator) and type(unpickled).__module__.startswith("sklearn_panda._estimators.")
    np.testing.assert_array_equal(_output(unpickled, X), expected)


# ------------------------------------------------------------------ subclasses


@pytest.mark.parametrize("name", SUBCLASSES)
def test_subclasses_pickle_save_and_load(name, tmp_path):
    estimator, X = _fitted(name)
    expected = _output(estimator, X)
    unpickled = pickle.loads(pickle.dumps(estimator))
    assert type(unpickled) is type(estimator)
    np.testing.assert_array_equal(_output(unpickled, X), expected)
    estimator.save(tmp_path / "model.pt")
    loaded = load(tmp_path / "model.pt", backbone=tiny_mlp)
    assert type(loaded) is type(estimator)
    np.testing.assert_array_equal(_output(loaded, X), expected)
    if name == "SubDetector":
        assert type(loaded.scorer) is type(loaded.scorer_) is SubKNN


def test_load_never_imports_the_class_a_file_names(tmp_path, monkeypatch):
    estimator, _ = _fitted("SubDetector")
    save(estimator, tmp_path / "model.pt")
    # As in a process that has not imported this module.
    monkeypatch.delitem(_persistence.ESTIMATORS, f"{SubDetector.__module__}.SubDetector")
    with pytest.raises(ValueError, match="SubDetector'.*not defined here.*import the module"):
        load(tmp_path / "model.pt", backbone=tiny_mlp)


# ------------------------------------------------------------ device moves


def _tensors(value):
    if isinstance(value, nn.Module):
        return list(value.state_dict().values())
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [tensor for item in value.values() for tensor in _tensors(item)]
    if isinstance(value, list):
        return [tensor for item in value for tensor in _tensors(item)]
    return []


@pytest.mark.parametrize(
    "name, expected",
    [
        ("features-ewc", {"net_": "meta", "fisher_": "cpu"}),
        ("ses", {"net_": "meta", "checkpoints_": "cpu"}),
        ("oe", {"net_": "meta", "head_": "meta"}),
        ("ProjectedFeatures", {"net_": "meta", "projection_": "meta"}),
    ],
)
def test_load_puts_torch_state_where_the_estimator_declares_it(name, expected, tmp_path, monkeypatch):
    """On the requested device (here the data-less "meta" device, which needs no GPU)
    what lives on ``device_``; on the CPU the Fisher and SES's checkpoints."""
    # resolve_device refuses "meta" (nothing runs on it); here it stands in for a GPU.
    monkeypatch.setattr("sklearn_panda._engine.device._backend_available", lambda device_type: True)
    estimator, _ = _fitted(name)
    save(estimator, tmp_path / "model.pt")
    loaded = load(tmp_path / "model.pt", backbone=tiny_resnet if name == "features-ewc" else tiny_mlp, device="meta")
    placed = {}
    for part in _estimators_in(loaded):
        for attribute in type(part)._torch_attributes:
            tensors = _tensors(getattr(part, attribute))
            if tensors:
                placed[attribute] = "/".join(sorted({tensor.device.type for tensor in tensors}))
    assert placed == expected
    assert loaded.device_.type == "meta"


# ------------------------------------------------------------------ import cycles


PACKAGE = pathlib.Path(sklearn_panda.__file__).parent


def _package_modules():
    """``{dotted name: path}`` of every module of the package, subpackages included."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported_when_imported(module, tree, modules):
    """The package modules that ``module`` imports while it is itself imported
    (imports inside functions run later, and are left out)."""
    found = set()
    # The package a relative import starts from: the module's own for an __init__.
    package = module if modules[module].stem == "__init__" else module.rpartition(".")[0]

    def target(base, name):
        # ``from package import name``: the submodule, or a name the package's __init__ defines.
        return f"{base}.{name}" if f"{base}.{name}" in modules else base

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names if alias.name in modules)
            elif isinstance(child, ast.ImportFrom):
                base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1]) if child.level else ""
                base = ".".join(part for part in (base, child.module) if part)
                if base in modules:
                    found.update(target(base, alias.name) for alias in child.names)
            visit(child)

    visit(tree)
    found.discard(module)
    return found


def test_no_module_level_import_cycle():
    paths = _package_modules()
    graph = {
        module: _imported_when_imported(module, ast.parse(path.read_text()), paths) for module, path in paths.items()
    }
    # The graph is read right: estimators save through torch_state, which saves through persistence.
    assert "sklearn_panda._io.persistence" in graph["sklearn_panda._estimators.torch_state"]
    assert "sklearn_panda._estimators.torch_state" in graph["sklearn_panda._estimators.base"]
    assert "sklearn_panda.scorers._contract" in graph["sklearn_panda.scorers._knn"]
    visiting, done = [], set()

    def walk(module):
        if module in visiting:
            pytest.fail("import cycle: " + " -> ".join([*visiting[visiting.index(module):], module]))
        if module in done:
            return
        visiting.append(module)
        for imported in sorted(graph[module]):
            walk(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        walk(module)


def test_scorers_never_import_torch():
    """The scorers work on any embedding: no module of sklearn_panda.scorers imports torch, even inside functions."""
    for name, path in _package_modules().items():
        if name.startswith("sklearn_panda.scorers"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    imported = [node.module or ""] if node.level == 0 else []
                else:
                    continue
                assert not [one for one in imported if one.partition(".")[0] == "torch"], f"{name} imports torch"


def test_importing_the_scorers_or_the_package_imports_no_torch():
    """Not only no scorer module: nothing that importing them runs, the package's __init__ included."""
    import subprocess
    import sys

    code = (
        "import sys, sklearn_panda.scorers, sklearn_panda.metrics, sklearn_panda.model_selection; "
        "import sklearn_panda; assert sklearn_panda.KNNScorer is sklearn_panda.scorers.KNNScorer; "
        "print(sorted(name for name in ('torch', 'torchvision') if name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_save_names_every_estimator_it_supports_in_a_fresh_process(tmp_path):
    """save's refusal listed the classes imported so far (none in a fresh process: "save supports  and
    their subclasses") since the public names are imported on first use."""
    import subprocess
    import sys

    code = (
        "import numpy as np, sklearn_panda\n"
        "try:\n"
        f"    sklearn_panda.save(sklearn_panda.KNNScorer().fit(np.eye(3)), {str(tmp_path / 'm.pt')!r})\n"
        "except TypeError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "save supports PandaDetector, PandaFeatures, PandaOE, PandaPatchDetector, PandaSES and their " \
           "subclasses" in result.stdout.replace("\n", " ")


def test_the_package_s_names_are_its_all_and_load_on_first_use():
    import sklearn_panda

    assert set(sklearn_panda.__all__) == {*sklearn_panda._PUBLIC, "__version__"}
    assert set(sklearn_panda.__all__) <= set(dir(sklearn_panda))
    for name in sklearn_panda.__all__:
        assert getattr(sklearn_panda, name) is not None
    with pytest.raises(AttributeError, match="has no attribute 'PandaDetecter'"):
        sklearn_panda.PandaDetecter


def test_the_torch_engine_never_imports_estimator_code():
    """docs/ARCHITECTURE.md's layers: no module of the engine (``_engine``) or of input and output
    (``_io``: images, files, models) reaches an estimator module (``_estimators``), even through others."""
    paths = _package_modules()
    graph = {module: _imported_when_imported(module, ast.parse(path.read_text()), paths) for module, path in paths.items()}

    def reached(module, seen):
        for imported in graph[module] - seen:
            seen.add(imported)
            reached(imported, seen)
        return seen

    engine = sorted(name for name in paths if name.startswith(("sklearn_panda._engine.", "sklearn_panda._io.")))
    estimators = {name for name in paths if name.startswith("sklearn_panda._estimators.")}
    assert len(engine) >= 15 and {"sklearn_panda._estimators.base", "sklearn_panda._estimators.ses"} <= estimators
    crossing = {name: sorted(reached(name, set()) & estimators) for name in engine}
    assert {name: found for name, found in crossing.items() if found} == {}
