"""LR finder, plots, Grad-CAM and summaries on our real model classes, on CPU."""
import matplotlib
import numpy as np
import pytest
import torch

import eva_utils as eva
from eva_utils.engine import Predictions

matplotlib.use("Agg")


@pytest.fixture
def test_loader(tiny):
    return eva.GpuLoader(tiny.test_images, tiny.test_labels, tiny.mean, tiny.std, 50, train=False)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


@pytest.mark.parametrize("num_iter", [30, 5])  # 5: fewer points than torch-lr-finder's plot takes
def test_lr_range_test_restores_model_and_suggests_inside_range(tiny, num_iter):
    torch.manual_seed(0)
    model = eva.SmallResNet().eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.123, momentum=0.9)
    before = state(model)
    train = eva.GpuLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 20, train=True)
    result = eva.lr_range_test(model, opt, train, start_lr=1e-4, end_lr=1.0, num_iter=num_iter)
    for k, v in state(model).items():
        assert torch.equal(v, before[k]), k
    assert not model.training and opt.param_groups[0]["lr"] == 0.123 and not opt.state
    assert 1e-4 <= result.suggested_lr <= 1.0 and len(result.lrs) == len(result.losses) <= num_iter
    assert 1e-4 <= result.max_lr <= 1.0 and result.min_lr == pytest.approx(result.max_lr / 10)
    assert result.max_lr in result.lrs
    fig = eva.plot_lr_finder(result)
    assert fig.axes[0].get_xscale() == "log"


def test_suggestions_on_a_known_curve():
    from eva_utils.lr_finder import lowest_loss_lr, steepest_lr
    lrs = np.logspace(-4, 1, 60)
    x = np.log10(lrs)
    # falls fastest at 1e-2, bottoms out near 0.3, then explodes (with a NaN at the very end)
    losses = 2 - np.tanh((x + 2) * 3) + np.where(x > -0.5, 4 * (x + 0.5) ** 2, 0)
    losses[-1] = np.nan
    assert steepest_lr(lrs, losses) == pytest.approx(1e-2, rel=0.25)
    assert lowest_loss_lr(lrs, losses) == pytest.approx(10 ** -0.5, rel=0.25)
    with pytest.raises(ValueError, match="fewer than 2 finite"):
        steepest_lr([1e-3, 1e-2], [1.0, np.inf])


def test_predict_misclassified_and_confusion(tiny, test_loader):
    torch.manual_seed(0)
    model = eva.PlainCNN().train()
    p = eva.predict(model, test_loader)
    assert model.training  # mode restored
    assert p.images.shape == (100, 3, 32, 32) and p.preds.shape == p.labels.shape == (100,)
    assert ((0 <= p.confidence) & (p.confidence <= 1)).all()
    wrong = eva.misclassified(p)
    assert (wrong.preds != wrong.labels).all() and len(wrong.labels) == (p.preds != p.labels).sum()
    assert (wrong.confidence[:-1] >= wrong.confidence[1:]).all()  # most confident first
    cm = eva.confusion_matrix(p)
    assert cm.sum() == 100 and cm.trace() == (p.preds == p.labels).sum()
    assert (cm.sum(1).numpy() == np.bincount(tiny.test_labels, minlength=10)).all()
    fig = eva.plot_confusion(cm)
    assert len(fig.axes) == 2


def test_misclassified_gallery_panels_and_titles(tiny, test_loader, tmp_path):
    wrong = eva.misclassified(eva.predict(eva.PlainCNN(), test_loader))
    fig = eva.plot_misclassified(wrong, tiny.mean, tiny.std, n=7, cols=4, path=tmp_path / "m.png")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 7 and (tmp_path / "m.png").stat().st_size > 0
    c = eva.CLASSES
    assert shown[0].get_title() == (f"{c[wrong.labels[0]]} / {c[wrong.preds[0]]}\n"
                                    f"({100 * wrong.confidence[0]:.0f}%)")
    with pytest.raises(ValueError, match=f"only {len(wrong.labels)}"):
        eva.plot_misclassified(wrong, tiny.mean, tiny.std, n=len(wrong.labels) + 1)


def test_no_mistakes_and_unnormalised_images(tiny):
    empty = Predictions(torch.zeros(0, 3, 32, 32), *(torch.zeros(0, dtype=torch.long),) * 2,
                        torch.zeros(0))
    fig = eva.plot_misclassified(empty, tiny.mean, tiny.std)
    assert "No mistakes" in fig.axes[0].texts[0].get_text()
    raw = torch.from_numpy(tiny.test_images[:4]).permute(0, 3, 1, 2).float()
    bad = Predictions(raw, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long),
                      torch.ones(4))
    with pytest.raises(ValueError, match="look unnormalised"):
        eva.plot_misclassified(bad, tiny.mean, tiny.std, n=2)
    with pytest.raises(ValueError, match="look unnormalised"):
        eva.gradcam(eva.CustomResNet(), raw, "layer3")


@pytest.mark.parametrize("model, layer, size", [(eva.CustomResNet(), "layer3", 4),
                                                (eva.ResNet18(norm="layer"), "layer2", 16),
                                                (eva.SmallResNet(repeats=2), "block2", 8)])
def test_gradcam_masks_and_model_left_untouched(tiny, test_loader, model, layer, size):
    assert layer in eva.target_layers(model) and str(size) in eva.target_layers(model)[layer]
    model.train()
    model.fc.weight.requires_grad_(False) if hasattr(model, "fc") else None
    flags = [p.requires_grad for p in model.parameters()]
    inplace = [m.inplace for m in model.modules() if hasattr(m, "inplace")]
    hooks, before = hook_count(model), state(model)
    images = next(iter(test_loader))[0][:4]
    masks = eva.gradcam(model, images, layer)
    assert masks.shape == (4, 32, 32) and masks.min() >= 0 and masks.max() <= 1
    assert masks.std() > 0  # a real map, not a constant
    assert model.training and hook_count(model) == hooks
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert [m.inplace for m in model.modules() if hasattr(m, "inplace")] == inplace
    for k, v in state(model).items():
        assert torch.equal(v, before[k]), k  # eval-mode forward: BatchNorm statistics unchanged


def test_gradcam_keeps_existing_gradients(test_loader):
    model = eva.CustomResNet()
    images = next(iter(test_loader))[0][:2]
    model(images).sum().backward()  # a student's half-done training step
    before = [p.grad.clone() for p in model.parameters()]
    eva.gradcam(model, images, "layer3")
    for p, g in zip(model.parameters(), before):
        assert torch.equal(p.grad, g)


def test_gradcam_not_corrupted_by_inplace_relu(test_loader):
    torch.manual_seed(0)
    model = eva.CustomResNet().eval()
    images = next(iter(test_loader))[0][:3]
    with_inplace = eva.gradcam(model, images, "layer2.1", torch.tensor([1, 2, 3]))  # BatchNorm
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    reference = eva.gradcam(model, images, "layer2.1", torch.tensor([1, 2, 3]))
    np.testing.assert_allclose(with_inplace, reference, atol=1e-5)


def test_gradcam_targets_and_panel(tiny, test_loader):
    torch.manual_seed(0)
    model = eva.ResNet18(norm="layer")
    wrong = eva.misclassified(eva.predict(model, test_loader))
    images = wrong.images[:3]
    by_pred = eva.gradcam(model, images, "layer3", None)
    np.testing.assert_allclose(by_pred, eva.gradcam(model, images, "layer3", wrong.preds[:3]),
                               atol=1e-5)
    fig = eva.plot_gradcam(model, wrong, ["layer2", "layer3"], tiny.mean, tiny.std, n=3,
                           target="true")
    assert sum(1 for ax in fig.axes if ax.images) == 3 * 3  # image + 2 layers, 3 columns
    with pytest.raises(ValueError, match="has no layer 'layer9'; try one of layer1, layer2"):
        eva.gradcam(model, images, "layer9")
    with pytest.raises(ValueError, match="not part of this"):
        eva.gradcam(model, images, torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="only 3 were given"):
        eva.plot_gradcam(model, Predictions(*(getattr(wrong, f)[:3] for f in
                                              ("images", "labels", "preds", "confidence"))),
                         "layer3", tiny.mean, tiny.std, n=4)


@pytest.mark.parametrize("model, total", [(eva.CustomResNet(), "6,573,120"),
                                          (eva.ResNet18(norm="layer"), "11,173,962"),
                                          (eva.SmallResNet(repeats=2), "491,082"),
                                          (eva.PlainCNN(), "81,578")])
def test_summary_totals(model, total):
    model.train()
    text = str(eva.summary(model))
    assert f"Total params: {total}" in text
    assert model.training
    if isinstance(model, eva.SmallResNet):
        assert "(recursive)" in text


def test_plots_return_figures_and_save(tiny, tmp_path):
    h = eva.History([1.0, 0.5], [50, 70], [1.1, 0.7], [45, 65], [0.1, 0.05], [1, 1])
    fig = eva.plot_history({"CNN": h, "ResNet": h}, path=tmp_path / "h.png")
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 4 and (tmp_path / "h.png").exists()
    cfg = eva.TrainConfig(epochs=4, lr=0.4)
    fig = eva.plot_lr_schedule(eva.lr_schedule(cfg, 10), 10)
    assert len(fig.axes[0].lines[0].get_xdata()) == 40
    fig = eva.plot_augmentations(tiny.train_images, eva.crop_flip_cutout(tiny.mean, tiny.std),
                                 tiny.mean, tiny.std, n=4)
    assert sum(1 for ax in fig.axes if ax.images) == 8
    with pytest.raises(ValueError, match="only 200"):
        eva.plot_augmentations(tiny.train_images, eva.eval_transforms(tiny.mean, tiny.std),
                               tiny.mean, tiny.std, n=201)
