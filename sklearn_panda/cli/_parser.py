"""The ``sklearn-panda`` options: ``fit``, ``score`` and ``update``, and the parsers of option values."""

import argparse

PROG = "sklearn-panda"

# fit's backbone unless --backbone or --config says otherwise: one that works offline (extra lite).
DEFAULT_BACKBONE = "efficientnet_lite0"


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
    """The ``sklearn-panda`` argument parser, with its ``fit``, ``score`` and ``update`` subcommands.

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
        "(--local: a PandaPatchDetector; --config: any of them with any parameters) on normal images "
        "and save it (sklearn_panda.save: no pickle)."
    )
    fit.add_argument("sources", nargs="+", metavar="IMAGES", help="folders, image files or .txt list files")
    fit.add_argument("--model", required=True, help="where to save the model (.pt)")
    fit.add_argument(
        "--config", metavar="FILE",
        help="a JSON or TOML (.toml) file naming the detector (PandaDetector, PandaSES, PandaPatchDetector) "
        "and any of its parameters, and optionally a scorer with its own; the options below override it",
    )
    backbone = fit.add_mutually_exclusive_group()
    backbone.add_argument(
        "--backbone",
        help="a torchvision classifier's name (resnet152, convnext_tiny, vit_b_16, ...) or "
        "efficientnet_lite0 (default)",
    )
    backbone.add_argument("--backbone-factory", metavar="MODULE:FUNCTION", help=factory_help)
    fit.add_argument(
        "--weights", help="'imagenet' (default for a named backbone), a torchvision weights name, "
        "a state-dict file, or 'none' (random for a named backbone; a factory keeps its own weights)"
    )
    fit.add_argument(
        "--stage-ends", nargs="+", metavar="NODE", default=argparse.SUPPRESS,
        help="the nodes or modules that end each stage (default: the family's; needed for a "
        "factory that is not a torchvision classifier)",
    )
    fit.add_argument("--feature-node", metavar="NODE", default=argparse.SUPPRESS,
                     help="the node that gives the features (default: "
                     "the input of the classifier)")
    fit.add_argument(
        "--local", action="store_true",
        help="fit a PandaPatchDetector instead: local defects on known objects (a scratch on a part), "
        "with an anomaly map per image (score --maps); each image at its own size by default",
    )
    fit.add_argument("--coreset-ratio", type=float, default=argparse.SUPPRESS,
                     help="--local: the share of patches kept in the memory bank")
    fit.add_argument(
        "--layers", nargs="+", metavar="NODE", default=argparse.SUPPRESS,
        help="--local: the two (or more) nodes whose feature maps make the patches (default: the "
        "family's stage ends at strides 8 and 16)",
    )
    fit.add_argument("--n-steps", type=int, default=argparse.SUPPRESS,
                     help="adaptation steps (default: PandaDetector's)")
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
        "--regions", metavar="FILE",
        help="a local model (fit --local) only: also write a CSV of the defect regions, one row a region "
        "(path, region, top, left, bottom, right, area, peak, peak_row, peak_col), the 8-connected parts "
        "of each map above the model's pixel threshold, most anomalous first",
    )
    score.add_argument(
        "--top", type=_positive_int, default=8, help="images shown on each side of the report (default 8)"
    )
    score.add_argument(
        "--backbone-factory", metavar="MODULE:FUNCTION",
        help="the factory the model was fitted with, when it was fitted with one",
    )
    score.add_argument("--device", help="where to run (default: where it was fitted, else the CPU)")

    update = commands.add_parser(
        "update", help="add normal images to a local model", description="Add newly approved normal "
        "images to a local model (fit --local, a PandaPatchDetector) without fitting it again "
        "(PandaPatchDetector.partial_fit): their patches join the memory bank by the same coreset rule and "
        "the thresholds are measured again. The model file is replaced only once the update has succeeded."
    )
    update.add_argument("sources", nargs="+", metavar="IMAGES", help="folders, image files or .txt list files")
    update.add_argument("--model", required=True, help="a local model file written by 'fit --local'")
    update.add_argument("--output", metavar="FILE", help="write the updated model here instead of over --model")
    update.add_argument(
        "--backbone-factory", metavar="MODULE:FUNCTION",
        help="the factory the model was fitted with, when it was fitted with one",
    )
    update.add_argument("--device", help="where to run (default: where it was fitted, else the CPU)")
    update.add_argument("--verbose", "-v", action="count", default=0, help="show progress bars")
    return parser
