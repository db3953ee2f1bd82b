"""Command line for folders of images: ``sklearn-panda fit``, ``score`` and ``update``.

``fit`` adapts a :class:`~sklearn_panda.PandaDetector` to a folder of normal
images (``--local``: fits a :class:`~sklearn_panda.PandaPatchDetector`, for
defects on known objects) and saves it with :func:`~sklearn_panda.save`;
``score`` loads a saved model with :func:`~sklearn_panda.load`, scores images
and writes a CSV sorted from the most anomalous image to the most normal one,
optionally a self-contained HTML report and, for a local model, a heat-map
overlay PNG per image (``--maps``); ``update`` adds newly approved normal
images to a local model (``partial_fit``). The same is available as
``python -m sklearn_panda``.

Images are named by folders (searched recursively for ``.png``, ``.jpg``,
``.jpeg``, ``.bmp``, ``.tif``, ``.tiff`` and ``.webp`` files, in any case;
hidden files and folders are skipped), by image files, or by list files
(``.txt``, one image path a line, relative to the list file's folder).

Bad input (a missing path, an empty folder, an unreadable image, a file that
is not a model) ends with a one-line ``sklearn-panda: error: ...`` on stderr
and exit status 2, before any output is replaced: every output is written to
a temporary file in its folder first and renamed into place once all of them
are ready.

``fit --config FILE`` takes a detector's parameters (and a scorer's) from
a JSON or TOML file (:mod:`sklearn_panda.cli._config`), so that
``PandaSES``, a scorer's settings or a future detector need no new flags.

Modules: ``_parser`` (the options), ``_config`` (config files), ``_inputs``
(backbone factories, model files, image checks), ``_outputs`` (the CSV,
maps), ``_commands`` (``fit``, ``score`` and ``update``), ``_main`` (running them, one-line
errors); the HTML report is ``sklearn_panda._io.report`` with its template file.
"""

from ._inputs import import_factory
from ._main import main
from ._parser import build_parser

__all__ = ["build_parser", "import_factory", "main"]
