"""Image-classification data sets as uint8 arrays in memory: ``ImageData`` (``held_out``: part of
the training split kept back to choose a recipe on). ``folders.load_image_folder`` reads any image
folder tree, ``cifar10.load_cifar10`` CIFAR-10.

``root`` is the argument, else ``$EVA_DATA_DIR``, else the nearest ``data/`` folder here or above,
else ``./data``; in smoke mode (``EVA_SMOKE=1``) alone a missing CIFAR-10 becomes a small synthetic
one, with a loud warning. One channel rule: everything is RGB, as an image viewer shows the file;
grayscale arrays get the gray value in all three channels (``to_rgb``), so every model takes 3.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")


def smoke_mode() -> bool:
    """True when ``$EVA_SMOKE`` asks for the fast CPU test mode (tiny subsets, a step or two)."""
    return os.environ.get("EVA_SMOKE", "").lower() in {"1", "true", "yes"}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$EVA_DATA_DIR``, else the nearest ``data/`` here or above, else ``./data``."""
    if root or os.environ.get("EVA_DATA_DIR"):
        return Path(root or os.environ["EVA_DATA_DIR"]).expanduser()
    here = Path.cwd()
    for up, folder in enumerate((here, *here.parents)):
        if (folder / "data").is_dir():  # relative, so logs and notebooks show no machine's paths
            return Path(*[".."] * up, "data")
    return Path("data")


@dataclass(frozen=True)
class ImageData:
    """A whole data set in memory. Images uint8 (N, H, W, 3) RGB; labels int64 (N,) in
    [0, len(classes)); ``classes[i]`` names label i."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    mean: tuple[float, float, float]  # per-channel mean of the training pixels, in [0, 1]
    std: tuple[float, float, float]   # per-channel standard deviation, in [0, 1]
    classes: tuple[str, ...]
    source: str                       # where the arrays came from, for the notebook's log

    @property
    def num_classes(self) -> int:
        """len(classes): the number of outputs a model for this data needs."""
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return tuple(self.train_images.shape[1:3])

    def subset(self, train: int | None = None, test: int | None = None) -> "ImageData":
        """The first ``train``/``test`` images of each split (None keeps a split whole). Every
        source stores the classes mixed, so a prefix has roughly equal class counts; mean and std
        stay those of the full training set, so a subset is normalised like the whole."""
        return replace(self, train_images=self.train_images[:train],
                       train_labels=self.train_labels[:train],
                       test_images=self.test_images[:test], test_labels=self.test_labels[:test])

    def held_out(self, valid_pct: float = 0.1, seed: int = 0) -> "ImageData":
        """The training split cut in two, to choose a recipe on without looking at the test set
        (fastai's ``valid_pct``): ``valid_pct`` of each class's training images, drawn at random
        with ``seed``, become the returned data's test split, the rest its training split, with
        mean and std computed again from that rest. The real test split is left out: keep it for
        the number you report, from a run on the whole training split."""
        if isinstance(valid_pct, bool) or not isinstance(valid_pct, (int, float)) \
                or not 0 < valid_pct < 1:
            raise ValueError(f"valid_pct={valid_pct!r}: give the fraction of the training images "
                             "to hold out, between 0 and 1 (e.g. 0.1).")
        rng = np.random.default_rng(seed)
        held = np.zeros(len(self.train_labels), dtype=bool)
        for c in range(self.num_classes):
            members = np.flatnonzero(self.train_labels == c)
            held[rng.choice(members, round(valid_pct * len(members)), replace=False)] = True
        if held.all() or not held.any():
            raise ValueError(f"valid_pct={valid_pct}: holds out {held.sum()} of "
                             f"{len(held)} training images; leave some on each side.")
        order = np.flatnonzero(~held)  # the training part keeps its stored order, classes mixed
        mean, std = channel_stats(self.train_images[order])
        return replace(self, train_images=self.train_images[order],
                       train_labels=self.train_labels[order],
                       test_images=self.train_images[held], test_labels=self.train_labels[held],
                       mean=mean, std=std,
                       source=f"{self.source}, {held.sum():,} training images held out "
                              f"(valid_pct={valid_pct}, seed={seed})")

    def __repr__(self) -> str:
        h, w = self.image_size
        return (f"ImageData(train={len(self.train_labels):,}, test={len(self.test_labels):,}, "
                f"{h}x{w}, {len(self.classes)} classes, "
                f"mean={tuple(round(m, 4) for m in self.mean)}, "
                f"std={tuple(round(s, 4) for s in self.std)}, source={self.source!r})")


def to_rgb(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W), (N, H, W, 1) or (N, H, W, 3) -> (N, H, W, 3); gray copied to R, G, B."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 pixels in [0, 255]; got {images.dtype}. Fix: "
                         "np.clip(x * 255, 0, 255).astype(np.uint8) for floats in [0, 1].")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W) or (N, H, W, 1) grayscale, or (N, H, W, 3) "
                         f"RGB; got shape {images.shape}. Fix: channels last, and drop an alpha "
                         "channel (images[..., :3]).")
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def check_labels(labels, count: int, of: str = "classes") -> None:
    """Raise one ValueError unless every label (numpy or torch, (N,)) is in [0, ``count``):
    ``of`` says what ``count`` counts, "classes" of the data or "outputs" of a model."""
    if len(labels) == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= count:
        fix = ("build the model with num_classes=len(data.classes), or correct the labels"
               if of == "outputs" else f"labels must be 0..{count - 1}")
        raise ValueError(f"Labels run from {low} to {high}, but there are {count} {of} (labels "
                         f"0..{count - 1}). Fix: {fix}.")


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of uint8 images (N, H, W, C), or (N, H, W) grayscale
    (one channel), in float64 chunks."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    c = images.shape[-1]
    total, total_sq = np.zeros(c), np.zeros(c)
    for start in range(0, len(images), 5000):  # chunks keep the float64 copy small
        chunk = images[start:start + 5000].reshape(-1, c).astype(np.float64) / 255.0
        total += chunk.sum(0)
        total_sq += (chunk ** 2).sum(0)
    n = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean ** 2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def synthetic_data(train: int = 512, test: int = 256, *, classes=CIFAR10_CLASSES,
                   image_size: int = 32, seed: int = 0) -> ImageData:
    """A small stand-in for smoke tests: each class a noisy tint, so it is learnable."""
    rng = np.random.default_rng(seed)
    tints = rng.integers(40, 216, size=(len(classes), 3))

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n, dtype=np.int64) % len(classes)
        noise = rng.normal(0, 40, size=(n, image_size, image_size, 3))
        return np.clip(tints[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8), labels

    (xtr, ytr), (xte, yte) = make(train), make(test)
    mean, std = channel_stats(xtr)
    return ImageData(xtr, ytr, xte, yte, mean, std, tuple(classes), source="SYNTHETIC (smoke mode)")
