"""The fourth review's defects (2026-12-07), one test (or more) each."""

import warnings

import numpy as np
import pytest
from conftest import TINY_IMAGES, TINY_LAYERS, tiny_cnn
from PIL import Image
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from sklearn_panda import PandaDetector, PandaPatchDetector, load, save
from sklearn_panda._estimators.patch_bank import CALIBRATION_IMAGES
from sklearn_panda.cli import main
from sklearn_panda.model_selection import NormalOnlySplit

TINY_PATCH = dict(backbone=tiny_cnn, weights=None, layers=TINY_LAYERS, resize=None, coreset_ratio=0.2, random_state=0)


def _images(n, seed, size=16):
    return (np.random.default_rng(seed).random((n, size, size)) * 255).astype(np.uint8)


# fit_predict labelled the calibration sample (at most 64 images), not every training image.
def test_patch_fit_predict_labels_every_training_image_in_order():
    X = _images(CALIBRATION_IMAGES + 6, 0)
    X[3] = 255 - X[3] // 8  # one odd image
    detector = PandaPatchDetector(**TINY_PATCH, contamination=0.05)
    labels = detector.fit_predict(X)
    assert labels.shape == (len(X),) and set(labels.tolist()) <= {-1, 1}
    assert labels[3] == -1
    # The calibration images' labels are their training_scores_'.
    images = [entry["image"] for entry in detector.calibration_maps_]
    assert len(images) == CALIBRATION_IMAGES < len(X)
    np.testing.assert_array_equal(labels[images], np.where(detector.training_scores_ < detector.offset_, -1, 1))
    # About contamination of the images are flagged (ties aside), not a sample's share.
    assert abs((labels == -1).mean() - 0.05) <= 2 / len(X)


def test_patch_fit_predict_scores_are_leave_one_out_scores():
    from sklearn_panda._estimators.patch_memory import leave_one_out_scores
    from sklearn_panda._estimators.validation import check_input

    X = _images(CALIBRATION_IMAGES + 2, 1)
    detector = PandaPatchDetector(**TINY_PATCH).fit(X)
    spec = detector._spec()
    banks = [(detector.memory_bank_, detector.memory_bank_images_, detector.scorer_),
             (detector.fine_bank_, detector.fine_bank_images_, detector.fine_scorer_)]
    stream = detector._embeddings(detector.net_, check_input(X), detector.device_, spec, "training scores")
    scores = leave_one_out_scores(stream, banks, spec, detector.score_scales_, detector.calibration_maps_)
    images = [entry["image"] for entry in detector.calibration_maps_]
    np.testing.assert_allclose(scores[images], detector.training_scores_, rtol=1e-5)
    # Left out, an image scores worse than against the bank with its own patches (to within the
    # half precision its stage outputs are kept in, as the calibration images' are).
    against_all = detector.score_samples(X)
    assert (scores <= against_all + 1e-3).all() and (scores < against_all - 0.1).any()


# partial_fit on a fitted detector read its parameters unchecked.
@pytest.mark.parametrize("params", [{"contamination": 0.9}, {"projection_dim": 0}, {"n_neighbors": 0},
                                    {"algorithm": "kd_tree"}, {"contamination": "AUTO"}])
def test_partial_fit_checks_the_parameters_it_reads(params):
    from sklearn.utils._param_validation import InvalidParameterError

    X = _images(8, 2)
    detector = PandaPatchDetector(**TINY_PATCH).fit(X[:4])
    bank = detector.memory_bank_.copy()
    with pytest.raises(InvalidParameterError):
        detector.set_params(**params).partial_fit(X[4:])
    np.testing.assert_array_equal(detector.memory_bank_, bank)


def test_partial_fit_skips_the_check_where_scikit_learn_is_told_to():
    from sklearn import config_context

    X = _images(8, 2)
    detector = PandaPatchDetector(**TINY_PATCH).fit(X[:4])
    with config_context(skip_parameter_validation=True):
        detector.set_params(contamination=0.9).partial_fit(X[4:])  # checked by nobody, as asked
    assert detector.n_samples_seen_ == 8


def test_leave_one_out_falls_back_on_the_pool_where_every_bank_row_is_its_own():
    # A bank of image 0's patches only: image 0 is measured against the other images of the pool
    # (fit_predict passes the calibration images; its batch may hold image 0 alone).
    from sklearn_panda._estimators.patch_bank import bank_search, worst_patches
    from sklearn_panda._estimators.patch_calibration import calibration_rows, leave_one_out_worst
    from sklearn_panda._engine.progress import ProgressBar

    detector = PandaPatchDetector(**TINY_PATCH).fit(_images(4, 6))
    spec = dict(detector._spec(), image_score="patch")
    entries = sorted(detector.calibration_maps_, key=lambda entry: entry["image"])
    own = calibration_rows(entries[0], spec)[0][0]
    bank = (own, np.zeros(len(own), dtype=int), bank_search("auto", len(own), 1, 0).fit(own))
    worst, _, _ = leave_one_out_worst([bank], entries[:1], spec, ProgressBar(0, "", False), pool=entries)
    others = np.concatenate([calibration_rows(entry, spec)[0][0] for entry in entries[1:]])
    nearest = np.linalg.norm(own[:, None] - others[None], axis=2).min(1)
    np.testing.assert_allclose(worst[0], worst_patches(nearest[None], spec["n_worst_patches"]), rtol=1e-5)


# Images too small for the backbone's windows: an error that names their size and resize.
def test_images_too_small_for_the_backbone_name_their_size():
    with pytest.raises(ValueError, match=r"cannot take images of 2 x 2 pixels.*resize='auto'"):
        PandaPatchDetector(weights=None, resize=None).fit(_images(3, 3, size=2))


# A Pipeline ending in an outlier detector has no offset_: its decision_function gives it.
def test_a_pipeline_scorer_takes_its_offset_from_decision_function():
    X = (np.random.default_rng(4).random((20, 20, 20, 3)) * 255).astype(np.uint8)
    scorer = make_pipeline(StandardScaler(), OneClassSVM(nu=0.2))
    detector = PandaDetector(**TINY_IMAGES, n_steps=1, scorer=scorer, random_state=0).fit(X)
    assert detector.offset_ == pytest.approx(float(detector.scorer_[-1].offset_[0]))
    features = detector.features_.transform(X)
    np.testing.assert_allclose(detector.decision_function(X), detector.scorer_.decision_function(features),
                               rtol=1e-6, atol=1e-9)


def test_a_scorer_whose_decision_function_is_not_a_shift_is_refused():
    from sklearn.base import BaseEstimator, OutlierMixin

    class NoOffset(OutlierMixin, BaseEstimator):
        """No offset_, and a decision_function that is twice score_samples: no constant shift."""

        def fit(self, X, y=None):
            self.mean_ = np.mean(X, axis=0)
            return self

        def score_samples(self, X):
            return -np.linalg.norm(X - self.mean_, axis=1)

        def decision_function(self, X):
            return 2 * self.score_samples(X)

    X = (np.random.default_rng(4).random((20, 20, 20, 3)) * 255).astype(np.uint8)
    with pytest.raises(ValueError, match="no single offset_.*less a constant"):
        PandaDetector(**TINY_IMAGES, n_steps=0, scorer=NoOffset(), random_state=0).fit(X)


# load() of a file that is no model: a ValueError that says so, not torch's KeyError or its advice.
@pytest.mark.parametrize("content", [b"hello", b"\x89PNG\r\n\x1a\n not a model"])
def test_load_of_another_kind_of_file_is_a_value_error(content, tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a model file written by sklearn-panda"):
        load(path)
    with pytest.raises(FileNotFoundError, match="No such model file"):
        load(tmp_path / "missing.pt")


def test_load_of_a_pickle_is_refused_without_running_it(tmp_path):
    import torch

    torch.save({"payload": object()}, tmp_path / "p.pt")
    with pytest.raises(ValueError, match="not a weights-only file"):
        load(tmp_path / "p.pt")


# NormalOnlySplit without y.
def test_normal_only_split_needs_y():
    with pytest.raises(ValueError, match="needs y"):
        list(NormalOnlySplit(2).split(np.zeros((6, 2))))


# One path (or PIL image) instead of a list of them.
def test_one_path_instead_of_a_list_says_so(tmp_path):
    from sklearn_panda._estimators.validation import check_input

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    for one in (str(tmp_path / "a.png"), tmp_path / "a.png", Image.new("RGB", (8, 8))):
        with pytest.raises(ValueError, match=r"one image.*\[X\]"):
            check_input(one)


# The command line never writes over its model or an input image.
def _run(capsys, monkeypatch, cwd, *args):
    monkeypatch.chdir(cwd)
    status = main([str(arg) for arg in args])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "command, args, kept",
    [
        ("fit", ["images", "--model", "images/0.png", "--backbone", "resnet18", "--weights", "none"], "images/0.png"),
        ("score", ["images", "--model", "model.pt", "--output", "model.pt"], "model.pt"),
        ("score", ["images", "--model", "model.pt", "--output", "images/1.png"], "images/1.png"),
        ("score", ["images", "--model", "model.pt", "--output", "s.csv", "--report", "images/2.png"], "images/2.png"),
        # 1.png's map would be named as an input image that the test writes (MAP_OF_1: 1-<digest>.png)
        ("score", ["images", "--model", "model.pt", "--output", "s.csv", "--maps", "images"], "MAP_OF_1"),
    ],
)
def test_cli_outputs_never_overwrite_the_model_or_an_input(command, args, kept, tmp_path, capsys, monkeypatch):
    import shutil

    from sklearn_panda.cli._outputs import map_file

    shutil.copytree(_cli_root(tmp_path), tmp_path / "w")
    if kept == "MAP_OF_1":
        kept = f"images/{map_file(tmp_path / 'w' / 'images' / '1.png')}"
        shutil.copy(tmp_path / "w" / "images" / "0.png", tmp_path / "w" / kept)
    before = (tmp_path / "w" / kept).read_bytes()
    status, err = _run(capsys, monkeypatch, tmp_path / "w", command, *args)
    assert status == 2 and "would overwrite it" in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "w" / kept).read_bytes() == before


def _cli_root(tmp_path):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(_images(1, 10 + i, size=20)[0]).save(root / "images" / f"{i}.png")
    Image.fromarray(_images(1, 13, size=20)[0]).save(root / "images" / "00002-1.png")
    detector = PandaDetector(backbone="resnet18", weights=None, n_steps=0, resize=32, crop_size=32)
    save(detector.fit([str(root / "images" / f"{i}.png") for i in range(3)]), root / "model.pt")
    return root


# resize=True read as the integer 1 (and crashed in torchvision); n_features beyond the channels ignored.
@pytest.mark.parametrize("resize", [True, (True, 32)])
def test_resize_refuses_booleans(resize):
    with pytest.raises(ValueError, match="resize must be an integer"):
        PandaPatchDetector(**dict(TINY_PATCH, resize=resize)).fit(_images(3, 5, size=32))


def test_n_features_beyond_the_channels_is_an_error_at_fit():
    X = _images(3, 5, size=32)
    with pytest.raises(ValueError, match="n_features=10000 is more than the"):
        PandaPatchDetector(**TINY_PATCH, n_features=10_000).fit(X)
    # A detector fitted before the check (it kept every channel) still scores as it did.
    detector = PandaPatchDetector(**TINY_PATCH).fit(X)
    expected = detector.score_samples(X)
    detector.patch_spec_["n_features"] = 10_000
    np.testing.assert_array_equal(detector.score_samples(X), expected)


# pixel_offset_ was measured on maps at the scored size, while masks compare maps at the input size.
def test_training_map_maxima_are_those_of_the_maps_masks_are_drawn_from():
    # With every patch in the bank, an image's leave-one-out map is its map under a detector fitted
    # on the other images; scored at twice their size, the maps come back at the input size.
    X = _images(6, 7)
    settings = dict(TINY_PATCH, coreset_ratio=1.0, resize=32)
    detector = PandaPatchDetector(**settings).fit(X)
    first = [entry["image"] for entry in detector.calibration_maps_].index(0)
    without_it = PandaPatchDetector(**settings).fit(X[1:])
    expected = without_it.anomaly_maps(X[:1])[0].max()
    # (to within the half precision of the kept stage outputs; at the scored size: 0.2% higher here)
    assert detector.training_map_maxima_[first] == pytest.approx(expected, rel=5e-4)


def test_calibration_images_keep_their_input_size_through_save_and_an_older_file_updates(tmp_path):
    X = _images(6, 8)
    detector = PandaPatchDetector(**dict(TINY_PATCH, resize=32)).fit(X[:4])
    save(detector, tmp_path / "m.pt")
    loaded = load(tmp_path / "m.pt", backbone=tiny_cnn)
    assert [entry["original"] for entry in loaded.calibration_maps_] == [[16, 16]] * 4
    for entry in loaded.calibration_maps_:  # as saved before the input size was kept
        del entry["original"]
    assert loaded.partial_fit(X[4:]).n_samples_seen_ == 6


# One colour image without its batch axis, given to a fit (or a grayscale model), was read as
# grayscale images of width 3 without a word.
def test_one_colour_image_without_its_batch_axis_warns():
    from sklearn_panda._estimators.validation import check_input

    with pytest.warns(UserWarning, match=r"read as 40 grayscale images of 30 x 3 pixels.*X\[None\]"):
        check_input(np.zeros((40, 30, 3), dtype=np.uint8))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_input(np.zeros((3, 30, 40), dtype=np.uint8))  # three grayscale images: no warning


# A colour model given one (H, W, 3) image warned "read as H grayscale images", then refused it.
def test_a_colour_model_refuses_one_image_without_its_batch_axis_without_a_warning_first():
    import warnings

    from sklearn_panda._estimators.validation import InputSpec, check_input

    detector = PandaDetector(**TINY_IMAGES, n_steps=1, random_state=0).fit(_images(6, 0, size=20)[..., None].repeat(3, -1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"fitted on colour images.*X\[None\]"):
            detector.score_samples(np.zeros((20, 20, 3), dtype=np.uint8))
    with pytest.warns(UserWarning, match="read as 40 grayscale images"):  # a grayscale model reads it
        check_input(np.zeros((40, 30, 3), dtype=np.uint8), fitted_spec=InputSpec("array_images", 1))


# ---- deployment, Dask, faiss, data sets


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A patch detector fitted on grayscale images and its file (exported without a warning: its
    banks are searched exactly)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from sklearn_panda.deploy import export_onnx

    detector = PandaPatchDetector(backbone="resnet18", weights=None, resize=None, random_state=0).fit(
        _images(4, 9, size=32))
    path = tmp_path_factory.mktemp("onnx4") / "d.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_onnx(detector, path, image_size=(32, 32))
    return detector, path


def test_a_patch_detector_that_searches_approximately_warns_at_export(exported, tmp_path):
    import copy

    pytest.importorskip("faiss")
    from sklearn_panda import KNNScorer
    from sklearn_panda.deploy import export_onnx

    detector = copy.copy(exported[0])
    detector.scorer_ = KNNScorer(n_neighbors=1, algorithm="faiss", faiss_index="HNSW16").fit(detector.memory_bank_)
    with pytest.warns(UserWarning, match="searches approximately"):
        export_onnx(detector, tmp_path / "approximate.onnx", image_size=(32, 32))


def test_quantize_onnx_refuses_unknown_or_string_keep_float32(exported, tmp_path):
    from sklearn_panda.deploy import quantize_onnx

    images = _images(2, 9, size=32)[..., None]
    with pytest.raises(ValueError, match=r"does not have: \['typo'\]"):
        quantize_onnx(exported[1], tmp_path / "q.onnx", images, keep_float32=["typo"])
    with pytest.raises(TypeError, match="use \\[name\\]"):
        quantize_onnx(exported[1], tmp_path / "q.onnx", images, keep_float32="conv")
    from sklearn_panda.deploy import onnx_convolutions

    every = onnx_convolutions(exported[1])
    assert every and every == [node.name for node in __import__("onnx").load(exported[1]).graph.node
                               if node.op_type == "Conv"]
    with pytest.raises(ValueError, match=r"are sklearn_panda\.deploy\.onnx_convolutions\(path\)"):
        quantize_onnx(exported[1], tmp_path / "q.onnx", images, keep_float32=["typo"])
    with pytest.raises(ValueError, match="names every convolution"):
        quantize_onnx(exported[1], tmp_path / "q.onnx", images, keep_float32=every)
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("options, message", [({"batch_size": 0}, "batch_size must be an integer >= 1"),
                                              ({"batch_size": 2.5}, "batch_size"),
                                              ({"n_threads": 0}, "n_threads must be an integer >= 1 or None")])
def test_onnx_detector_checks_its_options(options, message, exported):
    from sklearn_panda.deploy import OnnxDetector

    with pytest.raises(ValueError, match=message):
        OnnxDetector(exported[1], **options)


def test_onnx_detector_names_a_channel_mismatch(exported):
    from sklearn_panda.deploy import OnnxDetector

    colour = np.repeat(_images(2, 9, size=32)[..., None], 3, axis=-1)
    with pytest.raises(ValueError, match="fitted on 1-channel images; got 3-channel"):
        OnnxDetector(exported[1]).score_samples(colour)


def test_overlapping_dask_tasks_give_the_process_its_thread_setting_back(monkeypatch):
    import sys
    import threading
    import types

    import torch

    from sklearn_panda import distributed as panda_distributed

    fake = types.ModuleType("distributed")
    fake.get_worker = lambda: types.SimpleNamespace(state=types.SimpleNamespace(nthreads=2))
    monkeypatch.setitem(sys.modules, "distributed", fake)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
        seen = {}

        def task_a():  # enters first, leaves first
            with panda_distributed._one_torch_thread_per_task():
                a_in.set()
                b_in.wait()
            a_out.set()

        def task_b():
            a_in.wait()
            with panda_distributed._one_torch_thread_per_task():
                b_in.set()
                a_out.wait()
                seen["b after a left"] = torch.get_num_threads()

        def fresh():
            seen["a later thread"] = torch.get_num_threads()

        for group in ([task_a, task_b], [fresh]):
            threads = [threading.Thread(target=target) for target in group]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        seen["this thread"] = torch.get_num_threads()
        assert seen == {"b after a left": 1, "a later thread": 2, "this thread": 2}
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("options", [{"faiss_params": {"k_factor": 0}}, {"n_jobs": 0}])
def test_knn_scorer_refuses_a_search_of_no_candidates_or_no_jobs(options):
    from sklearn_panda import KNNScorer

    X = np.random.default_rng(0).normal(size=(30, 4))
    with pytest.raises(ValueError, match="k_factor|n_jobs"):
        KNNScorer(algorithm="brute", **options).fit(X)


@pytest.mark.parametrize("random_state", [-1, np.random.RandomState(1), 1.5])
def test_data_set_loaders_name_a_bad_random_state(random_state):
    from sklearn_panda.datasets import load_one_class

    with pytest.raises(ValueError, match="random_state must be"):
        load_one_class("digits", normal_class=0, random_state=random_state)


# Scoring files of mixed sizes with a model fitted without resize or crop advised setting
# crop_size, which a fitted model (and the CLI's score command) cannot take.
def test_mixed_sizes_at_scoring_name_the_fit_options(tmp_path):
    paths = []
    for i, (height, width) in enumerate([(24, 24)] * 6 + [(24, 24), (24, 28)]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray((np.random.default_rng(i).random((height, width, 3)) * 255).astype(np.uint8)).save(paths[-1])
    detector = PandaDetector(**{**TINY_IMAGES, "resize": None, "crop_size": None}, n_steps=1, random_state=0)
    detector.fit(paths[:6])
    with pytest.raises(ValueError, match=r"give images of one size, or fit with crop_size .*fit --resize, --crop-size"):
        detector.score_samples(paths[6:])
