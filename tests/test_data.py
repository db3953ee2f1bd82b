"""Batched preprocessing against torchvision's per-image PIL pipeline, and batching."""

import numpy as np
import pytest
import torch
from PIL import Image

from sklearn_panda._engine.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessor,
    resize_and_crop,
    shuffled_batches,
)
from sklearn_panda._estimators.validation import check_input


def _reference(image_uint8, resize, crop):
    """The paper code's pipeline: PIL resize, centre crop, ToTensor, Normalize."""
    from torchvision import transforms

    steps = [transforms.Resize(resize)] + ([transforms.CenterCrop(crop)] if crop is not None else [])
    pipeline = transforms.Compose(
        steps + [transforms.ToTensor(), transforms.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))]
    )
    return pipeline(Image.fromarray(image_uint8).convert("RGB"))


@pytest.mark.parametrize(
    "shape",
    [
        (28, 28),  # Fashion-MNIST: grayscale, upsampled
        (30, 41, 3),  # longer side 349.87: torchvision truncates to 349, rounding would give 350
        (451, 300, 3),  # shrunk: antialiasing matters
    ],
)
@pytest.mark.parametrize("crop", [224, None])
@pytest.mark.parametrize("pil_kernel", [True, False], ids=["pil-kernel", "float-kernel"])
def test_matches_the_paper_pil_pipeline_to_a_grey_level_here_and_there(shape, crop, pil_kernel, monkeypatch):
    if not pil_kernel:
        # What GPUs and CPUs without AVX2 run: torchvision resamples uint8 in float and rounds.
        geometry = pytest.importorskip("torchvision.transforms.v2.functional._geometry")
        if not hasattr(geometry, "_do_native_uint8_resize_on_cpu"):
            pytest.skip("this torchvision chooses its uint8 resize kernel elsewhere")
        monkeypatch.setattr(geometry, "_do_native_uint8_resize_on_cpu", lambda interpolation: False)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3,) + shape, dtype=np.uint8)
    batch = Preprocessor(check_input(images), resize=256, crop_size=crop, device=torch.device("cpu"))(np.arange(3))
    reference = torch.stack([_reference(image, 256, crop) for image in images])
    assert batch.shape == reference.shape
    # Both resample uint8 and round to uint8 after each pass, so they differ by whole
    # grey levels (1/255, over the smallest std once normalised), at most one, and only
    # here and there, where fixed-point (PIL) and float weights round differently.
    # Measured: at most 0.93% of the pixels (float kernel, 28x28 noise). One rounding
    # instead of two changes ~15% of them, and float resampling without rounding nearly all.
    level = 1 / 255 / min(IMAGENET_STD)
    difference = (batch - reference).abs()
    assert difference.max() <= 1.01 * level
    assert (difference > 0.01 * level).float().mean() <= 0.02


def test_grayscale_is_repeated_to_three_channels():
    gray = (np.arange(2 * 8 * 8) % 256).astype(np.uint8).reshape(2, 8, 8)
    out = Preprocessor(check_input(gray), resize=None, crop_size=None, device=torch.device("cpu"), normalize=False)(
        np.arange(2)
    )
    assert out.shape == (2, 3, 8, 8)
    assert torch.equal(out[:, 0], out[:, 2])
    np.testing.assert_allclose(out[:, 0].numpy(), gray / 255.0, rtol=1e-6)


def test_files_of_mixed_sizes_and_pil_images(tmp_path):
    paths = []
    for i, size in enumerate([(30, 20), (50, 64)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full(size + (3,), 100 * i, dtype=np.uint8)).save(path)
        paths.append(str(path))
    items = paths + [Image.fromarray(np.zeros((12, 12), dtype=np.uint8))]
    out = Preprocessor(check_input(items), resize=32, crop_size=32, device=torch.device("cpu"))(np.arange(3))
    assert out.shape == (3, 3, 32, 32)


def test_missing_and_corrupt_files_are_named(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image")
    for path, error in ((tmp_path / "missing.png", FileNotFoundError), (corrupt, ValueError)):
        with pytest.raises(error, match=path.name):
            Preprocessor(check_input([str(path)]), resize=8, crop_size=8, device=torch.device("cpu"))(np.arange(1))


def test_mixed_sizes_without_geometry_is_a_clear_error(tmp_path):
    images = [Image.fromarray(np.zeros((8, 8, 3), np.uint8)), Image.fromarray(np.zeros((9, 9, 3), np.uint8))]
    with pytest.raises(ValueError, match="different sizes"):
        Preprocessor(check_input(images), resize=None, crop_size=None, device=torch.device("cpu"))(np.arange(2))


def test_mixed_sizes_in_batches_of_their_own_are_the_same_clear_error(tmp_path):
    # A 1 x 1 image alone in its batch was broadcast into a 32 x 32 image's place in the trunk cache.
    from conftest import tiny_resnet

    from sklearn_panda import PandaDetector

    images = [Image.fromarray(np.zeros((32, 32, 3), np.uint8))] * 4 + [Image.fromarray(np.zeros((1, 1, 3), np.uint8))]
    detector = PandaDetector(backbone=tiny_resnet, weights=None, resize=None, crop_size=None, n_steps=2,
                             batch_size=4, inference_batch_size=4, random_state=0)
    with pytest.raises(ValueError, match=r"different sizes \[\(3, 1, 1\), \(3, 32, 32\)\]"):
        detector.fit(images)
    preprocessor = Preprocessor(check_input(images), resize=None, crop_size=None, device=torch.device("cpu"))
    assert preprocessor(np.arange(4)).shape == (4, 3, 32, 32)
    with pytest.raises(ValueError, match="different sizes"):
        preprocessor(np.arange(4, 5))


def test_resize_and_crop_shapes():
    assert resize_and_crop(torch.rand(1, 3, 28, 28), 256, 224).shape == (1, 3, 224, 224)
    assert resize_and_crop(torch.rand(1, 3, 100, 50), 64, None).shape == (1, 3, 128, 64)
    with pytest.raises(ValueError, match="larger than the resized image"):
        resize_and_crop(torch.rand(1, 3, 10, 10), None, 12)


def test_batches():
    stream = shuffled_batches(10, 4, torch.Generator().manual_seed(0))
    first_epoch = [next(stream) for _ in range(2)]
    assert all(len(batch) == 4 for batch in first_epoch)
    assert len(set(np.concatenate(first_epoch).tolist())) == 8
    again = shuffled_batches(10, 4, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(next(again), first_epoch[0])
