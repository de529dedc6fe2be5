"""Augmentation: one description, ``Augment``, carried out by two backends that draw the same
distributions (tests/test_augment.py): ``Augment.albumentations(mean, std, size)``, per image, for
``workers.make_loader``, and ``Augment.__call__(x)``, batched tensor ops on any device, for
``TensorLoader``. In order: pad with reflection and crop back to size; rotate by a uniform angle in
[-``rotate``, ``rotate``] degrees; flip left-right with probability 1/2; cut one ``cutout`` square
hole wholly inside the image, filled with 0 after normalisation (the data set's mean colour).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import albumentations as A
import cv2
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2


@dataclass(frozen=True)
class Augment:
    """What a training loader does to each image; the image size comes from the images."""

    pad: int = 4          # pixels of reflect padding before a random crop back to size (0: no crop)
    # Off unless asked: a mirrored cat is a cat, but a mirrored digit or letter is not what it was.
    flip: bool = False    # mirror left-right with probability 1/2
    rotate: float = 0.0   # largest rotation, degrees, either way (0: none)
    cutout: int = 0       # side of one square hole, pixels (0: none)

    def __post_init__(self):
        for name in ("pad", "cutout"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"Augment({name}={value!r}): give a whole number of pixels >= 0.")
        number = isinstance(self.rotate, (int, float)) and not isinstance(self.rotate, bool)
        if not (number and 0 <= self.rotate <= 180):
            raise ValueError(f"Augment(rotate={self.rotate!r}): give degrees between 0 and 180 "
                             "(0: no rotation).")
        if not isinstance(self.flip, bool):  # flip="no" would be truthy
            raise ValueError(f"Augment(flip={self.flip!r}): give True or False.")

    def check_size(self, size: tuple[int, int]) -> None:
        """Raise if the padding or the ``cutout`` hole does not fit images of ``size`` (H, W)."""
        if self.pad >= min(size):  # a reflection cannot reach further than the image is wide
            raise ValueError(f"Augment(pad={self.pad}) does not fit {size[0]}x{size[1]} images; "
                             f"give pad <= {min(size) - 1} (about an eighth of the side is usual).")
        if self.cutout > min(size):
            raise ValueError(f"Augment(cutout={self.cutout}) does not fit {size[0]}x{size[1]} "
                             f"images; give cutout <= {min(size)}.")

    def albumentations(self, mean, std, size: tuple[int, int]) -> A.Compose:
        """uint8 (H, W, 3) image -> augmented, normalised float tensor (3, H, W), per image."""
        self.check_size(size)
        h, w = size
        steps = []
        if self.pad:
            steps += [A.PadIfNeeded(h + 2 * self.pad, w + 2 * self.pad,
                                    border_mode=cv2.BORDER_REFLECT_101), A.RandomCrop(h, w)]
        if self.rotate:
            steps.append(A.Rotate(limit=(-self.rotate, self.rotate),
                                  border_mode=cv2.BORDER_REFLECT_101, p=1.0))
        if self.flip:
            steps.append(A.HorizontalFlip(p=0.5))
        steps.append(A.Normalize(mean=mean, std=std, max_pixel_value=255.0))
        if self.cutout:  # after Normalize, so the fill 0 is the mean colour
            steps.append(A.CoarseDropout(num_holes_range=(1, 1),
                                         hole_height_range=(self.cutout, self.cutout),
                                         hole_width_range=(self.cutout, self.cutout), fill=0, p=1.0))
        return A.Compose([*steps, ToTensorV2()], strict=True)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a normalised batch (B, C, H, W) on its own device; randomness from ``generator``."""
        b, c, h, w = x.shape
        self.check_size((h, w))
        dev = x.device
        if self.pad:
            padded = F.pad(x, (self.pad,) * 4, mode="reflect")
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2, b), device=dev, generator=generator)
            rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (B, 1, H, 1)
            cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (B, 1, 1, W)
            x = padded[torch.arange(b, device=dev)[:, None, None, None],
                       torch.arange(c, device=dev)[None, :, None, None], rows, cols]
        if self.rotate:
            x = _rotate(x, self.rotate, generator)
        if self.flip:
            flipped = torch.rand(b, device=dev, generator=generator) < 0.5
            x = torch.where(flipped[:, None, None, None], x.flip(3), x)
        if self.cutout:
            k = self.cutout
            y0 = torch.randint(0, h - k + 1, (b, 1, 1), device=dev, generator=generator)
            x0 = torch.randint(0, w - k + 1, (b, 1, 1), device=dev, generator=generator)
            r = torch.arange(h, device=dev)[None, :, None]
            q = torch.arange(w, device=dev)[None, None, :]
            hole = (r >= y0) & (r < y0 + k) & (q >= x0) & (q < x0 + k)  # (B, H, W)
            x = x.masked_fill(hole[:, None], 0.0)
        return x


def _rotate(x: torch.Tensor, degrees: float, generator) -> torch.Tensor:
    """Rotate each image of (B, C, H, W) about its centre by a uniform angle in [-degrees, degrees],
    bilinear, reflected border (as cv2.warpAffine with BORDER_REFLECT_101 in albumentations)."""
    b, _, h, w = x.shape
    angle = (torch.rand(b, device=x.device, generator=generator) * 2 - 1) * math.radians(degrees)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    # affine_grid works in [-1, 1] coordinates per axis: the h/w factors keep non-square images'
    # rotations rigid in pixel space.
    theta = torch.stack([torch.stack([cos, -sin * h / w, zero], 1),
                         torch.stack([sin * w / h, cos, zero], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def normalize(mean, std) -> A.Compose:
    """uint8 (H, W, 3) image -> normalised float tensor (3, H, W); ``mean``/``std`` in [0, 1]."""
    return A.Compose([A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()],
                     strict=True)


def classic_augment(size: tuple[int, int]) -> list[A.BasicTransform]:
    """The original assignment 000 part 2's list: rotation, pad + random crop, colour jitter,
    vertical and horizontal flips, for images of ``size`` (H, W), e.g. ``data.image_size``. It gives
    no magnitudes; these are torchvision-tutorial-sized. Both flips suit CIFAR-like photos only.
    Pass it as ``make_loader(..., augment=classic_augment(data.image_size))``."""
    if isinstance(size, int):
        size = (size, size)
    h, w = size
    return [
        A.Rotate(limit=(-10, 10), border_mode=cv2.BORDER_REFLECT_101, p=0.5),
        A.PadIfNeeded(h + 8, w + 8, border_mode=cv2.BORDER_REFLECT_101),
        A.RandomCrop(h, w),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=0.5),
        A.VerticalFlip(p=0.5),
        A.HorizontalFlip(p=0.5),
    ]


def pipeline(augment, mean, std, size: tuple[int, int]) -> A.Compose:
    """The per-image albumentations pipeline for ``augment``: an ``Augment``, a list of
    albumentations transforms (normalisation is appended), or None (normalise only)."""
    if augment is None:
        return normalize(mean, std)
    if isinstance(augment, Augment):
        return augment.albumentations(mean, std, size)
    if isinstance(augment, A.Compose):
        raise TypeError("Give the augmentations as a list, e.g. classic_augment(size) or "
                        "[A.HorizontalFlip(p=0.5)]: the loader appends Normalize and ToTensorV2 "
                        "itself, so it can also un-normalise what it made for plot_augmentations.")
    return A.Compose([*augment, A.Normalize(mean=mean, std=std, max_pixel_value=255.0),
                      ToTensorV2()], strict=True)


def denormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised images (..., 3, H, W) -> float RGB in [0, 1], channels last (..., H, W, 3)."""
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1).movedim(-3, -1)
