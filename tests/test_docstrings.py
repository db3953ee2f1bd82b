"""numpydoc's validator on every public docstring, as scikit-learn's own test_docstrings does.

The public objects are the names in ``sklearn_panda.__all__`` (with the public
methods and properties of its classes that ``sklearn_panda`` defines, inherited
ones included) and, in each public module, the names in its ``__all__`` or, for
a module without one, every function and class it defines without a leading
underscore. One test per object, named by its import path; a failure lists
numpydoc's errors.

The texts several estimators share are written once
(``sklearn_panda._estimators.docstrings``) and put into each docstring by ``fill_doc``;
a second test checks that a detector documents the parameters it shares with
:class:`~sklearn_panda.PandaFeatures` in the same words (through those
texts), except where they differ on purpose.
"""

import importlib
import inspect
import pathlib
import pkgutil
import re

import pytest

import sklearn_panda
from sklearn_panda._estimators.docstrings import DOCS, fill_doc

validate = pytest.importorskip("numpydoc.validate").validate
NumpyDocString = pytest.importorskip("numpydoc.docscrape").NumpyDocString

# numpydoc codes never reported, each with its reason.
IGNORED_EVERYWHERE = {
    # Also ignored by scikit-learn: the summary may start on the line of the opening quotes.
    "GL01",
    # Also ignored by scikit-learn: a blank line may follow the Returns section (short
    # docstrings of properties).
    "GL02",
    # Also ignored by scikit-learn: a return value may be named ("self : object", "scores :
    # ndarray ..."), so that the text can refer to it.
    "RT02",
    # Also ignored by scikit-learn for methods; house style: an extended summary only where
    # the summary line does not say everything, not as a required section.
    "ES01",
    # Also ignored by scikit-learn for methods; house style: "See Also" where there is a
    # related object worth a pointer (the estimators have one), not as a required section.
    "SA01",
}

# EX01 ("No examples section found") stays on for classes and module functions: the house
# style is docstrings with examples. It is not reported for the standard scikit-learn API
# methods below, which the class's own example shows (a method example would only repeat
# it, and scikit-learn ignores EX01 for methods too); every other public method has one.
STANDARD_METHODS = {
    "fit",
    "fit_predict",
    "fit_transform",
    "predict",
    "score_samples",
    "decision_function",
    "transform",
    "get_feature_names_out",
    "set_output",
    # The cross-validation splitter's API (NormalOnlySplit's example splits).
    "split",
    "get_n_splits",
}


def _public_modules():
    """``sklearn_panda`` and its modules whose names do not start with an underscore."""
    names = ["sklearn_panda"]
    for info in pkgutil.iter_modules(sklearn_panda.__path__):
        if not info.name.startswith("_"):
            names.append(f"sklearn_panda.{info.name}")
    return sorted(names)


def _module_objects(module):
    """The public names of a module: its ``__all__``, or what it defines without an underscore."""
    if hasattr(module, "__all__"):
        names = [name for name in module.__all__ if not name.startswith("_")]
    else:
        names = [
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and (inspect.isfunction(value) or inspect.isclass(value))
            and value.__module__ == module.__name__
        ]
    # Constants (MVTEC_CATEGORIES, __version__) have no docstring of their own.
    return [name for name in names if inspect.isfunction(getattr(module, name)) or inspect.isclass(getattr(module, name))]


def _public_members(cls):
    """Public methods and properties of ``cls`` defined in ``sklearn_panda`` (inherited ones too)."""
    members = []
    for name, value in inspect.getmembers(cls):
        if name.startswith("_"):
            continue
        function = value.fget if isinstance(value, property) else value
        if callable(function) and (getattr(function, "__module__", None) or "").startswith("sklearn_panda"):
            members.append(name)
    return members


def _public_objects():
    """``(import path, method name or None)`` of every public object, each once."""
    seen, objects = set(), []
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        for name in _module_objects(module):
            obj = getattr(module, name)
            # Name each object where the package exports it first (sklearn_panda.KNNScorer,
            # not sklearn_panda.scorers.KNNScorer as well).
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            path = f"{module_name}.{name}"
            objects.append((path, None))
            if inspect.isclass(obj):
                objects.extend((f"{path}.{member}", member) for member in _public_members(obj))
    return objects


PUBLIC_OBJECTS = _public_objects()


def _reported(errors, method):
    for code, message in errors:
        if code in IGNORED_EVERYWHERE:
            continue
        if code == "EX01" and method in STANDARD_METHODS:
            continue
        yield code, message


@pytest.mark.parametrize("path, method", PUBLIC_OBJECTS, ids=[path for path, _ in PUBLIC_OBJECTS])
def test_docstring(path, method):
    result = validate(path)
    errors = list(_reported(result["errors"], method))
    if errors:
        listing = "\n".join(f"  {code}: {message}" for code, message in errors)
        pytest.fail(f"numpydoc errors in {path} ({result['file']}:{result['file_line']}):\n{listing}")


def test_public_objects_are_found():
    """The discovery above sees the package's public API (a silent empty list would pass)."""
    paths = {path for path, _ in PUBLIC_OBJECTS}
    for expected in [
        "sklearn_panda.PandaDetector",
        "sklearn_panda.PandaDetector.fit",
        "sklearn_panda.PandaFeatures.transform",
        "sklearn_panda.KNNScorer.score_samples",
        "sklearn_panda.load",
        "sklearn_panda.datasets.load_one_class",
        "sklearn_panda.NormalOnlySplit.split",
    ]:
        assert expected in paths


def _parameters(cls):
    """``{name: (type, description)}`` of the Parameters section of ``cls``."""
    documented = {}
    for parameter in NumpyDocString(inspect.getdoc(cls))["Parameters"]:
        for name in parameter.name.split(", "):
            documented[name] = (parameter.type, "\n".join(parameter.desc))
    return documented


# Shared parameters whose documentation rightly differs from PandaFeatures', with why.
DIFFERENT_ON_PURPOSE = {
    # SES trains longer by default: later, collapsed checkpoints are out-voted.
    ("PandaSES", "n_steps"),
    # SES takes no recipe ("auto"): its checkpoints decide how far adaptation goes.
    ("PandaSES", "learning_rate"),
    ("PandaSES", "loss"),
    ("PandaSES", "clip_norm"),
    # OE fine-tunes with a new head and a logistic loss, with the paper's OE settings: its
    # own number of steps (at least 1), SGD defaults, one trainable stage, raw features.
    ("PandaOE", "n_steps"),
    ("PandaOE", "learning_rate"),
    ("PandaOE", "momentum"),
    ("PandaOE", "weight_decay"),
    ("PandaOE", "n_trainable_stages"),
    ("PandaOE", "normalize_features"),
    ("PandaOE", "clip_norm"),
    # OE has no EWC, so its feature_node leaves out what EWC's Fisher needs.
    ("PandaOE", "feature_node"),
}


@pytest.mark.parametrize("name", ["PandaDetector", "PandaSES", "PandaOE"])
def test_shared_parameters_are_documented_alike(name):
    features = _parameters(sklearn_panda.PandaFeatures)
    detector = _parameters(getattr(sklearn_panda, name))
    drifted = [
        parameter
        for parameter in sorted(set(features) & set(detector))
        if (name, parameter) not in DIFFERENT_ON_PURPOSE and features[parameter] != detector[parameter]
    ]
    assert not drifted, f"{name} documents these PandaFeatures parameters in other words: {drifted}"


def test_fill_doc_refuses_a_placeholder_without_text():
    class Example:
        """An example.

        Parameters
        ----------
        %(no_such_parameter)s
        """

    with pytest.raises(KeyError, match=r"Example's docstring names %\(no_such_parameter\)s"):
        fill_doc(Example)


def test_fill_doc_indents_and_leaves_missing_docstrings_alone():
    def example():
        """An example.

        Parameters
        ----------
        %(verbose)s
        """

    lines = fill_doc(example).__doc__.splitlines()
    assert lines[4:6] == ["        verbose : int, default=0", "            Progress bars on stderr when > 0."]
    undocumented = lambda: None  # noqa: E731
    assert fill_doc(undocumented).__doc__ is None


def test_each_shared_text_is_shared():
    """A text of DOCS serves at least two docstrings (else it belongs in its one class)."""
    sources = "".join(path.read_text() for path in pathlib.Path(sklearn_panda.__file__).parent.rglob("*.py"))
    used = {name: len(re.findall(rf"^ *%\({name}\)s$", sources, flags=re.M)) for name in DOCS}
    assert {name: count for name, count in used.items() if count < 2} == {}
