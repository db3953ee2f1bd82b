"""Command line for folders of images: ``sklearn-panda fit`` and ``sklearn-panda score``.

``fit`` adapts a :class:`~sklearn_panda.PandaDetector` to a folder of normal
images (``--local``: fits a :class:`~sklearn_panda.PandaPatchDetector`, for
defects on known objects) and saves it with :func:`~sklearn_panda.save`;
``score`` loads a saved model with :func:`~sklearn_panda.load`, scores images
and writes a CSV sorted from the most anomalous image to the most normal one,
optionally a self-contained HTML report and, for a local model, a heat-map
overlay PNG per image (``--maps``). The same is available as
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
import csv
import heapq
import importlib
import io
import os
import pathlib
import pickle
import shutil
import sys
import warnings
import zipfile

import numpy as np

from ._image_io import collect_images, write_files
from ._report import heat_overlay, number, open_rgb, report_html

PROG = "sklearn-panda"


# ------------------------------------------------------------------ inputs

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


def _scores_csv(paths, scores, flagged, map_files=None):
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "score", "label"] + (["map"] if map_files is not None else []))
    for index, (path, score, is_flagged) in enumerate(zip(paths, scores, flagged)):
        row = [path, repr(float(score)), "anomaly" if is_flagged else "normal"]
        writer.writerow(row + ([map_files[index]] if map_files is not None else []))
    return text.getvalue().encode("utf-8")


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
    fit.add_argument(
        "--local", action="store_true",
        help="fit a PandaPatchDetector instead: local defects on known objects (a scratch on a part), "
        "with an anomaly map per image (score --maps); each image at its own size by default",
    )
    fit.add_argument("--coreset-ratio", type=float, help="--local: the share of patches kept in the memory bank")
    fit.add_argument(
        "--layers", nargs="+", metavar="NODE",
        help="--local: the two (or more) nodes whose feature maps make the patches (default: the "
        "family's stage ends at strides 8 and 16)",
    )
    fit.add_argument("--n-steps", type=int, help="adaptation steps (default: PandaDetector's)")
    fit.add_argument(
        "--resize", type=_resize, default=argparse.SUPPRESS,
        help="resize the shorter side to this, or to HxW, or 'none' (default: the backbone's recipe; "
        "256 as in the paper, 224x224 for efficientnet_lite0; with --local, each image's own size "
        "within 224 to 1024 pixels)",
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
        "--maps", metavar="FOLDER",
        help="a local model (fit --local) only: write each image's anomaly map over it as a PNG "
        "(blue normal, red anomalous) into this folder; the CSV gets a map column",
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


IMAGE_LEVEL_OPTIONS = ("n_steps", "stage_ends", "feature_node", "crop_size")
LOCAL_OPTIONS = ("coreset_ratio", "layers")


def _detector_from_args(args):
    from ._detector import PandaDetector
    from ._patch import PandaPatchDetector

    other_kinds_options = LOCAL_OPTIONS if not args.local else IMAGE_LEVEL_OPTIONS
    wrong = [f"--{name.replace('_', '-')}" for name in other_kinds_options if getattr(args, name, None) is not None]
    if wrong:
        kind = "a local model (--local)" if args.local else "an image-level model (without --local)"
        raise ValueError(f"{', '.join(wrong)} cannot be used for {kind}.")
    params = {"verbose": args.verbose}
    if args.backbone_factory is not None:
        params["backbone"] = import_factory(args.backbone_factory)
        # A factory brings its own weights, if any; "imagenet" means nothing for it.
        params["weights"] = None
    else:
        params["backbone"] = args.backbone
    if args.weights is not None:
        params["weights"] = None if args.weights.lower() == "none" else args.weights
    names = ("contamination", "random_state", "device") + (LOCAL_OPTIONS if args.local else IMAGE_LEVEL_OPTIONS[:3])
    # Options not given keep the estimator's defaults, so the two never drift apart.
    params.update({name: getattr(args, name) for name in names if getattr(args, name) is not None})
    # For these, None ("none": skip the step) is a value of its own; not given, they are absent.
    params.update({key: getattr(args, key) for key in ("resize", "crop_size") if hasattr(args, key)})
    return (PandaPatchDetector if args.local else PandaDetector)(**params)


def _fit(args):
    from ._persistence import save

    _check_destination(args.model, "--model")
    paths = collect_images(args.sources)
    detector = _detector_from_args(args).fit(paths)
    save(detector, args.model)
    n_flagged = int(np.sum(detector.training_scores_ < detector.offset_))
    what = (
        f"layers {', '.join(detector.layers_)}, a memory bank of {len(detector.memory_bank_)} patches"
        if args.local
        else f"{detector.recipe_['n_steps']} steps"
    )
    print(
        f"Fitted on {len(paths)} images ({args.backbone_factory or args.backbone}, {what}); threshold "
        f"{number(detector.offset_)}, below which {n_flagged} training images fall (leave-one-out)."
    )
    print(f"Model saved to {args.model}")


# Images scored at once by a local model: their maps are held in memory together.
MAP_CHUNK = 32


def _map_file(index, path):
    return f"{index:05d}-{pathlib.Path(path).stem}.png"


def _score_with_maps(estimator, paths, maps_folder, top):
    """Scores of a local model, its maps written to ``maps_folder`` (when given) as they
    come, and the overlays of the ``top`` most anomalous images for the report."""
    threshold = -float(estimator.offset_)
    if not threshold > 0:
        threshold = None
    scores, kept = np.empty(len(paths)), []
    for start in range(0, len(paths), MAP_CHUNK):
        chunk = paths[start : start + MAP_CHUNK]
        maps, chunk_scores = estimator.anomaly_maps(chunk, return_scores=True)
        scores[start : start + len(chunk)] = chunk_scores
        scale = threshold if threshold is not None else max(float(np.max(m)) for m in maps) / 2 or 1.0
        for offset, (path, anomaly_map) in enumerate(zip(chunk, maps)):
            index = start + offset
            if maps_folder is None and len(kept) >= top and -chunk_scores[offset] <= kept[0][0]:
                continue
            overlay = heat_overlay(open_rgb(path), anomaly_map, scale)
            if maps_folder is not None:
                overlay.save(os.path.join(maps_folder, _map_file(index, path)))
            # The report's overlays: the most anomalous so far, smallest first (a heap).
            heapq.heappush(kept, (-chunk_scores[offset], index, overlay))
            if len(kept) > top:
                heapq.heappop(kept)
    return scores, {index: overlay for _, index, overlay in kept}


def _check_readable(paths):
    """Stop before the work, not after it, at an image file that cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ValueError(f"Could not read image file {path}: {error}") from None


def _score(args):
    _check_destination(args.output, "--output")
    if args.report is not None:
        _check_destination(args.report, "--report")
        if os.path.abspath(args.report) == os.path.abspath(args.output):
            raise ValueError(f"--report and --output name the same file, {args.output}; give two files.")
    if args.maps is not None and not os.path.isdir(args.maps):
        if os.path.exists(args.maps):
            raise NotADirectoryError(f"--maps {args.maps} is a file; give a folder.")
        _check_destination(args.maps, "--maps")  # made at the end; its parent must exist
    paths = collect_images(args.sources)
    _check_readable(paths)
    factory = None if args.backbone_factory is None else import_factory(args.backbone_factory)
    estimator = _load_model(args.model, factory, args.device)
    if not hasattr(estimator, "score_samples"):
        raise ValueError(
            f"{args.model} holds a {type(estimator).__name__}, which gives features, not scores; "
            "score needs a detector (fit writes one)."
        )
    local = hasattr(estimator, "anomaly_maps")
    if args.maps is not None and not local:
        raise ValueError(
            f"--maps needs a local model (fit --local, a PandaPatchDetector); {args.model} holds a "
            f"{type(estimator).__name__}, which scores whole images and gives no maps."
        )
    overlays, staging = {}, None
    try:
        if local:
            if args.maps is not None:
                os.makedirs(args.maps, exist_ok=True)
                staging = os.path.join(args.maps, f".{PROG}-{os.getpid()}.tmp")
                os.mkdir(staging)
            top = args.top if args.report is not None else 0
            scores, overlays = _score_with_maps(estimator, paths, staging, top)
        else:
            scores = np.asarray(estimator.score_samples(paths), dtype=float)
        threshold = float(estimator.offset_)
        # The same rule as predict: decision_function = score - offset_ < 0.
        flagged = scores - threshold < 0
        order = np.argsort(scores, kind="stable")
        map_files = None
        if args.maps is not None:
            map_files = [os.path.join(args.maps, _map_file(i, paths[i])) for i in order]
        outputs = {args.output: _scores_csv([paths[i] for i in order], scores[order], flagged[order], map_files)}
        if args.report is not None:
            outputs[args.report] = report_html(paths, scores, flagged, threshold, args.model, args.top, overlays)
        write_files(outputs)
        if staging is not None:
            for name in os.listdir(staging):
                os.replace(os.path.join(staging, name), os.path.join(args.maps, name))
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    print(
        f"Scored {len(paths)} images: {int(flagged.sum())} flagged as anomalies "
        f"(score below the threshold {number(threshold)})."
    )
    print(f"Scores written to {args.output}")
    if args.maps is not None:
        print(f"Maps written to {args.maps}")
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
        # Out of memory (torch's is a RuntimeError), a wrong type in a model file or option: one line too.
        except (OSError, ValueError, ImportError, TypeError, RuntimeError, MemoryError) as error:
            message = " ".join(str(error).split()) or type(error).__name__
            print(f"{PROG}: error: {message}", file=sys.stderr)
            return 2
    return 0
