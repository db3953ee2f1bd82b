"""Deploy a fitted detector on CPUs: the whole scoring as one ONNX file, run by ONNX Runtime or OpenVINO.

:func:`export_onnx` writes a fitted :class:`~sklearn_panda.PandaDetector` to a
single ONNX file that maps a batch of uint8 images of one fixed size to
``score_samples``: the preprocessing (torch's exact uint8 resize, the centre
crop, ImageNet normalisation), the adapted network, the feature normalisation
and the scorer's distance (a nearest-neighbour search against its stored
gallery, or the Mahalanobis distance of a Gaussian). The file's metadata state the input (name, layout, dtype, size) and ``offset_``, so
``decision_function`` and ``predict`` follow. :class:`OnnxDetector` scores
images with such a file; neither this package nor torch is needed to run it::

    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession("detector.onnx")
    meta = session.get_modelmeta().custom_metadata_map
    # images: uint8, shape (n, input_height, input_width, input_channels)
    scores = session.run(None, {meta["input_name"]: images})[0]
    labels = np.where(scores - float(meta["offset"]) < 0, -1, 1)   # +1 inlier, -1 outlier

Galleries: the file holds the scorer's gallery (kNN: every training
feature) beside the network, and one ONNX file cannot exceed 2 GiB, so a
kNN gallery of more than about ``2**31 / (4 * n_features)`` rows minus the
network's size (about 260 000 training images at 2048 features) is refused
with an error; a :class:`~sklearn_panda.KMeansScorer` keeps it small. Each
scored batch also holds a ``(batch, n_gallery)`` float32 similarity block.
A :class:`~sklearn_panda.MahalanobisScorer` stores its mean and principal axes
(at most ``n_features`` squared floats) whatever the number of training images;
the file computes its distance in float32, the scorer in float64, so their
scores agree to float32 rounding (within 1e-4 relative).

A fitted :class:`~sklearn_panda.PandaPatchDetector` exports too, for images of
the size it scores them at (the graph holds no resize): the file's outputs are
``score_samples`` and the anomaly maps, and :meth:`OnnxDetector.anomaly_maps`
reads the maps.
"""

import hashlib
import importlib.util
import numbers
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ._estimators.validation import check_input
from ._io.images import write_files
from .scorers._contract import OutlierDecisions

__all__ = ["OnnxDetector", "export_onnx", "onnx_convolutions", "quantize_onnx"]

# The metadata layout; files of any other number are refused.
FORMAT_VERSION = "1"
RUNTIMES = ("onnxruntime", "openvino")


def _scorer_search(scorer):
    """The gallery, number of neighbours and metric that reproduce a fitted gallery scorer's distances.

    Warns where the scorer searches approximately: the exported graph searches
    its gallery exactly, so its scores can differ from the scorer's.
    """
    search = scorer._gallery_search()
    if not search.exact:
        warnings.warn(
            f"The detector's {type(scorer).__name__} searches approximately (algorithm={scorer.algorithm!r}); "
            "the exported file searches the same gallery exactly, so its scores can differ from "
            "score_samples where the approximate search missed a neighbour.",
            UserWarning,
        )
    return search.gallery, search.n_neighbors, search.metric


def _scorer_distance(scorer):
    """The torch module that computes a fitted scorer's distances, and what the metadata say of it.

    A gallery scorer (kNN, k-means, centre) becomes a nearest-neighbour search
    of its gallery; :class:`~sklearn_panda.MahalanobisScorer` its Gaussian.
    """
    from ._engine.onnx_graph import GalleryDistance, GaussianDistance
    from .scorers import MahalanobisScorer

    if isinstance(scorer, MahalanobisScorer):
        distance = GaussianDistance(
            scorer.location_, scorer.components_, scorer.variances_, scorer.residual_variance_
        )
        return distance, {"n_components": str(scorer.n_components_)}, scorer.components_.nbytes
    if getattr(scorer, "_gallery_search", None) is None:
        raise TypeError(
            f"export_onnx exports the scorers KNNScorer, KMeansScorer, CenterScorer and MahalanobisScorer; "
            f"this detector's scorer_ is {type(scorer).__name__}."
        )
    gallery, n_neighbors, metric = _scorer_search(scorer)
    gallery = np.asarray(gallery, dtype=np.float32)
    metadata = {"n_gallery": str(len(gallery)), "n_neighbors": str(n_neighbors), "metric": metric}
    return GalleryDistance(gallery, n_neighbors, metric), metadata, gallery.nbytes


def _check_exportable(detector, image_size):
    from sklearn.utils.validation import check_is_fitted

    from ._estimators.detector import PandaDetector

    # PandaSES scores through its checkpoints, which do not export: it is no PandaDetector.
    if not isinstance(detector, PandaDetector):
        raise TypeError(
            f"export_onnx exports a fitted PandaDetector; got {type(detector).__name__} "
            "(PandaSES and PandaOE are not exportable yet)."
        )
    check_is_fitted(detector)
    if detector.input_spec_.kind == "vectors":
        raise ValueError("export_onnx exports a detector of images; this one was fitted on vectors.")
    if np.shape(image_size) != (2,) or any(int(side) != side or side < 1 for side in image_size):
        raise ValueError(f"image_size must be (height, width) in pixels; got {image_size!r}.")


def _metadata(detector, image_size, channels, scorer_metadata):
    from ._version import __version__

    height, width = image_size
    return {
        "sklearn_panda.format": FORMAT_VERSION,
        "sklearn_panda.version": __version__,
        "estimator": type(detector).__name__,
        "scorer": type(detector.scorer_).__name__,
        "input_name": "images",
        "input_layout": "NHWC",
        "input_dtype": "uint8",
        "input_height": str(height),
        "input_width": str(width),
        "input_channels": str(channels),
        "output": "score_samples",
        "offset": repr(float(detector.offset_)),
        "precision": "float32",
        **scorer_metadata,
    }


def export_onnx(detector, path, *, image_size):
    """Write a fitted detector's scoring to one ONNX file.

    The file maps uint8 images ``(n, height, width, channels)`` (NHWC; the
    channels the detector was fitted on) to ``score_samples``, computed in
    float32 whatever the detector's ``precision``: its scores equal the
    detector's to float32 rounding (the preprocessing is bit-exact; the
    network runs in the runtime's kernels). Other input sizes must be resized
    to ``image_size`` first. :func:`quantize_onnx` makes an int8 version.

    Parameters
    ----------
    detector : PandaDetector or PandaPatchDetector
        Fitted on images. A PandaPatchDetector exports its scores and maps,
        for images it scores at their own size. A PandaDetector with a
        :class:`~sklearn_panda.KNNScorer`,
        :class:`~sklearn_panda.KMeansScorer`, :class:`~sklearn_panda.CenterScorer`
        or :class:`~sklearn_panda.MahalanobisScorer` (``scorer="knn"``,
        ``"kmeans"``, ``"center"``, ``"mahalanobis"``). A kNN search is
        exported as the exact search, whatever the scorer's ``algorithm``.
    path : str or path-like
        Where to write the file.
    image_size : tuple of int
        ``(height, width)`` of the images the file takes.

    Returns
    -------
    path : pathlib.Path
        The written file, ``path``.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from torchvision.models.resnet import BasicBlock, ResNet
    >>> from sklearn_panda import PandaDetector
    >>> from sklearn_panda.deploy import OnnxDetector, export_onnx
    >>> def tiny_resnet():
    ...     return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    >>> images = np.random.default_rng(0).integers(0, 256, (12, 20, 20, 3), dtype=np.uint8)
    >>> det = PandaDetector(backbone=tiny_resnet, weights=None, resize=32, crop_size=32,
    ...                     n_steps=2, random_state=0).fit(images)
    >>> path = export_onnx(det, tempfile.mkdtemp() + "/det.onnx", image_size=(20, 20))
    >>> onnx_det = OnnxDetector(path)
    >>> onnx_det.input_shape_, onnx_det.metadata_["input_layout"]
    ((20, 20, 3), 'NHWC')
    >>> bool(np.allclose(onnx_det.score_samples(images[:3]), det.score_samples(images[:3]), atol=1e-5))
    True
    >>> onnx_det.predict(images[:3]).tolist() == det.predict(images[:3]).tolist()
    True
    """
    if importlib.util.find_spec("onnx") is None:  # torch's exporter needs it: said before any work
        raise ImportError("export_onnx needs ONNX: pip install 'sklearn-panda[onnx]'.")
    from ._engine.onnx_graph import ONNX_FILE_LIMIT_BYTES, ScoringGraph, export_scoring_graph
    from ._estimators.patch import PandaPatchDetector

    if isinstance(detector, PandaPatchDetector):
        return _export_patch_detector(detector, path, image_size)
    _check_exportable(detector, image_size)
    image_size = (int(image_size[0]), int(image_size[1]))
    channels = detector.input_spec_.channels
    distance, scorer_metadata, scorer_bytes = _scorer_distance(detector.scorer_)
    network_bytes = sum(t.numel() * t.element_size() for t in detector.net_.state_dict().values())
    if scorer_bytes + network_bytes > ONNX_FILE_LIMIT_BYTES * 0.95:
        raise ValueError(
            f"The scorer's {type(detector.scorer_).__name__} state ({scorer_bytes / 2**30:.2f} GiB of float32) "
            "and the network do not fit in one ONNX file (at most 2 GiB); fit the detector with "
            "scorer='kmeans' or 'mahalanobis', or on fewer training images."
        )
    net = _cpu_float32_copy(detector.net_)
    graph = ScoringGraph(
        net,
        image_size=image_size,
        channels=channels,
        **detector._fitted_preprocessing(),
        normalize_features=detector._fitted_value("normalize_features"),
        average_mirror=detector._fitted_value("average_mirror"),
        distance=distance,
    )
    model = export_scoring_graph(graph, image_size, channels)
    _set_metadata(model, _metadata(detector, image_size, channels, scorer_metadata))
    return _write_model(model, path)


def _export_patch_detector(detector, path, image_size):
    """:func:`export_onnx` of a :class:`~sklearn_panda.PandaPatchDetector`: scores and maps in one graph."""
    from sklearn.utils.validation import check_is_fitted

    from ._engine.onnx_graph import ONNX_FILE_LIMIT_BYTES, PatchScoringGraph, export_scoring_graph
    from ._engine.patch_features import working_size

    check_is_fitted(detector)
    if detector.input_spec_.kind == "vectors":
        raise ValueError("export_onnx exports a detector of images; this one was fitted on vectors.")
    if np.shape(image_size) != (2,) or any(int(side) != side or side < 1 for side in image_size):
        raise ValueError(f"image_size must be (height, width) in pixels; got {image_size!r}.")
    image_size = (int(image_size[0]), int(image_size[1]))
    spec = detector._spec()
    scored = working_size(*image_size, spec["resize"])
    if scored != image_size:
        raise ValueError(
            f"This patch detector scores {image_size[0]} x {image_size[1]} images at {scored[0]} x {scored[1]} "
            f"(resize={spec['resize']!r}); the exported graph holds no resize. Export it for images of "
            f"the scored size, image_size={scored}, and resize the images to it first."
        )
    for scorer in (detector.scorer_, getattr(detector, "fine_scorer_", None)):
        if scorer is not None:
            _scorer_search(scorer)  # warns where the detector searches approximately
    bank = np.asarray(detector.memory_bank_, dtype=np.float32)
    if bank.nbytes > ONNX_FILE_LIMIT_BYTES * 0.9:
        raise ValueError(f"The memory bank ({bank.nbytes / 2**30:.2f} GiB) does not fit in one ONNX file (2 GiB).")
    channels = detector.input_spec_.channels
    graph = PatchScoringGraph(
        _cpu_float32_copy(detector.net_),
        channels=channels,
        spec=spec,
        bank=bank,
        n_neighbors=detector.scorer_.n_neighbors_,
        fine_bank=getattr(detector, "fine_bank_", None),
        scales=getattr(detector, "score_scales_", None),
    )
    model = export_scoring_graph(graph, image_size, channels, output_names=("scores", "maps"))
    from ._version import __version__

    metadata = {
        "sklearn_panda.format": FORMAT_VERSION,
        "sklearn_panda.version": __version__,
        "estimator": type(detector).__name__,
        "scorer": "memory bank",
        "input_name": "images",
        "input_layout": "NHWC",
        "input_dtype": "uint8",
        "input_height": str(image_size[0]),
        "input_width": str(image_size[1]),
        "input_channels": str(channels),
        "output": "score_samples,anomaly_maps",
        "offset": repr(float(detector.offset_)),
        "precision": "float32",
        "n_gallery": str(len(bank)),
        "n_neighbors": str(detector.scorer_.n_neighbors),
        "metric": "euclidean",
    }
    _set_metadata(model, metadata)
    return _write_model(model, path)


def onnx_convolutions(path):
    """List the convolutions of an ONNX file by name, in the order they run.

    What :func:`quantize_onnx`'s ``keep_float32`` takes; the first is the stem.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`export_onnx`.

    Returns
    -------
    names : list of str
        The ``Conv`` nodes' names, in graph order (which is execution order).

    Examples
    --------
    >>> from sklearn_panda.deploy import onnx_convolutions, quantize_onnx
    >>> first_three = onnx_convolutions("detector.onnx")[:3]  # doctest: +SKIP
    >>> quantize_onnx("detector.onnx", "int8.onnx", images, keep_float32=first_three)  # doctest: +SKIP
    """
    import onnx

    from ._engine.quantize import convolution_names

    return convolution_names(onnx.load(path))


def quantize_onnx(path, int8_path, calibration_images, *, keep_float32=()):
    """Write an int8 version of a float32 file from :func:`export_onnx`.

    Post-training static quantisation with ONNX Runtime's tools: the
    network's convolutions get int8 weights (per output channel) and uint8
    activations, calibrated on ``calibration_images``; the preprocessing, the
    feature normalisation and the neighbour search stay float32. The file
    runs in ONNX Runtime and OpenVINO alike, and its metadata are the float32
    file's with ``precision="int8"``.

    Parameters
    ----------
    path : str or path-like
        A float32 file written by :func:`export_onnx`.
    int8_path : str or path-like
        Where to write the int8 file.
    calibration_images : array-like of uint8 images
        Normal training images of the file's size (a few hundred are plenty),
        in any layout the detector accepts.
    keep_float32 : sequence of str, default=()
        Names of convolutions to leave in float32, where int8 costs accuracy;
        :func:`onnx_convolutions` lists them in order (the first is the stem). Keeping the first few in
        float32 recovers most of what int8 loses on EfficientNet-Lite0
        (``benchmarks/onnx_speed.py``). Naming every convolution is an error:
        nothing would be quantised.

    Returns
    -------
    int8_path : pathlib.Path
        The written int8 file, ``int8_path``.

    Examples
    --------
    With ``images`` the normal training images and ``"detector.onnx"`` from
    :func:`export_onnx`:

    >>> from sklearn_panda.deploy import OnnxDetector, quantize_onnx
    >>> quantize_onnx("detector.onnx", "detector-int8.onnx", images)  # doctest: +SKIP
    >>> OnnxDetector("detector-int8.onnx", runtime="openvino").score_samples(images)  # doctest: +SKIP
    """
    import onnx

    from ._engine.quantize import quantize_int8

    metadata = _read_metadata(path)
    if metadata["precision"] != "float32":
        raise ValueError(f"quantize_onnx takes a float32 file; {os.fspath(path)} is {metadata['precision']}.")
    if isinstance(keep_float32, str):
        raise TypeError(f"keep_float32 is a list of convolution names; got the string {keep_float32!r} (use [name]).")
    known = onnx_convolutions(path)
    unknown = [name for name in keep_float32 if name not in known]
    if unknown:
        raise ValueError(
            f"keep_float32 names convolutions that {os.fspath(path)} does not have: {unknown}; its convolutions "
            f"are sklearn_panda.deploy.onnx_convolutions(path), e.g. {known[:3]}."
        )
    if set(known) <= set(keep_float32):
        raise ValueError(
            f"keep_float32 names every convolution of {os.fspath(path)}: nothing would be quantised, and the "
            "file written would be float32 labelled int8. Use the float32 file itself, or leave some out."
        )
    calibration = _as_file_input(calibration_images, metadata)
    # Quantised into a temporary file beside int8_path (not the system's temporary folder, which may
    # be small), then written once with its metadata: an interrupted or failed run leaves no int8 file
    # without them (and int8_path may be the float file itself).
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.realpath(int8_path)), prefix=".quantize-") as folder:
        quantized = Path(folder) / "int8.onnx"
        quantize_int8(path, quantized, calibration, keep_float32=keep_float32)
        model = onnx.load(quantized)
    _set_metadata(model, {**metadata, "precision": "int8"})
    return _write_model(model, int8_path)


def _write_model(model, path):
    """Write an ONNX ``model`` to ``path`` whole or not at all (the package's atomic writer)."""
    write_files({os.fspath(path): model.SerializeToString()})
    return Path(path)


def _cpu_float32_copy(net):
    """``net`` in float32 on the CPU in eval mode; a copy when it is elsewhere."""
    import copy

    import torch

    parameters = [*net.parameters(), *net.buffers()]
    if any(t.device.type != "cpu" or (t.is_floating_point() and t.dtype != torch.float32) for t in parameters):
        net = copy.deepcopy(net).to(device="cpu", dtype=torch.float32)
    return net.eval()


def _set_metadata(model, metadata):
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _as_file_input(images, metadata):
    """Images in any layout the package accepts -> the file's uint8 ``(n, H, W, C)``, or a clear error."""
    checked = check_input(images)
    if checked.spec.kind != "array_images":
        raise ValueError(
            "An exported detector scores image arrays of shape (n, H, W), (n, H, W, C) or "
            f"(n, C, H, W); got {'vectors' if checked.spec.kind == 'vectors' else 'a list of files'}."
        )
    data = checked.data
    expected = (int(metadata["input_height"]), int(metadata["input_width"]), int(metadata["input_channels"]))
    if data.dtype != np.uint8:
        raise ValueError(
            f"The exported detector takes uint8 images; got {data.dtype}. Convert float images in "
            "[0, 1] with np.round(images * 255).astype(np.uint8)."
        )
    if data.shape[1:3] == expected[:2] and data.shape[3] != expected[2]:
        raise ValueError(
            f"The exported detector was fitted on {expected[2]}-channel images; got {data.shape[3]}-channel "
            "images. Convert them to the training layout first."
        )
    if data.shape[1:] != expected:
        raise ValueError(
            f"The exported detector takes images of height x width x channels {expected[0]} x "
            f"{expected[1]} x {expected[2]}; got {data.shape[1]} x {data.shape[2]} x {data.shape[3]}. "
            "Resize them first, or export again with image_size set to their size."
        )
    return np.ascontiguousarray(data)


def _read_metadata(path):
    import onnx

    model = onnx.load(path, load_external_data=False)
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    version = metadata.get("sklearn_panda.format")
    if version != FORMAT_VERSION:
        found = "no sklearn-panda metadata" if version is None else f"format {version}"
        raise ValueError(
            f"{os.fspath(path)} is not an exported detector this version reads (format "
            f"{FORMAT_VERSION}); it has {found}. Export it again with export_onnx."
        )
    return metadata


def _file_digest(path):
    """The SHA-256 of the file at ``path``, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxDetector(OutlierDecisions):
    """Score images with a file written by :func:`export_onnx`, in ONNX Runtime or OpenVINO.

    Has the scoring methods of the exported detector (``score_samples``,
    ``decision_function``, ``predict``), on uint8 images of the exported size.
    No torch is involved.

    Parameters
    ----------
    path : str or path-like
        The exported file.
    runtime : {"onnxruntime", "openvino"}, default="onnxruntime"
        ONNX Runtime (``pip install 'sklearn-panda[onnx]'``) or OpenVINO
        (``pip install 'sklearn-panda[openvino]'``). OpenVINO runs in float32
        arithmetic outside the int8 layers (it would otherwise use bfloat16 on
        CPUs that have it).
    n_threads : int, default=None
        Threads of the runtime; ``None``: its default (every core).
    batch_size : int, default=32
        Images per call to the runtime.

    Attributes
    ----------
    metadata_ : dict of str
        The file's metadata: ``input_name``, ``input_layout`` ("NHWC"),
        ``input_dtype`` ("uint8"), ``input_height``, ``input_width``,
        ``input_channels``, ``offset``, ``precision``, the scorer and the
        package version that wrote it.
    offset_ : float
        The exported detector's ``offset_``.
    input_shape_ : tuple of int
        ``(height, width, channels)`` of the images the file takes.

    Notes
    -----
    A pickled ``OnnxDetector`` (joblib, multiprocessing, Dask) holds the
    file's path and its SHA-256, not the runtime's session: unpickling opens
    the file again, and refuses it when it is missing or has changed since.

    Examples
    --------
    With ``"detector.onnx"`` from :func:`export_onnx` (whose example runs
    this class) and ``images`` uint8 of its size:

    >>> from sklearn_panda.deploy import OnnxDetector
    >>> detector = OnnxDetector("detector.onnx", n_threads=2)  # doctest: +SKIP
    >>> detector.input_shape_  # doctest: +SKIP
    (28, 28, 1)
    >>> detector.predict(images)  # doctest: +SKIP
    """

    def __init__(self, path, *, runtime="onnxruntime", n_threads=None, batch_size=32):
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}; got {runtime!r}.")
        for name, value, allowed in (("batch_size", batch_size, False), ("n_threads", n_threads, True)):
            if not (value is None and allowed) and (
                not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1
            ):
                raise ValueError(f"{name} must be an integer >= 1{' or None' if allowed else ''}; got {value!r}.")
        self.path = path
        self.runtime = runtime
        self.n_threads = n_threads
        self.batch_size = batch_size
        self.metadata_ = _read_metadata(path)
        self.offset_ = float(self.metadata_["offset"])
        self.input_shape_ = tuple(int(self.metadata_[f"input_{name}"]) for name in ("height", "width", "channels"))
        # Unpickling opens the file again, perhaps from another working folder.
        self._file, self._digest = os.path.abspath(path), _file_digest(path)
        self._run = self._session()

    def _session(self, path=None):
        path = self.path if path is None else path
        return self._onnxruntime(path) if self.runtime == "onnxruntime" else self._openvino(path)

    def __getstate__(self):
        # The runtime's session cannot be pickled: the file it was opened from is named instead.
        return {key: value for key, value in vars(self).items() if key != "_run"}

    def __setstate__(self, state):
        vars(self).update(state)
        try:
            digest = _file_digest(self._file)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"This pickled OnnxDetector scores with {self._file}, which is not here; a pickle "
                "holds the file's path, not the file: copy the file to that path first."
            ) from None
        if digest != self._digest:
            raise ValueError(
                f"{self._file} has changed since this OnnxDetector was pickled (its SHA-256 differs); "
                "open the new file with OnnxDetector(path) instead."
            )
        self._run = self._session(self._file)

    def _onnxruntime(self, path):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("runtime='onnxruntime' needs ONNX Runtime: pip install 'sklearn-panda[onnx]'.") from None
        options = ort.SessionOptions()
        if self.n_threads is not None:
            options.intra_op_num_threads = self.n_threads
            options.inter_op_num_threads = 1
        session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
        name = self.metadata_["input_name"]
        return lambda images: session.run(None, {name: images})

    def _openvino(self, path):
        try:
            import openvino as ov
        except ImportError:
            raise ImportError("runtime='openvino' needs OpenVINO: pip install 'sklearn-panda[openvino]'.") from None
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if self.n_threads is not None:
            config["INFERENCE_NUM_THREADS"] = self.n_threads
        compiled = ov.Core().compile_model(os.fspath(path), "CPU", config)
        request = compiled.create_infer_request()

        def run(images):
            outputs = request.infer({0: images})
            return [outputs[index] for index in range(len(compiled.outputs))]

        return run

    def score_samples(self, X):
        """Negated anomaly distance, as the exported detector's: higher means more normal.

        Parameters
        ----------
        X : array-like of uint8 images
            Shape ``(n, H, W)``, ``(n, H, W, C)`` or ``(n, C, H, W)`` with the
            exported height, width and channels.

        Returns
        -------
        scores : ndarray of shape (n_samples,)
            The file's ``score_samples`` output, as float64; the lower, the
            more abnormal.
        """
        images = _as_file_input(X, self.metadata_)
        parts = [
            np.asarray(self._run(images[start : start + self.batch_size])[0], dtype=np.float64).reshape(-1)
            for start in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(parts)

    def anomaly_maps(self, X):
        """One anomaly map per image, as the exported patch detector's ``anomaly_maps``.

        Parameters
        ----------
        X : array-like of uint8 images
            As in ``score_samples``.

        Returns
        -------
        maps : ndarray of shape (n_samples, H, W), float32
            Higher = more anomalous.

        Raises
        ------
        TypeError
            For a file exported from an image-level detector, which has no maps.

        Examples
        --------
        With ``"patch.onnx"`` exported from a fitted ``PandaPatchDetector``:

        >>> from sklearn_panda.deploy import OnnxDetector
        >>> OnnxDetector("patch.onnx").anomaly_maps(images).shape  # doctest: +SKIP
        (4, 640, 640)
        """
        if "anomaly_maps" not in self.metadata_["output"]:
            raise TypeError(
                f"{os.fspath(self.path)} was exported from a {self.metadata_['estimator']}, which scores "
                "whole images; only a PandaPatchDetector's file gives anomaly maps."
            )
        images = _as_file_input(X, self.metadata_)
        return np.concatenate(
            [
                np.asarray(self._run(images[start : start + self.batch_size])[1], dtype=np.float32)
                for start in range(0, len(images), self.batch_size)
            ]
        )
