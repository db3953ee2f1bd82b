"""PandaPatchDetector: maps at each input's size, local defects found, the outlier contract, persistence."""

import pickle

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.utils._param_validation import InvalidParameterError

from conftest import TINY_LAYERS, tiny_cnn, tiny_mlp

from sklearn_panda import PandaDetector, PandaPatchDetector, load
from sklearn_panda._engine.coreset import greedy_coreset
from sklearn_panda._engine.patch_net import default_layers
from sklearn_panda._engine.patch_features import working_size

TINY = dict(backbone=tiny_cnn, weights=None, layers=TINY_LAYERS, resize=None, random_state=0)
# A 10% bank: the default 1% of a few tiny images' patches is a handful of rows.
TINY_10 = dict(TINY, coreset_ratio=0.1)


def stripes(n, size=48, seed=0):
    """Normal images: horizontal stripes, each of the 8 phases in turn, a little noise; uint8 (n, size, size)."""
    rng = np.random.default_rng(seed)
    rows = np.arange(size)[None, :, None]
    phase = (np.arange(n) % 8)[:, None, None]
    images = np.where((rows + phase) % 8 < 4, 200, 40) + rng.normal(0, 4, size=(n, size, size))
    return np.clip(images, 0, 255).astype(np.uint8)


def with_square(images, top=20, left=24, side=8):
    """A checkerboard square, a texture the stripes never show, at rows and columns [top, top + side)."""
    defective = images.copy()
    checker = np.add.outer(np.arange(side), np.arange(side)) % 2 == 0
    defective[:, top : top + side, left : left + side] = np.where(checker, 255, 0)
    return defective


@pytest.fixture(scope="module")
def fitted():
    return PandaPatchDetector(**TINY_10).fit(stripes(16))


def test_a_square_on_stripes_is_found_where_it_is():
    detector = PandaPatchDetector(**TINY_10).fit(stripes(16, size=96))
    normal = stripes(6, seed=1, size=96)
    defective = with_square(normal, top=44, left=40)
    assert detector.score_samples(defective).max() < detector.score_samples(normal).min()
    maps = detector.anomaly_maps(defective)
    assert maps.shape == (6, 96, 96) and maps.dtype == np.float32
    for one in maps:
        row, col = np.unravel_index(np.argmax(one), one.shape)
        # Near the square's centre (47.5, 43.5), within a stride-8 cell; the far corner is 60 away.
        assert np.hypot(row - 47.5, col - 43.5) <= 12
        assert one[44:52, 40:48].mean() > 3 * one[:16, :16].mean()


def test_scores_come_with_the_maps_and_bound_them(fitted):
    images = with_square(stripes(3, seed=2))
    maps, scores = fitted.anomaly_maps(images, return_scores=True)
    np.testing.assert_allclose(scores, fitted.score_samples(images), rtol=1e-6)
    np.testing.assert_array_equal(fitted.decision_function(images), scores - fitted.offset_)
    np.testing.assert_array_equal(fitted.predict(images), np.where(scores < fitted.offset_, -1, 1))
    # The single worst patch's distance bounds the map: upsampling and smoothing only average patch distances.
    worst = PandaPatchDetector(**TINY_10, image_score="patch", n_worst_patches=1).fit(stripes(16))
    maps, scores = worst.anomaly_maps(images, return_scores=True)
    assert (-scores >= maps.reshape(3, -1).max(axis=1) - 1e-6).all()


def test_maps_have_each_inputs_size_for_files_and_pil_images(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [(40, 56), (64, 48), (36, 36)]
    paths = []
    for index, (height, width) in enumerate(sizes):
        path = tmp_path / f"{index}.png"
        Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    detector = PandaPatchDetector(**{**TINY, "resize": "auto"}).fit(paths)
    maps = detector.anomaly_maps(paths)
    assert isinstance(maps, list) and [m.shape for m in maps] == sizes
    assert all(m.dtype == np.float32 for m in maps)
    pil_maps = detector.anomaly_maps([Image.open(path) for path in reversed(paths)])
    assert [m.shape for m in pil_maps] == sizes[::-1]
    np.testing.assert_allclose(pil_maps[0], maps[-1], rtol=1e-5, atol=1e-6)


def test_leave_one_out_training_scores_leave_each_images_own_patches_out():
    images = stripes(6)
    detector = PandaPatchDetector(**{**TINY, "coreset_ratio": 1.0}).fit(images)
    # With every patch in the bank, a training image finds itself: distance 0 everywhere.
    np.testing.assert_allclose(detector.score_samples(images), 0.0, atol=1e-3)
    assert (detector.training_scores_ < -1e-2).all()
    assert len(detector.memory_bank_) == detector.n_training_patches_ == 6 * 6 * 6


def test_contamination_flags_that_fraction_of_the_training_images():
    images = stripes(20)
    labels = PandaPatchDetector(**TINY, contamination=0.25).fit_predict(images)
    assert (labels == -1).sum() == 5


def test_coreset_ratio_sets_the_banks_size(fitted):
    assert len(fitted.memory_bank_) == int(np.ceil(0.1 * fitted.n_training_patches_))
    assert fitted.memory_bank_.shape[1] == 16 + 16  # both maps concatenated
    projected = PandaPatchDetector(**TINY, n_features=12, coreset_ratio=0.5).fit(stripes(4))
    assert projected.memory_bank_.shape == (int(np.ceil(0.5 * 4 * 36)), 12)


def test_same_seed_same_scores_and_nothing_global_is_seeded():
    images = stripes(8)
    state = torch.random.get_rng_state()
    first = PandaPatchDetector(**TINY).fit(images).score_samples(images)
    assert torch.equal(state, torch.random.get_rng_state())
    np.testing.assert_array_equal(first, PandaPatchDetector(**TINY).fit(images).score_samples(images))


def test_save_load_and_pickle_give_the_same_maps(fitted, tmp_path):
    images = with_square(stripes(3, seed=3))
    expected = fitted.anomaly_maps(images)
    fitted.save(tmp_path / "patch.pt")
    loaded = load(tmp_path / "patch.pt", backbone=tiny_cnn)
    np.testing.assert_array_equal(loaded.anomaly_maps(images), expected)
    assert loaded.layers_ == TINY_LAYERS and loaded.offset_ == fitted.offset_
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(fitted)).anomaly_maps(images), expected)


def test_a_named_backbone_takes_its_familys_layers_and_saves():
    detector = PandaPatchDetector(backbone="resnet18", weights=None, resize=None, random_state=0)
    detector.fit(stripes(3, size=32))
    assert detector.layers_ == ["layer2", "layer3"]
    assert detector.memory_bank_.shape[1] == 128 + 256


@pytest.mark.parametrize(
    "name, expected",
    [("resnet18", ["layer2", "layer3"]), ("wide_resnet50_2", ["layer2", "layer3"]), ("convnext_tiny", None)],
)
def test_default_layers_are_the_stage_ends_at_strides_8_and_16(name, expected):
    model = torchvision.models.get_model(name, weights=None)
    layers = default_layers(model)
    if expected is not None:
        assert layers == expected
    strides = {}
    from sklearn_panda._engine.patch_net import split_patch_net, stage_outputs

    with torch.no_grad():
        outputs = stage_outputs(split_patch_net(model, layers), torch.zeros(1, 3, 224, 224))
    strides = [224 // output.shape[-1] for output in outputs]
    assert strides == [8, 16]


def test_efficientnet_lite0_layers():
    pytest.importorskip("efficientnet_lite_pytorch")
    from sklearn_panda._engine.backbones import build_model

    assert default_layers(build_model("efficientnet_lite0", None)) == ["_blocks.4", "_blocks.10"]


def test_networks_without_stride_8_and_16_maps_need_layers():
    with pytest.raises(ValueError, match="set layers|Set layers"):
        PandaPatchDetector(backbone=tiny_cnn, weights=None).fit(stripes(3))
    with pytest.raises(ValueError, match="no stage ending in a feature map at stride 8"):
        PandaPatchDetector(backbone="vit_b_16", weights=None).fit(stripes(2, size=32))


@pytest.mark.parametrize(
    "parameters, error, message",
    [
        ({"coreset_ratio": 0}, InvalidParameterError, "coreset_ratio"),
        ({"coreset_ratio": 1.5}, InvalidParameterError, "coreset_ratio"),
        ({"neighbourhood": 2}, ValueError, "neighbourhood must be odd"),
        ({"layers": []}, ValueError, "non-empty list"),
        ({"resize": (10, 0)}, ValueError, "resize must be"),
        ({"layers": ["5", "nope"]}, ValueError, "no node or module 'nope'"),
    ],
)
def test_bad_parameters_get_a_clear_error(parameters, error, message):
    with pytest.raises(error, match=message):
        PandaPatchDetector(**{**TINY, **parameters}).fit(stripes(3))


def test_one_training_image_is_refused():
    with pytest.raises(ValueError, match="at least 2 training images"):
        PandaPatchDetector(**TINY).fit(stripes(1))


def test_vectors_are_single_patches_and_have_no_maps():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5))
    detector = PandaPatchDetector(backbone=tiny_mlp, weights=None, coreset_ratio=0.5, random_state=0).fit(X)
    assert detector.score_samples(X[:3]).shape == (3,)
    with pytest.raises(ValueError, match="needs images"):
        detector.anomaly_maps(X[:3])
    with pytest.raises(ValueError, match="expects images"):
        PandaPatchDetector(backbone="resnet18", weights=None).fit(X)


def test_new_images_must_match_the_training_layout(fitted):
    with pytest.raises(ValueError, match="1-channel images; got 3-channel"):
        fitted.score_samples(np.zeros((2, 48, 48, 3), dtype=np.uint8))


def test_maps_are_asked_of_the_patch_detector_only():
    assert not hasattr(PandaDetector(), "anomaly_maps")


def test_greedy_coreset_picks_the_farthest_point_each_time():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(3000, 6))
    generator = torch.Generator().manual_seed(3)
    chosen = greedy_coreset(torch.from_numpy(points.astype(np.float32)), 700, projection_dim=None, generator=generator)
    chosen = chosen.tolist()
    assert len(set(chosen)) == 700
    # Each pick is the point farthest from those before it (up to float32 rounding of near-ties).
    nearest = ((points - points[chosen[0]]) ** 2).sum(1)
    for pick in chosen[1:]:
        assert nearest[pick] >= nearest.max() * (1 - 1e-5)
        nearest = np.minimum(nearest, ((points - points[pick]) ** 2).sum(1))
    # Duplicated points: still distinct rows.
    assert len(set(greedy_coreset(torch.zeros(50, 3), 50).tolist())) == 50


def test_working_size():
    assert working_size(640, 640, "auto") == (640, 640)
    assert working_size(100, 50, "auto") == (448, 224)
    assert working_size(3000, 2000, "auto") == (1536, 1024)
    assert working_size(100, 50, (30, 40)) == (30, 40)


# Runs of positions per banded product: the default (one run per line here), and several runs.
@pytest.mark.parametrize("block", [None, 5, 16, 56])
def test_gaussian_smoothing_is_scipys_mirrored_gaussian_filter(block, monkeypatch):
    from scipy import ndimage

    from sklearn_panda._engine import maps as map_module
    from sklearn_panda._engine.maps import gaussian_smoothing

    if block is not None:
        monkeypatch.setattr(map_module, "SMOOTHING_BLOCK", block)
    maps = torch.rand(3, 1, 40, 57, generator=torch.Generator().manual_seed(0))
    for sigma in (1.0, 4.0):
        expected = np.stack([ndimage.gaussian_filter(m[0].double().numpy(), sigma, mode="mirror") for m in maps])
        np.testing.assert_allclose(gaussian_smoothing(maps, sigma)[:, 0].numpy(), expected, atol=1e-6)
    assert torch.equal(gaussian_smoothing(maps, 0), maps)


def test_auto_searches_large_banks_through_a_faiss_graph(monkeypatch):
    pytest.importorskip("faiss")
    import sklearn_panda._estimators.patch_bank as patch_bank

    monkeypatch.setattr(patch_bank, "BANK_INDEX_MIN_ROWS", 50)
    images = stripes(12)
    approximate = PandaPatchDetector(**TINY, coreset_ratio=0.5).fit(images)
    assert approximate.scorer_.algorithm == "faiss" and approximate.scorer_.faiss_index == "HNSW16"
    exact = PandaPatchDetector(**TINY, coreset_ratio=0.5, algorithm="brute").fit(images)
    test = with_square(stripes(4, seed=2), top=20, left=24)
    # Candidates re-ranked by their exact distances: the maps agree where the graph found the nearest patch.
    np.testing.assert_allclose(approximate.score_samples(test), exact.score_samples(test), rtol=1e-3)
    # Leave-one-out training scores are exact either way.
    np.testing.assert_allclose(approximate.training_scores_, exact.training_scores_, rtol=1e-6)
    small = PandaPatchDetector(**TINY, coreset_ratio=0.05).fit(images)
    assert small.scorer_.algorithm == "brute"


def test_a_poor_graph_still_gives_the_exact_searchs_image_scores_and_offsets(monkeypatch):
    """Each image's largest patch distances are searched again exactly until the ``n_worst_patches``
    largest (4, the default) are certain."""
    pytest.importorskip("faiss")
    import sklearn_panda._estimators.patch_bank as patch_bank

    monkeypatch.setattr(patch_bank, "BANK_INDEX_MIN_ROWS", 1)
    monkeypatch.setattr(patch_bank, "BANK_INDEX", "HNSW4")
    monkeypatch.setattr(patch_bank, "BANK_INDEX_PARAMS", {"efSearch": 1, "k_factor": 1})
    monkeypatch.setattr(patch_bank, "CERTIFIED_PATCHES", 2)  # several rounds of certify_largest
    images = stripes(12)
    poor = PandaPatchDetector(**TINY, coreset_ratio=0.5).fit(images)
    exact = PandaPatchDetector(**TINY, coreset_ratio=0.5, algorithm="brute").fit(images)
    assert poor.scorer_.faiss_index == "HNSW4" and poor.fine_scorer_.faiss_index == "HNSW4"
    test = np.concatenate([stripes(3, seed=3), with_square(stripes(3, seed=2), top=20, left=24)])
    poor_maps, poor_scores = poor.anomaly_maps(test, return_scores=True)
    exact_maps, exact_scores = exact.anomaly_maps(test, return_scores=True)
    # The graph misses nearest patches (the maps differ) ...
    assert np.abs(poor_maps - exact_maps).max() > 1e-3
    # ... yet the image scores, the training scores and the offsets are the exact search's.
    np.testing.assert_allclose(poor_scores, exact_scores, rtol=1e-6)
    np.testing.assert_allclose(poor.training_scores_, exact.training_scores_, rtol=1e-6)
    assert poor.offset_ == pytest.approx(exact.offset_, rel=1e-6)


def mean_distances(rows, gallery, neighbours):
    return np.linalg.norm(rows[:, None, :] - gallery[neighbours], axis=2).mean(axis=1)


@pytest.mark.parametrize("n_largest", [1, 5, 40, 500])  # 500: more than the 300 patches
@pytest.mark.parametrize("seed", range(5))
def test_certify_largest_makes_the_largest_distances_exact_and_never_lowers_below_exact(seed, n_largest):
    from sklearn_panda._estimators.patch_bank import certify_largest
    from sklearn_panda.scorers import brute_force_kneighbors

    rng = np.random.default_rng(seed)
    gallery = rng.normal(size=(200, 6)).astype(np.float32)
    rows = rng.normal(size=(300, 6)).astype(np.float32)
    _, nearest = brute_force_kneighbors(rows, gallery, 2)
    exact = mean_distances(rows, gallery, nearest)
    # An approximate search: some patches' neighbours are farther rows than the nearest.
    _, farther = brute_force_kneighbors(rows, gallery, 40)
    picked = np.where(rng.random((300, 1)) < 0.3, farther[:, -2:], nearest)
    approximate = mean_distances(rows, gallery, picked)
    certified = certify_largest(approximate.copy(), rows, gallery, 2, n_largest)
    # The n_largest largest values (all of them where there are fewer) are the exact search's, held
    # by the patches that hold them there.
    certain = min(n_largest, len(rows))
    np.testing.assert_allclose(np.sort(certified)[-certain:], np.sort(exact)[-certain:], rtol=1e-5)
    assert np.all(certified >= exact - 1e-5) and np.all(certified <= approximate + 1e-5)
    top = certified >= np.sort(certified)[-certain] - 1e-6
    np.testing.assert_allclose(certified[top], exact[top], rtol=1e-5)


def test_leave_one_out_scores_with_few_candidates_equal_those_over_the_whole_bank(monkeypatch):
    import sklearn_panda._estimators.patch_bank as patch_bank

    images = stripes(10)
    few = PandaPatchDetector(**TINY, coreset_ratio=0.4, algorithm="brute").fit(images).training_scores_
    # Every bank row a candidate: the exact leave-one-out search, by construction.
    monkeypatch.setattr(patch_bank, "LEAVE_OUT_CANDIDATES", 10**6)
    whole = PandaPatchDetector(**TINY, coreset_ratio=0.4, algorithm="brute").fit(images).training_scores_
    np.testing.assert_allclose(few, whole, rtol=1e-6)


# Every parameter and another valid value for it: after fit, none may change what the detector
# computes (issue 41, item 10; scikit-learn's rule that fitted state is fixed at fit).
OTHER_VALUES = {
    "backbone": "resnet18",
    "weights": "imagenet",
    "layers": ["3", "5"],
    "resize": 32,
    "neighbourhood": 5,
    "border": "inside",
    "n_features": 8,
    "coreset_ratio": 0.5,
    "projection_dim": 4,
    "n_neighbors": 3,
    "sigma": 1.0,
    "image_score": "map",
    "n_worst_patches": 1,
    "algorithm": "faiss",
    "contamination": 0.2,
    "pixel_contamination": 0.3,
    "batch_size": 1,
    "device": "cpu",
    "random_state": 7,
    "verbose": 1,
}


def test_every_parameter_has_another_value_in_the_fitted_state_test():
    assert set(OTHER_VALUES) == set(PandaPatchDetector().get_params())


def test_set_params_after_fit_changes_no_score_map_or_export(tmp_path):
    images = stripes(8)
    test = with_square(stripes(3, seed=5))
    detector = PandaPatchDetector(**TINY).fit(images)
    maps, scores = detector.anomaly_maps(test, return_scores=True)
    offset, predictions = detector.offset_, detector.predict(test)
    pixel_offset, regions = detector.pixel_offset_, detector.defect_regions(test)
    for name, value in OTHER_VALUES.items():
        assert detector.get_params()[name] != value, name
    detector.set_params(**OTHER_VALUES)
    changed_maps, changed_scores = detector.anomaly_maps(test, return_scores=True)
    np.testing.assert_allclose(changed_maps, maps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(changed_scores, scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(detector.predict(test), predictions)
    assert detector.offset_ == offset and detector.pixel_offset_ == pixel_offset
    assert detector.defect_regions(test) == regions
    pytest.importorskip("onnxruntime")
    from sklearn_panda.deploy import OnnxDetector, export_onnx

    export_onnx(detector, tmp_path / "patch.onnx", image_size=(48, 48))
    onnx_detector = OnnxDetector(tmp_path / "patch.onnx")
    np.testing.assert_allclose(onnx_detector.score_samples(test), scores, rtol=1e-4, atol=1e-5)


def test_leave_one_out_with_fewer_bank_rows_from_other_images_than_n_neighbors_uses_only_those():
    # Issue 41, item 5: two images and n_neighbors=40; the bank holds fewer than 40 rows of each.
    images = stripes(2)
    with pytest.warns(UserWarning, match="come from other images"):
        detector = PandaPatchDetector(
                **TINY, n_neighbors=40, coreset_ratio=0.1, image_score="patch", n_worst_patches=1
            ).fit(images)
    assert len(detector.memory_bank_) == 41
    from sklearn_panda._estimators.validation import check_input

    spec = detector.patch_spec_
    for index in range(2):
        checked = check_input(images[index : index + 1])
        ((_, (features,), _, _, _),) = detector._embeddings(detector.net_, checked, detector.device_, spec, "")
        rows = features[0].permute(1, 2, 0).reshape(-1, features.shape[1]).numpy()
        # Which bank rows are this image's own: those equal to one of its patches.
        own = (np.abs(detector.memory_bank_[:, None, :] - rows[None]).max(axis=2) < 1e-6).any(axis=1)
        others = detector.memory_bank_[~own]
        distances = np.sqrt(((rows[:, None, :] - others[None]) ** 2).sum(-1))
        k = min(40, len(others))
        expected = -np.sort(distances, axis=1)[:, :k].mean(axis=1).max()
        assert detector.training_scores_[index] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("image_score", ["patch", "map"])
def test_the_image_score_is_the_largest_patch_distance_or_the_maps_maximum(image_score):
    detector = PandaPatchDetector(**TINY, image_score=image_score, n_worst_patches=1).fit(stripes(8))
    images = with_square(stripes(3, seed=2))
    maps, scores = detector.anomaly_maps(images, return_scores=True)
    np.testing.assert_allclose(scores, detector.score_samples(images), rtol=1e-6)
    if image_score == "map":
        np.testing.assert_allclose(scores, -maps.reshape(3, -1).max(axis=1), rtol=1e-5)
    else:
        # Taken before upsampling and smoothing: the smoothing does not change it, and the
        # unsmoothed map (bilinear between the patches) stays at or below it.
        unsmoothed = PandaPatchDetector(**TINY, sigma=0.0, image_score="patch", n_worst_patches=1).fit(stripes(8))
        np.testing.assert_allclose(scores, unsmoothed.score_samples(images), rtol=1e-6)
        assert (scores <= -unsmoothed.anomaly_maps(images).reshape(3, -1).max(axis=1) + 1e-6).all()
        assert not np.allclose(scores, -maps.reshape(3, -1).max(axis=1), rtol=1e-3)


@pytest.mark.parametrize("n_worst", [1, 3, 50])
def test_the_image_score_averages_each_banks_n_worst_patch_distances(n_worst):
    from sklearn_panda._estimators.patch_bank import patch_rows
    from sklearn_panda._estimators.validation import check_input

    detector = PandaPatchDetector(**TINY, n_worst_patches=n_worst, algorithm="brute").fit(stripes(8))
    images = with_square(stripes(3, seed=2))
    ((_, grids, *_),) = detector._embeddings(detector.net_, check_input(images), "cpu", detector.patch_spec_, "test")
    expected = 0.0
    banks = (detector.memory_bank_, detector.fine_bank_)
    for grid, bank, scale in zip(grids, banks, detector.score_scales_, strict=True):
        rows = patch_rows(grid).numpy()
        nearest = np.linalg.norm(rows[:, :, None] - bank[None, None], axis=3).min(axis=2)
        # 36 patches an image: 50 averages all of them.
        expected = expected + np.sort(nearest, axis=1)[:, -n_worst:].mean(axis=1) / scale
    np.testing.assert_allclose(-detector.score_samples(images), expected, rtol=1e-5)


def test_a_model_fitted_before_n_worst_patches_existed_scores_by_its_worst_patch():
    detector = PandaPatchDetector(**TINY, n_worst_patches=1).fit(stripes(8))
    images = with_square(stripes(3, seed=2))
    scores = detector.score_samples(images)
    del detector.patch_spec_["n_worst_patches"]  # as saved before the parameter existed ...
    detector.set_params(n_worst_patches=4)  # ... with today's default among its parameters
    np.testing.assert_array_equal(detector.score_samples(images), scores)


def test_pixel_offset_is_exceeded_in_pixel_contamination_of_the_training_maps():
    detector = PandaPatchDetector(**TINY, pixel_contamination=0.25).fit(stripes(8))
    maxima = detector.training_map_maxima_
    assert maxima.shape == (8,) and (maxima > detector.pixel_offset_).sum() == 2
    # The leave-one-out maps bound the images' own scores with image_score="map".
    as_map = PandaPatchDetector(**TINY, image_score="map").fit(stripes(8))
    np.testing.assert_allclose(as_map.training_map_maxima_, -as_map.training_scores_, rtol=1e-6)


def test_masks_are_the_maps_above_the_pixel_offset_and_regions_describe_them(tmp_path):
    # Every patch in the bank: each stripe phase's other image stays in a training image's
    # leave-one-out bank (with 10%, the bank's holes leave the offset above the square's map).
    fitted = PandaPatchDetector(**TINY, coreset_ratio=1.0).fit(stripes(16))
    images = np.concatenate([with_square(stripes(2, seed=4)), stripes(2, seed=5)])
    maps = fitted.anomaly_maps(images)
    masks = fitted.predict_masks(images)
    assert masks.dtype == bool and masks.shape == maps.shape
    np.testing.assert_array_equal(masks, maps > fitted.pixel_offset_)
    assert masks[:2, 20:28, 24:32].all(axis=(1, 2)).all() and not masks[2:].any()
    regions = fitted.defect_regions(images)
    assert len(regions) == 4 and regions[2:] == [[], []]
    for index, found in enumerate(regions[:2]):
        assert sum(region["area"] for region in found) == masks[index].sum()
        peaks = [region["peak"] for region in found]
        assert peaks == sorted(peaks, reverse=True) and peaks[0] == pytest.approx(maps[index].max())
        covered = np.zeros_like(masks[index])
        for region in found:
            assert region["image"] == index
            covered[region["top"] : region["bottom"], region["left"] : region["right"]] = True
        assert covered[masks[index]].all()
    # Files of different sizes: one mask per file, at its size.
    paths = []
    for index, size in enumerate([(48, 48), (48, 64)]):
        path = tmp_path / f"{index}.png"
        Image.fromarray(with_square(stripes(1, size=max(size), seed=6))[0][: size[0], : size[1]]).save(path)
        paths.append(str(path))
    file_masks = fitted.predict_masks(paths)
    assert isinstance(file_masks, list) and [m.shape for m in file_masks] == [(48, 48), (48, 64)]


def test_find_regions_joins_pixels_that_touch_at_a_corner_and_finds_none_below_the_threshold():
    from sklearn_panda._estimators.regions import find_regions

    anomaly_map = np.zeros((5, 5))
    anomaly_map[1, 1] = anomaly_map[2, 2] = 3.0
    anomaly_map[4, 0] = 4.0
    found = find_regions(anomaly_map, 1.0, image=7)
    assert [(r["region"], r["area"], r["peak"], r["image"]) for r in found] == [(0, 1, 4.0, 7), (1, 2, 3.0, 7)]
    assert (found[1]["top"], found[1]["left"], found[1]["bottom"], found[1]["right"]) == (1, 1, 3, 3)
    assert find_regions(anomaly_map, 5.0) == []
    with pytest.raises(ValueError, match="2-D"):
        find_regions(np.zeros((2, 2, 2)), 0.0)
