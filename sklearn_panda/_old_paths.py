"""The flat module paths private modules had before they moved into ``_engine``,
``_estimators`` and ``_io``, so that pickles and joblib files written then still load.

A pickle names each object's class by module path (``sklearn_panda._detector.PandaDetector``,
``sklearn_panda._stages.SplitNet``); :func:`alias_old_paths` makes each old path the
module that now holds those classes. ``save`` / ``load`` files never name a module path
of the package (its classes go by their public names).
"""

import importlib
import importlib.abc
import importlib.util
import sys

# Old flat module -> where it lives now (both under sklearn_panda).
MOVED = {
    "_augment": "_engine.augment",
    "_backbones": "_engine.backbones",
    "_compilation": "_engine.compilation",
    "_coreset": "_engine.coreset",
    "_data": "_engine.data",
    "_device": "_engine.device",
    "_families": "_engine.families",
    "_inference": "_engine.inference",
    "_losses": "_engine.losses",
    "_onnx_graph": "_engine.onnx_graph",
    "_patch_features": "_engine.patch_features",
    "_progress": "_engine.progress",
    "_quantize": "_engine.quantize",
    "_stages": "_engine.stages",
    "_training": "_engine.training",
    "_base": "_estimators.base",
    "_detector": "_estimators.detector",
    "_docstrings": "_estimators.docstrings",
    "_features": "_estimators.features",
    "_oe": "_estimators.oe",
    "_patch": "_estimators.patch",
    "_recipes": "_estimators.recipes",
    "_ses": "_estimators.ses",
    "_torch_state": "_estimators.torch_state",
    "_validation": "_estimators.validation",
    "_dataset_files": "_io.dataset_files",
    "_deeppcb": "_io.deeppcb",
    "_image_io": "_io.images",
    "_persistence": "_io.persistence",
    "_report": "_io.report",
}


def alias_old_paths(package="sklearn_panda"):
    """Make ``package._old`` name the module ``package.<new>`` for each entry of :data:`MOVED`,
    when it is first imported (a pickle's class lookup does), not before: importing the
    package imports none of them.

    Examples
    --------
    >>> import pickle
    >>> from sklearn_panda import PandaDetector
    >>> pickle.loads(b"csklearn_panda._detector\\nPandaDetector\\n.") is PandaDetector
    True
    """
    if not any(isinstance(finder, _OldPaths) and finder.package == package for finder in sys.meta_path):
        sys.meta_path.append(_OldPaths(package))


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``package._old`` as the module that now lives at ``package.<MOVED[old]>``."""

    def __init__(self, package):
        self.package = package
        self.specs = {}  # old name -> the module's own spec, while the import system sets the old one

    def find_spec(self, fullname, path, target=None):
        package, _, old = fullname.rpartition(".")
        if package != self.package or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        # The module itself, not a copy: the classes a pickle names are the package's own.
        module = importlib.import_module(f"{self.package}.{MOVED[spec.name.rpartition('.')[2]]}")
        self.specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        """Nothing to run (the module was imported under its own name); its own spec put back."""
        module.__spec__ = self.specs.pop(module.__spec__.name)
