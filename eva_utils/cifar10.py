"""CIFAR-10 as ``ImageData``.

* ``load_cifar10(root)``: CIFAR-10 from, in this order (local copies first, so nothing waits on a
  network): an extracted torchvision copy (``<root>/cifar-10-batches-py``), an image folder with
  exactly CIFAR-10's ten classes, or a torchvision download into ``<root>``.

``root`` is found as ``data.data_root`` says; in smoke mode (``EVA_SMOKE=1``) and only there, a
missing CIFAR-10 is replaced by a small synthetic one with a loud warning.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .data import CIFAR10_CLASSES, ImageData, channel_stats, data_root, smoke_mode, synthetic_data
from .folders import class_folders, load_image_folder
from .machinery.images import DataError


def load_cifar10(root: str | os.PathLike | None = None, *, download: bool = True,
                 smoke: bool | None = None) -> ImageData:
    """CIFAR-10 from the first source found under ``data_root(root)`` (see the module doc).

    ``smoke=None`` follows ``smoke_mode()``. Raises DataError when no source works outside smoke mode.
    """
    root = data_root(root)
    smoke = smoke_mode() if smoke is None else smoke
    if (root / "cifar-10-batches-py").is_dir():
        return _from_torchvision(root, download=False)
    if (root / "train").is_dir() or (root / "test").is_dir():
        for split in ("train", "test"):
            _check_cifar10_classes(root / split)
        return load_image_folder(root)
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
        return synthetic_data()
    raise DataError(
        f"No CIFAR-10 found under {root.resolve()}"
        + (f" and the download failed ({type(problem).__name__}: {problem})" if problem else "")
        + ".\nFix: connect to the internet so torchvision can download it, or put a copy there: "
        "'cifar-10-batches-py/' (torchvision) or 'train/<class>/*.png|jpg' and 'test/<class>/...' "
        "(e.g. `tar xJf cifar10-jpeg.tar.xz -C data`). Point elsewhere with load_cifar10(root=...) "
        "or the EVA_DATA_DIR environment variable.") from problem


def _check_cifar10_classes(split: Path) -> None:
    found = list(class_folders(split))
    missing = sorted(set(CIFAR10_CLASSES) - set(found))
    extra = sorted(set(found) - set(CIFAR10_CLASSES))
    if missing or extra:
        raise DataError(
            f"{split} must hold exactly the ten CIFAR-10 class folders {', '.join(CIFAR10_CLASSES)}; "
            + (f"missing: {', '.join(missing)}. " if missing else "")
            + (f"unexpected: {', '.join(extra)}. " if extra else "")
            + "Fix: rename or remove folders so the names match, or use load_image_folder(root) "
            "for another data set.")


def _from_torchvision(root: Path, download: bool) -> ImageData:
    from torchvision.datasets import CIFAR10

    try:
        train = CIFAR10(str(root), train=True, download=download)
        test = CIFAR10(str(root), train=False, download=download)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        if download:
            raise
        raise DataError(f"{root / 'cifar-10-batches-py'} is incomplete or corrupted ({exc}). "
                        "Fix: delete that folder and download it again.") from exc
    images = np.asarray(train.data)
    mean, std = channel_stats(images)  # cheap: not worth a cache to keep in sync
    return ImageData(images, np.asarray(train.targets, dtype=np.int64), np.asarray(test.data),
                     np.asarray(test.targets, dtype=np.int64), mean, std, CIFAR10_CLASSES,
                     source=f"torchvision copy in {root}")
