"""Shared fixtures: tiny data sets built on the fly (never the real images)."""
import numpy as np
import pytest
from PIL import Image

from eva_utils.data import CIFAR10_CLASSES, synthetic_data


@pytest.fixture
def tiny():
    """A learnable synthetic CIFAR-shaped data set: 200 training and 100 test images."""
    return synthetic_data(train=200, test=100, seed=1)


def write_image_folder(root, per_class=2, size=(32, 32), mode="RGB", classes=CIFAR10_CLASSES):
    """root/train/<class>/NNNN.png and root/test/<class>/NNNN.png, random pixels; size is (W, H)."""
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
