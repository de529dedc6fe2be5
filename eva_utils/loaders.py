"""Two ways to feed batches of (images float (B, 3, H, W) normalised, labels int64 (B,)):
``TensorLoader`` (the whole split as uint8 on the device, augmented a batch at a time with tensor
ops: the fast path on a GPU) and ``workers.make_loader`` (a ``DataLoader`` whose workers run
albumentations per image). Both take the same arguments, shuffle and drop the last incomplete batch
in training only, draw an epoch's randomness from ``seed`` and ``set_epoch(epoch)`` alone (a resumed
run sees the same batches), show what they train on (``preview(n)``), warn when a split is too small
for its batch size, and under torchrun give each process its share. ``fit`` needs only ``__iter__``
and ``__len__`` of a loader (a plain DataLoader of yours); it checks more with what ours also keep:
``train``, ``mean``/``std``, every label (``labels``), ``num_classes`` and ``fingerprint``.
"""
from __future__ import annotations

import hashlib
import random
import warnings

import numpy as np
import torch

from .data import check_labels, to_rgb
from .machinery.distributed import share, world
from .machinery.runtime import get_device
from .transforms import Augment

MIN_STEPS = 10  # fewer optimizer steps than this an epoch and most runs learn next to nothing


def epoch_seed(seed: int, epoch: int) -> int:
    """One seed per (run seed, epoch); the prime stride keeps runs' epochs from sharing seeds."""
    return seed * 100_003 + epoch


def rank_offset(rank: int) -> int:
    """Added to a seed for the augmentation of torchrun process ``rank`` (0 for rank 0 and plain
    runs), so that processes do not crop and flip their shares alike."""
    return rank * 1_000_000_007


def reseed(transform, seed: int) -> None:
    """Seed an albumentations Compose with one generator that all its transforms draw from in turn.

    Not ``Compose.set_random_seed``: in albumentations 2.0.8 it gives every transform its own
    generator with the *same* seed, so their first draws coincide and, e.g., whether an image is
    flipped decides which way it is rotated (tests/test_augment.py measures this).
    """
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def check_arrays(images, labels, mean, std, batch_size: int, train: bool, classes, augment):
    """The arrays as the loaders keep them: (uint8 (N, H, W, 3), int64 (N,), mean, std, classes),
    or one clear error naming the argument that is wrong."""
    if not isinstance(train, bool):  # train="False" would be truthy
        raise TypeError(f"train={train!r}: give True (a training split: shuffled, augmented, "
                        "incomplete batch dropped) or False (a test split: in order, as stored).")
    if augment is not None and not train:
        raise ValueError("augment= is given but train=False: a test loader never augments, so the "
                         "augmentation would be silently dropped. Fix: train=True for the training "
                         "split, or leave augment out for the test split.")
    if not isinstance(images, np.ndarray):
        kind = type(images).__name__
        raise TypeError(f"images must be a numpy array of uint8 pixels (N, H, W, 3); got a {kind}. "
                        "Fix: pass data.train_images and data.train_labels of an eva.ImageData, or "
                        "np.asarray(...) of your own pixels.")
    images = to_rgb(images)
    labels = np.asarray(labels)
    whole = np.issubdtype(labels.dtype, np.integer) or (
        np.issubdtype(labels.dtype, np.floating) and bool(np.all(labels == np.round(labels))))
    if labels.ndim != 1 or not whole:
        raise ValueError(f"labels must be whole class numbers, shape (N,); got {labels.dtype} "
                         f"{labels.shape}. Fix: one-hot labels y become y.argmax(1).")
    labels = labels.astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels: they must match.")
    if len(labels) == 0:
        raise ValueError("This split has no images (0 labels). Fix: check the folder or the "
                         "subset size that produced it (data.subset(train=..., test=...)).")
    if not isinstance(batch_size, int) or batch_size < 1 or (train and batch_size > len(labels)):
        raise ValueError(f"batch_size={batch_size} does not fit a split of {len(labels)} images"
                         f"{' (incomplete batches are dropped in training)' if train else ''}. "
                         f"Fix: choose a batch size between 1 and {len(labels)}.")
    mean, std = check_stats(mean, "mean"), check_stats(std, "std")
    num_classes = len(classes) if classes is not None else int(labels.max(initial=-1)) + 1
    check_labels(labels, num_classes)
    if train:
        steps, dropped = divmod(len(labels), batch_size)
        if steps < MIN_STEPS or dropped > len(labels) / 10:
            left_out = (f", and the incomplete last batch ({dropped} images, a different {dropped} "
                        "each epoch) is dropped" if dropped else "")
            fix = (f"batch_size={len(labels) // MIN_STEPS} or less ({MIN_STEPS}+ steps an epoch)"
                   if len(labels) >= MIN_STEPS else
                   f"more training images ({MIN_STEPS}+ steps an epoch need {MIN_STEPS}+ images)")
            warnings.warn(
                f"{len(labels)} training images at batch_size={batch_size} make {steps} step"
                f"{'s' * (steps != 1)} an epoch{left_out}: too few to learn well. Fix: {fix}.",
                stacklevel=3)
    return images, labels, mean, std, num_classes


def fingerprint(images: np.ndarray, labels: np.ndarray, classes, augment, batch_size: int,
                seed: int) -> dict:
    """What decides a training loader's batches, for ``fit(resume=...)`` to compare: counts, class
    names, a hash of every label and of up to 256 evenly spaced images, augmentation, batch, seed."""
    h = hashlib.sha256(np.ascontiguousarray(labels).tobytes())
    h.update(np.ascontiguousarray(images[::max(1, len(images) // 256)]).tobytes())
    return {"images": len(labels), "image_size": list(images.shape[1:3]),
            "classes": list(classes) if classes is not None else None,
            "content": h.hexdigest()[:16], "augment": repr(augment), "batch_size": batch_size,
            "seed": seed}


def check_stats(values, name: str) -> tuple[float, float, float]:
    """A data set's per-channel mean or std, on the [0, 1] scale, for 3 channels (1 is repeated)."""
    values = tuple(float(v) for v in np.atleast_1d(np.asarray(values, dtype=float)))
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise ValueError(f"{name}={values}: give one value per RGB channel (or one for all).")
    if max(values) > 1 or (name == "std" and min(values) <= 0):
        raise ValueError(f"{name}={values}: give it on the [0, 1] scale, as data.{name} is "
                         f"(values above 1 look like 0-255 pixels: divide by 255)"
                         f"{'; every std must be > 0' if name == 'std' else ''}.")
    return values


class TensorLoader:
    """Batches of a split kept on ``device`` (default: the best available) as uint8 (N, 3, H, W).

    Yields (float (B, 3, H, W) normalised with ``mean``/``std``, int64 (B,)). Training: reshuffled
    every epoch, incomplete last batch dropped, ``augment`` applied; test: in order, no augmentation.
    Under torchrun with N processes, a training batch is this process's B / N slice of each global
    batch, and a test split is cut into N consecutive shares.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, batch_size: int, *,
                 train: bool, augment: Augment | None = None, classes=None,
                 device: torch.device | str | None = None, seed: int = 0):
        images, labels, mean, std, self.num_classes = check_arrays(images, labels, mean, std,
                                                                    batch_size, train, classes,
                                                                    augment)
        if augment is not None and not isinstance(augment, Augment):
            raise TypeError(f"TensorLoader's augment must be an eva.Augment; got "
                            f"{type(augment).__name__}. Fix: for albumentations transforms use "
                            "eva.make_loader(..., augment=[...]).")
        if augment is not None:
            augment.check_size(images.shape[1:3])
        self.device = get_device(device)
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(labels).to(self.device)
        self.mean, self.std = tuple(mean), tuple(std)
        self._mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.augment = augment if train else None
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.fingerprint = fingerprint(images, labels, classes, self.augment, batch_size, seed)
        self.rank, self.procs = world()
        self.part = share(batch_size) if train else batch_size  # this process's batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(epoch_seed(self.seed, epoch))

    def _order(self) -> torch.Tensor:
        """This epoch's image indices: all of them, or this process's consecutive test share."""
        n = len(self.labels)
        if self.train:
            return torch.randperm(n, device=self.device, generator=self.generator)
        return torch.arange(n, device=self.device).tensor_split(self.procs)[self.rank]

    def __len__(self) -> int:
        if self.train:
            return len(self.labels) // self.batch_size  # global steps: the same in every process
        return -(-len(self.labels.tensor_split(self.procs)[self.rank]) // self.batch_size)

    def _batch(self, idx: torch.Tensor) -> torch.Tensor:
        x = (self.images[idx].float() - self._mean) / self._std
        if self.augment is not None:
            x = self.augment(x, self.generator)
        return x

    def __iter__(self):
        order = self._order()  # every process draws the same permutation
        first = self.rank * self.part if self.train else 0
        if self.train and self.procs > 1:  # then augments its own images with its own draws
            self.generator.manual_seed(epoch_seed(self.seed, self.epoch) + rank_offset(self.rank))
        size = self.batch_size if self.train else self.part
        for b in range(len(self)):
            idx = order[b * size:(b + 1) * size][first:first + self.part]
            yield self._batch(idx), self.labels[idx]

    def images_at(self, positions: torch.Tensor) -> torch.Tensor:
        """float (n, 3, H, W) on the CPU: the images at these positions of a test pass, exactly
        as it yields them (``Predictions.images`` reads them so, instead of keeping copies)."""
        if self.train:
            raise ValueError("images_at reads a test loader's images in their order; this loader "
                             "shuffles (train=True).")
        return self._batch(self._order()[positions.to(self.device)]).cpu()

    def preview(self, n: int = 8, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
        """The first ``n`` images as stored (uint8 (n, H, W, 3)) and as this loader would train
        on them (float (n, 3, H, W), normalised), with randomness from ``seed``."""
        idx = torch.arange(min(n, len(self.labels)), device=self.device)
        saved = self.generator.get_state()
        self.generator.manual_seed(seed)
        try:
            x = self._batch(idx).float().cpu()
        finally:
            self.generator.set_state(saved)
        return self.images[idx].permute(0, 2, 3, 1).cpu().numpy(), x
