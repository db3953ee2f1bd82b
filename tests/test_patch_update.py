"""PandaPatchDetector.partial_fit: new normal images join a fitted bank, the offsets measured again."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_LAYERS, tiny_cnn

from sklearn_panda import PandaPatchDetector, load
from sklearn_panda._engine.coreset import StreamingCoreset
from sklearn_panda._estimators import patch_bank

# Every patch kept: partial_fit must then give what one fit on all the images gives.
EVERY_PATCH = dict(backbone=tiny_cnn, weights=None, layers=TINY_LAYERS, resize=None, coreset_ratio=1.0,
                   batch_size=4, random_state=0)
FITTED = ["memory_bank_", "memory_bank_images_", "fine_bank_", "fine_bank_images_", "training_scores_",
          "training_map_maxima_", "score_scales_"]


def textures(n, seed, size=40):
    """Normal images: smooth random grey textures, uint8 (n, size, size, 3)."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(128, 30, size=(n, size // 8, size // 8, 1))
    images = np.kron(coarse, np.ones((1, 8, 8, 3))) + rng.normal(0, 3, size=(n, size, size, 3))
    return np.clip(images, 0, 255).astype(np.uint8)


def fitted_state(detector):
    state = {name: np.array(getattr(detector, name)) for name in FITTED}
    state.update(offset_=detector.offset_, pixel_offset_=detector.pixel_offset_, n=detector.n_samples_seen_,
                 patches=detector.n_training_patches_, calibration=[e["image"] for e in detector.calibration_maps_])
    return state


def assert_same_state(one, other):
    assert one.keys() == other.keys()
    for name in one:
        np.testing.assert_allclose(one[name], other[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def normal():
    return textures(8, seed=0)


def test_partial_fit_in_two_steps_equals_one_fit_where_every_patch_is_kept(normal):
    once = PandaPatchDetector(**EVERY_PATCH).fit(normal)
    twice = PandaPatchDetector(**EVERY_PATCH).partial_fit(normal[:4]).partial_fit(normal[4:])
    assert_same_state(fitted_state(once), fitted_state(twice))
    assert twice.n_samples_seen_ == 8 and len(twice.memory_bank_) == twice.n_training_patches_
    new = textures(3, seed=1)
    new[0, 10:20, 10:20] = 255
    np.testing.assert_allclose(once.score_samples(new), twice.score_samples(new), rtol=1e-5)
    np.testing.assert_allclose(once.anomaly_maps(new), twice.anomaly_maps(new), rtol=1e-5, atol=1e-6)


def test_partial_fit_changes_the_offsets_to_those_of_all_the_images(normal):
    first = PandaPatchDetector(**EVERY_PATCH).fit(normal[:3])
    before = fitted_state(first)
    first.partial_fit(normal[3:])
    # Three images' calibration gave other offsets than eight images' does.
    assert first.offset_ != before["offset_"] and first.pixel_offset_ != before["pixel_offset_"]
    assert len(first.training_scores_) == 8


def test_the_bank_grows_by_the_coreset_rule_keeping_its_rows(normal):
    detector = PandaPatchDetector(**dict(EVERY_PATCH, coreset_ratio=0.1)).fit(normal[:4])
    bank, images = detector.memory_bank_.copy(), detector.memory_bank_images_.copy()
    detector.partial_fit(normal[4:])
    n_bank = int(np.ceil(0.1 * detector.n_training_patches_))
    assert len(detector.memory_bank_) == n_bank > len(bank)
    np.testing.assert_array_equal(detector.memory_bank_[: len(bank)], bank)
    np.testing.assert_array_equal(detector.memory_bank_images_[: len(bank)], images)
    assert set(detector.memory_bank_images_[len(bank):]) <= set(range(4, 8))
    assert detector.scorer_.n_samples_fit_ == n_bank


def test_the_calibration_images_are_a_random_sample_of_all_the_images_seen(monkeypatch, normal):
    monkeypatch.setattr(patch_bank, "CALIBRATION_IMAGES", 3)
    detector = PandaPatchDetector(**EVERY_PATCH).fit(normal[:4])
    detector.partial_fit(normal[4:])
    chosen = [entry["image"] for entry in detector.calibration_maps_]
    assert len(chosen) == len(detector.training_scores_) == 3
    keys = [entry["key"] for entry in detector.calibration_maps_]
    assert max(keys) < 1 and len(set(chosen)) == 3


def test_partial_fit_on_an_unfitted_detector_is_fit(normal):
    assert_same_state(
        fitted_state(PandaPatchDetector(**EVERY_PATCH).partial_fit(normal)),
        fitted_state(PandaPatchDetector(**EVERY_PATCH).fit(normal)),
    )


def test_partial_fit_refuses_images_of_another_kind_and_changes_nothing(normal):
    detector = PandaPatchDetector(**EVERY_PATCH).fit(normal[:4])
    before = fitted_state(detector)
    with pytest.raises(ValueError, match="3-channel images; got 1-channel"):
        detector.partial_fit(normal[4:, :, :, 0])
    assert_same_state(before, fitted_state(detector))


def test_a_failed_partial_fit_leaves_the_detector_unchanged(tmp_path, normal):
    paths = []
    for index, image in enumerate(normal):
        paths.append(tmp_path / f"good{index}.png")
        Image.fromarray(image).save(paths[-1])
    detector = PandaPatchDetector(**EVERY_PATCH).fit(paths[:4])
    before = fitted_state(detector)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    # The broken file comes after two good ones: the update fails half-way through its images.
    with pytest.raises(ValueError, match="Could not read image file .*broken.png"):
        detector.partial_fit(paths[4:6] + [broken])
    assert_same_state(before, fitted_state(detector))
    detector.partial_fit(paths[4:])
    assert detector.n_samples_seen_ == 8


def test_partial_fit_after_save_and_load_equals_it_before(tmp_path, normal):
    detector = PandaPatchDetector(**EVERY_PATCH).fit(normal[:4])
    detector.save(tmp_path / "model.pt")
    loaded = load(tmp_path / "model.pt", backbone=tiny_cnn)
    assert loaded.calibration_maps_[0]["maps"][0].dtype == np.float16
    assert_same_state(fitted_state(detector.partial_fit(normal[4:])), fitted_state(loaded.partial_fit(normal[4:])))


def test_a_detector_fitted_without_calibration_images_says_to_fit_again(normal):
    detector = PandaPatchDetector(**EVERY_PATCH).fit(normal[:4])
    del detector.calibration_maps_
    with pytest.raises(ValueError, match="older version .* Fit it again"):
        detector.partial_fit(normal[4:])


def greedy_from(chosen, candidates, n_new):
    """Plain greedy k-center: the ``n_new`` candidates picked one by one, each the farthest from those chosen."""
    picks = []
    for _ in range(n_new):
        nearest = torch.cdist(candidates, torch.cat([chosen, candidates[picks]])).min(dim=1).values
        picks.append(int(torch.argmax(nearest)))
    return sorted(picks)


def test_streaming_coreset_goes_on_greedily_from_an_earlier_selection():
    points = torch.randn(300, 6, generator=torch.Generator().manual_seed(0))
    earlier = StreamingCoreset(0.1, projection_dim=None, generator=torch.Generator().manual_seed(1))
    earlier.add(points[:100], torch.zeros(100, dtype=torch.int64))
    kept_rows, kept_labels = earlier.select()
    # A pool of every new row (pool_factor * ratio = 1): stage two alone decides.
    later = StreamingCoreset(0.1, projection_dim=None, pool_factor=10, generator=torch.Generator().manual_seed(2))
    later.add(points[100:], torch.arange(100, 300))
    rows, labels = later.select(chosen=(kept_rows, kept_labels, earlier.n_seen_))
    assert len(rows) == 30
    torch.testing.assert_close(rows[:10], kept_rows)
    assert labels[:10].eq(0).all()
    assert (labels[10:] - 100).tolist() == greedy_from(kept_rows, points[100:], 20)


def test_streaming_coreset_with_every_row_kept_gives_the_rows_of_one_selection():
    points = torch.randn(120, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(120)
    earlier = StreamingCoreset(1.0)
    earlier.add(points[:50], labels[:50])
    later = StreamingCoreset(1.0)
    later.add(points[50:], labels[50:])
    rows, found = later.select(chosen=(*earlier.select(), earlier.n_seen_))
    torch.testing.assert_close(rows, points)
    assert found.tolist() == labels.tolist()


def test_going_on_from_many_chosen_rows_folds_them_in_blocks(monkeypatch):
    # The rows chosen before are folded into the distances a block at a time, never all at once.
    import sklearn_panda._engine.coreset as coreset_module

    widths = []
    original = coreset_module._half_squared_distances

    def recording(rows, half_norms, centers, center_half_norms):
        widths.append(len(centers))
        return original(rows, half_norms, centers, center_half_norms)

    monkeypatch.setattr(coreset_module, "_half_squared_distances", recording)
    points = torch.randn(3000, 4, generator=torch.Generator().manual_seed(0))
    chosen = coreset_module._lazy_greedy(points, 800, list(range(700)), block_size=256)
    assert len(chosen) == 800 and chosen[:700].tolist() == list(range(700))
    assert max(widths) <= 256


def test_partial_fit_checks_the_parameters_it_reads_not_those_fixed_at_fit(normal):
    # set_params(neighbourhood=4) after fit changed nothing the detector outputs, but partial_fit
    # refused it (it checked the features' parameters, which it takes from patch_spec_).
    expected = PandaPatchDetector(**EVERY_PATCH).fit(normal[:4]).partial_fit(normal[4:])
    for fixed_at_fit in ({"neighbourhood": 4}, {"resize": (1, 2, 3)}, {"sigma": -1.0}):
        detector = PandaPatchDetector(**EVERY_PATCH).fit(normal[:4]).set_params(**fixed_at_fit)
        assert_same_state(fitted_state(detector.partial_fit(normal[4:])), fitted_state(expected))
    # What it reads is checked, and a refused call changes nothing.
    for read_now, message in (({"coreset_ratio": 2.0}, "coreset_ratio"), ({"batch_size": 0}, "batch_size")):
        detector = PandaPatchDetector(**EVERY_PATCH).fit(normal[:4])
        before = fitted_state(detector)
        with pytest.raises(ValueError, match=message):
            detector.set_params(**read_now).partial_fit(normal[4:])
        assert_same_state(before, fitted_state(detector))
    # An unfitted detector's partial_fit is fit: every parameter checked.
    with pytest.raises(ValueError, match="sigma"):
        PandaPatchDetector(**{**EVERY_PATCH, "sigma": -1.0}).partial_fit(normal)
