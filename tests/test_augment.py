"""One augmentation spec, two backends (albumentations per image, tensor ops per batch): same meaning."""
import numpy as np
import pytest
import torch

import eva_utils as eva
from eva_utils.loaders import reseed
from eva_utils.workers import make_loader
from eva_utils.transforms import Augment, denormalize, normalize

PAD, CUT = 4, 8
MEAN, STD = (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)  # "normalised" = raw pixel values


def coded_image(h=32, w=32):
    """Pixel (r, c) = (r, c, 1) * 7 + 1: its row and column can be read back, and no value is 0."""
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([r * 7 + 1, c * 7 + 1, np.full_like(r, 8)], -1).astype(np.uint8)


def tensor_batch(spec, n, image=None, seed=0):
    image = coded_image() if image is None else image
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None].repeat(n, 1, 1, 1)
    return spec(x, torch.Generator().manual_seed(seed))


def albumentations_batch(spec, n, image=None, seed=0):
    image = coded_image() if image is None else image
    aug = spec.albumentations(MEAN, STD, image.shape[:2])
    reseed(aug, seed)
    return torch.stack([aug(image=image)["image"] for _ in range(n)])


BACKENDS = pytest.mark.parametrize("make", [tensor_batch, albumentations_batch],
                                   ids=["tensor", "albumentations"])


def read_offsets(x):
    """Crop offsets and flips of augmented coded images (B, 3, 32, 32): output pixel (4, 4) and (4,
    27) came from padded rows/cols dy + 4 and dx + 4 / dx + 27, i.e. original row dy, col dx."""
    row = (x[:, 0, 4, 4] - 1) / 7
    left, right = (x[:, 1, 4, 4] - 1) / 7, (x[:, 1, 4, 27] - 1) / 7
    flipped = left > right
    dx = torch.where(flipped, right, left)
    return row.round().long(), dx.round().long(), flipped


@BACKENDS
def test_crop_offsets_uniform_and_flip_rate(make):
    n = 2700
    dy, dx, flipped = read_offsets(make(Augment(pad=PAD, flip=True), n))
    for offsets in (dy, dx):
        counts = torch.bincount(offsets, minlength=2 * PAD + 1)
        assert len(counts) == 2 * PAD + 1  # offsets 0..8, none outside
        assert counts.min() > n / 9 * 0.75 and counts.max() < n / 9 * 1.25  # ~300 each
    assert abs(flipped.float().mean().item() - 0.5) < 0.05


@BACKENDS
def test_cutout_is_one_square_of_the_right_area(make):
    x = make(Augment(pad=PAD, flip=True, cutout=CUT), 200)
    holes = (x == 0).all(1)  # (B, H, W): pixels zero in every channel
    assert (holes.sum((1, 2)) == CUT * CUT).all()
    rows, cols = holes.any(2), holes.any(1)
    assert (rows.sum(1) == CUT).all() and (cols.sum(1) == CUT).all()  # a square, inside the image
    assert holes.float().mean(0)[8:24, 8:24].min() > 0  # holes land all over, not in one spot


def test_both_backends_give_the_same_distribution():
    """Per-pixel mean and spread of 3,000 augmentations of one image, and where the holes fall,
    agree between the backends (crop, rotation, flip and cutout together)."""
    spec = Augment(pad=PAD, flip=True, rotate=10, cutout=CUT)
    image = np.clip(coded_image() + 20, 0, 255).astype(np.uint8)
    a = tensor_batch(spec, 3000, image, seed=1)
    b = albumentations_batch(spec, 3000, image, seed=2)
    assert a.shape == b.shape == (3000, 3, 32, 32)
    inner = (slice(None), slice(4, 28), slice(4, 28))  # borders: reflection details differ slightly
    scale = float(a.std())
    assert (a.mean(0) - b.mean(0))[inner].abs().max() < 0.08 * scale
    assert (a.std(0) - b.std(0))[inner].abs().max() < 0.08 * scale
    holes_a, holes_b = (a == 0).all(1).float().mean(0), (b == 0).all(1).float().mean(0)
    assert (holes_a - holes_b).abs().max() < 0.04
    assert holes_a.mean() == pytest.approx(CUT * CUT / 32 / 32, rel=0.02)


def test_albumentations_seeding_keeps_transforms_independent():
    """Compose.set_random_seed (albumentations 2.0.8) seeds every transform alike, which ties the
    flip to the rotation's direction; ``reseed`` does not."""
    image = np.clip(coded_image() + 20, 0, 255).astype(np.uint8)
    spec = Augment(pad=0, flip=True, rotate=10)
    aug = spec.albumentations(MEAN, STD, (32, 32))
    aug.set_random_seed(0)
    tied = torch.stack([aug(image=image)["image"] for _ in range(2000)])
    fair = albumentations_batch(spec, 2000, image)
    # image[4, 4] and image[4, 27] have the same row value: a fair mix of rotations keeps it so
    assert abs(float(tied[:, 0, 4, 4].mean() - tied[:, 0, 4, 27].mean())) > 8
    assert abs(float(fair[:, 0, 4, 4].mean() - fair[:, 0, 4, 27].mean())) < 2


@BACKENDS
def test_rotation_turns_images_by_up_to_the_limit(make):
    """A horizontal bar through the centre comes back tilted: its slope spreads over +-limit."""
    image = np.zeros((33, 33, 3), np.uint8)
    image[15:18, :] = 255
    x = make(Augment(pad=0, flip=False, rotate=10), 400, image)
    cols = torch.arange(33).float()
    ys = (x[:, 0] * torch.arange(33).float()[:, None]).sum(1) / x[:, 0].sum(1).clamp(min=1e-6)
    centred = cols - 16
    slope = ((ys[:, 8:25] - ys[:, 8:25].mean(1, keepdim=True)) * centred[8:25]).sum(1) \
        / (centred[8:25] ** 2).sum()
    angles = torch.rad2deg(torch.atan(slope)).abs()
    assert angles.max() < 11 and angles.max() > 8 and angles.mean() > 3


@BACKENDS
def test_any_image_size_is_kept(make):
    image = np.random.default_rng(0).integers(1, 255, (48, 40, 3), dtype=np.uint8)
    x = make(Augment(pad=PAD, flip=True, rotate=5, cutout=CUT), 4, image)
    assert x.shape == (4, 3, 48, 40)  # cropped back to its own size, not to 32x32


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="cutout=40.*32x32"):
        Augment(cutout=40).albumentations(MEAN, STD, (32, 32))
    with pytest.raises(ValueError, match="pad=-1"):
        Augment(pad=-1)
    with pytest.raises(ValueError, match="rotate=400"):
        Augment(rotate=400)
    with pytest.raises(TypeError, match="as a list"), \
            pytest.warns(UserWarning, match=r"Fix: more training images \(10\+ steps an epoch "
                                            r"need 10\+ images\)"):  # advice that can be followed
        eva.make_loader(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4), MEAN, STD, 2, train=True,
                        augment=normalize(MEAN, STD))


def test_tensor_loader_normalises_and_covers_each_image_once(tiny):
    loader = eva.TensorLoader(tiny.train_images, np.arange(200), tiny.mean, tiny.std, 20, train=True)
    assert loader.device == eva.get_device()  # the best device there is
    seen, xs = [], []
    for x, idx in loader:
        assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32
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


def test_drop_last_test_mode_and_batch_size_errors(tiny):
    with pytest.warns(UserWarning, match="make 3 steps an epoch, and the incomplete last batch"):
        train = eva.TensorLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 64,
                                 train=True)
    assert len(train) == 3 and sum(len(y) for _, y in train) == 192
    test = eva.TensorLoader(tiny.test_images, tiny.test_labels, tiny.mean, tiny.std, 64, train=False)
    assert test.augment is None  # test batches are never augmented
    assert len(test) == 2 and torch.equal(torch.cat([y for _, y in test]),
                                          torch.from_numpy(tiny.test_labels))
    for make in (eva.TensorLoader, eva.make_loader):
        with pytest.raises(ValueError, match="batch_size=500 does not fit a split of 200"):
            make(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 500, train=True)


def test_both_loaders_normalise_alike(tiny):
    classic = make_loader(tiny.test_images, tiny.test_labels, tiny.mean, tiny.std, 50, train=False,
                          num_workers=0)
    tensor = eva.TensorLoader(tiny.test_images, tiny.test_labels, tiny.mean, tiny.std, 50,
                              train=False)
    for (xa, ya), (xg, yg) in zip(classic, tensor):
        torch.testing.assert_close(xa, xg.cpu(), atol=1e-5, rtol=0)
        assert torch.equal(ya, yg.cpu())


@pytest.mark.parametrize("kind", ["tensor", "classic"])
def test_preview_is_what_the_loader_trains_on(tiny, kind):
    spec = Augment(pad=PAD, flip=True, cutout=CUT)
    if kind == "tensor":
        loader = eva.TensorLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 20,
                                  train=True, augment=spec)
        normalised = (torch.from_numpy(tiny.train_images[:6]).permute(0, 3, 1, 2).float()
                      - loader._mean) / loader._std
        want = spec(normalised, torch.Generator().manual_seed(3))
    else:
        loader = make_loader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 20,
                             train=True, augment=spec, num_workers=0)
        pipeline = spec.albumentations(tiny.mean, tiny.std, (32, 32))
        reseed(pipeline, 3)
        want = torch.stack([pipeline(image=im)["image"] for im in tiny.train_images[:6]])
    originals, shown = loader.preview(6, seed=3)
    np.testing.assert_array_equal(originals, tiny.train_images[:6])
    torch.testing.assert_close(shown, want)
    fig = eva.plot_augmentations(loader, n=6)
    assert sum(1 for ax in fig.axes if ax.images) == 12


def test_workers_get_their_own_augmentation_seeds():
    images = np.repeat(coded_image()[None], 16, 0)
    loader = make_loader(images, np.zeros(16, np.int64), MEAN, STD, 1, train=True,
                         augment=Augment(pad=PAD, cutout=CUT), num_workers=2)
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
    x = normalize(tiny.mean, tiny.std)(image=tiny.test_images[0])["image"]
    back = denormalize(x, tiny.mean, tiny.std)
    assert back.shape == (32, 32, 3)
    np.testing.assert_allclose(back.numpy() * 255, tiny.test_images[0], atol=1e-3)
