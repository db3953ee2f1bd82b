"""Command line for folders of images: ``sklearn-panda fit`` and ``sklearn-panda score``.

``fit`` adapts a :class:`~sklearn_panda.PandaDetector` to a folder of normal
images and saves it with :func:`~sklearn_panda.save`; ``score`` loads a saved
model with :func:`~sklearn_panda.load`, scores images and writes a CSV sorted
from the most anomalous image to the most normal one, and optionally a
self-contained HTML report. The same is available as
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
"""

import argparse
import base64
import csv
import html
import importlib
import io
import os
import pathlib
import pickle
import sys
import warnings
import zipfile

import numpy as np

PROG = "sklearn-panda"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
THUMBNAIL_SIZE = 160


# ------------------------------------------------------------------ inputs


def collect_images(sources):
    """Image paths named by folders, image files and ``.txt`` list files.

    Parameters
    ----------
    sources : list of str or path-like
        A folder: its image files, searched recursively, sorted, skipping
        hidden files and folders (names starting with ``.``). A ``.txt`` file:
        one image path a line, relative to the list file's folder; blank
        lines and lines starting with ``#`` are skipped. Any other file: that
        image.

    Returns
    -------
    paths : list of str
        In the order of ``sources``.

    Raises
    ------
    FileNotFoundError
        For a source, or an entry of a list file, that does not exist.
    ValueError
        For a folder without images or a list file without entries.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from sklearn_panda.cli import collect_images
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b.PNG", "a.jpg", "notes.md"):
    ...     _ = (folder / name).write_bytes(b"")
    >>> [pathlib.Path(path).name for path in collect_images([folder])]
    ['a.jpg', 'b.PNG']
    """
    paths = []
    for source in map(pathlib.Path, sources):
        if not source.exists():
            raise FileNotFoundError(f"No such file or folder: {source}")
        if source.is_dir():
            paths.extend(_folder_images(source))
        elif source.suffix.lower() == ".txt":
            paths.extend(_listed_images(source))
        else:
            paths.append(str(source))
    return paths


def _folder_images(folder):
    found = sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS
        and path.is_file()
        # Hidden entries are tool debris (macOS's "._name.png" are not images).
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    if not found:
        raise ValueError(
            f"No images in folder {folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, "
            "in subfolders too)."
        )
    return [str(path) for path in found]


def _listed_images(list_file):
    paths = []
    for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = list_file.parent / entry
        if not path.is_file():
            raise FileNotFoundError(f"{list_file}, line {number}: no image file {path}")
        paths.append(str(path))
    if not paths:
        raise ValueError(f"The list file {list_file} names no images.")
    return paths


def import_factory(spec):
    """The backbone factory named ``"module:function"`` (``"module:Class.method"`` works too).

    The module must be importable: installed, or on ``PYTHONPATH``
    (``python -m sklearn_panda`` also finds modules in the current folder).

    Parameters
    ----------
    spec : str
        ``"module:function"``, the module's import path and the factory's
        qualified name in it.

    Returns
    -------
    factory : callable
        The named object, called with no arguments to build the backbone.

    Raises
    ------
    ValueError
        When ``spec`` is malformed, cannot be imported, or is not callable.

    Examples
    --------
    >>> from sklearn_panda.cli import import_factory
    >>> import_factory("torch.nn:Identity")
    <class 'torch.nn.modules.linear.Identity'>
    """
    module_name, _, qualname = spec.partition(":")
    if not module_name or not qualname:
        raise ValueError(
            f"--backbone-factory must be MODULE:FUNCTION, e.g. my_models:small_net; got {spec!r}."
        )
    try:
        found = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"Cannot import the backbone factory {spec}: {error}") from None
    if not callable(found):
        raise ValueError(f"The backbone factory {spec} is not callable.")
    return found


def _load_model(path, factory, device):
    from ._persistence import load

    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such model file: {path}")
    # save() writes torch's zip archive; anything else would fail inside the unpickler
    # with whatever error the stray bytes happen to cause.
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a model file written by sklearn-panda (not a torch archive: "
            "another kind of file, or cut short)."
        )
    # torch.load's warnings about a foreign file would add lines to the one-line error.
    with warnings.catch_warnings(record=True) as caught:
        try:
            estimator = load(path, backbone=factory, device=device)
        except (pickle.UnpicklingError, RuntimeError) as error:
            reason = "not a weights-only file" if isinstance(error, pickle.UnpicklingError) else "damaged"
            raise ValueError(
                f"{path} is not a model file written by sklearn-panda (a torch archive, {reason})."
            ) from None
        except ValueError as error:
            if factory is None and "backbone factory" in str(error):
                raise ValueError(
                    f"{error} On the command line: --backbone-factory MODULE:FUNCTION."
                ) from None
            raise
    for warning in caught:
        warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return estimator


# ----------------------------------------------------------------- outputs


def _check_destination(path, option):
    """Fail before the work, not after it, when an output cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"The folder for {option} does not exist: {folder}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{option} {path} is a folder; give a file name.")


def _write_files(contents):
    """Write ``{path: bytes}``: temporary files first, renamed into place only once all are written."""
    written = {}
    try:
        for path, data in contents.items():
            folder, name = os.path.split(os.path.abspath(path))
            temporary = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
            with open(temporary, "xb") as file:
                written[temporary] = path
                file.write(data)
        for temporary, path in list(written.items()):
            os.replace(temporary, path)
            del written[temporary]
    finally:
        for temporary in written:
            if os.path.exists(temporary):
                os.unlink(temporary)


def _scores_csv(paths, scores, flagged):
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "score", "label"])
    for path, score, is_flagged in zip(paths, scores, flagged):
        writer.writerow([path, repr(float(score)), "anomaly" if is_flagged else "normal"])
    return text.getvalue().encode("utf-8")


def _number(value):
    return f"{value:.6g}"


def _thumbnail(path):
    """A PNG data URI of the image as the model read it (RGB, no EXIF rotation)."""
    from PIL import Image

    with Image.open(path) as opened:
        image = opened.convert("RGB")
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _histogram_svg(scores, threshold, width=640, height=220):
    """Inline SVG histogram of ``scores`` with a line at ``threshold`` (no plotting library needed)."""
    low, high = min(scores.min(), threshold), max(scores.max(), threshold)
    bin_width = (high - low or 1.0) / min(30, max(10, len(scores) // 2))
    # The threshold is a bin edge, so that every bar is wholly flagged or wholly not; a score
    # equal to the threshold is not flagged and falls in the bin that starts there.
    steps = np.arange(np.floor((low - threshold) / bin_width), np.floor((high - threshold) / bin_width) + 2)
    edges = threshold + bin_width * steps
    counts, _ = np.histogram(scores, bins=edges)
    low, high = edges[0], edges[-1]
    left, right, top, bottom = 40, 20, 24, 36
    plot_width, plot_height = width - left - right, height - top - bottom

    def x(value):
        return left + (value - low) / (high - low) * plot_width

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="Histogram of the scores">'
    ]
    for count, start, stop in zip(counts, edges[:-1], edges[1:]):
        if count == 0:
            continue
        bar_height = count / counts.max() * plot_height
        kind = "flagged" if start < threshold else "normal"
        parts.append(
            f'<rect class="{kind}" x="{x(start):.1f}" y="{top + plot_height - bar_height:.1f}" '
            f'width="{max(x(stop) - x(start) - 1, 1):.1f}" height="{bar_height:.1f}">'
            f"<title>{count} image(s), scores {_number(start)} to {_number(stop)}</title></rect>"
        )
    baseline = top + plot_height
    parts += [
        f'<line x1="{left}" y1="{baseline}" x2="{left + plot_width}" y2="{baseline}" stroke="#444"/>',
        f'<text x="{left}" y="{baseline + 16}" text-anchor="start">{_number(low)}</text>',
        f'<text x="{left + plot_width}" y="{baseline + 16}" text-anchor="end">{_number(high)}</text>',
        f'<text x="{left + plot_width / 2}" y="{baseline + 30}" text-anchor="middle">'
        "score (higher = more normal)</text>",
        f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{counts.max()}</text>',
        f'<line class="threshold" x1="{x(threshold):.1f}" y1="{top - 8}" x2="{x(threshold):.1f}" '
        f'y2="{baseline}"/>',
        f'<text x="{x(threshold):.1f}" y="{top - 12}" text-anchor="middle">'
        f"threshold {_number(threshold)}</text>",
        "</svg>",
    ]
    return "\n".join(parts)


REPORT_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
svg text { font-size: 12px; fill: #333; }
rect.normal { fill: #4a7fb5; } rect.flagged { fill: #c8453c; }
line.threshold { stroke: #c8453c; stroke-width: 2; stroke-dasharray: 5 3; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 176px; padding: 6px; border: 3px solid #4a7fb5; border-radius: 4px; }
figure.flagged { border-color: #c8453c; }
figure img { width: 160px; height: 160px; object-fit: contain; image-rendering: pixelated; background: #eee; }
figcaption { font-size: 12px; overflow-wrap: anywhere; }
"""


def _report_html(paths, scores, flagged, threshold, model, top):
    order = np.argsort(scores, kind="stable")
    anomalous = order[:top]
    # The normal side never repeats an image already shown as anomalous.
    normal = order[max(top, len(order) - top) :][::-1]

    def figures(indices):
        return "\n".join(
            f'<figure class="{"flagged" if flagged[i] else "normal"}">'
            f'<img src="{_thumbnail(paths[i])}" alt="{html.escape(paths[i])}">'
            f"<figcaption><b>{_number(scores[i])}</b> "
            f'{"anomaly" if flagged[i] else "normal"}<br>{html.escape(paths[i])}</figcaption></figure>'
            for i in indices
        )

    sections = [
        f"<h2>The {len(anomalous)} most anomalous</h2>\n<div class=\"grid\">\n{figures(anomalous)}\n</div>"
    ]
    if len(normal):
        sections.append(
            f"<h2>The {len(normal)} most normal</h2>\n<div class=\"grid\">\n{figures(normal)}\n</div>"
        )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>sklearn-panda report</title>
<style>{REPORT_STYLE}</style>
</head>
<body>
<h1>sklearn-panda report</h1>
<p>Model {html.escape(str(model))}: {len(scores)} images scored, {int(flagged.sum())} flagged as
anomalies (score below the threshold {_number(threshold)}). Scores are the model's
<code>score_samples</code>: higher means more normal.</p>
{_histogram_svg(scores, threshold)}
{chr(10).join(sections)}
</body>
</html>
""".encode("utf-8")


# ---------------------------------------------------------------- commands


def _contamination(text):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a number; got {text!r}") from None


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1; got {text!r}")
    return value


def _size_or_none(text):
    """A side length of at least 1 pixel, or ``"none"`` (that step is skipped)."""
    if text.lower() == "none":
        return None
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1 or 'none'; got {text!r}") from None


def _resize(text):
    """``--resize``: a shorter side, ``HxW`` (both sides), or ``"none"``."""
    height, sep, width = text.lower().partition("x")
    if not sep:
        return _size_or_none(text)
    try:
        return (_positive_int(height), _positive_int(width))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be HxW with whole numbers of at least 1; got {text!r}") from None


def build_parser():
    """The ``sklearn-panda`` argument parser, with its ``fit`` and ``score`` subcommands.

    Returns
    -------
    parser : argparse.ArgumentParser
        The parser that :func:`main` uses; ``parse_args`` gives the chosen
        subcommand in ``command``.

    Examples
    --------
    >>> from sklearn_panda.cli import build_parser
    >>> args = build_parser().parse_args(["score", "--model", "model.pt", "--output", "scores.csv", "images/"])
    >>> args.command, args.model, args.sources
    ('score', 'model.pt', ['images/'])
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="PANDA anomaly detection on folders of images.",
        epilog="Images: folders (searched recursively; hidden files skipped), image files, "
        "or .txt list files (one path a line, relative to the list file's folder).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    factory_help = (
        "a custom backbone, as MODULE:FUNCTION returning a torch nn.Module; the module must "
        "be importable (installed or on PYTHONPATH)"
    )

    fit = commands.add_parser(
        "fit", help="fit on normal images and save the model", description="Fit a PandaDetector "
        "on normal images and save it (sklearn_panda.save: no pickle)."
    )
    fit.add_argument("sources", nargs="+", metavar="IMAGES", help="folders, image files or .txt list files")
    fit.add_argument("--model", required=True, help="where to save the model (.pt)")
    backbone = fit.add_mutually_exclusive_group()
    backbone.add_argument(
        "--backbone", default="efficientnet_lite0",
        help="a torchvision classifier's name (resnet152, convnext_tiny, vit_b_16, ...) or "
        "efficientnet_lite0 (default)",
    )
    backbone.add_argument("--backbone-factory", metavar="MODULE:FUNCTION", help=factory_help)
    fit.add_argument(
        "--weights", help="'imagenet' (default for a named backbone), a torchvision weights name, "
        "a state-dict file, or 'none' (random for a named backbone; a factory keeps its own weights)"
    )
    fit.add_argument(
        "--stage-ends", nargs="+", metavar="NODE",
        help="the nodes or modules that end each stage (default: the family's; needed for a "
        "factory that is not a torchvision classifier)",
    )
    fit.add_argument("--feature-node", metavar="NODE", help="the node that gives the features (default: "
                     "the input of the classifier)")
    fit.add_argument("--n-steps", type=int, help="adaptation steps (default: PandaDetector's)")
    fit.add_argument(
        "--resize", type=_resize, default=argparse.SUPPRESS,
        help="resize the shorter side to this, or to HxW, or 'none' (default: the backbone's recipe; "
        "256 as in the paper, 224x224 for efficientnet_lite0)",
    )
    fit.add_argument(
        "--crop-size", type=_size_or_none, default=argparse.SUPPRESS,
        help="then centre-crop this, or 'none' (default: the backbone's recipe; 224 as in the paper, "
        "none for efficientnet_lite0)",
    )
    fit.add_argument(
        "--contamination", type=_contamination,
        help="'auto' (default; flags about 1%% of normal images) or the fraction of training images to flag",
    )
    fit.add_argument("--random-state", type=int, help="seed for reproducible results")
    fit.add_argument("--device", help="'auto' (default), 'cpu', 'cuda', ...")
    fit.add_argument("--verbose", "-v", action="count", default=0, help="show progress bars")
    fit.set_defaults(run=_fit)

    score = commands.add_parser(
        "score", help="score images with a saved model", description="Score images with a saved "
        "model; write a CSV (path, score, label) sorted from the most anomalous to the most normal."
    )
    score.add_argument("sources", nargs="+", metavar="IMAGES", help="folders, image files or .txt list files")
    score.add_argument("--model", required=True, help="a model file written by 'fit' or sklearn_panda.save")
    score.add_argument("--output", required=True, help="the CSV to write")
    score.add_argument(
        "--report", help="also write a self-contained HTML page: the most anomalous and most normal "
        "images, and a histogram of the scores with the threshold"
    )
    score.add_argument(
        "--top", type=_positive_int, default=8, help="images shown on each side of the report (default 8)"
    )
    score.add_argument(
        "--backbone-factory", metavar="MODULE:FUNCTION",
        help="the factory the model was fitted with, when it was fitted with one",
    )
    score.add_argument("--device", help="where to run (default: where it was fitted, else the CPU)")
    score.set_defaults(run=_score)
    return parser


def _detector_from_args(args):
    from ._detector import PandaDetector

    params = {"verbose": args.verbose}
    if args.backbone_factory is not None:
        params["backbone"] = import_factory(args.backbone_factory)
        # A factory brings its own weights, if any; "imagenet" means nothing for it.
        params["weights"] = None
    else:
        params["backbone"] = args.backbone
    if args.weights is not None:
        params["weights"] = None if args.weights.lower() == "none" else args.weights
    options = {
        "n_steps": args.n_steps,
        "stage_ends": args.stage_ends,
        "feature_node": args.feature_node,
        "contamination": args.contamination,
        "random_state": args.random_state,
        "device": args.device,
    }
    # Options not given keep PandaDetector's defaults, so the two never drift apart.
    params.update({key: value for key, value in options.items() if value is not None})
    # For these, None ("none": skip the step) is a value of its own; not given, they are absent.
    params.update({key: getattr(args, key) for key in ("resize", "crop_size") if hasattr(args, key)})
    return PandaDetector(**params)


def _fit(args):
    from ._persistence import save

    _check_destination(args.model, "--model")
    paths = collect_images(args.sources)
    detector = _detector_from_args(args).fit(paths)
    save(detector, args.model)
    n_flagged = int(np.sum(detector.training_scores_ < detector.offset_))
    print(
        f"Fitted on {len(paths)} images ({args.backbone_factory or args.backbone}, "
        f"{detector.recipe_['n_steps']} steps); threshold {_number(detector.offset_)}, below which "
        f"{n_flagged} training images fall (leave-one-out)."
    )
    print(f"Model saved to {args.model}")


def _score(args):
    _check_destination(args.output, "--output")
    if args.report is not None:
        _check_destination(args.report, "--report")
    paths = collect_images(args.sources)
    factory = None if args.backbone_factory is None else import_factory(args.backbone_factory)
    estimator = _load_model(args.model, factory, args.device)
    scores = np.asarray(estimator.score_samples(paths), dtype=float)
    threshold = float(estimator.offset_)
    # The same rule as predict: decision_function = score - offset_ < 0.
    flagged = scores - threshold < 0
    order = np.argsort(scores, kind="stable")
    outputs = {args.output: _scores_csv([paths[i] for i in order], scores[order], flagged[order])}
    if args.report is not None:
        outputs[args.report] = _report_html(paths, scores, flagged, threshold, args.model, args.top)
    _write_files(outputs)
    print(
        f"Scored {len(paths)} images: {int(flagged.sum())} flagged as anomalies "
        f"(score below the threshold {_number(threshold)})."
    )
    print(f"Scores written to {args.output}")
    if args.report is not None:
        print(f"Report written to {args.report}")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROG}: warning: {message}", file=sys.stderr if file is None else file)


def main(argv=None):
    """Run the ``sklearn-panda`` command line.

    Parameters
    ----------
    argv : list of str, default=None
        The arguments after the program name; ``None`` reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success; 2 for bad usage or bad input (missing paths, unreadable
        images, a file that is not a compatible model), after a one-line
        ``sklearn-panda: error: ...`` on stderr.

    Examples
    --------
    Fit on a folder of normal images, then score new ones with a report::

        sklearn-panda fit data/good --model model.pt
        sklearn-panda score data/new --model model.pt --output scores.csv --report report.html
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        return stop.code
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            args.run(args)
        except (OSError, ValueError, ImportError) as error:
            message = " ".join(str(error).split()) or type(error).__name__
            print(f"{PROG}: error: {message}", file=sys.stderr)
            return 2
    return 0
