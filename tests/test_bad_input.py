"""Bad input and interruptions: each case gives one clear error that says what was wrong and how to
fix it, or behaves correctly (issue 16's tour, and the silent cases of a student's own data)."""
import os
import re
import shutil
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import eva_utils as eva
from eva_utils.machinery.checkpoint import CheckpointError
from eva_utils.machinery.runtime import TrainingError
from test_train import Tiny, answers_on, cfg, loaders


# -- data folders ----------------------------------------------------------------------------------

def test_hidden_and_system_folders_are_skipped_once(tmp_path, make_folder):
    make_folder(tmp_path, per_class=1, classes=("cat", "dog"))
    for junk in ("train/.ipynb_checkpoints", "train/__MACOSX", "test/.DS_Store_dir"):
        (tmp_path / junk).mkdir()
        (tmp_path / junk / "x.png").write_bytes((tmp_path / "train/cat/0000.png").read_bytes())
    with pytest.warns(UserWarning, match=r"Skipped .ipynb_checkpoints, __MACOSX .*not classes"), \
            pytest.warns(UserWarning, match=r"Skipped .DS_Store_dir in .*test"):
        data = eva.load_image_folder(tmp_path)
    assert data.classes == ("cat", "dog") and data.num_classes == 2


def test_class_names_in_two_unicode_forms_match(tmp_path, make_folder):
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    make_folder(tmp_path / "a", per_class=1, classes=(nfc, "tea"))
    os.rename(tmp_path / "a" / "test" / nfc, tmp_path / "a" / "test" / nfd)  # typed on a Mac
    data = eva.load_image_folder(tmp_path / "a")
    assert data.classes == (nfc, "tea")


def test_class_order_can_be_given(tmp_path, make_folder):
    make_folder(tmp_path, per_class=2, classes=("one", "two", "zero"))
    data = eva.load_image_folder(tmp_path, classes=["zero", "one", "two"])
    assert data.classes == ("zero", "one", "two")
    assert sorted(np.bincount(data.train_labels)) == [2, 2, 2]
    with pytest.raises(eva.DataError, match="must name each class folder once"):
        eva.load_image_folder(tmp_path, classes=["zero", "one"])


def test_grayscale_arrays_and_their_statistics():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (50, 8, 8), dtype=np.uint8)
    mean, std = eva.channel_stats(gray)
    assert mean == pytest.approx((gray.mean() / 255,)) and std == pytest.approx((gray.std() / 255,))
    assert eva.channel_stats(eva.to_rgb(gray))[0] == pytest.approx(mean * 3)
    loader = eva.TensorLoader(gray, np.arange(50) % 2, mean, std, 10, train=False)
    x, _ = next(iter(loader))
    assert x.shape == (10, 3, 8, 8) and torch.equal(x[:, 0], x[:, 2])
    with pytest.raises(ValueError, match="drop an alpha channel"):
        eva.to_rgb(np.zeros((2, 8, 8, 4), np.uint8))


# -- loaders ---------------------------------------------------------------------------------------

def test_small_split_warns_with_a_batch_size_that_fits(tiny):
    with pytest.warns(UserWarning, match=r"200 training images at batch_size=128 make 1 step an "
                                         r"epoch, and .*72 images.*batch_size=20 or less"):
        eva.TensorLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 128, train=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eva.TensorLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 20, train=True)


def test_wrong_objects_where_arrays_belong(tiny):
    with pytest.raises(ValueError, match="one-hot labels y become y.argmax"):
        eva.TensorLoader(tiny.train_images, np.eye(10)[tiny.train_labels], tiny.mean, tiny.std, 20,
                         train=True)
    with pytest.raises(TypeError, match="numpy array of uint8 pixels"):
        eva.TensorLoader(torch.zeros(4, 3, 8, 8), np.zeros(4), tiny.mean, tiny.std, 2, train=False)
    with pytest.raises(ValueError, match=r"\[0, 1\] scale.*divide by 255"):
        eva.TensorLoader(tiny.train_images, tiny.train_labels, np.array(tiny.mean) * 255,
                         np.array(tiny.std) * 255, 20, train=True)
    with pytest.raises(ValueError, match="there are 3 classes"):
        eva.make_loader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 20, train=True,
                        classes=("a", "b", "c"))


def test_augment_that_does_not_fit_the_images():
    with pytest.raises(ValueError, match=r"Augment\(pad=8\) does not fit 8x8 images; give pad <= 7"):
        eva.Augment(pad=8)(torch.zeros(2, 3, 8, 8))
    assert eva.Augment().flip is False  # mirrors only when asked
    assert len(eva.classic_augment((28, 28))) == 6
    with pytest.raises(TypeError):
        eva.classic_augment()  # the size comes from the data, never a hidden 32x32


# -- models and fit --------------------------------------------------------------------------------

def test_class_count_mismatch_either_way_is_refused_before_training(tiny):
    data = tiny.subset(200, 100)
    few = eva.TensorLoader(data.train_images, data.train_labels % 3, data.mean, data.std, 20,
                           train=True, classes=("a", "b", "c"))
    test = eva.TensorLoader(data.test_images, data.test_labels % 3, data.mean, data.std, 50,
                            train=False, classes=("a", "b", "c"))
    for model, outputs in ((Tiny(classes=10), 10), (Tiny(classes=100), 100)):
        with pytest.raises(TrainingError, match=f"model has {outputs} outputs but the data has 3"):
            eva.fit(model, few, test, cfg(), progress=False)
    with pytest.raises(TypeError, match="num_classes"):
        eva.ResNet18()  # no default: the count comes from the data


def test_summary_takes_the_data_size():
    model = eva.SmallResNet(num_classes=3)
    assert "[1, 32, 24, 24]" in str(eva.summary(model, (48, 48)))  # stem halves 48 -> 24
    with pytest.raises(ValueError, match="data.image_size"):
        eva.summary(model, (1, 48, 48))


def test_plain_cnn_refuses_images_its_head_would_stretch():
    with pytest.raises(ValueError, match="at least 32x32"):
        eva.PlainCNN(num_classes=2)(torch.zeros(1, 3, 28, 28))


def test_config_changed_after_it_is_built_is_checked_again(tiny):
    config = cfg()
    config.schedule = "cosine"
    with pytest.raises(ValueError, match="schedule='cosine'"):
        eva.fit(Tiny(), *loaders(tiny), config, progress=False)


def test_a_diverging_loss_stops_the_run(tiny):
    with pytest.raises(TrainingError, match="The loss became .* lower the learning rate"):
        eva.fit(Tiny(), *loaders(tiny), cfg(optimizer="adam", lr=1e6, schedule="constant"),
                progress=False)


def test_a_nan_test_loss_is_never_recorded(tiny, tmp_path):
    class NanInEval(Tiny):
        def forward(self, x):
            out = super().forward(x)
            return out if self.training or x.shape[0] == 2 else out * float("nan")
    with pytest.raises(TrainingError, match="test loss became nan after epoch 1"):
        eva.fit(NanInEval(), *loaders(tiny), cfg(checkpoint_dir=str(tmp_path)), progress=False)
    assert not (tmp_path / "last.pt").exists()


def test_wrong_objects_where_a_loader_or_model_belongs(tiny):
    train, test = loaders(tiny)
    with pytest.raises(TypeError, match="is an ImageData.*eva.TensorLoader"):
        eva.fit(Tiny(), tiny, test, cfg(), progress=False)
    dataset = torch.utils.data.TensorDataset(torch.zeros(4, 3, 32, 32), torch.zeros(4))
    with pytest.raises(TypeError, match="TensorDataset, not a loader.*DataLoader"):
        eva.fit(Tiny(), dataset, test, cfg(), progress=False)

    class Pair(Tiny):
        def forward(self, x):
            return super().forward(x), x
    with pytest.raises(TrainingError, match="returns a tuple.*only the logits"):
        eva.fit(Pair(), train, test, cfg(), progress=False)
    with pytest.raises(TypeError, match=r"weights are torch.float64; the loaders' images are "
                                        r"float32.*model.float\(\)"):  # as the range test and predict say
        eva.fit(Tiny().double(), train, test, cfg(), progress=False)
    one_hot = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.zeros(8, 3, 32, 32), torch.eye(10)[torch.arange(8)]),
        batch_size=4)
    with pytest.raises(TrainingError, match="one-hot labels y become y.argmax"):
        eva.fit(Tiny(), one_hot, test, cfg(), progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_the_machine_lacks(tiny):
    with pytest.raises(TrainingError, match="device='cuda', but this machine has no such device"):
        eva.fit(Tiny(), *loaders(tiny), cfg(), device="cuda", progress=False)


def test_an_empty_test_loader_is_refused_before_training(tiny):
    train, _ = loaders(tiny)
    with pytest.raises(TrainingError, match="test loader yields no batches"):
        eva.fit(Tiny(), train, [], cfg(), progress=False)


def test_tta_records_the_plain_accuracy_and_warns_when_it_hurts():
    """Class 0 is bright on the left, class 1 on the right: a mirror swaps the classes, so averaging
    each image with its mirror can only hurt."""
    images = np.zeros((40, 16, 16, 3), np.uint8)
    labels = np.arange(40) % 2
    images[labels == 0, :, :8] = 255
    images[labels == 1, :, 8:] = 255

    class Sides(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))  # something for the optimizer

        def forward(self, x):
            side = x[..., :8].mean((1, 2, 3)) - x[..., 8:].mean((1, 2, 3))
            return torch.stack([side, -side], 1) * (1 + self.w * 0)
    train = eva.TensorLoader(images, labels, (0.5,), (0.5,), 4, train=True)
    test = eva.TensorLoader(images, labels, (0.5,), (0.5,), 20, train=False)
    with pytest.warns(UserWarning, match="lowered the test accuracy from 100.00% to 50.00%.*tta=False"):
        h = eva.fit(Sides(), train, test, cfg(epochs=1, tta=True), progress=False)
    assert h.test_acc_plain == [100.0] and h.test_acc == [50.0]


# -- checkpoints -----------------------------------------------------------------------------------

def test_unwritable_checkpoint_dir_is_refused_before_training(tiny, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match=r"Cannot write checkpoints to .*checkpoint_dir"):
        eva.fit(Tiny(), *loaders(tiny), cfg(checkpoint_dir=str(blocker / "sub")), progress=False)


def test_resume_refuses_other_data_augmentation_or_seed(tiny, tmp_path):
    torch.manual_seed(0)
    train, test = loaders(tiny)
    eva.fit(Tiny(), train, test, cfg(epochs=1, checkpoint_dir=str(tmp_path)), progress=False)
    other = tiny.train_images[::-1].copy()
    with pytest.warns(UserWarning, match="too few to learn well"):  # 5 steps, as loaders() has
        cases = (
            (eva.TensorLoader(other, tiny.train_labels, tiny.mean, tiny.std, 40, train=True),
             "image or label content"),
            (eva.TensorLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 40,
                              train=True, augment=eva.Augment(pad=2)), "augment"),
            (eva.TensorLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 40,
                              train=True, seed=1), "seed"),
            (eva.TensorLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 40,
                              train=True, classes=[f"c{i}" for i in range(10)]), "classes"))
    for loader, what in cases:
        with pytest.raises(CheckpointError, match=f"training data's {what}"):
            eva.fit(Tiny(), loader, test, cfg(epochs=2), resume=tmp_path / "last.pt",
                    progress=False)


def test_shrinking_epochs_under_a_step_schedule_names_the_reason(tiny, tmp_path):
    torch.manual_seed(0)
    step = dict(schedule="step", step_size=1, checkpoint_dir=str(tmp_path))
    eva.fit(Tiny(), *loaders(tiny), cfg(epochs=2, **step), progress=False)
    with pytest.raises(CheckpointError, match="already trained 2 epochs"):
        eva.fit(Tiny(), *loaders(tiny), cfg(epochs=1, **step), resume=tmp_path / "last.pt",
                progress=False)


# -- figures ---------------------------------------------------------------------------------------

@pytest.fixture
def wrong(tiny):
    test = eva.TensorLoader(tiny.test_images, tiny.test_labels, tiny.mean, tiny.std, 50, train=False)
    torch.manual_seed(0)
    model = eva.CustomResNet(num_classes=10)
    return model, eva.misclassified(eva.predict(model, test, tiny.classes))


@pytest.mark.parametrize("kw", [{"n": -1}, {"cols": 0}])
def test_plot_counts_must_be_whole_and_positive(wrong, kw, tiny):
    _, mistakes = wrong
    name = next(iter(kw))
    with pytest.raises(ValueError, match=f"{name}={kw[name]}: give a whole number >= 1"):
        eva.plot_misclassified(mistakes, tiny.mean, tiny.std, **kw)


def test_gradcam_checks_layers_classes_and_narrows_the_panel(wrong, tiny):
    model, mistakes = wrong
    images = mistakes[:4].images
    with pytest.raises(ValueError, match="6 class indices for 4 images"):
        eva.gradcam(model, images, "layer2", torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="'fc' outputs .* not \\(B, C, H, W\\).*layer1"):
        eva.gradcam(model, images, "fc")
    fig = eva.plot_gradcam(model, mistakes, ["layer2"], tiny.mean, tiny.std, n=2)
    assert fig.axes[0].get_gridspec().ncols == 2  # 2 images: 2 columns, not 5


def test_gradcam_warns_about_a_one_pixel_map(tiny):
    model = eva.CustomResNet(num_classes=2)
    p = answers_on(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]),
                                    torch.tensor([1, 0]), torch.tensor([0.6, 0.7]), ("a", "b"))
    with pytest.warns(UserWarning, match="layer3: a 1-pixel-wide feature map"):
        eva.plot_gradcam(model, p, ["layer3"], (0.5,) * 3, (0.25,) * 3)


def test_confusion_with_many_classes_shows_the_worst(tmp_path):
    k, n = 5000, 20000
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, k, (n,), generator=g)
    preds = torch.where(torch.rand(n, generator=g) < 0.5, labels, (labels + 1) % k)
    p = answers_on(torch.zeros(n, 1, 1, 1), labels, preds, torch.ones(n),
                                    tuple(f"class {i}" for i in range(k)))
    fig = eva.plot_confusion(p, path=tmp_path / "c.png")
    assert len(fig.axes) == 2 and "Most confused" in fig.axes[0].get_title()
    assert len(fig.axes[0].patches) == 20 and (tmp_path / "c.png").stat().st_size > 0


def test_loader_modes_that_would_silently_mislead(tiny):
    d = tiny
    with pytest.raises(TypeError, match="train='False'"):
        eva.TensorLoader(d.train_images, d.train_labels, d.mean, d.std, 20, train="False")
    with pytest.raises(ValueError, match="augment= is given but train=False"):
        eva.TensorLoader(d.test_images, d.test_labels, d.mean, d.std, 20, train=False,
                         augment=eva.Augment(flip=True))
    with pytest.raises(ValueError, match="augment= is given but train=False"):
        eva.make_loader(d.test_images, d.test_labels, d.mean, d.std, 20, train=False,
                        augment=eva.Augment(flip=True))
    with pytest.raises(ValueError, match="This split has no images"):
        eva.TensorLoader(d.test_images[:0], d.test_labels[:0], d.mean, d.std, 20, train=False)
    augmented = eva.TensorLoader(d.test_images, d.test_labels, d.mean, d.std, 10, train=True,
                                 augment=eva.Augment(flip=True))
    plain = eva.TensorLoader(d.test_images, d.test_labels, d.mean, d.std, 20, train=False)
    with pytest.raises(TrainingError, match="test_loader was built with train=True"):
        eva.fit(Tiny(), augmented, augmented, eva.TrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="built with train=True"):
        eva.predict(Tiny(), augmented, d.classes)
    with pytest.warns(UserWarning, match="train_loader was built with train=False"):
        eva.fit(Tiny(), plain, plain, eva.TrainConfig(epochs=1, schedule="constant"),
                progress=False)


class OwnData(torch.utils.data.Dataset):
    """A student's own dataset, returning whatever types it was written with."""

    def __init__(self, image_dtype, label_dtype):
        self.x = torch.zeros(40, 3, 8, 8).to(image_dtype)
        self.y = (torch.arange(40) % 10).to(label_dtype)

    def __len__(self):
        return 40

    def __getitem__(self, i):
        return self.x[i], self.y[i]


@pytest.mark.parametrize("image_dtype, label_dtype, words", [
    (torch.float32, torch.int32, "labels come as torch.int32.*int64"),
    (torch.uint8, torch.int64, "images come as torch.uint8.*ToTensor"),
    (torch.float64, torch.int64, r"images come as torch.float64; the model's weights are float32\. "
                                 r"Fix: return float32 images"),
])
def test_a_students_own_loader_with_other_types(image_dtype, label_dtype, words):
    loader = torch.utils.data.DataLoader(OwnData(image_dtype, label_dtype), batch_size=8)
    with pytest.raises(TrainingError, match=words):
        eva.fit(Tiny(), loader, loader, eva.TrainConfig(epochs=1, schedule="constant"),
                progress=False)


def test_a_model_that_cannot_learn_or_cannot_classify(tiny):
    train, test = loaders(tiny)
    frozen = Tiny().requires_grad_(False)
    with pytest.raises(TrainingError, match="Every parameter of the model is frozen"):
        eva.fit(frozen, train, test, eva.TrainConfig(epochs=1), progress=False)
    one = torch.utils.data.DataLoader(OwnData(torch.float32, torch.int64), batch_size=8)
    with pytest.raises(TrainingError, match="1 output: a classifier needs two classes"):
        eva.fit(Tiny(classes=1), one, one, eva.TrainConfig(epochs=1, schedule="constant"),
                progress=False)


def test_a_frozen_layer_stays_frozen_while_the_rest_trains(tiny):
    """A pretrained backbone's batch norm put in eval mode keeps its statistics through fit."""
    model = Tiny()
    norm = model.net[1]
    norm.eval()
    stats = norm.running_mean.clone()
    eva.fit(model, *loaders(tiny), eva.TrainConfig(epochs=1), progress=False)
    assert torch.equal(norm.running_mean, stats) and not norm.training and model.training


# -- what a file holds, and what a folder holds ------------------------------------------------------

def test_every_format_pillow_reads_is_loaded_and_other_entries_are_named(tmp_path, make_folder):
    root = make_folder(tmp_path, per_class=1, classes=("a", "b"))
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for suffix in (".webp", ".tif", ".gif"):
        Image.fromarray(pixels).save(root / "train" / "a" / f"x{suffix}",
                                     **({"lossless": True} if suffix == ".webp" else {}))
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    (root / "train" / "b" / "more").mkdir()
    Image.fromarray(pixels).save(root / "train" / "b" / "more" / "0.png")
    with pytest.warns(UserWarning, match=r"Skipped 2 entries.*\(1 sub-folder, 1 other files\).*"
                                         r"a/notes.txt, b/more/.*move images up"):
        data = eva.load_image_folder(root)
    assert len(data.train_labels) == 2 + 3  # one PNG per class and the three new formats


def _viewer_cases(folder):
    """Files whose naive decoding differs from what a viewer shows, and what it shows (R, G, B)."""
    folder.mkdir(parents=True, exist_ok=True)
    deep = np.full((8, 8), 40000, dtype=np.uint16)  # 16-bit gray at 61 %: not white
    Image.fromarray(deep).save(folder / "deep.png")
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent: a viewer shows the page
    clear.save(folder / "clear.png")
    turned = Image.new("RGB", (8, 4), (200, 0, 0))  # stored 8 wide, shown 4 wide (EXIF turn)
    exif = turned.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to show
    turned.save(folder / "turned.jpg", exif=exif, quality=95)
    return {"deep.png": ((8, 8), 155), "clear.png": ((8, 8), 255), "turned.jpg": ((8, 4), None)}


def test_files_decode_to_the_pixels_a_viewer_shows(tmp_path):
    for name, (shape, value) in _viewer_cases(tmp_path).items():
        array = eva.machinery.images.read_image(tmp_path / name)
        assert array.shape == (*shape, 3), name
        if value is not None:
            assert abs(int(array.mean()) - value) <= 1, name


def test_an_image_too_large_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    monkeypatch.setattr(eva.machinery.images, "MAX_PIXELS", 300 * 200 - 1)  # a 12000x12000 upload, scaled down
    with pytest.raises(eva.DataError, match=r"300x200 pixels .*Fix: shrink it"):
        eva.machinery.images.read_image(tmp_path / "big.png")
    monkeypatch.setattr(eva.machinery.images, "MAX_PIXELS", 300 * 200)
    assert eva.machinery.images.read_image(tmp_path / "big.png").shape == (200, 300, 3)


def test_a_cache_decoded_by_older_rules_is_rebuilt(tmp_path, make_folder, monkeypatch):
    root = make_folder(tmp_path, per_class=1, classes=("a", "b"))
    eva.load_image_folder(root)
    monkeypatch.setattr(eva.machinery.cache, "DECODER", "next")
    assert "cached" not in eva.load_image_folder(root).source
    assert "cached" in eva.load_image_folder(root).source


def test_a_test_split_that_is_the_training_split_is_named(tmp_path, make_folder):
    root = make_folder(tmp_path, per_class=2, classes=("a", "b"))
    shutil.rmtree(root / "test")
    (root / "test").symlink_to(root / "train")
    with pytest.warns(UserWarning, match="4 of the 4 test images .* are also training images"):
        eva.load_image_folder(root)


@pytest.mark.parametrize("size", [0, -8, (32,), 32.0, (32, "32"), True])
def test_an_image_size_that_is_not_one_is_named(tmp_path, make_folder, size):
    root = make_folder(tmp_path, per_class=1, classes=("a", "b"))
    with pytest.raises(ValueError, match=rf"image_size={re.escape(repr(size))}: give the size"):
        eva.load_image_folder(root, image_size=size)


def test_one_class_is_refused(tmp_path, make_folder):
    root = make_folder(tmp_path, per_class=1, classes=("only",))
    with pytest.raises(eva.DataError, match="one class folder \\(only\\).*two classes or more"):
        eva.load_image_folder(root)


# -- the helpers around training -----------------------------------------------------------------------

def test_helpers_name_what_is_wrong_instead_of_a_traceback(tiny):
    with pytest.raises(ValueError, match="cannot take input of shape .*PlainCNN needs images of at "
                                         "least 32x32"):
        eva.summary(eva.PlainCNN(num_classes=10), (16, 16))
    with pytest.raises(ValueError, match=r"Augment\(rotate=None\): give degrees"):
        eva.Augment(rotate=None)
    with pytest.raises(ValueError, match=r"Augment\(flip='no'\): give True or False"):
        eva.Augment(flip="no")
    with pytest.raises(ValueError, match="one learning rate per step"):
        eva.plot_lr_schedule([])
    train, _ = loaders(tiny)
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    with pytest.raises(TypeError, match="StepLR, not a torch.optim.Optimizer \\(a learning-rate "
                                        "scheduler\\?\\)"):
        eva.lr_range_test(model, train, optimizer=scheduler)
    with pytest.raises(TypeError, match="weights are torch.float64.*model.float\\(\\)"):
        eva.lr_range_test(Tiny().double(), train)


def test_gradcam_keeps_the_real_cause_of_an_index_error(tiny, monkeypatch):
    """pytorch-grad-cam's context manager swallows an IndexError; ours lets it out, hooks gone."""
    import pytorch_grad_cam

    def broken(self, *args, **kwargs):
        raise IndexError("the real cause")
    monkeypatch.setattr(pytorch_grad_cam.GradCAM, "__call__", broken)
    model = Tiny()
    images = torch.randn(2, 3, 32, 32)  # normalised: mean 0
    with pytest.raises(IndexError, match="the real cause"):
        eva.gradcam(model, images, "net.0", classes=[0, 1])
    assert not model.net[0]._forward_hooks


def test_paths_and_flags_mean_what_a_student_typed(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    train, test = loaders(tiny)
    eva.fit(Tiny(), train, test, cfg(epochs=1, checkpoint_dir="~/runs/a"), progress=False)
    assert (tmp_path / "runs" / "a" / "last.pt").exists()  # not a folder named "~"
    assert eva.load_checkpoint("~/runs/a/last.pt")["epoch"] == 1
    eva.save_json("~/runs/a.json", {"ok": 1})
    assert (tmp_path / "runs" / "a.json").exists()
    with pytest.raises(TypeError, match="tta='no'"):
        eva.predict(Tiny(), test, tiny.classes, tta="no")
    with pytest.raises(TypeError, match="progress='no'"):
        eva.fit(Tiny(), train, test, cfg(epochs=1), progress="no")


def test_a_kept_range_test_is_swept_again_for_other_data(tiny, tmp_path):
    """Same model, batches and sweep, other images: the stored curve is not reused."""
    def sweep(images):
        train = eva.TensorLoader(images, tiny.train_labels, tiny.mean, tiny.std, 20, train=True)
        return eva.lr_range_test(eva.PlainCNN(num_classes=10), train, num_iter=10,
                                 checkpoint_dir=tmp_path, verbose=False)
    sweep(tiny.train_images)
    with pytest.warns(UserWarning, match="another model, loss, loader or sweep"):
        sweep(tiny.train_images[::-1].copy())


def test_entries_that_are_not_class_folders_are_named(tmp_path, make_folder):
    """A class that is a file (an archive not unpacked) or a link to itself was dropped without a
    word."""
    make_folder(tmp_path, per_class=1, classes=("cat", "dog"))
    (tmp_path / "train" / "bird.zip").write_bytes(b"PK")
    (tmp_path / "test" / "loop").symlink_to(tmp_path / "test" / "loop")
    with pytest.warns(UserWarning, match=r"Skipped bird.zip in .*train: only folders are classes"), \
            pytest.warns(UserWarning, match=r"Skipped loop in .*test: only folders are classes"):
        data = eva.load_image_folder(tmp_path)
    assert data.classes == ("cat", "dog")


def test_an_empty_checkpoint_dir_is_refused(tiny):
    """checkpoint_dir="" trained without checkpoints, silently (a folder was meant)."""
    with pytest.raises(ValueError, match=r"checkpoint_dir='': must be None or a folder path"):
        cfg(checkpoint_dir="")


def test_a_temporary_left_by_a_killed_save_is_removed(tiny, tmp_path):
    """A SIGKILL during a checkpoint write leaves last.pt.<pid>.tmp (a whole checkpoint) behind:
    the next run that takes the folder removes it."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "last.pt.4242.tmp").write_bytes(b"x" * 1000)
    eva.fit(Tiny(), *loaders(tiny), cfg(epochs=1, checkpoint_dir=tmp_path), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_serve_without_out_leaves_no_folder_behind(tmp_path, monkeypatch, capsys):
    """Without --out the app lived in /tmp/eva-app-* for ever; --no-launch without --out kept
    nothing anyone could find."""
    pytest.importorskip("gradio", reason="the app needs the optional extra: pip install gradio")
    import tempfile
    from eva_utils import serve
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(serve, "export_checkpoint", lambda ckpt, folder, data:
                        Path(folder).mkdir() or Path(folder))
    served = []
    monkeypatch.setattr(serve, "launch", lambda folder, **kw: served.append(folder.exists()))
    serve.main(["last.pt"])
    assert served == [True] and not list(tmp_path.iterdir())  # served, then removed
    assert capsys.readouterr().out.startswith("App written to ")
    with pytest.raises(SystemExit):
        serve.main(["last.pt", "--no-launch"])
    assert "--no-launch keeps only the app folder: say where with --out" in capsys.readouterr().err


def test_names_that_are_not_utf8(tmp_path, make_folder):
    """A file or class folder whose name is not UTF-8 (from another system's archive) raised
    "UnicodeEncodeError ... surrogates not allowed" from deep in data.py, naming no file."""
    make_folder(tmp_path, per_class=1, classes=("cat", "dog"))
    odd = tmp_path / "train" / "cat" / os.fsdecode(b"caf\xe9.png")  # Latin-1, not UTF-8
    shutil.copy(tmp_path / "train" / "cat" / "0000.png", odd)
    assert len(eva.load_image_folder(tmp_path).train_labels) == 3  # the file loads
    (tmp_path / "train" / os.fsdecode(b"b\xe9te")).mkdir()
    with pytest.raises(eva.DataError, match=r"class folder b'.*b\\xe9te' has a name that is not "
                                            r"UTF-8 text.*Fix: rename it"):
        eva.load_image_folder(tmp_path)


def test_predict_names_a_model_in_another_precision(tiny):
    """A float64 model failed deep inside torch ("expected scalar type Double")."""
    _, test = loaders(tiny)
    with pytest.raises(TypeError, match=r"weights are torch.float64; the loaders' images are float32"
                                        r"\. Fix: model.float\(\)"):
        eva.predict(Tiny().double(), test, tiny.classes)


def test_serve_checks_its_port_before_exporting(monkeypatch, capsys):
    """--port 70000 or -1, or a port another app holds, failed only after a full export."""
    pytest.importorskip("gradio", reason="the app needs the optional extra: pip install gradio")
    import socket
    from eva_utils import serve
    exported = []
    monkeypatch.setattr(serve, "export_checkpoint", lambda *args: exported.append(args))
    for port in ("70000", "-1"):
        with pytest.raises(SystemExit):
            serve.main(["last.pt", "--port", port])
        assert f"--port {port}: give a port from 1 to 65535" in capsys.readouterr().err
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(SystemExit):
            serve.main(["last.pt", "--port", str(port)])
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
    assert not exported


def test_export_into_a_file_or_a_read_only_place_is_named(tiny, tmp_path, monkeypatch):
    """Exporting into a file, under a folder one cannot write to, into "" (the current folder) or
    a broken link ended in a bare OSError or wrote where no one asked."""
    pytest.importorskip("gradio", reason="the app needs the optional extra: pip install gradio")
    model = eva.SmallResNet(num_classes=10, repeats=1)
    _, test = loaders(tiny)
    predictions = eva.predict(model, test, tiny.classes)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes.txt is a file, not a folder"):
        eva.export_app(model, tiny, predictions, tmp_path / "notes.txt")
    for empty in ("", " "):  # Path("") is the current folder
        with pytest.raises(FileExistsError, match=rf"folder='{empty}': give the folder to write"):
            eva.export_app(model, tiny, predictions, empty)
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError, match=r"gone is a link to .*nowhere, which does not exist"):
        eva.export_app(model, tiny, predictions, tmp_path / "gone")
    (tmp_path / "space").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "space")  # a link to a folder: written through it
    eva.export_app(model, tiny, predictions, tmp_path / "link")
    assert (tmp_path / "space" / "app.json").is_file() and (tmp_path / "link").is_symlink()
    locked = tmp_path / "locked"  # read-only, as for a user who is not root (the tests may be)
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(locked)):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(FileExistsError, match=r"Cannot write the app beside .*locked/app "
                                              r"\(Permission denied\)"):
        eva.export_app(model, tiny, predictions, locked / "app")


def test_nan_images_are_named_not_blamed_on_the_learning_rate(tiny):
    """NaN pixels made fit say "lower the learning rate" and the range test "lower start_lr (e.g.
    1e-5)" when start_lr was 1e-5: the first batch is checked, and named."""
    train, test = loaders(tiny)
    broken = [(x.clone().index_fill_(0, torch.tensor([0]), float("nan")), y) for x, y in train]
    with pytest.raises(eva.TrainingError, match=r"The first training batch holds [\d,]+ NaN or "
                                                r"infinite pixel values \(of [\d,]+\), so every "
                                                r"loss would be NaN whatever the learning rate\. "
                                                r"Fix: check the images"):
        eva.fit(Tiny(), broken, test, cfg(epochs=1), progress=False)
    with pytest.warns(UserWarning, match="only 5 batches"), \
            pytest.raises(ValueError, match=r"holds [\d,]+ NaN or infinite pixel values"):
        eva.lr_range_test(Tiny(), broken, num_iter=10, verbose=False)


def test_a_loss_that_blows_up_is_reported_with_the_rate_its_step_used(tiny):
    """fit printed one-cycle's rate after the scheduler had stepped (a negative -0.00625 after the
    last step): the failing step's own rate is reported."""
    calls = []

    class Breaks(Tiny):
        def forward(self, x):
            out = super().forward(x)
            if self.training:
                calls.append(1)
                if len(calls) == 5:  # the epoch's last step
                    return out * float("nan")
            return out
    train, test = loaders(tiny)
    config = cfg(epochs=1, schedule="onecycle", log_every=100)
    used = eva.lr_schedule(config, len(train))[4]
    with pytest.raises(eva.TrainingError, match=rf"batch 5 \(learning rate {used:.3g}\)"):
        eva.fit(Breaks(), train, test, config, progress=False)


def test_io_failures_outside_torch_save_are_handled_as_its_own(tiny, tmp_path, monkeypatch):
    """A failing os.replace (ENOSPC or EIO on a network drive) gave a bare OSError and left the
    .tmp; range_test.json was written with a plain write_text, so a full disk lost the sweep; a
    best.pt or range_test.json that is a folder gave IsADirectoryError."""
    import errno
    import eva_utils.machinery.checkpoint
    import eva_utils.machinery.sweep
    train, test = loaders(tiny)
    real = os.replace

    def failing(src, dst):  # a checkpoint's rename fails; the lock's goes through
        if str(dst).endswith(".pt"):
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)
    monkeypatch.setattr(eva_utils.machinery.checkpoint.os, "replace", failing)
    with pytest.raises(CheckpointError, match=r"Could not write the checkpoint .*last\.pt "
                                              r"\(\[Errno 5\] Input/output error\); no last\.pt yet"):
        eva.fit(Tiny(), train, test, cfg(epochs=1, checkpoint_dir=tmp_path / "a"), progress=False)
    assert not list((tmp_path / "a").glob("*.tmp"))
    monkeypatch.setattr(eva_utils.machinery.checkpoint.os, "replace", real)
    (tmp_path / "b" / "best.pt").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"best\.pt is a folder, not a checkpoint.*Fix: remove"):
        eva.fit(Tiny(), train, test, cfg(epochs=1, checkpoint_dir=tmp_path / "b"), progress=False)

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(eva_utils.machinery.sweep, "atomic_write", full)
    with warnings.catch_warnings(record=True) as said:  # a 10-step sweep of tiny data: its picks
        warnings.simplefilter("always")                  # draw warnings of their own
        found = eva.lr_range_test(Tiny(), train, num_iter=10, verbose=False,
                                  checkpoint_dir=tmp_path / "c")
    assert any(re.search(r"Could not keep the range test in .*No space left.*its result is "
                         r"returned", str(w.message)) for w in said)
    assert found.lrs and not (tmp_path / "c" / "range_test.json").exists()
    (tmp_path / "d" / "range_test.json").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"range_test\.json is a folder, not the range test's "
                                         r"record\. Fix: remove it"):
        eva.lr_range_test(Tiny(), train, num_iter=10, verbose=False, checkpoint_dir=tmp_path / "d")


def test_odd_checkpoints_are_named(tiny, tmp_path):
    """A last.pt that is a dangling link (a Drive not mounted yet) or a loop, a checkpoint from a
    newer eva_utils, a damaged precision, history or random state each get one message that says
    what is wrong (a history field from a newer eva_utils was a TypeError, a damaged random state
    torch's size error)."""
    train, test = loaders(tiny)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "last.pt").symlink_to(tmp_path / "drive" / "MyDrive" / "last.pt")
    with pytest.raises(CheckpointError, match=r"last\.pt is a link to .*MyDrive/last\.pt, which "
                                              r"does not lead to a file: is the drive"):
        eva.fit(Tiny(), train, test, cfg(epochs=1, checkpoint_dir=tmp_path / "a"), resume=True,
                progress=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "last.pt").symlink_to(tmp_path / "b" / "last.pt")  # a loop
    with pytest.raises(CheckpointError, match=r"is a link to .*, which does not lead to a file"):
        eva.fit(Tiny(), train, test, cfg(epochs=1, checkpoint_dir=tmp_path / "b"), resume=True,
                progress=False)
    eva.fit(Tiny(), train, test, cfg(epochs=1, checkpoint_dir=tmp_path / "c"), progress=False)
    last = tmp_path / "c" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["format"] == 1
    for change, words in (({"format": 2}, r"written by a newer eva_utils \(checkpoint format 2; "
                                          r"this one reads up to 1\)\. Fix: pip install -U"),
                          ({"precision": "bfloat17"}, r"records precision 'bfloat17', none of "
                                                      r"float32, bfloat16, float16: it is damaged"),
                          ({"precision": "float64"}, r"records precision 'float64'")):
        torch.save({**ckpt, **change}, last)
        with pytest.raises(CheckpointError, match=words):
            eva.fit(Tiny(), train, test, cfg(epochs=2, checkpoint_dir=tmp_path / "c"),
                    resume=True, progress=False)
    for change, words in (({"history": {**ckpt["history"], "grad_norm": [1.0]}},
                           r"history is damaged \(.*grad_norm"),
                          ({"rng": {**ckpt["rng"], "torch": torch.zeros(3, dtype=torch.uint8)}},
                           r"random state is damaged \(RuntimeError"),
                          ({"rng": {**ckpt["rng"], "python": (3, (1, 2), None)}},
                           r"random state is damaged")):
        torch.save({**ckpt, **change}, last)
        with pytest.raises(CheckpointError, match=words):  # the same run, resumed
            eva.fit(Tiny(), train, test, cfg(epochs=1, checkpoint_dir=tmp_path / "c"),
                    resume=True, progress=False)


def test_a_test_loader_of_other_classes_is_refused(tiny):
    """fit compared the model's outputs with the training loader only: a test loader naming other
    classes, or 3 of the 4, was scored without a word."""
    four = ["circle", "cross", "ring", "square"]
    labels = tiny.train_labels % 4
    with pytest.warns(UserWarning, match="too few to learn well"):
        train = eva.TensorLoader(tiny.train_images, labels, tiny.mean, tiny.std, 40, train=True,
                                 classes=four)
    for other in (["circle", "cross", "ring"], ["cat", "dog", "ring", "square"]):
        test = eva.TensorLoader(tiny.test_images, tiny.test_labels % len(other), tiny.mean,
                                tiny.std, 50, train=False, classes=other)
        with pytest.raises(eva.TrainingError, match=rf"The test loader's classes \({', '.join(other)}"
                                                    r"\) are not the training loader's"):
            eva.fit(Tiny(classes=4), train, test, cfg(epochs=1), progress=False)


def test_a_model_on_the_meta_device_is_one_message_everywhere(tiny):
    """A model built under torch.device("meta") (shapes, no numbers) met torch's "Cannot copy out
    of meta tensor" in fit, and other errors in the range test and predict."""
    with torch.device("meta"):
        model = Tiny()
    train, test = loaders(tiny)
    for call in (lambda: eva.fit(model, train, test, cfg(), progress=False),
                 lambda: eva.lr_range_test(model, train),
                 lambda: eva.predict(model, test, tiny.classes)):
        with pytest.raises(ValueError, match=r"on the meta device.*to_empty"):
            call()
