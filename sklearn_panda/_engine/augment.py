"""Random views of image batches for the contrastive (mean-shifted) loss.

MoCo-v2-style augmentations, as the mean-shifted contrastive loss uses them:
random resized crop, horizontal flip, colour jitter and random greyscale, from
``torchvision.transforms.v2``. On grey images (repeated to three channels)
only the crop, the flip, brightness and contrast change anything: saturation,
hue and greyscale leave equal channels equal.
"""

import torch
from torchvision.transforms import v2

from .data import IMAGENET_MEAN, IMAGENET_STD
from .device import seeded_cpu_generator


def contrastive_transform(size):
    """The random augmentation of one ``(3, H, W)`` image in [0, 1]; ``size`` is ``(H, W)`` or an int.

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.augment import contrastive_transform
    >>> contrastive_transform(32)(torch.rand(3, 32, 32)).shape
    torch.Size([3, 32, 32])
    """
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
        ]
    )


class ViewMaker:
    """Two independently augmented views of each image of a normalised batch.

    The randomness comes from ``generator`` only: each call draws a seed from
    it and runs the transforms with the global CPU generator seeded from it
    (:func:`~sklearn_panda._engine.device.seeded_cpu_generator`), so that
    torchvision's use of the global generator leaves it as it was.

    Parameters
    ----------
    generator : torch.Generator

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.augment import ViewMaker
    >>> first, second = ViewMaker(torch.Generator().manual_seed(0))(torch.rand(2, 3, 16, 16))
    >>> first.shape, bool((first != second).any())
    (torch.Size([2, 3, 16, 16]), True)
    """

    def __init__(self, generator):
        self.generator = generator

    def __call__(self, images):
        """``(first, second)`` views of ``images`` (normalised, ``(n, 3, H, W)``), normalised alike."""
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        pixels = (images * std + mean).clamp(0.0, 1.0)
        transform = contrastive_transform(tuple(images.shape[-2:]))
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.generator))
        with seeded_cpu_generator(seed):
            views = [torch.stack([transform(image) for image in pixels]) for _ in range(2)]
        return tuple(((view - mean) / std).contiguous(memory_format=torch.channels_last) for view in views)
