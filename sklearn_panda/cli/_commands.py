"""The ``fit``, ``score`` and ``update`` commands, run on parsed options."""

import contextlib
import os
import shutil
import tempfile

import numpy as np

from .._io.images import collect_images, write_files
from .._io.report import number, report_html
from ._config import detector_parameters, read_config
from ._inputs import check_distinct, check_readable, import_factory, load_model
from ._outputs import check_destination, check_spares_inputs, map_file, regions_csv, score_with_maps, scores_csv
from ._parser import DEFAULT_BACKBONE, PROG

# Options of one kind of model only: given for the other kind, they are an error, whatever
# their value. They, and --resize, are absent from the parsed options unless given
# (argparse.SUPPRESS), for None ("none": skip the step) is a value of its own.
IMAGE_LEVEL_OPTIONS = ("n_steps", "stage_ends", "feature_node", "crop_size")
LOCAL_OPTIONS = ("coreset_ratio", "layers")
# Options of both kinds; not given, they are None.
COMMON_OPTIONS = ("contamination", "random_state", "device")


@contextlib.contextmanager
def progress_bars(detector, verbose):
    """``detector`` with ``verbose`` set for this run only (``--verbose`` given), as it was afterwards
    (with the features a fit nests in it, which copy it): a command's progress bars are not a
    setting of the model it saves."""
    if not verbose:
        yield
        return
    kept = detector.get_params()["verbose"]
    detector.set_params(verbose=verbose)
    try:
        yield
    finally:
        detector.set_params(verbose=kept)
        nested = getattr(detector, "features_", None)
        if nested is not None:
            nested.set_params(verbose=kept)


def detector_from_args(args):
    """The detector ``fit`` fits: ``--config``'s (or the default) with the options given on top."""
    from .._estimators.detector import PandaDetector
    from .._estimators.patch import PandaPatchDetector

    if args.config is not None:
        cls, params = detector_parameters(read_config(args.config), args.config)
        if args.local and cls is not PandaPatchDetector:
            raise ValueError(f"--local fits a PandaPatchDetector; --config {args.config} names a {cls.__name__}.")
    else:
        cls, params = (PandaPatchDetector if args.local else PandaDetector), {}
    local = cls is PandaPatchDetector
    own_options, other_kinds_options = LOCAL_OPTIONS, IMAGE_LEVEL_OPTIONS
    if not local:
        own_options, other_kinds_options = other_kinds_options, own_options
    wrong = [f"--{name.replace('_', '-')}" for name in other_kinds_options if hasattr(args, name)]
    if wrong:
        kind = "a local model (--local)" if local else "an image-level model (without --local)"
        raise ValueError(f"{', '.join(wrong)} cannot be used for {kind}.")
    if args.backbone_factory is not None:
        params["backbone"] = import_factory(args.backbone_factory)
        # A factory brings its own weights, if any; "imagenet" means nothing for it.
        params["weights"] = None
    elif args.backbone is not None:
        params["backbone"] = args.backbone
    else:
        # The command line's default works offline (extra lite); the estimators' is the paper's.
        params.setdefault("backbone", DEFAULT_BACKBONE)
    if args.weights is not None:
        params["weights"] = None if args.weights.lower() == "none" else args.weights
    # Options not given keep the config's values or the estimator's defaults.
    params.update({name: getattr(args, name) for name in COMMON_OPTIONS if getattr(args, name) is not None})
    params.update({name: getattr(args, name) for name in (*own_options, "resize") if hasattr(args, name)})
    return cls(**params)


def images_and_model(args):
    """The images named by ``args.sources`` (all readable) and the model ``args.model``, loaded."""
    paths = collect_images(args.sources)
    check_readable(paths)
    factory = None if args.backbone_factory is None else import_factory(args.backbone_factory)
    return paths, load_model(args.model, factory, args.device)


def fit_command(args):
    from .._io.persistence import save

    check_destination(args.model, "--model")
    # The options are checked before the images are looked for: a wrong one fails at once.
    detector = detector_from_args(args)
    paths = collect_images(args.sources)
    check_distinct(paths, "fit")
    check_spares_inputs([("--model", args.model)], paths)
    with progress_bars(detector, args.verbose):
        detector.fit(paths)
    save(detector, args.model)
    n_flagged = int(np.sum(detector.training_scores_ < detector.offset_))
    what = (
        f"layers {', '.join(detector.layers_)}, a memory bank of {len(detector.memory_bank_)} patches"
        if hasattr(detector, "memory_bank_")
        else f"{detector.recipe_['n_steps']} steps"
    )
    backbone = args.backbone_factory or detector.backbone
    # A local model scores at most CALIBRATION_IMAGES of its training images leave-one-out.
    n_scored = len(detector.training_scores_)
    scored = "training images" if n_scored == len(paths) else f"of the {n_scored} training images scored"
    print(
        f"Fitted a {type(detector).__name__} on {len(paths)} images ({backbone}, {what}); threshold "
        f"{number(detector.offset_)}, below which {n_flagged} {scored} fall (leave-one-out)."
    )
    note = few_images_note(detector)
    if note:
        print(note)
    print(f"Model saved to {args.model}")


def few_images_note(detector):
    """A line saying where the thresholds rest on the one or two most unusual training images, or ``None``.

    A share ``c`` of the scored training images is resolved only with at least ``1 / c`` of them: with
    fewer, ``offset_`` (and a local model's ``pixel_offset_``) sit at the most unusual image's score,
    and new images are flagged (and regions drawn) more rarely than ``c`` says.
    """
    from ..scorers._contract import AUTO_CONTAMINATION

    n_scored = len(detector.training_scores_)
    options = [("contamination", "--contamination"), ("pixel_contamination", "a config file's pixel_contamination")]
    rates = {
        name: (AUTO_CONTAMINATION if getattr(detector, name) == "auto" else getattr(detector, name), how)
        for name, how in options
        if hasattr(detector, name)
    }
    short = {name: value for name, value in rates.items() if n_scored * value[0] < 1}
    if not short:
        return None
    needed = int(np.ceil(1 / min(rate for rate, _ in short.values())))
    names = " and ".join(f"{name} {rate:g}" for name, (rate, _) in short.items())
    hows = " or ".join(how for _, how in short.values())
    return (
        f"Note: with {n_scored} training images scored, {names} rests on the most unusual of them, so new "
        f"images are flagged{' and regions drawn' if 'pixel_contamination' in short else ''} more rarely than "
        f"that share: fit on at least {needed} normal images, or raise {hows}."
    )


def score_command(args):
    check_destination(args.output, "--output")
    files = {"--output": args.output}
    for option, path in (("--report", args.report), ("--regions", args.regions)):
        if path is None:
            continue
        check_destination(path, option)
        for other, taken in files.items():
            if os.path.abspath(path) == os.path.abspath(taken):
                raise ValueError(f"{option} and {other} name the same file, {path}; give two files.")
        files[option] = path
    if args.maps is not None and not os.path.isdir(args.maps):
        if os.path.exists(args.maps):
            raise NotADirectoryError(f"--maps {args.maps} is a file; give a folder.")
        check_destination(args.maps, "--maps")  # made at the end, once there is something to write
    paths, estimator = images_and_model(args)
    written = list(files.items())
    if args.maps is not None:
        written += [("--maps", os.path.join(args.maps, map_file(path))) for path in paths]
    check_spares_inputs(written, paths, model=args.model)
    if not hasattr(estimator, "score_samples"):
        raise ValueError(
            f"{args.model} holds a {type(estimator).__name__}, which gives features, not scores; "
            "score needs a detector (fit writes one)."
        )
    local = hasattr(estimator, "anomaly_maps")
    for option, value in (("--maps", args.maps), ("--regions", args.regions)):
        if value is not None and not local:
            raise ValueError(
                f"{option} needs a local model (fit --local, a PandaPatchDetector); {args.model} holds a "
                f"{type(estimator).__name__}, which scores whole images and gives no maps."
            )
    if args.regions is not None and not hasattr(estimator, "pixel_offset_"):
        raise ValueError(
            f"--regions needs the model's pixel threshold, which {args.model} was saved without (an older "
            "version); fit it again."
        )
    figures, map_threshold, staging = {}, None, None
    try:
        if args.maps is not None:
            # The maps are written beside --maps and moved into it at the end: a failure
            # leaves no folder behind (nor any map in a folder that was there).
            beside = os.path.dirname(os.path.abspath(args.maps))
            staging = tempfile.mkdtemp(prefix=f".{PROG}-", suffix=".tmp", dir=beside)
        regions = [] if args.regions is not None else None
        if local and (args.maps is not None or args.report is not None or regions is not None):
            top = args.top if args.report is not None else 0
            scores, figures, map_threshold = score_with_maps(estimator, paths, staging, top, regions)
        else:
            scores = np.asarray(estimator.score_samples(paths), dtype=float)
        threshold = float(estimator.offset_)
        # The same rule as predict: decision_function = score - offset_ < 0.
        flagged = scores - threshold < 0
        order = np.argsort(scores, kind="stable")
        map_files = None
        if args.maps is not None:
            map_files = [os.path.join(args.maps, map_file(paths[i])) for i in order]
        outputs = {args.output: scores_csv([paths[i] for i in order], scores[order], flagged[order], map_files)}
        if args.report is not None:
            outputs[args.report] = report_html(
                paths, scores, flagged, threshold, args.model, args.top, figures, map_threshold
            )
        if regions is not None:
            outputs[args.regions] = regions_csv(paths, regions)
        write_files(outputs)
        if staging is not None:
            os.makedirs(args.maps, exist_ok=True)
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
    if args.regions is not None:
        print(f"{len(regions)} defect regions written to {args.regions}")


def update_command(args):
    from .._io.persistence import save

    destination, option = (args.model, "--model") if args.output is None else (args.output, "--output")
    check_destination(destination, option)
    paths, detector = images_and_model(args)
    check_distinct(paths, "update")
    # Writing the model over itself is what update does by default; over an image, never.
    check_spares_inputs([(option, destination)], paths)
    if not hasattr(detector, "partial_fit"):
        raise ValueError(
            f"update needs a local model (fit --local, a PandaPatchDetector); {args.model} holds a "
            f"{type(detector).__name__}: fit it again on all the normal images instead."
        )
    before = (getattr(detector, "n_samples_seen_", 0), len(detector.memory_bank_), detector.offset_, detector.pixel_offset_)
    with progress_bars(detector, args.verbose):
        # What the model makes of the approved images before they join it: an image it flags may not
        # belong (another product, a defect missed), and once added it moves both thresholds.
        flagged = [path for path, label in zip(paths, detector.predict(paths)) if label == -1]
        detector.partial_fit(paths)
    after = (detector.n_samples_seen_, len(detector.memory_bank_), detector.offset_, detector.pixel_offset_)
    save(detector, destination)
    print(
        f"Added {len(paths)} images: {before[0]} -> {after[0]} training images, a memory bank of {before[1]} -> "
        f"{after[1]} patches, threshold {number(before[2])} -> {number(after[2])}, pixel threshold "
        f"{number(before[3])} -> {number(after[3])}."
    )
    if flagged:
        print(
            f"Note: the model flagged {len(flagged)} of the {len(paths)} added images as anomalies before adding "
            f"them (first: {flagged[0]}); they are now normal to it. If any is not a good image, fit again "
            "without it (or, where update wrote to --output, update the previous model without it)."
        )
    note = few_images_note(detector)
    if note:
        print(note)
    print(f"Model saved to {destination}")
