"""CIFAR-10 as uint8 arrays, from whichever copy is at hand, plus the two training loaders.

Sources, tried in this order (local copies first, so nothing waits on a network):
  1. an extracted torchvision copy: ``<root>/cifar-10-batches-py``;
  2. an image-folder tree: ``<root>/train/<class>/*`` and ``<root>/test/<class>/*`` (PNG or JPEG,
     e.g. ``../shared/data/cifar10-jpeg.tar.xz`` extracted, or a Kaggle export), decoded once and
     cached next to it as ``<root>/cifar10-cache.npz`` (rebuilt when the folder changes);
  3. a torchvision download into ``<root>`` (needs the internet).
``root`` is the ``root`` argument, else ``$EVA_DATA_DIR``, else ``./data``.

In smoke mode (``EVA_SMOKE=1``, set by ``notebooks/conftest.py``) and only there, a missing data set
is replaced by a small synthetic one with a loud warning, so the notebook tests run anywhere.
"""
from __future__ import annotations

import hashlib
import os
import random
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .transforms import gpu_augment

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
CACHE_NAME = "cifar10-cache.npz"


class DataError(RuntimeError):
    """The data set could not be found or read; the message says where and how to fix it."""


def smoke_mode() -> bool:
    """True when ``$EVA_SMOKE`` asks for the fast CPU test mode (tiny subsets, a step or two)."""
    return os.environ.get("EVA_SMOKE", "").lower() in {"1", "true", "yes"}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root``, else ``$EVA_DATA_DIR``, else ``./data``."""
    return Path(root or os.environ.get("EVA_DATA_DIR") or "data").expanduser()


@dataclass(frozen=True)
class CIFAR10:
    """The whole data set in memory. Images are uint8 (N, 32, 32, 3) in RGB; labels int64 (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    mean: tuple[float, float, float]  # per-channel mean of the training pixels, in [0, 1]
    std: tuple[float, float, float]  # per-channel standard deviation, in [0, 1]
    source: str  # where the arrays came from, for the notebook's log
    classes: tuple[str, ...] = CLASSES

    def subset(self, train: int | None = None, test: int | None = None) -> "CIFAR10":
        """The first ``train``/``test`` images of each split (None keeps a split whole); every
        source stores the classes mixed, so a prefix has roughly equal class counts.

        Mean and std stay those of the full training set, so a subset is normalised like the whole.
        """
        return replace(
            self,
            train_images=self.train_images[:train], train_labels=self.train_labels[:train],
            test_images=self.test_images[:test], test_labels=self.test_labels[:test],
        )

    def __repr__(self) -> str:
        return (f"CIFAR10(train={len(self.train_labels):,}, test={len(self.test_labels):,}, "
                f"mean={tuple(round(m, 4) for m in self.mean)}, "
                f"std={tuple(round(s, 4) for s in self.std)}, source={self.source!r})")


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of uint8 images (N, H, W, 3), in float64 chunks."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for start in range(0, len(images), 5000):  # chunks keep the float64 copy small
        chunk = images[start:start + 5000].reshape(-1, 3).astype(np.float64) / 255.0
        total += chunk.sum(0)
        total_sq += (chunk ** 2).sum(0)
    n = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean ** 2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def load_cifar10(root: str | os.PathLike | None = None, *, download: bool = True,
                 smoke: bool | None = None) -> CIFAR10:
    """Load CIFAR-10 from the first source found under ``data_root(root)`` (see the module doc).

    ``smoke=None`` follows ``smoke_mode()``. Raises DataError when no source works outside smoke mode.
    """
    root = data_root(root)
    smoke = smoke_mode() if smoke is None else smoke
    if (root / "cifar-10-batches-py").is_dir():
        return _from_torchvision(root, download=False)
    if (root / "train").is_dir() or (root / "test").is_dir():
        return _from_image_folder(root)
    problem = None
    if download:
        try:
            return _from_torchvision(root, download=True)
        except Exception as exc:  # no network, a proxy, a full disk: all end the same way
            problem = exc
    if smoke:
        warnings.warn(
            f"\n{'!' * 70}\nSMOKE MODE: no CIFAR-10 under {root.resolve()} and no download, so a small "
            f"SYNTHETIC data set stands in. Accuracies below mean nothing.\n{'!' * 70}",
            stacklevel=2)
        return synthetic_cifar10()
    raise DataError(
        f"No CIFAR-10 found under {root.resolve()}"
        + (f" and the download failed ({type(problem).__name__}: {problem})" if problem else "")
        + ".\nFix: connect to the internet so torchvision can download it, or put a copy there: "
        "'cifar-10-batches-py/' (torchvision) or 'train/<class>/*.png|jpg' and 'test/<class>/...' "
        "(e.g. `tar xJf cifar10-jpeg.tar.xz -C data`). Point elsewhere with load_cifar10(root=...) "
        "or the EVA_DATA_DIR environment variable.") from problem


def _from_torchvision(root: Path, download: bool) -> CIFAR10:
    from torchvision.datasets import CIFAR10 as TVCIFAR10

    try:
        train = TVCIFAR10(str(root), train=True, download=download)
        test = TVCIFAR10(str(root), train=False, download=download)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        if download:
            raise
        raise DataError(f"{root / 'cifar-10-batches-py'} is incomplete or corrupted ({exc}). "
                        "Fix: delete that folder and download it again.") from exc
    images = np.asarray(train.data)
    mean, std = channel_stats(images)  # about 0.3 s: cheaper than a cache to keep in sync
    return CIFAR10(images, np.asarray(train.targets, dtype=np.int64), np.asarray(test.data),
                   np.asarray(test.targets, dtype=np.int64), mean, std,
                   source=f"torchvision copy in {root}")


def _list_split(root: Path, split: str) -> list[tuple[Path, int]]:
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"{folder} is missing: an image-folder copy of CIFAR-10 needs both "
                        f"{root / 'train'} and {root / 'test'}, each with one folder per class.")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    missing = sorted(set(CLASSES) - set(found))
    extra = sorted(set(found) - set(CLASSES))
    if missing or extra:
        raise DataError(
            f"{folder} must hold exactly the ten CIFAR-10 class folders {', '.join(CLASSES)}; "
            + (f"missing: {', '.join(missing)}. " if missing else "")
            + (f"unexpected: {', '.join(extra)}. " if extra else "")
            + "Fix: rename or remove folders so the names match.")
    files = [(p, label) for label, name in enumerate(CLASSES)
             for p in sorted((folder / name).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    # A fixed shuffle, so classes are mixed as in CIFAR-10's own files and subset(n) is balanced.
    files = [files[i] for i in np.random.default_rng(0).permutation(len(files))]
    if not files:
        raise DataError(f"{folder} has class folders but no images in them (.png/.jpg). "
                        "Fix: extract the data set again.")
    return files


def _signature(files: list[tuple[Path, int]]) -> str:
    """Changes when any file is added, removed, renamed, resized or touched."""
    h = hashlib.sha256()
    for path, label in files:
        st = path.stat()
        h.update(f"{path.parent.name}/{path.name}:{label}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _decode(files: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images = np.empty((len(files), 32, 32, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(tqdm(files, desc=f"decoding {files[0][0].parent.parent.name}",
                                       leave=False, mininterval=1.0)):
        try:
            with Image.open(path) as im:
                im.load()
                mode, size = im.mode, im.size
                array = np.asarray(im)
        except Exception as exc:
            raise DataError(f"Cannot read image {path} ({exc}). Fix: delete or replace that file.") \
                from exc
        if mode != "RGB" or size != (32, 32):
            raise DataError(f"Image {path} is {size[0]}x{size[1]} {mode}; CIFAR-10 images are 32x32 "
                            "RGB. Fix: remove it, or convert it with PIL: "
                            "Image.open(p).convert('RGB').resize((32, 32)).save(p).")
        images[i] = array
    return images, np.array([label for _, label in files], dtype=np.int64)


def _from_image_folder(root: Path) -> CIFAR10:
    train_files, test_files = _list_split(root, "train"), _list_split(root, "test")
    signature = _signature(train_files + test_files)
    cache = root / CACHE_NAME
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:  # plain arrays only: no pickle
            if str(z["signature"]) == signature:
                return CIFAR10(z["train_images"], z["train_labels"], z["test_images"],
                               z["test_labels"], tuple(z["mean"].tolist()), tuple(z["std"].tolist()),
                               source=f"image folder {root} (cached in {CACHE_NAME})")
    train_images, train_labels = _decode(train_files)
    test_images, test_labels = _decode(test_files)
    mean, std = channel_stats(train_images)
    try:  # write to a temporary name and rename, so an interrupted write leaves no broken cache
        tmp = root / (CACHE_NAME + ".tmp.npz")
        np.savez(tmp, train_images=train_images, train_labels=train_labels,
                 test_images=test_images, test_labels=test_labels, mean=np.array(mean),
                 std=np.array(std), signature=np.array(signature))
        os.replace(tmp, cache)
    except OSError as exc:  # a read-only folder still works, just without the cache
        warnings.warn(f"Could not write the cache {cache} ({exc}); images will be decoded each time.",
                      stacklevel=3)
    return CIFAR10(train_images, train_labels, test_images, test_labels, mean, std,
                   source=f"image folder {root}")


def synthetic_cifar10(train: int = 512, test: int = 256, seed: int = 0) -> CIFAR10:
    """A small CIFAR-shaped stand-in for smoke tests: each class a noisy tint, so it is learnable."""
    rng = np.random.default_rng(seed)
    tints = rng.integers(40, 216, size=(10, 3))

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n, dtype=np.int64) % 10
        noise = rng.normal(0, 40, size=(n, 32, 32, 3))
        return np.clip(tints[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8), labels

    (xtr, ytr), (xte, yte) = make(train), make(test)
    mean, std = channel_stats(xtr)
    return CIFAR10(xtr, ytr, xte, yte, mean, std, source="SYNTHETIC (smoke mode)")


# --------------------------------------------------------------------------------------------------
# The classic path: a Dataset applying an albumentations Compose, through a DataLoader.

class AlbumentationsDataset(Dataset):
    """uint8 images (N, 32, 32, 3) -> (float tensor (3, 32, 32), int label) via ``transform``.

    ``transform`` is an albumentations Compose ending in Normalize + ToTensorV2 (see transforms.py).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels: they must match.")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(image=self.images[i])["image"], int(self.labels[i])


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker its own python, numpy and albumentations seed.

    albumentations 2.x keeps its own generators inside each Compose; a forked worker inherits a copy,
    so without this every worker would replay the same augmentations.
    """
    info = torch.utils.data.get_worker_info()
    seed = info.seed % 2**32  # torch sets it to the loader's base seed + worker_id
    random.seed(seed)
    np.random.seed(seed)
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


class SeededDataLoader(DataLoader):
    """A DataLoader whose shuffling and augmentation are a function of ``set_epoch(seed)`` alone,
    so a resumed run sees the same batches as an uninterrupted one."""

    def set_epoch(self, seed: int) -> None:
        self.generator.manual_seed(seed)  # drives the shuffle and the workers' base seed
        transform = getattr(self.dataset, "transform", None)
        if self.num_workers == 0 and hasattr(transform, "set_random_seed"):
            transform.set_random_seed(seed)


def make_loader(images: np.ndarray, labels: np.ndarray, transform, batch_size: int, *,
                train: bool, num_workers: int | None = None, seed: int = 0) -> SeededDataLoader:
    """The classic path: shuffled, drop-last batches for training, ordered full batches for test."""
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1) if len(labels) > 4096 else 0
    _check_batch_size(batch_size, len(labels), drop_last=train)
    return SeededDataLoader(
        AlbumentationsDataset(images, labels, transform), batch_size=batch_size, shuffle=train,
        drop_last=train, num_workers=num_workers, worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed), pin_memory=torch.cuda.is_available(),
        persistent_workers=False)


def _check_batch_size(batch_size: int, n: int, drop_last: bool) -> None:
    if batch_size < 1 or (drop_last and batch_size > n):
        raise ValueError(f"batch_size={batch_size} does not fit a split of {n} images"
                         f"{' (incomplete batches are dropped in training)' if drop_last else ''}. "
                         f"Fix: choose a batch size between 1 and {n}.")


# --------------------------------------------------------------------------------------------------
# The fast path: the whole split as uint8 on the device, augmented a batch at a time with tensor ops.

class GpuLoader:
    """Batches of a split kept on ``device`` as uint8 (N, 3, 32, 32).

    Yields (images float (B, 3, 32, 32) normalised with ``mean``/``std``, labels int64 (B,)).
    In training: reshuffled each epoch, incomplete last batch dropped, each image randomly cropped
    after ``pad`` pixels of reflect padding, flipped left-right with probability 1/2 and given a
    ``cutout`` x ``cutout`` hole filled with 0 (the mean after normalisation). Plain tensor ops, so it
    runs on CPU for tests as well. Call ``set_epoch(seed)`` to fix an epoch's randomness.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, batch_size: int, *,
                 train: bool, pad: int = 4, flip: bool = True, cutout: int = 8,
                 device: torch.device | str = "cpu", seed: int = 0,
                 dtype: torch.dtype = torch.float32):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3); got {images.dtype} {images.shape}.")
        _check_batch_size(batch_size, len(labels), drop_last=train)
        self.device = torch.device(device)
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255
        self.batch_size, self.train, self.dtype = batch_size, train, dtype
        self.pad, self.flip, self.cutout = (pad, flip, cutout) if train else (0, False, 0)
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def set_epoch(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        order = (torch.randperm(n, device=self.device, generator=self.generator) if self.train
                 else torch.arange(n, device=self.device))
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = (self.images[idx].float() - self.mean) / self.std
            x = gpu_augment(x, pad=self.pad, flip=self.flip, cutout=self.cutout,
                            generator=self.generator)
            yield x.to(self.dtype), self.labels[idx]
