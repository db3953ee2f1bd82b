"""export_onnx of a patch detector: scores and anomaly maps in one graph, equal to the detector's."""

import numpy as np
import pytest

from conftest import TINY_IMAGES

from sklearn_panda import PandaDetector, PandaPatchDetector

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from sklearn_panda.deploy import OnnxDetector, export_onnx  # noqa: E402


def stripes(n, size=48, seed=0):
    rng = np.random.default_rng(seed)
    rows = np.arange(size)[None, :, None]
    images = np.where((rows + (np.arange(n) % 8)[:, None, None]) % 8 < 4, 200, 40) + rng.normal(0, 4, (n, size, size))
    return np.clip(images, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    detector = PandaPatchDetector(
        backbone="resnet18", weights=None, resize=None, n_features=96, n_neighbors=2, random_state=0
    ).fit(stripes(10))
    path = tmp_path_factory.mktemp("onnx") / "patch.onnx"
    export_onnx(detector, path, image_size=(48, 48))
    return detector, OnnxDetector(path)


def test_the_file_gives_the_detectors_scores_and_maps(exported):
    detector, onnx_detector = exported
    images = stripes(3, seed=1)
    images[:, 10:18, 20:28] = 255
    maps, scores = detector.anomaly_maps(images, return_scores=True)
    np.testing.assert_allclose(onnx_detector.score_samples(images), scores, atol=1e-5)
    np.testing.assert_allclose(onnx_detector.anomaly_maps(images), maps, atol=1e-5)
    assert onnx_detector.offset_ == detector.offset_
    np.testing.assert_array_equal(onnx_detector.predict(images), detector.predict(images))
    assert onnx_detector.metadata_["output"] == "score_samples,anomaly_maps"


def test_the_channel_pooling_is_one_constant_in_the_file(exported, tmp_path):
    # Built column by column, n_features=96 put 96 Slice, ScatterElements and ScatterND nodes in
    # the graph (382 nodes in all, a 12-second export); as a matrix it folds into one constant.
    import onnx

    detector, _ = exported
    export_onnx(detector, tmp_path / "again.onnx", image_size=(48, 48))
    operations = [node.op_type for node in onnx.load(tmp_path / "again.onnx").graph.node]
    assert not {"Slice", "ScatterElements", "ScatterND"} & set(operations)
    assert len(operations) < 150


@pytest.mark.parametrize("n_worst", [1, 50])
def test_the_file_averages_the_n_worst_patches_even_more_than_an_image_has(n_worst, tmp_path):
    # 48 x 48 images: 36 patches a bank, fewer than 50.
    detector = PandaPatchDetector(
        backbone="resnet18", weights=None, resize=None, n_worst_patches=n_worst, random_state=0
    ).fit(stripes(6))
    export_onnx(detector, tmp_path / "worst.onnx", image_size=(48, 48))
    images = stripes(3, seed=2)
    images[:, 10:18, 20:28] = 255
    np.testing.assert_allclose(OnnxDetector(tmp_path / "worst.onnx").score_samples(images), detector.score_samples(images), atol=1e-5)


def test_a_detector_that_resizes_exports_for_the_scored_size(exported, tmp_path):
    detector = PandaPatchDetector(backbone="resnet18", weights=None, random_state=0).fit(stripes(4))
    with pytest.raises(ValueError, match=r"scores 48 x 48 images at 224 x 224.*image_size=\(224, 224\)"):
        export_onnx(detector, tmp_path / "p.onnx", image_size=(48, 48))


def test_an_image_level_file_has_no_maps(tmp_path):
    images = stripes(8, size=20)
    detector = PandaDetector(**TINY_IMAGES, n_steps=0, random_state=0).fit(images)
    export_onnx(detector, tmp_path / "d.onnx", image_size=(20, 20))
    with pytest.raises(TypeError, match="scores whole images"):
        OnnxDetector(tmp_path / "d.onnx").anomaly_maps(images)
