"""Validated input -> batched, normalised tensors on the device.

Preprocessing follows the paper's code (resize the shorter side to 256,
centre-crop 224, ImageNet mean and standard deviation) but runs on whole
batches of tensors on the device instead of image by image in PIL. Data are
streamed batch by batch, so memory grows with the batch, not the data set.
"""

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _resize_shorter_side(images, size):
    height, width = images.shape[-2:]
    if min(height, width) == size:
        return images
    scale = size / min(height, width)
    new_size = (max(size, round(height * scale)), max(size, round(width * scale)))
    # Antialiasing matters when shrinking large photos; torchvision's PIL path does it too.
    return F.interpolate(images, size=new_size, mode="bilinear", antialias=True, align_corners=False)


def _center_crop(images, size):
    height, width = images.shape[-2:]
    if size > min(height, width):
        raise ValueError(f"crop_size={size} is larger than the resized image ({height}x{width}).")
    top, left = (height - size) // 2, (width - size) // 2
    return images[..., top : top + size, left : left + size]


def resize_and_crop(images, resize, crop_size):
    """Resize the shorter side to ``resize`` then centre-crop ``crop_size`` (``None`` skips a step).

    Parameters
    ----------
    images : Tensor of shape (n, C, H, W), floating point
    resize, crop_size : int or None

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._data import resize_and_crop
    >>> resize_and_crop(torch.rand(2, 3, 28, 40), 256, 224).shape
    torch.Size([2, 3, 224, 224])
    """
    if resize is not None:
        images = _resize_shorter_side(images, resize)
    if crop_size is not None:
        images = _center_crop(images, crop_size)
    return images


def _load_image(item):
    """A path or PIL image -> uint8 tensor (3, H, W); the error names a bad file."""
    from PIL import Image, UnidentifiedImageError

    if hasattr(item, "convert"):
        image = item.convert("RGB")
    else:
        try:
            with Image.open(item) as opened:
                image = opened.convert("RGB")
        except FileNotFoundError:
            raise FileNotFoundError(f"Image file not found: {item!s}") from None
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"Could not read image file {item!s}: {error}") from None
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


class Preprocessor:
    """Turns slices of a :class:`~sklearn_panda._validation.CheckedInput` into model input.

    Parameters
    ----------
    checked : CheckedInput
    resize, crop_size : int or None
        Image geometry (ignored for vectors).
    device : torch.device
    normalize : bool, default=True
        Apply ImageNet mean / std (images only).
    """

    def __init__(self, checked, *, resize, crop_size, device, normalize=True):
        self.checked = checked
        self.resize = resize
        self.crop_size = crop_size
        self.device = device
        mean = torch.tensor(IMAGENET_MEAN if normalize else (0.0, 0.0, 0.0), device=device)
        std = torch.tensor(IMAGENET_STD if normalize else (1.0, 1.0, 1.0), device=device)
        self._mean = mean.view(1, 3, 1, 1)
        self._std = std.view(1, 3, 1, 1)

    def __len__(self):
        return len(self.checked)

    def __call__(self, indices):
        """Model input for the samples at ``indices`` (a 1-D integer array), on the device."""
        kind = self.checked.spec.kind
        if kind == "vectors":
            rows = np.asarray(self.checked.data[indices], dtype=np.float32)
            return torch.from_numpy(rows).to(self.device, non_blocking=True)
        if kind == "array_images":
            images = self._array_images(indices)
        else:
            images = self._file_images(indices)
        images = (images - self._mean) / self._std
        return images.contiguous(memory_format=torch.channels_last)

    def _array_images(self, indices):
        batch = torch.from_numpy(np.ascontiguousarray(self.checked.data[indices]))
        batch = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        images = batch.float()
        # Float images of any precision are in [0, 1] already (validated); integers in [0, 255].
        if not torch.is_floating_point(batch):
            images = images / 255.0
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return resize_and_crop(images, self.resize, self.crop_size)

    def _file_images(self, indices):
        # Files may differ in size, so the geometry is applied image by image
        # before the batch can be stacked.
        images = []
        for index in np.asarray(indices):
            image = _load_image(self.checked.data[index]).to(self.device).float().div_(255.0)
            images.append(resize_and_crop(image[None], self.resize, self.crop_size)[0])
        shapes = {tuple(image.shape) for image in images}
        if len(shapes) > 1:
            raise ValueError(
                f"Images of different sizes {sorted(shapes)} cannot form a batch; set "
                "crop_size (and resize) so that every image ends the same size."
            )
        return torch.stack(images)


def batch_indices(n_samples, batch_size):
    """Consecutive index batches covering ``range(n_samples)`` once."""
    for start in range(0, n_samples, batch_size):
        yield np.arange(start, min(start + batch_size, n_samples))


def shuffled_batches(n_samples, batch_size, generator):
    """An endless stream of shuffled index batches, a new permutation each epoch.

    Parameters
    ----------
    n_samples, batch_size : int
    generator : torch.Generator
        The only source of randomness, so a seed reproduces the stream.
    """
    batch_size = min(batch_size, n_samples)
    while True:
        order = torch.randperm(n_samples, generator=generator).numpy()
        for start in range(0, n_samples - batch_size + 1, batch_size):
            yield order[start : start + batch_size]
