"""Shared fixtures: tiny CIFAR-shaped data built on the fly (never the real images)."""
import numpy as np
import pytest
from PIL import Image

from eva_utils.data import CLASSES, synthetic_cifar10


@pytest.fixture
def tiny():
    """A learnable synthetic data set: 200 training and 100 test images."""
    return synthetic_cifar10(train=200, test=100, seed=1)


def write_image_folder(root, per_class=2, size=(32, 32), mode="RGB", classes=CLASSES):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(array).convert(mode).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture
def make_folder():
    """write_image_folder, for tests that need an unusual folder."""
    return write_image_folder


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(tmp_path)
