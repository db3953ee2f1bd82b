"""Sphinx configuration of sklearn-panda's documentation.

Full build, examples run and their figures drawn (about half an hour on a 2-core CPU the first
time: local_defects.py alone takes 7.5 minutes; sphinx-gallery then reruns only changed examples)::

    python -m sphinx -b html docs docs/_build/html

Quick build, examples shown but not run (what tests/test_docs.py checks, with ``-W``)::

    python -m sphinx -b html -W --keep-going -D plot_gallery=0 docs docs/_build/html
"""

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# The package of this checkout, not one installed elsewhere in the environment.
sys.path.insert(0, str(ROOT))
# The command line's --help pages, written before the pages are read (cli.rst includes them).
sys.path.insert(0, str(DOCS))

import sklearn_panda  # noqa: E402
from _cli_help import write_cli_help  # noqa: E402

project = "sklearn-panda"
author = "sklearn-panda developers"
copyright = "sklearn-panda developers, BSD-3-Clause"
version = release = sklearn_panda.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_cli", "auto_examples/*.ipynb", "auto_examples/*.py", "**.codeobj.json"]
templates_path = ["_templates"]

# One page per public name (api.rst lists them; tests/test_docs.py checks that none is missing).
autosummary_generate = True
# numpydoc renders the sections; its member tables would list inherited scikit-learn
# methods whose docstrings are not numpydoc-clean, so the class template lists members itself.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

html_theme = "pydata_sphinx_theme"
html_static_path = ["_static"]
html_title = f"sklearn-panda {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_sidebars = {"**": ["sidebar-nav-bs"]}
html_show_sourcelink = False

# The examples are scripts that read SKLEARN_PANDA_EXAMPLES_OUT and save figures there
# too; sphinx-gallery shows the figures matplotlib still holds at the end of each block.
# Not run (the longest, and they draw no figure):
# grid_search.py (twelve adaptations in a grid search) and score_images_on_dask.py (it
# starts a LocalCluster of worker processes, which does not run inside sphinx-build).
# plot_gallery=0 (the quick build) runs none.
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/(?!grid_search|score_images_on_dask)[^/]+\.py$",
    "ignore_pattern": r"/_",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "reset_modules": ("matplotlib",),
    "show_memory": False,
    "min_reported_time": 1,
    # The "Examples using X" lists at the end of each API page.
    "doc_module": ("sklearn_panda",),
    "backreferences_dir": "generated/backreferences",
    "abort_on_example_error": True,
}
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("SKLEARN_PANDA_EXAMPLES_OUT", str(DOCS / "_build" / "examples_out"))
Path(os.environ["SKLEARN_PANDA_EXAMPLES_OUT"]).mkdir(parents=True, exist_ok=True)

myst_heading_anchors = 3
suppress_warnings = ["myst.header"]

write_cli_help(DOCS / "_cli")


def _skip_foreign_members(app, what, name, obj, skip, options):
    """Leave out members that scikit-learn defines: they are documented there.

    The class pages list the methods sklearn-panda's classes define or inherit from
    each other; ``get_params``, ``set_output``, the ``set_*_request`` methods of metadata
    routing and the like come from scikit-learn, whose docstrings refer to its own guide.
    """
    if what != "class" or skip:
        return None
    function = getattr(obj, "fget", None) or getattr(obj, "__func__", None) or obj
    module = getattr(function, "__module__", None) or ""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    if not module.startswith("sklearn_panda"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_foreign_members)
