import numpy as np
import pytest
from PIL import Image

import eva_utils as eva
from eva_utils.data import CACHE_NAME, DataError, channel_stats, load_cifar10


def test_image_folder_loads_in_cifar_order_and_caches(image_folder):
    data = load_cifar10(image_folder, download=False)
    assert data.train_images.shape == (20, 32, 32, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (20, 32, 32, 3)
    assert sorted(np.bincount(data.train_labels).tolist()) == [2] * 10
    # the label of an image is the index of its folder in CIFAR-10's class order
    img = np.asarray(Image.open(image_folder / "train" / "cat" / "0001.png"))
    idx = [i for i, x in enumerate(data.train_images) if (x == img).all()]
    assert data.train_labels[idx[0]] == eva.CLASSES.index("cat") == 3
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
    assert str(eva.data_root()) == "data"


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


@pytest.mark.parametrize("classes, word", [(eva.CLASSES[:-1], "missing: truck"),
                                           (eva.CLASSES + ("zebra",), "unexpected: zebra")])
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


@pytest.mark.parametrize("size, mode", [((28, 28), "RGB"), ((32, 32), "L")])
def test_wrong_size_or_mode_is_named(tmp_path, make_folder, size, mode):
    make_folder(tmp_path, per_class=1)
    odd = tmp_path / "train" / "ship" / "0000.png"
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).convert(mode).save(odd)
    with pytest.raises(DataError, match=f"{odd} is {size[0]}x{size[1]} {mode}"):
        load_cifar10(tmp_path, download=False)


def test_empty_split(tmp_path, make_folder):
    make_folder(tmp_path, per_class=1)
    for p in (tmp_path / "test").glob("*/*.png"):
        p.unlink()
    with pytest.raises(DataError, match=f"{tmp_path / 'test'} has class folders but no images"):
        load_cifar10(tmp_path, download=False)


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


def test_read_only_folder_still_loads(image_folder, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")
    monkeypatch.setattr(np, "savez", refuse)
    with pytest.warns(UserWarning, match="Could not write the cache"):
        data = load_cifar10(image_folder, download=False)
    assert len(data.train_labels) == 20 and not (image_folder / CACHE_NAME).exists()
