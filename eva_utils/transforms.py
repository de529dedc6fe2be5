"""Augmentations, two ways with one meaning.

* albumentations pipelines (``A.Compose``, strict, 2.x argument names) for the classic DataLoader path
  and for any augmentation a student wants to try;
* ``gpu_augment``: the same crop / flip / cutout as batched tensor ops, for the GPU-resident loader.

Both pad with reflection (no edge repeat: cv2's BORDER_REFLECT_101 = torch's "reflect"), crop back to
32x32, flip left-right with probability 1/2, and cut one square hole that lies wholly inside the image
*after* normalisation, filled with 0, i.e. with the data set's mean colour.
"""
from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version-check warning offline

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402


def _cutout(size: int) -> A.CoarseDropout:
    return A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(size, size),
                           hole_width_range=(size, size), fill=0, p=1.0)


def eval_transforms(mean, std) -> A.Compose:
    """uint8 HWC image -> normalised float tensor (3, H, W). ``mean``/``std`` per channel in [0, 1]."""
    return A.Compose([A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()],
                     strict=True)


def crop_flip_cutout(mean, std, *, pad: int = 4, cutout: int = 8, rotate: float = 0.0,
                     flip: bool = True) -> A.Compose:
    """Pad ``pad`` px (reflect) + random 32x32 crop, optional rotation by up to ``rotate`` degrees,
    left-right flip, normalise, one ``cutout`` x ``cutout`` hole (0 = off). Seeds 002 and 003."""
    steps = [A.PadIfNeeded(32 + 2 * pad, 32 + 2 * pad, border_mode=cv2.BORDER_REFLECT_101),
             A.RandomCrop(32, 32)]
    if rotate:
        steps.append(A.Rotate(limit=(-rotate, rotate), border_mode=cv2.BORDER_REFLECT_101, p=1.0))
    if flip:
        steps.append(A.HorizontalFlip(p=0.5))
    steps.append(A.Normalize(mean=mean, std=std, max_pixel_value=255.0))
    if cutout:
        steps.append(_cutout(cutout))
    return A.Compose([*steps, ToTensorV2()], strict=True)


def seed000_augment(mean, std) -> A.Compose:
    """Seed 000 part 2's list: RandomRotation, RandomCrop, ColorJitter, vertical and horizontal flips.

    The seed gives no magnitudes; these are torchvision-tutorial-sized ones.
    """
    return A.Compose([
        A.Rotate(limit=(-10, 10), border_mode=cv2.BORDER_REFLECT_101, p=0.5),
        A.PadIfNeeded(40, 40, border_mode=cv2.BORDER_REFLECT_101),
        A.RandomCrop(32, 32),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=0.5),
        A.VerticalFlip(p=0.5),
        A.HorizontalFlip(p=0.5),
        A.Normalize(mean=mean, std=std, max_pixel_value=255.0),
        ToTensorV2(),
    ], strict=True)


def denormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised images (..., 3, H, W) -> float RGB in [0, 1], channels last (..., H, W, 3)."""
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1).movedim(-3, -1)


def gpu_augment(x: torch.Tensor, *, pad: int = 4, flip: bool = True, cutout: int = 8,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random crop after reflect padding, flip and cutout of a batch (B, C, H, W).

    Works on any device; random numbers come from ``generator`` (on the batch's device).
    """
    b, c, h, w = x.shape
    dev = x.device
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy, dx = torch.randint(0, 2 * pad + 1, (2, b), device=dev, generator=generator)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (B, 1, 1, W)
        x = padded[torch.arange(b, device=dev)[:, None, None, None],
                   torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    if flip:
        flipped = torch.rand(b, device=dev, generator=generator) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(3), x)
    if cutout:
        y0 = torch.randint(0, h - cutout + 1, (b, 1, 1), device=dev, generator=generator)
        x0 = torch.randint(0, w - cutout + 1, (b, 1, 1), device=dev, generator=generator)
        r = torch.arange(h, device=dev)[None, :, None]
        k = torch.arange(w, device=dev)[None, None, :]
        hole = (r >= y0) & (r < y0 + cutout) & (k >= x0) & (k < x0 + cutout)  # (B, H, W)
        x = x.masked_fill(hole[:, None], 0.0)
    return x
