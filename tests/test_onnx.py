"""The exported ONNX file scores as the detector does: ONNX Runtime, OpenVINO, int8, and without torch.

Tolerance of float32 scores: 1e-5 absolute. The preprocessing in the file is
bit-exact (tested on its own below), so the scores differ only by the float32
rounding of the network's and the search's sums, which the runtimes add in
another order than torch: about 1e-7 relative to the features, so about 1e-7
on squared distances between L2-normalised features (which lie in [0, 4]);
1e-5 leaves a hundred times that.
"""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from conftest import TINY_IMAGES
from scipy.stats import spearmanr
from torchvision.transforms.v2 import functional as TF

import sklearn_panda.deploy as deploy
from sklearn_panda import PandaDetector
from sklearn_panda._engine.data import IMAGENET_MEAN, IMAGENET_STD, _unit_range_rgb, resize_and_crop
from sklearn_panda._engine.onnx_graph import GalleryDistance, ScoringGraph
from sklearn_panda.deploy import OnnxDetector, export_onnx, quantize_onnx

pytest.importorskip("onnxruntime")

ATOL = 1e-5
SIZE = (20, 20)


def _images(n, seed):
    """Grayscale images, half of them smooth (normal-looking), half noise."""
    rng = np.random.default_rng(seed)
    smooth = np.linspace(0, 200, SIZE[1])[None, None, :] + rng.normal(0, 10, (n // 2, *SIZE))
    noise = rng.integers(0, 256, (n - n // 2, *SIZE))
    return np.clip(np.concatenate([smooth, noise]), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny detector fitted on grayscale images, with a crop, and its float32 file."""
    train = _images(32, 0)[:16]
    detector = PandaDetector(**{**TINY_IMAGES, "crop_size": 28}, n_steps=3, random_state=0).fit(train)
    path = export_onnx(detector, tmp_path_factory.mktemp("onnx") / "detector.onnx", image_size=SIZE)
    return detector, path, train


def test_preprocessing_is_bit_exact():
    """The graph's resize, crop and normalisation equal the package's, bit for bit."""
    rng = np.random.default_rng(1)
    for (height, width), resize, crop, channels in [
        ((20, 20), 32, 28, 1),
        ((28, 40), 256, 224, 3),
        ((300, 200), 256, 224, 3),
        ((37, 53), 19, None, 1),
        ((30, 30), None, 24, 3),
        ((28, 40), (224, 224), None, 1),  # EfficientNet-Lite0's recipe: the whole image, squared
        ((37, 53), (30, 24), 20, 3),
    ]:
        images = rng.integers(0, 256, (2, height, width, channels), dtype=np.uint8)
        graph = ScoringGraph(
            torch.nn.Identity(),
            image_size=(height, width),
            channels=channels,
            resize=resize,
            crop_size=crop,
            normalize_features=False,
            distance=GalleryDistance(np.zeros((2, 1), np.float32), 1, "sqeuclidean"),
        )
        expected = _unit_range_rgb(resize_and_crop(torch.from_numpy(images).permute(0, 3, 1, 2), resize, crop))
        expected = TF.normalize(expected, list(IMAGENET_MEAN), list(IMAGENET_STD))
        assert torch.equal(graph.preprocess(torch.from_numpy(images)), expected), (height, width, resize, crop)


def test_graph_reproduces_other_scorers(exported):
    """k-means and centre scorers, cosine and Euclidean metrics, as a gallery search in the torch graph."""
    from sklearn_panda import CenterScorer, KMeansScorer

    detector, _, train = exported
    test = _images(12, 2)
    for scorer in [KMeansScorer(n_clusters=3, metric="cosine", random_state=0), CenterScorer(metric="euclidean")]:
        scorer.fit(detector.extract_features(train))
        distance, _, _ = deploy._scorer_distance(scorer)
        graph = ScoringGraph(
            detector.net_.eval(),
            image_size=SIZE,
            channels=1,
            resize=32,
            crop_size=28,
            normalize_features=True,
            distance=distance,
        )
        with torch.no_grad():
            scores = graph(torch.from_numpy(test[..., None])).numpy()
        expected = scorer.score_samples(detector.extract_features(test))
        np.testing.assert_allclose(scores, expected, rtol=0, atol=ATOL, err_msg=type(scorer).__name__)


def test_onnxruntime_scores_equal_the_detector(exported):
    detector, path, train = exported
    test = _images(20, 3)
    onnx_detector = OnnxDetector(path, n_threads=1, batch_size=7)
    np.testing.assert_allclose(onnx_detector.score_samples(test), detector.score_samples(test), rtol=0, atol=ATOL)
    assert onnx_detector.offset_ == detector.offset_
    decision = detector.decision_function(test)
    clear = np.abs(decision) > ATOL
    np.testing.assert_allclose(onnx_detector.decision_function(test), decision, rtol=0, atol=ATOL)
    np.testing.assert_array_equal(onnx_detector.predict(test)[clear], detector.predict(test)[clear])
    # Any layout the detector takes: (n, H, W), (n, H, W, 1), (n, 1, H, W).
    np.testing.assert_array_equal(onnx_detector.score_samples(test[:, None]), onnx_detector.score_samples(test))


def test_metadata_state_the_input_and_offset(exported):
    detector, path, _ = exported
    metadata = OnnxDetector(path).metadata_
    assert {key: metadata[key] for key in ("input_layout", "input_dtype", "input_height", "input_width")} == {
        "input_layout": "NHWC",
        "input_dtype": "uint8",
        "input_height": "20",
        "input_width": "20",
    }
    assert metadata["input_channels"] == "1" and metadata["precision"] == "float32"
    assert float(metadata["offset"]) == detector.offset_
    assert (metadata["scorer"], metadata["n_neighbors"], metadata["n_gallery"]) == ("KNNScorer", "2", "16")


def test_bad_input_gets_a_clear_error(exported):
    _, path, _ = exported
    onnx_detector = OnnxDetector(path)
    images = _images(4, 4)
    with pytest.raises(ValueError, match=r"height x width x channels 20 x 20 x 1; got 24 x 20 x 1"):
        onnx_detector.score_samples(np.zeros((2, 24, 20), np.uint8))
    with pytest.raises(ValueError, match=r"fitted on 1-channel images; got 3-channel"):
        onnx_detector.score_samples(np.repeat(images[..., None], 3, axis=-1))
    with pytest.raises(ValueError, match="takes uint8 images; got float64"):
        onnx_detector.score_samples(images / 255.0)
    with pytest.raises(ValueError, match="got vectors"):
        onnx_detector.score_samples(np.zeros((2, 400), np.uint8))
    with pytest.raises(ValueError, match="runtime must be one of"):
        OnnxDetector(path, runtime="tensorrt")


def test_a_file_of_another_format_is_refused(exported, tmp_path):
    import onnx

    _, path, _ = exported
    model = onnx.load(path)
    for entry in model.metadata_props:
        if entry.key == "sklearn_panda.format":
            entry.value = "0"
    onnx.save(model, tmp_path / "old.onnx")
    with pytest.raises(ValueError, match="has format 0. Export it again"):
        OnnxDetector(tmp_path / "old.onnx")
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "plain.onnx")
    with pytest.raises(ValueError, match="has no sklearn-panda metadata"):
        OnnxDetector(tmp_path / "plain.onnx")


@pytest.mark.parametrize("n_components", [None, 5])
def test_a_mahalanobis_detector_exports_with_its_gaussian(exported, tmp_path, n_components):
    """The Gaussian's distance in float32 (with and without the residual directions), to float32 rounding."""
    from sklearn_panda import MahalanobisScorer

    _, _, train = exported
    detector = PandaDetector(
        **{**TINY_IMAGES, "crop_size": 28}, n_steps=3, random_state=0, scorer=MahalanobisScorer(n_components=n_components)
    ).fit(train)
    path = export_onnx(detector, tmp_path / "m.onnx", image_size=SIZE)
    test = _images(20, 3)
    onnx_detector = OnnxDetector(path, n_threads=1)
    expected = detector.score_samples(test)
    np.testing.assert_allclose(onnx_detector.score_samples(test), expected, rtol=1e-4, atol=ATOL)
    metadata = onnx_detector.metadata_
    assert (metadata["scorer"], metadata["n_components"]) == ("MahalanobisScorer", str(detector.scorer_.n_components_))


def test_what_cannot_be_exported_is_refused(exported, monkeypatch):
    from sklearn.ensemble import IsolationForest

    detector, path, train = exported
    forest = PandaDetector(**TINY_IMAGES, n_steps=0, scorer=IsolationForest(random_state=0)).fit(train)
    with pytest.raises(TypeError, match="scorer_ is IsolationForest"):
        export_onnx(forest, path.parent / "m.onnx", image_size=SIZE)
    with pytest.raises(ValueError, match=r"image_size must be \(height, width\)"):
        export_onnx(detector, path.parent / "m.onnx", image_size=20)
    monkeypatch.setattr("sklearn_panda._engine.onnx_graph.ONNX_FILE_LIMIT_BYTES", 1000)
    with pytest.raises(ValueError, match="do not fit in one ONNX file"):
        export_onnx(detector, path.parent / "m.onnx", image_size=SIZE)


def _documented_snippet():
    """The torch-free snippet of ``sklearn_panda.deploy``'s docstring, as it stands there."""
    text = deploy.__doc__.split("::\n", 1)[1]
    return textwrap.dedent(text[: text.index("\nGalleries")])


def test_documented_snippet_runs_without_torch(exported, tmp_path):
    """The docstring's snippet, in a process where torch and this package cannot be imported."""
    detector, path, _ = exported
    test = _images(6, 5)
    np.save(tmp_path / "images.npy", test[..., None])  # the file's NHWC layout
    (tmp_path / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            import sys

            class _Blocked:
                def find_spec(self, name, path=None, target=None):
                    if name.split(".")[0] in {"torch", "torchvision", "sklearn_panda"}:
                        raise ImportError(f"{name} is blocked in this test")

            sys.meta_path.insert(0, _Blocked())
            """
        )
    )
    script = "\n".join(
        [
            "import json, numpy as np",
            f"images = np.load({str(tmp_path / 'images.npy')!r})",
            _documented_snippet().replace('"detector.onnx"', repr(str(path))),
            "for blocked in ('torch', 'sklearn_panda'):",
            "    try:",
            "        __import__(blocked)",
            "    except ImportError:",
            "        pass",
            "    else:",
            "        raise SystemExit(blocked + ' was importable')",
            "print(json.dumps({'scores': scores.tolist(), 'labels': labels.tolist()}))",
        ]
    )
    environment = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    np.testing.assert_allclose(output["scores"], detector.score_samples(test), rtol=0, atol=ATOL)
    assert set(output["labels"]) <= {-1, 1}


def test_int8_ranks_as_float32(exported, tmp_path):
    """int8 file: runs end to end, keeps the metadata, ranks the images as float32 does.

    Random-weight tiny networks quantise worse than pretrained ones; a rank
    correlation of 0.9 with float32 (here about 0.99) still catches a broken
    calibration or layout, which give about 0.
    """
    detector, path, train = exported
    int8_path = quantize_onnx(path, tmp_path / "int8.onnx", train)
    int8 = OnnxDetector(int8_path)
    assert int8.metadata_["precision"] == "int8" and int8.offset_ == detector.offset_
    test = _images(40, 6)
    assert spearmanr(int8.score_samples(test), detector.score_samples(test)).statistic > 0.9
    with pytest.raises(ValueError, match="takes a float32 file"):
        quantize_onnx(int8_path, tmp_path / "again.onnx", train)


def test_int8_quantisation_works_beside_its_target(exported, tmp_path, monkeypatch):
    """The quantiser's scratch file lies in the target's folder, not the system's temporary folder."""
    import sklearn_panda._engine.quantize as quantize

    _, path, train = exported
    target = tmp_path / "out"
    target.mkdir()
    folders, quantize_int8 = [], quantize.quantize_int8

    def recording(source, quantized, *args, **kwargs):
        folders.append(os.path.dirname(os.path.dirname(quantized)))
        return quantize_int8(source, quantized, *args, **kwargs)

    monkeypatch.setattr(quantize, "quantize_int8", recording)
    quantize_onnx(path, target / "int8.onnx", train[:4])
    assert folders == [str(target)] and os.listdir(target) == ["int8.onnx"]


def test_openvino_scores_equal_the_detector(exported, tmp_path):
    pytest.importorskip("openvino")
    detector, path, train = exported
    test = _images(12, 7)
    scores = OnnxDetector(path, runtime="openvino", n_threads=1).score_samples(test)
    np.testing.assert_allclose(scores, detector.score_samples(test), rtol=0, atol=ATOL)
    int8 = OnnxDetector(quantize_onnx(path, tmp_path / "int8.onnx", train), runtime="openvino", n_threads=1)
    assert spearmanr(int8.score_samples(test), scores).statistic > 0.9


def test_approximate_knn_search_warns_that_the_file_searches_exactly():
    pytest.importorskip("faiss")
    from sklearn_panda import KNNScorer

    features = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gallery, k, metric = deploy._scorer_search(KNNScorer(algorithm="faiss").fit(features))
    np.testing.assert_array_equal(gallery, features)
    assert (k, metric) == (2, "sqeuclidean")
    approximate = KNNScorer(algorithm="faiss", faiss_index="HNSW8").fit(features)
    with pytest.warns(UserWarning, match="searches approximately .* exported file searches the same gallery exactly"):
        deploy._scorer_search(approximate)


def test_an_onnx_detector_pickles_by_its_file(exported, tmp_path):
    """Pickling failed (the session's runner is a local function): joblib and multiprocessing could not use it."""
    import pickle
    import shutil

    _, path, _ = exported
    copy = shutil.copy(path, tmp_path / "detector.onnx")
    detector = OnnxDetector(copy, n_threads=1)
    test = _images(6, 9)
    restored = pickle.loads(pickle.dumps(detector))
    np.testing.assert_array_equal(restored.score_samples(test), detector.score_samples(test))
    # A relative path, unpickled from another working folder.
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        relative = pickle.dumps(OnnxDetector("detector.onnx", n_threads=1))
    finally:
        os.chdir(here)
    np.testing.assert_array_equal(pickle.loads(relative).score_samples(test), detector.score_samples(test))
    assert restored.offset_ == detector.offset_ and restored.input_shape_ == detector.input_shape_
    pickled = pickle.dumps(detector)
    with open(copy, "ab") as file:
        file.write(b"\0")
    with pytest.raises(ValueError, match="has changed since this OnnxDetector was pickled"):
        pickle.loads(pickled)
    os.unlink(copy)
    with pytest.raises(FileNotFoundError, match="holds the file's path, not the file"):
        pickle.loads(pickled)
