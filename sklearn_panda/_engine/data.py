"""Validated input -> batched, normalised tensors on the device.

Preprocessing follows the paper's code (resize, centre-crop, ImageNet mean
and standard deviation; the paper resizes the shorter side to 256 and crops
224) with the same torchvision operations, but through ``torchvision.transforms.v2.functional``
on whole batches of tensors on the device instead of image by image in PIL.
Data are streamed batch by batch, so memory grows with the batch, not the
data set.
"""

import numbers

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .._io.images import read_image, sixteen_bit_to_unit

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resized_shape(height, width, resize):
    """The ``(height, width)`` an image of that size takes under ``resize``, as torchvision's ``Resize``.

    An integer is the new shorter side, the longer one becoming
    ``int(resize * longer / shorter)``; a pair is the new ``(height, width)``
    itself; ``None`` keeps the size.

    Examples
    --------
    >>> from sklearn_panda._engine.data import resized_shape
    >>> resized_shape(28, 40, 256), resized_shape(28, 40, (224, 224)), resized_shape(28, 40, None)
    ((256, 365), (224, 224), (28, 40))
    """
    if resize is None:
        return height, width
    if not isinstance(resize, numbers.Integral):
        return int(resize[0]), int(resize[1])
    longer = int(resize * max(height, width) / min(height, width))
    return (resize, longer) if height <= width else (longer, resize)


def resize_and_crop(images, resize, crop_size):
    """Resize to ``resize`` then centre-crop ``crop_size`` (``None`` skips a step).

    The sizes are torchvision's, as in the paper's ``Resize(resize)`` then
    ``CenterCrop(crop_size)``: an integer ``resize`` is the new shorter side
    (the longer side becomes ``int(resize * longer / shorter)``), a pair the
    new ``(height, width)``. Resizing is bilinear and antialiased,
    and uint8 images stay uint8, as in PIL, which resamples the width, then
    the height, rounding to uint8 after each pass. The two passes are made
    here too, so that the result matches PIL's to a grey level here and there
    on any device (torch runs PIL's own uint8 algorithm on CPUs with AVX2,
    AVX-512 or ARM64; elsewhere torchvision rounds a float resampling): one
    rounding instead of two changes a sixth of the pixels by a grey level,
    and no rounding at all moves EfficientNet-Lite0's pretrained features to
    a mean cosine of 0.97 from the paper pipeline's.

    Parameters
    ----------
    images : Tensor of shape (n, C, H, W), uint8 or floating point
    resize : int, (int, int) or None
    crop_size : int or None

    Returns
    -------
    Tensor of shape (n, C, crop_size, crop_size), or the resized size without a crop, of the input's dtype

    Raises
    ------
    ValueError
        When ``crop_size`` is larger than the resized image (torchvision would
        pad it with zeros, which the backbone would then see as image content).

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.data import resize_and_crop
    >>> resize_and_crop(torch.rand(2, 3, 28, 40), 256, 224).shape
    torch.Size([2, 3, 224, 224])
    >>> resize_and_crop(torch.rand(2, 3, 28, 40), (224, 224), None).shape
    torch.Size([2, 3, 224, 224])
    """
    if resize is not None:
        height, width = images.shape[-2:]
        new_height, new_width = resized_shape(height, width, resize)
        for size in ([height, new_width], [new_height, new_width]):
            images = TF.resize(images, size=size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    if crop_size is not None:
        height, width = images.shape[-2:]
        if crop_size > min(height, width):
            raise ValueError(f"crop_size={crop_size} is larger than the resized image ({height}x{width}).")
        images = TF.center_crop(images, [crop_size, crop_size])
    return images


def _load_image(item):
    """A path or PIL image -> tensor (3, H, W): uint8, or float32 in [0, 1] beyond 8 bits."""
    return torch.from_numpy(np.ascontiguousarray(read_image(item))).permute(2, 0, 1)


class Preprocessor:
    """Turns slices of a :class:`~sklearn_panda._estimators.validation.CheckedInput` into model input.

    Parameters
    ----------
    checked : CheckedInput
    resize, crop_size : int or None
        Image geometry (ignored for vectors).
    device : torch.device
    normalize : bool, default=True
        Apply ImageNet mean / std (images only).
    one_size : bool, default=True
        Refuse files that end different sizes, in one batch or across batches
        (the image-level estimators stack every image's features); ``False``
        for a caller that batches images of one size itself.
    """

    def __init__(self, checked, *, resize, crop_size, device, normalize=True, one_size=True):
        self.checked = checked
        self.resize = resize
        self.crop_size = crop_size
        self.device = device
        self.normalize = normalize
        self.one_size = one_size
        self._first_shape = None

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
        if self.normalize:
            images = TF.normalize(images, list(IMAGENET_MEAN), list(IMAGENET_STD))
        return images.contiguous(memory_format=torch.channels_last)

    def _array_images(self, indices):
        batch = self.checked.data[indices]
        if batch.dtype == np.uint16:
            # 16-bit images, read as 16-bit files are: in [0, 1], resampled in float.
            batch = sixteen_bit_to_unit(batch)
        batch = torch.from_numpy(np.ascontiguousarray(batch))
        images = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        # Other integer images hold [0, 255] (validated), so uint8 keeps them whole and
        # resamples them as the paper's PIL pipeline does; float16 is resampled in
        # float32, which torchvision would otherwise round back to float16.
        images = images.float() if images.is_floating_point() else images.to(torch.uint8)
        return _unit_range_rgb(resize_and_crop(images, self.resize, self.crop_size))

    def _file_images(self, indices):
        # Files may differ in size, so the geometry is applied image by image
        # before the batch can be stacked.
        images = []
        for index in np.asarray(indices):
            image = _load_image(self.checked.data[index]).to(self.device)
            # Each image in [0, 1] before stacking: 8-bit and 16-bit files may share a batch.
            images.append(_unit_range_rgb(resize_and_crop(image[None], self.resize, self.crop_size))[0])
        shapes = {tuple(image.shape) for image in images}
        if self.one_size:
            # Across batches too: a batch of one image of its own size would otherwise pass.
            self._first_shape = self._first_shape or tuple(images[0].shape)
            shapes.add(self._first_shape)
        if len(shapes) > 1:
            raise ValueError(
                f"Images of different sizes {sorted(shapes)} cannot form a batch: give images of one size, "
                "or fit with crop_size (and resize) set so that every image ends the same size (a fitted "
                "model keeps its own; on the command line: fit --resize, --crop-size)."
            )
        return torch.stack(images)


class Mirrored:
    """A :class:`Preprocessor`'s batches flipped left to right: the mirror images, as preprocessed.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn_panda._engine.data import Mirrored, Preprocessor
    >>> from sklearn_panda._estimators.validation import check_input
    >>> images = np.arange(2 * 4 * 6, dtype=np.uint8).reshape(2, 4, 6)
    >>> given = Preprocessor(check_input(images), resize=None, crop_size=None, device=torch.device("cpu"))
    >>> bool(torch.equal(Mirrored(given)(np.arange(2)), given(np.arange(2)).flip(-1)))
    True
    """

    def __init__(self, preprocessor):
        self.preprocessor = preprocessor
        self.checked = preprocessor.checked
        self.device = preprocessor.device

    def __len__(self):
        return len(self.preprocessor)

    def __call__(self, indices):
        return self.preprocessor(indices).flip(-1).contiguous(memory_format=torch.channels_last)


def _unit_range_rgb(images):
    """uint8 images in [0, 255] or float images in [0, 1] -> float32 in [0, 1], three channels."""
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    # Grayscale is repeated only now, so that resizing worked on one channel, not three.
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


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
