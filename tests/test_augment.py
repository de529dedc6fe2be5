"""Both augmentation paths, checked for the same meaning on CPU."""
import numpy as np
import pytest
import torch

import eva_utils as eva
from eva_utils.data import make_loader
from eva_utils.transforms import crop_flip_cutout, denormalize, gpu_augment, eval_transforms

PAD, CUT = 4, 8


def coded_image():
    """Pixel (r, c) = (r, c, 1) * 7 + 1: its row and column can be read back, and no value is 0."""
    r, c = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    return np.stack([r * 7 + 1, c * 7 + 1, np.full_like(r, 8)], -1).astype(np.uint8)


MEAN, STD = (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)  # "normalised" = raw pixel values


def read_offsets(x):
    """Crop offsets and flips of augmented coded images (B, 3, 32, 32): output pixel (4, 4) and (4,
    27) came from padded rows/cols dy + 4 and dx + 4 / dx + 27, i.e. original row dy, col dx."""
    row = (x[:, 0, 4, 4] - 1) / 7
    left, right = (x[:, 1, 4, 4] - 1) / 7, (x[:, 1, 4, 27] - 1) / 7
    flipped = left > right
    dx = torch.where(flipped, right, left)
    return row.round().long(), dx.round().long(), flipped


def gpu_batch(n, **kw):
    x = torch.from_numpy(coded_image()).permute(2, 0, 1).float()[None].repeat(n, 1, 1, 1)
    return gpu_augment(x, generator=torch.Generator().manual_seed(0), **kw)


def alb_batch(n):
    aug = crop_flip_cutout(MEAN, STD, pad=PAD, cutout=0)
    aug.set_random_seed(0)
    return torch.stack([aug(image=coded_image())["image"] for _ in range(n)])


@pytest.mark.parametrize("make", [gpu_batch, alb_batch], ids=["gpu", "albumentations"])
def test_crop_offsets_uniform_and_flip_rate(make):
    n = 2700
    x = make(n, pad=PAD, flip=True, cutout=0) if make is gpu_batch else make(n)
    dy, dx, flipped = read_offsets(x)
    for offsets in (dy, dx):
        counts = torch.bincount(offsets, minlength=2 * PAD + 1)
        assert len(counts) == 2 * PAD + 1  # offsets 0..8, none outside
        assert counts.min() > n / 9 * 0.75 and counts.max() < n / 9 * 1.25  # ~300 each
    assert abs(flipped.float().mean().item() - 0.5) < 0.05


@pytest.mark.parametrize("path", ["gpu", "albumentations"])
def test_cutout_is_one_square_of_the_right_area(path):
    if path == "gpu":
        x = gpu_batch(200, pad=PAD, flip=True, cutout=CUT)
    else:
        aug = crop_flip_cutout(MEAN, STD, pad=PAD, cutout=CUT)
        aug.set_random_seed(0)
        x = torch.stack([aug(image=coded_image())["image"] for _ in range(200)])
    holes = (x == 0).all(1)  # (B, H, W): pixels zero in every channel
    assert (holes.sum((1, 2)) == CUT * CUT).all()
    rows, cols = holes.any(2), holes.any(1)
    assert (rows.sum(1) == CUT).all() and (cols.sum(1) == CUT).all()  # a square, inside the image
    centres = holes.float().mean(0)
    assert centres[8:24, 8:24].min() > 0  # holes land all over the image, not in one spot


def test_gpu_loader_normalises_and_covers_each_image_once(tiny):
    loader = eva.GpuLoader(tiny.train_images, np.arange(200), tiny.mean, tiny.std, 40,
                           train=True, pad=0, flip=False, cutout=0)
    seen, xs = [], []
    for x, idx in loader:
        assert x.shape == (40, 3, 32, 32) and x.dtype == torch.float32
        seen.append(idx)
        xs.append(x)
    assert sorted(torch.cat(seen).tolist()) == list(range(200))
    x = torch.cat(xs)
    assert x.mean((0, 2, 3)).abs().max() < 1e-4 and (x.std((0, 2, 3)) - 1).abs().max() < 1e-2
    loader.set_epoch(1)
    first = next(iter(loader))[1]
    loader.set_epoch(2)
    assert not torch.equal(first, next(iter(loader))[1])  # a new shuffle each epoch
    loader.set_epoch(1)
    assert torch.equal(first, next(iter(loader))[1])     # and a reproducible one


def test_gpu_loader_drop_last_and_test_mode(tiny):
    train = eva.GpuLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 64, train=True)
    assert len(train) == 3 and sum(len(y) for _, y in train) == 192
    test = eva.GpuLoader(tiny.test_images, tiny.test_labels, tiny.mean, tiny.std, 64, train=False)
    assert len(test) == 2 and torch.equal(torch.cat([y for _, y in test]),
                                          torch.from_numpy(tiny.test_labels))
    with pytest.raises(ValueError, match="batch_size=500 does not fit a split of 200"):
        eva.GpuLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 500, train=True)


def test_albumentations_and_gpu_paths_normalise_alike(tiny):
    alb = make_loader(tiny.test_images, tiny.test_labels, eval_transforms(tiny.mean, tiny.std),
                      50, train=False, num_workers=0)
    gpu = eva.GpuLoader(tiny.test_images, tiny.test_labels, tiny.mean, tiny.std, 50, train=False)
    for (xa, ya), (xg, yg) in zip(alb, gpu):
        torch.testing.assert_close(xa, xg, atol=1e-5, rtol=0)
        assert torch.equal(ya, yg)


def test_workers_get_their_own_augmentation_seeds():
    images = np.repeat(coded_image()[None], 16, 0)
    aug = crop_flip_cutout(MEAN, STD, pad=PAD, cutout=CUT)
    loader = make_loader(images, np.zeros(16, np.int64), aug, 1, train=False, num_workers=2)
    loader.set_epoch(0)
    out = [x for x, _ in loader]
    # worker 0 makes items 0, 2, 4...; worker 1 items 1, 3, 5... Without per-worker reseeding the
    # two would replay the same random draws and each pair would be identical.
    assert sum(torch.equal(out[i], out[i + 1]) for i in range(0, 16, 2)) < 2
    loader.set_epoch(0)
    assert all(torch.equal(a, b) for a, b in zip(out, [x for x, _ in loader]))  # reproducible
    loader.set_epoch(1)
    assert not all(torch.equal(a, b) for a, b in zip(out, [x for x, _ in loader]))


def test_denormalize_inverts_normalisation(tiny):
    x = eval_transforms(tiny.mean, tiny.std)(image=tiny.test_images[0])["image"]
    back = denormalize(x, tiny.mean, tiny.std)
    assert back.shape == (32, 32, 3)
    np.testing.assert_allclose(back.numpy() * 255, tiny.test_images[0], atol=1e-3)
