from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import eva_utils as eva
from eva_utils.machinery.cache import CACHE_NAME
from eva_utils.cifar10 import load_cifar10
from eva_utils.data import channel_stats
from eva_utils.folders import load_image_folder
from eva_utils.machinery.images import DataError


def test_image_folder_loads_in_cifar_order_and_caches(image_folder):
    data = load_cifar10(image_folder, download=False)
    assert data.train_images.shape == (20, 32, 32, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (20, 32, 32, 3)
    assert sorted(np.bincount(data.train_labels).tolist()) == [2] * 10
    # the label of an image is the index of its folder in CIFAR-10's class order
    img = np.asarray(Image.open(image_folder / "train" / "cat" / "0001.png"))
    idx = [i for i, x in enumerate(data.train_images) if (x == img).all()]
    assert data.train_labels[idx[0]] == eva.CIFAR10_CLASSES.index("cat") == 3
    assert data.classes == eva.CIFAR10_CLASSES and data.image_size == (32, 32)
    assert (image_folder / CACHE_NAME).exists()
    cached = load_cifar10(image_folder, download=False)
    assert "cached" in cached.source
    np.testing.assert_array_equal(cached.train_images, data.train_images)
    with np.load(image_folder / CACHE_NAME, allow_pickle=False) as z:  # plain arrays, no pickle
        assert set(z.files) >= {"train_images", "mean", "std", "signature"}


def test_cache_rebuilt_when_folder_changes(image_folder):
    load_cifar10(image_folder, download=False)
    extra = np.full((32, 32, 3), 7, dtype=np.uint8)
    Image.fromarray(extra).save(image_folder / "train" / "dog" / "0099.png")
    data = load_cifar10(image_folder, download=False)
    assert "cached" not in data.source and len(data.train_labels) == 21


def test_mean_std_come_from_training_images(image_folder):
    data = load_cifar10(image_folder, download=False)
    pixels = data.train_images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(data.mean, pixels.mean(0), atol=1e-9)
    np.testing.assert_allclose(data.std, pixels.std(0), atol=1e-9)
    assert channel_stats(np.full((2, 4, 4, 3), 255, np.uint8)) == ((1.0,) * 3, (0.0,) * 3)


def test_data_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_DATA_DIR", str(tmp_path / "env"))
    assert eva.data_root() == tmp_path / "env"
    assert eva.data_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("EVA_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    assert eva.data_root() == Path("data")  # nothing found: ./data, where a download goes
    (tmp_path / "data").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")  # jupyter lab notebooks/ finds the repository's data
    assert eva.data_root() == Path("../data") and eva.data_root().resolve() == tmp_path / "data"


def test_no_data_no_network_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("EVA_SMOKE", raising=False)
    with pytest.raises(DataError, match=r"(?s)No CIFAR-10 found under .*EVA_DATA_DIR"):
        load_cifar10(tmp_path / "empty", download=False)


def test_failed_download_is_reported(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*a, **k):
        raise OSError("network is unreachable")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match="download failed .*unreachable"):
        load_cifar10(tmp_path, download=True, smoke=False)


def test_smoke_mode_falls_back_loudly(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_SMOKE", "1")
    with pytest.warns(UserWarning, match="SYNTHETIC"):
        data = load_cifar10(tmp_path, download=False)
    assert data.source.startswith("SYNTHETIC") and data.train_images.shape[1:] == (32, 32, 3)


@pytest.mark.parametrize("classes, word", [(eva.CIFAR10_CLASSES[:-1], "missing: truck"),
                                           (eva.CIFAR10_CLASSES + ("zebra",), "unexpected: zebra")])
def test_class_folders_must_match(tmp_path, make_folder, classes, word):
    make_folder(tmp_path, per_class=1, classes=classes)
    with pytest.raises(DataError, match=word) as err:
        load_cifar10(tmp_path, download=False)
    assert str(tmp_path / "train") in str(err.value)


def test_corrupt_image_is_named(image_folder):
    bad = image_folder / "test" / "frog" / "0000.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"Cannot read image {bad}"):
        load_cifar10(image_folder, download=False)


def test_mixed_sizes_are_named_unless_resized(tmp_path, make_folder):
    make_folder(tmp_path, per_class=1)
    odd = tmp_path / "train" / "ship" / "0000.png"
    Image.fromarray(np.zeros((28, 30, 3), np.uint8)).save(odd)
    with pytest.raises(DataError, match=r"(?s)ship/0000.png is 30x28 .* is 32x32.*image_size="):
        load_cifar10(tmp_path, download=False)
    data = load_image_folder(tmp_path, image_size=32)
    assert data.train_images.shape == (10, 32, 32, 3)


def test_any_image_folder_loads(tmp_path, make_folder):
    """5 classes of 48x48, one of them grayscale: names sorted from the folders, RGB out."""
    make_folder(tmp_path, per_class=3, size=(48, 48), classes=("star", "circle", "square", "cross",
                                                                "ring"))
    for p in (tmp_path / "train" / "ring").glob("*.png"):
        Image.open(p).convert("L").save(p)
    data = load_image_folder(tmp_path)
    assert data.classes == ("circle", "cross", "ring", "square", "star")
    assert data.train_images.shape == (15, 48, 48, 3) and data.image_size == (48, 48)
    assert sorted(np.bincount(data.test_labels).tolist()) == [3] * 5
    gray = data.train_images[data.train_labels == data.classes.index("ring")]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    small = load_image_folder(tmp_path, image_size=(24, 20))  # resized: a new cache signature
    assert small.train_images.shape == (15, 24, 20, 3) and "cached" not in small.source
    with pytest.raises(DataError, match="CIFAR-10 class folders"):
        load_cifar10(tmp_path, download=False)


def test_train_and_test_classes_must_agree(tmp_path, make_folder):
    make_folder(tmp_path, per_class=1, classes=("a", "b"))
    (tmp_path / "test" / "c").mkdir()
    with pytest.raises(DataError, match=r"only in test: \['c'\]"):
        load_image_folder(tmp_path)


def test_empty_class_folder_is_named(tmp_path, make_folder):
    make_folder(tmp_path, per_class=1)
    for p in (tmp_path / "test" / "frog").glob("*.png"):
        p.unlink()
    with pytest.raises(DataError, match=f"{tmp_path / 'test' / 'frog'} holds no images"):
        load_cifar10(tmp_path, download=False)


def test_broken_link_is_named(tmp_path, make_folder):
    make_folder(tmp_path, per_class=1)
    link = tmp_path / "train" / "cat" / "9999.png"
    link.symlink_to(tmp_path / "gone.png")
    with pytest.raises(DataError, match=f"{link} is a broken link"):
        load_cifar10(tmp_path, download=False)


@pytest.mark.parametrize("damage", ["truncated", "empty", "foreign", "crc"])
def test_damaged_cache_is_rebuilt_with_a_warning(image_folder, damage):
    first = load_cifar10(image_folder, download=False)
    cache = image_folder / CACHE_NAME
    raw = cache.read_bytes()
    if damage == "truncated":
        cache.write_bytes(raw[:len(raw) // 2])
    elif damage == "empty":
        cache.write_bytes(b"")
    elif damage == "foreign":
        np.savez(cache, something=np.zeros(3))
    else:  # flip bytes inside the first array's data: the zip's CRC check fails
        i = raw.index(b"train_images") + 200
        cache.write_bytes(raw[:i] + bytes(b ^ 0xFF for b in raw[i:i + 64]) + raw[i + 64:])
    with pytest.warns(UserWarning, match=f"cache {cache} cannot be read.*rebuilding") \
            if damage != "foreign" else pytest.warns(UserWarning, match="rebuilding"):
        again = load_cifar10(image_folder, download=False)
    assert "cached" not in again.source
    np.testing.assert_array_equal(again.train_images, first.train_images)
    assert "cached" in load_cifar10(image_folder, download=False).source  # and rewritten


def test_torchvision_copy_is_preferred(tmp_path, monkeypatch, make_folder):
    import torchvision.datasets

    class Fake:
        def __init__(self, root, train, download):
            n = 6 if train else 4
            self.data = np.full((n, 32, 32, 3), 100, np.uint8)
            self.targets = list(range(n))
    (tmp_path / "cifar-10-batches-py").mkdir()
    make_folder(tmp_path, per_class=1)  # present too, but comes second
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Fake)
    data = load_cifar10(tmp_path, download=False)
    assert data.source.startswith("torchvision") and len(data.train_labels) == 6


def test_subset_keeps_full_statistics(tiny):
    small = tiny.subset(20, 10)
    assert len(small.train_labels) == 20 and len(small.test_images) == 10
    assert small.mean == tiny.mean


def test_held_out_splits_each_class_of_the_training_set_and_never_the_test_set(tiny):
    """Recipes are chosen on a held-out part of the training set (fastai's valid_pct), never on the
    test set: the held-out images are training images, 10 % of each class, disjoint from the new
    training part, drawn by the seed; mean and std come from the part that trains."""
    part = tiny.held_out(0.1, seed=0)
    n = len(tiny.train_labels)
    assert len(part.train_labels) + len(part.test_labels) == n
    for c in range(tiny.num_classes):
        assert (part.test_labels == c).sum() == round(0.1 * (tiny.train_labels == c).sum())
    seen = {img.tobytes() for img in part.train_images}
    assert not any(img.tobytes() in seen for img in part.test_images)  # disjoint
    whole = {img.tobytes() for img in tiny.train_images}
    assert all(img.tobytes() in whole for img in part.test_images)      # from the training split
    assert not {img.tobytes() for img in tiny.test_images} & {img.tobytes() for img in part.test_images}
    assert part.mean == eva.channel_stats(part.train_images)[0] != tiny.mean
    again, other = tiny.held_out(0.1, seed=0), tiny.held_out(0.1, seed=1)
    assert np.array_equal(again.test_images, part.test_images)
    assert not np.array_equal(other.test_images, part.test_images)
    assert "held out (valid_pct=0.1, seed=0)" in part.source
    for bad in (0, 1, 1.5, "0.1", True):
        with pytest.raises(ValueError, match=rf"valid_pct={bad!r}: give the fraction"):
            tiny.held_out(bad)


def test_read_only_folder_still_loads(image_folder, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")
    monkeypatch.setattr(np, "savez", refuse)
    with pytest.warns(UserWarning, match="Could not write the cache"):
        data = load_cifar10(image_folder, download=False)
    assert len(data.train_labels) == 20 and not (image_folder / CACHE_NAME).exists()
