"""Bad input, the canonical table: each case gives a clear error naming the problem,
or the documented behaviour. Unit tests elsewhere may repeat some cases; new
cases belong here."""

import warnings

import numpy as np
import pytest
import scipy.sparse
import torch
from conftest import TINY_IMAGES, tiny_mlp, tiny_resnet
from PIL import Image
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError
from torchvision.models.resnet import BasicBlock, ResNet

from sklearn_panda import KNNScorer, PandaDetector, PandaOE, PandaSES
from sklearn_panda._engine.backbones import build_feature_net
from sklearn_panda._estimators.validation import check_input


def image_detector(**params):
    return PandaDetector(**{**TINY_IMAGES, "n_steps": 1, "random_state": 0, **params})


def vector_detector(**params):
    return PandaDetector(**{"backbone": tiny_mlp, "weights": None, "n_steps": 1, "random_state": 0, **params})


def _images(n=6, size=20, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, size, size, channels)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def fitted_on_images():
    return image_detector(n_steps=0).fit(_images())


@pytest.fixture(scope="module")
def fitted_on_vectors():
    return vector_detector().fit(np.random.default_rng(0).normal(size=(12, 6)))


def _with(value, at=(0, 0, 0, 0), shape=(4, 8, 8, 3)):
    X = np.full(shape, 0.5)
    X[at] = value
    return X


# Arrays that check_input refuses before any network is built: (X, error, message).
BAD_ARRAYS = {
    "nan-pixel": (lambda: _with(np.nan), ValueError, "NaN"),
    "inf-pixel": (lambda: _with(np.inf), ValueError, "infinity"),
    "nan-in-vectors": (lambda: _with(np.nan, (1, 2), (5, 4)), ValueError, "NaN"),
    "1-d": (lambda: np.zeros(5), ValueError, r"1 dimension\(s\), shape \(5,\).*reshape"),
    "5-d": (lambda: np.zeros((2, 3, 4, 5, 6)), ValueError, r"5 dimension\(s\), shape \(2, 3, 4, 5, 6\)"),
    "2-channels-last": (lambda: np.zeros((4, 8, 8, 2), np.uint8), ValueError, "neither 1 nor 3"),
    "2-channels-first": (lambda: np.zeros((4, 2, 8, 8), np.uint8), ValueError, "neither 1 nor 3"),
    "rgba-last": (
        lambda: np.zeros((4, 8, 8, 4), np.uint8),
        ValueError,
        r"drop the alpha channel first \(X\[\.\.\., :3\]\)",
    ),
    "rgba-first": (lambda: np.zeros((4, 4, 8, 8), np.uint8), ValueError, "drop the alpha channel"),
    "float-above-1": (lambda: np.full((4, 8, 8), 1.5), ValueError, r"\[0, 1\]; got values in \[1\.5, 1\.5\]"),
    "float-below-0": (lambda: np.full((4, 8, 8), -0.1), ValueError, r"\[0, 1\]"),
    "float-0-255": (lambda: _images().astype(np.float32), ValueError, "Divide 0-255 images by 255"),
    "int-above-255": (lambda: np.full((4, 8, 8), 300), ValueError, r"\[0, 255\]; got values in \[300, 300\]"),
    "int-below-0": (lambda: np.full((4, 8, 8), -1, np.int16), ValueError, r"\[0, 255\]"),
    # uint16 is 16-bit (divided by 65,535, as 16-bit files are); other integers carry no bit depth.
    "int32-above-255": (lambda: np.full((4, 8, 8), 1000, np.int32), ValueError, r"\[0, 255\].*as uint16"),
    "empty-array": (lambda: np.zeros((0, 8, 8)), ValueError, "0 sample"),
    "empty-list": (lambda: [], ValueError, "empty list"),
    "sparse": (lambda: scipy.sparse.csr_matrix(np.ones((4, 5))), TypeError, "Sparse data"),
    "complex": (lambda: np.ones((4, 8, 8)) * 1j, ValueError, "Complex data not supported"),
    "strings": (lambda: np.array([["a", "b"], ["c", "d"]]), ValueError, "strings"),
}


@pytest.mark.parametrize("case", list(BAD_ARRAYS))
def test_bad_arrays_are_named_at_fit(case):
    make, error, message = BAD_ARRAYS[case]
    with pytest.raises(error, match=message):
        image_detector().fit(make())


@pytest.mark.parametrize("case", ["nan-pixel", "1-d", "rgba-last", "float-above-1", "empty-list"])
def test_bad_arrays_are_named_at_scoring_too(fitted_on_images, case):
    make, error, message = BAD_ARRAYS[case]
    with pytest.raises(error, match=message):
        fitted_on_images.score_samples(make())


def test_a_list_of_arrays_of_different_shapes_is_named():
    with pytest.raises(ValueError, match="different shapes"):
        image_detector().fit([np.zeros((8, 8)), np.zeros((9, 9))])


def test_one_sample_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2"):
        image_detector().fit(_images(1))


def test_fewer_samples_than_neighbours_warns_and_clamps():
    with pytest.warns(UserWarning, match=r"n_neighbors \(10\) is greater .* using n_neighbors=4"):
        det = image_detector(n_steps=0, scorer=KNNScorer(n_neighbors=10)).fit(_images(5))
    assert det.scorer_.n_neighbors_ == 4
    assert np.all(np.isfinite(det.score_samples(_images(2, seed=1))))


def test_ses_needs_three_samples():
    with pytest.raises(ValueError, match="at least 3 training samples"):
        PandaSES(**{**TINY_IMAGES, "n_steps": 0, "random_state": 0}).fit(_images(2))


def test_vectors_to_an_image_backbone():
    with pytest.raises(ValueError, match=r"expects images of shape .* got a 2-D array of shape \(6, 5\)"):
        image_detector().fit(np.zeros((6, 5)))


# ------------------------------------------------------------------ files


def _write(path, size, color=(200, 30, 30)):
    Image.new("RGB", size, color).save(path)
    return str(path)


def test_missing_file_is_named(tmp_path):
    paths = [_write(tmp_path / "a.png", (20, 20)), str(tmp_path / "missing.png")]
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        image_detector().fit(paths)


def test_corrupt_file_is_named(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    paths = [_write(tmp_path / "a.png", (20, 20)), str(broken)]
    with pytest.raises(ValueError, match=r"Could not read image file .*broken\.png"):
        image_detector().fit(paths)


def test_files_and_pil_images_of_mixed_sizes_are_resized(tmp_path):
    sizes = [(20, 20), (24, 18), (40, 33), (18, 30), (21, 21), (50, 20)]
    paths = [_write(tmp_path / f"{i}.png", size, (40 * i, 100, 200)) for i, size in enumerate(sizes)]
    det = image_detector(n_steps=0).fit(paths)
    scores = det.score_samples(paths[:2] + [Image.new("RGB", (64, 48), (10, 200, 10))])
    assert scores.shape == (3,) and np.all(np.isfinite(scores))


# ------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    "params, name",
    [
        ({"contamination": 0.0}, "contamination"),
        ({"contamination": 0.6}, "contamination"),
        ({"contamination": -0.1}, "contamination"),
        ({"contamination": "most"}, "contamination"),
        ({"batch_size": 0}, "batch_size"),
        ({"n_steps": -1}, "n_steps"),
        ({"precision": "float8"}, "precision"),
    ],
)
def test_out_of_range_parameters(params, name):
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter of PandaDetector"):
        image_detector(**params).fit(_images())


def test_unknown_backbone_lists_valid_names():
    message = r"Unknown backbone 'resnet9000'\. Valid names: efficientnet_lite0, .*resnet18"
    with pytest.raises(ValueError, match=message):
        image_detector(backbone="resnet9000").fit(_images())


def test_unknown_weights_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown weights 'IMAGENET9K' for resnet18; valid: IMAGENET1K_V1"):
        image_detector(backbone="resnet18", weights="IMAGENET9K").fit(_images())


def test_weights_for_another_architecture_name_the_keys(tmp_path):
    five_classes = tmp_path / "five_classes.pt"
    torch.save(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5).state_dict(), five_classes)
    with pytest.raises(ValueError, match=r"2 shape-mismatched keys \(fc\.bias, fc\.weight\)"):
        image_detector(weights=str(five_classes)).fit(_images())
    other = tmp_path / "mlp.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(3, 2)).state_dict(), other)
    with pytest.raises(ValueError, match=r"missing keys \(bn1\.bias.*2 unexpected keys \(0\.bias, 0\.weight\)"):
        image_detector(weights=str(other)).fit(_images())


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Weights file not found: .*nothing\.pt"):
        image_detector(weights=str(tmp_path / "nothing.pt")).fit(_images())


def test_factory_with_named_weights():
    # A factory brings its own weights ("imagenet" and None keep them); a torchvision name has nothing to name.
    with pytest.raises(ValueError, match="brings its own weights: weights must be 'imagenet' or None"):
        image_detector(weights="IMAGENET1K_V1").fit(_images())


def test_factory_that_returns_no_module():
    with pytest.raises(TypeError, match="must return an nn.Module; got int"):
        image_detector(backbone=lambda: 3).fit(_images())


def test_too_many_trainable_stages():
    with pytest.raises(ValueError, match="between 1 and 4 for this backbone"):
        image_detector(n_trainable_stages=5).fit(_images())


def test_crop_larger_than_the_image():
    with pytest.raises(ValueError, match=r"crop_size=32 is larger than the resized image \(20x20\)"):
        image_detector(resize=None).fit(_images())


def test_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device='cuda' was requested but CUDA is not available"):
        image_detector(device="cuda").fit(_images())


def test_zero_steps_keep_the_pretrained_network(tmp_path):
    weights = tmp_path / "pretrained.pt"
    torch.save(tiny_resnet().state_dict(), weights)
    det = image_detector(weights=str(weights), n_steps=0).fit(_images())
    pretrained = build_feature_net(tiny_resnet, str(weights), 2).state_dict()
    adapted = det.net_.state_dict()
    assert adapted.keys() == pretrained.keys()
    for key in pretrained:
        assert torch.equal(adapted[key], pretrained[key]), key
    assert det.center_ is None and det.history_["loss"] == []


def test_missing_fisher_entries_are_named():
    X = np.random.default_rng(0).normal(size=(8, 4))
    with pytest.raises(ValueError, match=r"lacks 4 trainable parameters, e\.g\. \['0\.weight'"):
        vector_detector(regularization="ewc", fisher={"nope": np.ones(3)}).fit(X)


# --------------------------------------------------------------- labels


def test_detector_ignores_y():
    X = np.random.default_rng(0).normal(size=(8, 4))
    a = vector_detector().fit(X, y=["anything"] * 3).score_samples(X)
    b = vector_detector().fit(X).score_samples(X)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "y, message",
    [
        (None, "requires y to be passed"),
        (np.array(["good"] * 4 + ["bad"] * 4), r"no normal label \(normal_label=1"),
        (np.ones(8), "one class only, the normal label"),
        (-np.ones(8), "one class only, no normal label"),
        (np.ones(3), r"shape \(8,\)"),
    ],
)
def test_outlier_exposure_labels(y, message):
    X = np.random.default_rng(0).normal(size=(8, 4))
    with pytest.raises(ValueError, match=message):
        PandaOE(backbone=tiny_mlp, weights=None, n_steps=1).fit(X, y)


# ------------------------------------------------------ scoring new input


@pytest.mark.parametrize("method", ["score_samples", "decision_function", "predict", "extract_features"])
@pytest.mark.parametrize("cls", [PandaDetector, PandaSES, PandaOE])
def test_scoring_before_fit(cls, method):
    with pytest.raises(NotFittedError):
        getattr(cls(**TINY_IMAGES), method)(_images(2))


def test_channel_count_differs_from_training(fitted_on_images):
    with pytest.raises(ValueError, match="fitted on 3-channel images; got 1-channel images"):
        fitted_on_images.score_samples(_images(2, channels=1))
    with pytest.raises(ValueError, match="fitted on 3-channel images; got 1-channel images"):
        fitted_on_images.score_samples(_images(2)[..., 0])


def test_vectors_of_the_wrong_width(fitted_on_vectors):
    with pytest.raises(ValueError, match="6 features"):
        fitted_on_vectors.score_samples(np.zeros((2, 5)))


def test_images_to_a_vector_model(fitted_on_vectors):
    with pytest.raises(ValueError, match="fitted on vectors with 6 features; got 1-channel images"):
        fitted_on_vectors.score_samples(np.zeros((2, 8, 8)))


def test_vectors_to_an_image_model(fitted_on_images):
    with pytest.raises(ValueError, match="fitted on 3-channel images; got vectors with 5 features"):
        fitted_on_images.score_samples(np.zeros((2, 5)))


def test_float16_images_score_like_the_same_images_in_float32(fitted_on_images):
    # float16 images in [0, 1] are already scaled: they must not be divided by 255 again.
    half = (_images() / 255.0).astype(np.float16)
    np.testing.assert_allclose(
        fitted_on_images.score_samples(half),
        fitted_on_images.score_samples(half.astype(np.float32)),
        rtol=1e-5,
        atol=1e-6,
    )


# Found by a reading of bad inputs (2026-12-07, late): each gave a message from deep inside, or no word.
def test_a_folder_is_named_as_a_folder(tmp_path):
    detector = PandaDetector(**TINY_IMAGES, n_steps=0, random_state=0).fit(np.zeros((4, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"Got a folder .*pass a list of its image files"):
        detector.score_samples(str(tmp_path))
    with pytest.raises(ValueError, match=r"is a folder, not an image file"):
        detector.score_samples([str(tmp_path)])


def test_torch_tensors_are_read_as_the_arrays_they_hold():
    images = np.random.default_rng(0).random((4, 8, 8, 3)).astype(np.float32)
    detector = PandaDetector(**TINY_IMAGES, n_steps=0, random_state=0).fit(images)
    expected = detector.score_samples(images)
    tensor = torch.from_numpy(images).requires_grad_()
    np.testing.assert_array_equal(detector.score_samples(tensor), expected)
    bfloat16 = torch.from_numpy(images).bfloat16()
    np.testing.assert_array_equal(detector.score_samples(bfloat16), detector.score_samples(bfloat16.float().numpy()))
    # Lists of them, tensor subclasses of other packages (torchvision's (C, H, W) images), the scorers.
    np.testing.assert_array_equal(detector.score_samples(list(tensor)), expected)
    from torchvision import tv_tensors

    channels_first = [tv_tensors.Image(image.permute(2, 0, 1)) for image in torch.from_numpy(images)]
    np.testing.assert_array_equal(detector.score_samples(channels_first), expected)
    features = torch.randn(10, 4, requires_grad=True)
    scorer = KNNScorer().fit(features)
    np.testing.assert_array_equal(scorer.score_samples(features), KNNScorer().fit(features.detach().numpy())
                                  .score_samples(features.detach().numpy()))


@pytest.mark.parametrize("dtype", [">u2", ">f4", ">f8", ">i8"])
def test_big_endian_arrays_read_as_their_native_twins(dtype):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 256, size=(4, 8, 8)) if dtype[1] in "ui" else rng.random((4, 8, 8))
    if dtype == ">u2":
        values = values * 257
    native = values.astype(dtype[1:]) if dtype != ">u2" else values.astype(np.uint16)
    detector = PandaDetector(**TINY_IMAGES, n_steps=0, random_state=0).fit(native)
    np.testing.assert_array_equal(detector.score_samples(values.astype(dtype)), detector.score_samples(native))


def test_channel_axes_that_could_be_either_warn():
    with pytest.warns(UserWarning, match=r"could hold its channels on axis 1 or last.*np\.moveaxis"):
        check_input(np.zeros((2, 3, 8, 3), dtype=np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_input(np.zeros((2, 8, 8, 3), dtype=np.uint8))
        check_input(np.zeros((2, 3, 8, 8), dtype=np.uint8))


def test_uint16_images_holding_8_bit_values_warn():
    with pytest.warns(UserWarning, match=r"values up to 200 only.*X\.astype\(np\.uint8\)"):
        check_input(np.full((2, 8, 8), 200, dtype=np.uint16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_input(np.full((2, 8, 8), 300, dtype=np.uint16))
