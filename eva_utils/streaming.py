"""Image folders too large for memory (Tiny ImageNet, ImageNet), decoded in ``DataLoader`` workers a
batch at a time instead of all at once:

    train = eva.folder_loader("imagenet", "train", 256, image_size=224, flip=True)
    test = eva.folder_loader("imagenet", "test", 500, image_size=224, mean=train.mean, std=train.std)

The same folder rules as ``load_image_folder``. Training takes an Inception-style random-resized
crop (35-100 % of the area, aspect 3/4 to 4/3); testing resizes the short side to 8/7 of the size
and takes the centre.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import albumentations as A
import numpy as np
from torch.utils.data import Dataset

from .data import channel_stats, data_root
from .folders import check_image_size, image_files
from .machinery.images import read_image
from .loaders import check_stats
from .workers import SeededDataLoader, seeded_loader
from .transforms import normalize

STATS_SAMPLE = 256  # images read to estimate the mean and std when none are given


class FolderDataset(Dataset):
    """(path, label) pairs -> (float tensor (3, H, W) normalised, int label), decoded on demand."""

    def __init__(self, files: list[tuple[Path, int]], transform: A.Compose, size: tuple[int, int]):
        self.files, self.transform, self.size = files, transform, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path, label = self.files[i]
        return self.transform(image=read_image(path))["image"], label

    def originals(self, n: int) -> np.ndarray:
        """The first ``n`` images, resized to the loader's size: uint8 (n, H, W, 3)."""
        return np.stack([read_image(p, self.size) for p, _ in self.files[:n]])


def folder_loader(root: str | os.PathLike | None, split: str, batch_size: int, *,
                  image_size: int | tuple[int, int], train: bool | None = None, classes=None,
                  mean=None, std=None, flip: bool = False, scale: tuple[float, float] = (0.35, 1.0),
                  num_workers: int | None = None, seed: int = 0) -> SeededDataLoader:
    """Batches (float (B, 3, H, W) normalised, int64 (B,)) of ``root/split``, decoded in workers.

    ``train`` (default: ``split == "train"``) shuffles, drops the last incomplete batch and
    augments; ``flip=True`` mirrors half the training images (only if mirrored images keep their
    class). ``mean``/``std`` on the [0, 1] scale; None estimates them from ``STATS_SAMPLE``
    training images (pass the training loader's to the test loader). ``num_workers`` None: one per
    CPU core, up to 8.
    """
    root = data_root(root)
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: an image folder has 'train' and 'test'.")
    train = split == "train" if train is None else train
    if not isinstance(train, bool):
        raise TypeError(f"train={train!r}: give True, False, or None (True for the train split).")
    size = check_image_size(image_size)
    classes, train_files, test_files = image_files(root, classes)
    files = train_files if split == "train" else test_files
    if mean is None or std is None:
        sample = train_files[::max(1, len(train_files) // STATS_SAMPLE)]
        mean, std = channel_stats(np.stack([read_image(p, size) for p, _ in sample]))
    mean, std = check_stats(mean, "mean"), check_stats(std, "std")
    if train:
        steps = [A.RandomResizedCrop(size=size, scale=scale), *([A.HorizontalFlip()] if flip else [])]
    else:
        steps = [A.SmallestMaxSize(max_size=round(max(size) * 8 / 7)), A.CenterCrop(*size)]
    transform = A.Compose([*steps, *normalize(mean, std).transforms], strict=True)
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    if train and batch_size > len(files):
        raise ValueError(f"batch_size={batch_size} is larger than the {len(files)} images of "
                         f"{root / split} (incomplete batches are dropped in training). Fix: a "
                         "smaller batch size.")
    labels = np.array([label for _, label in files], dtype=np.int64)
    signature = hashlib.sha256("".join(f"{p.parent.name}/{p.name}:{label}\n"
                                       for p, label in files).encode()).hexdigest()[:16]
    fingerprint = {"images": len(files), "image_size": list(size), "classes": list(classes),
                   "content": signature, "augment": repr(steps), "batch_size": batch_size,
                   "seed": seed}
    return seeded_loader(FolderDataset(files, transform, size), batch_size, train=train,
                         num_workers=num_workers, seed=seed, mean=mean, std=std, labels=labels,
                         num_classes=len(classes), augment=steps if train else None,
                         fingerprint=fingerprint)
