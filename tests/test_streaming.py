"""The streaming image-folder loader and torchvision's ResNets, with the suite's rules and figures."""
import matplotlib
import numpy as np
import pytest
import torch

import eva_utils as eva

matplotlib.use("Agg")


def test_folder_loader_streams_crops_and_follows_the_folder_rules(tmp_path, make_folder):
    root = make_folder(tmp_path / "pets", per_class=6, size=(40, 30), mode="L",
                              classes=("cat", "dog", "owl"))
    train = eva.folder_loader(root, "train", 4, image_size=24, num_workers=0, seed=1)
    test = eva.folder_loader(root, "test", 5, image_size=(24, 20), num_workers=0,
                             mean=train.mean, std=train.std)
    x, y = next(iter(train))
    assert x.shape == (4, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(train) == 18 // 4 and train.num_classes == 3 and list(train.labels) != []
    assert [tuple(b.shape) for b, _ in test] == [(5, 3, 24, 20)] * 3 + [(3, 3, 24, 20)]
    assert abs(float(x.mean())) < 1.5  # normalised with estimated stats
    train.set_epoch(3)
    epoch3 = torch.cat([b for b, _ in train])
    train.set_epoch(3)
    assert torch.equal(epoch3, torch.cat([b for b, _ in train]))  # a function of seed and epoch
    originals, shown = train.preview(4)
    assert originals.shape == (4, 24, 24, 3) and shown.shape == (4, 3, 24, 24)
    eva.plot_augmentations(train, n=4)
    with pytest.raises(eva.DataError, match="classes=.*must name each class folder once"):
        eva.folder_loader(root, "train", 4, image_size=24, classes=["cat", "dog"])
    with pytest.raises(ValueError, match="split='val'"):
        eva.folder_loader(root, "val", 4, image_size=24)
    with pytest.raises(ValueError, match="batch_size=50 is larger than the 18 images"):
        eva.folder_loader(root, "train", 50, image_size=24)


def test_folder_loader_trains_and_resumes(tmp_path, make_folder):
    root = make_folder(tmp_path / "f", per_class=8, size=(20, 20),
                              classes=("a", "b"))
    loaders = lambda: (eva.folder_loader(root, "train", 4, image_size=16, num_workers=0),  # noqa: E731
                       eva.folder_loader(root, "test", 8, image_size=16, num_workers=0))
    config = eva.TrainConfig(epochs=2, lr=0.01, schedule="constant",
                             checkpoint_dir=str(tmp_path / "ckpt"))
    model = eva.torchvision_resnet("resnet18", num_classes=2, small_images=True)
    eva.fit(model, *loaders(), config, progress=False)
    config.epochs = 3
    h = eva.fit(eva.torchvision_resnet("resnet18", num_classes=2, small_images=True), *loaders(),
                config, resume=True, progress=False)
    assert len(h) == 3 and h.resumed_at == [2]


@pytest.mark.parametrize("name, small, side, last", [("resnet18", True, 32, "[1, 512, 4, 4]"),
                                                     ("resnet50", False, 64, "[1, 2048, 2, 2]")])
def test_torchvision_resnets_work_with_every_figure_helper(name, small, side, last):
    torch.manual_seed(0)
    model = eva.torchvision_resnet(name, num_classes=10, small_images=small)
    assert model.fc.out_features == 10 and eva.gradcam_layers(model)[-1] == "layer4"
    images = torch.randn(6, 3, side, side)
    assert model.eval()(images).shape == (6, 10)
    assert last in str(eva.summary(model, side))  # layer4's maps: 4x4 with the small-image stem
    test = eva.TensorLoader(np.zeros((6, side, side, 3), np.uint8), np.arange(6), (0.5,) * 3,
                            (0.25,) * 3, 3, train=False, classes=range(10))
    predictions = eva.predict(model, test, [str(i) for i in range(10)])
    eva.plot_misclassified(predictions, (0.5,) * 3, (0.25,) * 3, n=4)
    eva.plot_confusion(predictions)
    before = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    eva.plot_gradcam(model, predictions, ["layer3", "layer4"], (0.5,) * 3, (0.25,) * 3, n=3)
    assert sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules()) == before
    with pytest.raises(ValueError, match="name='resnet9'"):
        eva.torchvision_resnet("resnet9", num_classes=10)
