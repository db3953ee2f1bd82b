"""The documentation builds without a warning, and every public name has its page.

The quick build of ``docs/`` (``-D plot_gallery=0``: the examples are shown, not run; the full
build that runs them and draws their figures is the command in ``docs/conf.py``), with every
warning an error (``-W --keep-going``), in a copy of ``docs/`` so that the pages Sphinx
generates (API stubs, gallery, command-line help) never land in the checkout. Then, for every
name in ``sklearn_panda.__all__`` and in each public module's ``__all__``, its page exists and
documents it; each public module and each example has its page too.
"""

import importlib
import inspect
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sklearn_panda

for _module in ("sphinx", "numpydoc", "sphinx_gallery", "myst_parser", "pydata_sphinx_theme"):
    pytest.importorskip(_module, reason="needs the docs extra (pip install -e '.[docs]')")

ROOT = Path(__file__).resolve().parents[1]
# What a build writes into docs/ (.gitignore lists them); not copied, so the build starts clean.
GENERATED = ("_build", "generated", "auto_examples", "_cli", "sg_execution_times.rst")


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory):
    """The quick build's HTML folder; the build's own output when it fails."""
    tree = tmp_path_factory.mktemp("docs_tree")
    shutil.copytree(ROOT / "docs", tree / "docs", ignore=shutil.ignore_patterns(*GENERATED, "__pycache__"))
    # conf.py finds the package and the examples beside docs/, as in the checkout.
    for name in ("sklearn_panda", "examples"):
        (tree / name).symlink_to(ROOT / name, target_is_directory=True)
    html = tree / "docs" / "_build" / "html"
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q", "-D", "plot_gallery=0",
         str(tree / "docs"), str(html)],
        cwd=tree, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"sphinx-build failed or warned:\n{result.stderr}\n{result.stdout}"
    return html


def _public_modules():
    return sorted(
        f"sklearn_panda.{info.name}" for info in pkgutil.iter_modules(sklearn_panda.__path__)
        if not info.name.startswith("_")
    )


def _module_names(module):
    """A module's public names: its ``__all__``, or the classes and functions it defines."""
    if hasattr(module, "__all__"):
        return [name for name in module.__all__ if not name.startswith("_")]
    return [
        name for name, value in vars(module).items()
        if not name.startswith("_") and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == module.__name__
    ]


def _documents(html, page_name, full_name):
    page = html / "generated" / f"{page_name}.html"
    return page.is_file() and f'id="{full_name}"' in page.read_text(encoding="utf-8")


def test_every_public_name_has_a_page(built_docs):
    top_level = {id(getattr(sklearn_panda, name)): name for name in sklearn_panda.__all__ if name != "__version__"}
    missing = [
        f"sklearn_panda.{name}" for name in top_level.values()
        if not _documents(built_docs, f"sklearn_panda.{name}", f"sklearn_panda.{name}")
    ]
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        if not (built_docs / "generated" / f"{module_name}.html").is_file():
            missing.append(module_name)
        for name in _module_names(module):
            # A name that sklearn_panda exports as well has one page, under sklearn_panda.
            shared = top_level.get(id(getattr(module, name)))
            page = f"sklearn_panda.{shared}" if shared else f"{module_name}.{name}"
            if not _documents(built_docs, page, page):
                missing.append(f"{module_name}.{name}")
    assert not missing, f"no API page for: {', '.join(missing)} (add them to docs/api.rst)"


def test_every_example_has_a_gallery_page(built_docs):
    examples = sorted(path.stem for path in (ROOT / "examples").glob("*.py") if not path.name.startswith("_"))
    missing = [name for name in examples if not (built_docs / "auto_examples" / f"{name}.html").is_file()]
    assert examples and not missing, f"no gallery page for: {missing}"


def test_user_guide_pages_are_built(built_docs):
    pages = ["index", "install", "quick_start", "image_level", "recipes", "local_defects", "scorers",
             "deployment", "dask", "cli", "reliability", "benchmarks", "ARCHITECTURE", "api"]
    assert [page for page in pages if not (built_docs / f"{page}.html").is_file()] == []
    # The command line's options come from its parser at each build.
    assert "--model" in (built_docs / "cli.html").read_text(encoding="utf-8")
