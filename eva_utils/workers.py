"""``make_loader``: the classic path, a ``DataLoader`` whose workers run a per-image albumentations
pipeline (``Augment.albumentations``, or any list of albumentations transforms), seeded so that an
epoch's shuffle and augmentation are a function of its seed and the epoch alone (as ``loaders``
describes for both paths)."""
from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .machinery.distributed import share, world
from .loaders import check_arrays, epoch_seed, fingerprint, rank_offset, reseed
from .transforms import pipeline


class AlbumentationsDataset(Dataset):
    """uint8 images (N, H, W, 3) -> (float tensor (3, H, W), int label) via ``transform``, an
    albumentations Compose ending in Normalize + ToTensorV2."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(image=self.images[i])["image"], int(self.labels[i])

    def originals(self, n: int) -> np.ndarray:
        """The first ``n`` images as stored, uint8 (n, H, W, 3)."""
        return self.images[:n]


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker its own python, numpy and albumentations seed.

    albumentations 2.x keeps its own generators inside each Compose; a forked worker inherits a copy,
    so without this every worker would replay the same augmentations.
    """
    info = torch.utils.data.get_worker_info()
    seed = info.seed % 2**32  # torch sets it to the loader's base seed + worker_id
    random.seed(seed)
    np.random.seed(seed)
    reseed(info.dataset.transform, seed)


class SeededDataLoader(DataLoader):
    """A DataLoader whose shuffling and augmentation are a function of its seed and the epoch, and
    which knows what ``fit`` and the figures ask of a loader: its mean and std, every label, the
    number of classes, its augmentation and the ``fingerprint`` a resume compares."""

    def __init__(self, dataset: Dataset, *, seed: int, train: bool, mean, std, labels: np.ndarray,
                 num_classes: int, augment, fingerprint: dict, **kwargs):
        super().__init__(dataset, **kwargs)
        self.seed, self.train, self.mean, self.std = seed, train, mean, std
        self.labels, self.num_classes, self.augment = labels, num_classes, augment
        self.fingerprint = fingerprint

    def set_epoch(self, epoch: int) -> None:
        seed = epoch_seed(self.seed, epoch) + rank_offset(world()[0])
        self.generator.manual_seed(seed)  # drives the shuffle and the workers' base seed
        if isinstance(self.sampler, DistributedSampler):  # under torchrun: this epoch's shares
            self.sampler.set_epoch(epoch)
        if self.num_workers == 0:
            reseed(self.dataset.transform, seed)

    def preview(self, n: int = 8, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
        """As ``TensorLoader.preview``: the first ``n`` images, as stored and as trained on."""
        dataset = self.dataset
        originals = dataset.originals(n)
        reseed(dataset.transform, seed)  # set_epoch re-seeds it before training
        return originals, torch.stack([dataset.transform(image=im)["image"] for im in originals])


def make_loader(images: np.ndarray, labels: np.ndarray, mean, std, batch_size: int, *,
                train: bool, augment=None, classes=None, num_workers: int | None = None,
                seed: int = 0) -> SeededDataLoader:
    """The classic path. ``augment``: an ``Augment``, a list of albumentations transforms (e.g.
    ``classic_augment(size)``; normalisation is appended), or None; used in training only."""
    images, labels, mean, std, num_classes = check_arrays(images, labels, mean, std, batch_size,
                                                           train, classes, augment)
    transform = pipeline(augment if train else None, mean, std, images.shape[1:3])
    if num_workers is None:  # workers pay off only when there is enough per-image work
        num_workers = min(8, os.cpu_count() or 1) if len(labels) > 4096 else 0
    augment = augment if train else None
    return seeded_loader(AlbumentationsDataset(images, labels, transform), batch_size,
                         train=train, num_workers=num_workers, seed=seed, mean=mean, std=std,
                         labels=labels, num_classes=num_classes, augment=augment,
                         fingerprint=fingerprint(images, labels, classes, augment, batch_size, seed))


def seeded_loader(dataset: Dataset, batch_size: int, *, train: bool, num_workers: int,
                  seed: int, **about) -> SeededDataLoader:
    """A DataLoader over ``dataset`` as ``make_loader`` describes: shuffled and dropping the last
    batch in training, seeded, and under torchrun this process's share with its part of the batch.
    ``about``: what the loader knows of its data (SeededDataLoader's keyword arguments)."""
    rank, procs = world()
    sampler = None
    if procs > 1:  # torchrun: the same shuffled shares in every process; test: consecutive shares
        sampler = (DistributedSampler(dataset, procs, rank, shuffle=True, seed=seed, drop_last=True)
                   if train else np.array_split(np.arange(len(dataset)), procs)[rank].tolist())
    if num_workers == 0:  # else albumentations seeds itself from the OS, and a pass before the
        reseed(dataset.transform, seed + rank_offset(rank))  # first set_epoch (a range test) varies
    return SeededDataLoader(
        dataset, seed=seed, train=train, **about,
        batch_size=share(batch_size) if train else batch_size,
        shuffle=train and sampler is None, sampler=sampler, drop_last=train,
        num_workers=num_workers, worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed + rank_offset(rank)),
        pin_memory=torch.cuda.is_available())
