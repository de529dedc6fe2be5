"""LR finder, plots, Grad-CAM and summaries on our real model classes, on CPU."""
import re
from contextlib import nullcontext
from dataclasses import replace

import matplotlib
import numpy as np
import pytest
import torch

import eva_utils as eva
from eva_utils.gradcam import probe
from test_train import answers_on

matplotlib.use("Agg")


@pytest.fixture
def test_loader(tiny):
    return eva.TensorLoader(tiny.test_images, tiny.test_labels, tiny.mean, tiny.std, 50, train=False)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


@pytest.mark.parametrize("num_iter", [30, 6])  # 6: fewer points than torch-lr-finder's plot takes
def test_lr_range_test_restores_model_and_suggests_inside_range(tiny, num_iter):
    torch.manual_seed(0)
    model = eva.SmallResNet(num_classes=10).train()
    model.block1.eval()  # a frozen block inside a training model stays frozen
    opt = torch.optim.SGD(model.parameters(), lr=0.123, momentum=0.9)
    before = state(model)
    train = eva.TensorLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 20, train=True)
    repeats = pytest.warns(UserWarning, match="only 10 batches, so the range test passes over them 3 times")
    with repeats if num_iter > 10 else nullcontext():
        result = eva.lr_range_test(model, train, optimizer=opt, start_lr=1e-4, end_lr=1.0,
                                   num_iter=num_iter)
    for k, v in state(model).items():
        assert torch.equal(v, before[k]), k
    assert model.training and not model.block1.training
    assert opt.param_groups[0]["lr"] == 0.123 and not opt.state
    assert 1e-4 <= result.suggested_lr <= 1.0 and len(result.lrs) == len(result.losses) <= num_iter
    for rule in ("valley", "steepest", "minimum"):
        assert getattr(result, rule) in result.lrs
    assert result.suggested_lr == result.valley and result.minimum_tenth == result.minimum / 10
    assert "suggested" in str(result) and "(valley)" in str(result)
    fig = eva.plot_lr_finder(result)
    assert fig.axes[0].get_xscale() == "log"
    assert [t.get_text().split(":")[0] for t in fig.axes[0].get_legend().get_texts()][0] == \
        "suggested (valley)"  # one word for the pick, in the print and the legend


def test_lr_range_test_refuses_what_cannot_work(tiny):
    model = eva.PlainCNN(num_classes=10)
    train = eva.TensorLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 20, train=True)
    with pytest.raises(ValueError, match="0 < start_lr < end_lr"):
        eva.lr_range_test(model, train, start_lr=1.0, end_lr=1e-3)
    with pytest.raises(ValueError, match="yields no batches"):
        eva.lr_range_test(model, [], num_iter=10)
    other = torch.optim.SGD(eva.PlainCNN(num_classes=10).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="holds none of this model's parameters"):
        eva.lr_range_test(model, train, optimizer=other, num_iter=10)
    with pytest.raises(ValueError, match="only .* usable steps .* too few"), \
            pytest.warns(UserWarning, match="passes over them 2 times"):
        eva.lr_range_test(model, train, start_lr=1e3, end_lr=1e6, num_iter=20)


def test_the_range_test_sweeps_in_the_arithmetic_fit_trains_in(tiny, monkeypatch):
    """On an AMX CPU fit trains in bfloat16 NHWC, so the sweep does too (it swept in float32 NCHW,
    at a third of fit's speed, then with NHWC batches but NCHW weights); an explicit
    amp/channels_last means what it means in TrainConfig."""
    monkeypatch.setattr(eva.machinery.precision, "cpu_has_bf16", lambda: True)  # whatever this CPU is
    model = eva.PlainCNN(num_classes=10)
    seen = []
    model.body[0].register_forward_hook(lambda m, i, out: seen.append(
        (out.dtype, out.is_contiguous(memory_format=torch.channels_last))))
    train = eva.TensorLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 20, train=True)
    weights = []
    model.body[0].register_forward_pre_hook(lambda m, i: weights.append(
        m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous()))
    eva.lr_range_test(model, train, num_iter=6, verbose=False)
    assert set(seen) == {(torch.bfloat16, True)}
    assert set(weights) == {True}  # the weights in fit's layout too (they stayed NCHW)
    assert model.body[0].weight.is_contiguous()  # and handed back as they were
    seen.clear()
    eva.lr_range_test(model, train, num_iter=6, verbose=False, amp=False, channels_last=False)
    assert set(seen) == {(torch.float32, False)}


def test_the_first_minimum_ignores_a_second_dip_at_far_higher_rates():
    """Notebook 04's sweep (bfloat16, 2026-12-05; points of its range_test.json): the loss bottomed
    out at lr 0.392, rose 21 % by 1.32 and dipped lower still at 5.94, so the minimum rule set a
    one-cycle peak of 5.94. The first minimum is the bottom of the first valley."""
    from eva_utils.lr_finder import RangeTest
    lrs = [1e-4, 0.01, 0.1, 0.247, 0.392, 0.587, 0.831, 1.32, 2.49, 4.45, 5.94, 7.93]
    losses = [2.331, 2.138, 1.658, 1.538, 1.512, 1.560, 1.681, 1.831, 1.661, 1.539, 1.478, 1.598]
    found = RangeTest.from_curve(lrs, losses)
    assert (found.minimum, found.first_minimum) == (5.94, 0.392)
    assert "first minimum 0.392" in str(found)
    labels = [t.get_text() for t in eva.plot_lr_finder(found).axes[0].get_legend().get_texts()]
    assert labels[-1] == "first minimum: 3.92e-01"
    one_valley = RangeTest.from_curve(lrs[:8], losses[:8])
    assert one_valley.first_minimum == one_valley.minimum == 0.392
    assert len(eva.plot_lr_finder(one_valley).axes[0].get_legend().get_texts()) == 3
    bump = [2.3, 2.0, 1.8, 1.8 * 1.11, 1.7, 1.6, 2.5]  # 11 % above 1.8 ends the first valley
    assert RangeTest.from_curve(lrs[:7], bump).first_minimum == lrs[2]
    bump[3] = 1.8 * 1.09  # 9 % does not: the valley goes on down to 1.6
    assert RangeTest.from_curve(lrs[:7], bump).first_minimum == lrs[5]


def test_the_first_minimum_counts_rises_above_the_loss_floor(tiny, tmp_path):
    """Notebook 04's sweep with label smoothing 0.2 (AMD EPYC, bfloat16, 2026-12-07; points of its
    range_test.json): the valley's bottom, 1.839 at lr 0.22, rose to 2.012 by 1.48 (9.4 %, under
    RISE) and dipped to 1.833 at 6.67, which became the one-cycle peak. Above the floor of 0.867
    that nothing can go below, the rise is 17.8 %: the valley ends, and the peak is 0.22."""
    from eva_utils.lr_finder import RangeTest, first_minimum_lr
    lrs = [1e-4, 0.0102, 0.0977, 0.2196, 0.4937, 0.8805, 1.482, 2.097, 3.963, 6.67, 10.0]
    losses = [2.324, 2.204, 1.927, 1.839, 1.853, 1.906, 2.012, 1.976, 1.892, 1.833, 1.887]
    assert first_minimum_lr(lrs, losses) == 6.67
    assert first_minimum_lr(lrs, losses, floor=0.867) == 0.2196
    found = RangeTest.from_curve(lrs, losses)
    assert replace(found, floor=0.867).first_minimum == 0.2196 and found.first_minimum == 6.67
    assert "first minimum 0.22 (rises counted above the loss's floor, 0.867)" in str(
        replace(found, floor=0.867))
    # lr_range_test hands the floor on, to a fresh sweep and to one loaded from the run
    model = eva.PlainCNN(num_classes=10)
    train = eva.TensorLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 20, train=True)
    for floor in (0.5, torch.tensor(0.25)):  # swept and kept, then loaded: the call's floor counts
        swept = eva.lr_range_test(model, train, num_iter=6, verbose=False, floor=floor,
                                  checkpoint_dir=tmp_path)
        assert swept.floor == float(floor) and (tmp_path / "range_test.json").exists()
    for bad in (-1.0, "high", None):
        with pytest.raises(ValueError, match=r"floor=.*: the lowest loss .* Fix: 0 for cross-entropy"):
            eva.lr_range_test(model, train, num_iter=6, verbose=False, floor=bad)


def test_the_range_test_prints_its_progress_as_lines_a_log_keeps(tiny, monkeypatch, capsys):
    """torch-lr-finder's bar is a Jupyter widget, which papermill's log never shows (04's 200
    steps ran 23 min in silence): the sweep prints a line a minute (here every step), and its end."""
    from eva_utils.machinery import sweep
    train = eva.TensorLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 20, train=True)
    eva.lr_range_test(eva.PlainCNN(num_classes=10), train, num_iter=6)  # under a minute
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("LR range test:")]
    assert len(lines) == 2 and "6 steps of 20 images" in lines[0]
    assert re.fullmatch(r"LR range test: 6 steps in \d+ s\.", lines[1])
    monkeypatch.setattr(sweep.Progress, "EVERY", 0.0)
    eva.lr_range_test(eva.PlainCNN(num_classes=10), train, num_iter=6)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("LR range test:")]
    assert [re.match(r"LR range test: (\d)/6 steps, lr [\d.e-]+, \d+ s so far, about \d+ s to go\.$",
                     l).group(1) for l in lines[1:-1]] == ["1", "2", "3", "4", "5"]
    eva.lr_range_test(eva.PlainCNN(num_classes=10), train, num_iter=6, verbose=False)
    assert capsys.readouterr().out == ""


class OnTheGpu(list):
    """Batches a loader keeps on the GPU, as TensorLoader does in Colab (the device is all the
    range test reads from it here)."""
    device = torch.device("cuda")


@pytest.fixture
def a_t4(monkeypatch):
    """A machine with one T4 (compute capability 7.5), as far as device choice goes."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))


def test_the_range_test_sweeps_where_the_data_is(tiny, a_t4, monkeypatch):
    """Notebook 04 builds the model on the CPU and its loader on the GPU: the sweep runs on the GPU
    in fit's precision there (float16 with a loss scaler on a T4), not on the CPU with every batch
    copied back."""
    from eva_utils.machinery import sweep
    seen = {}

    class Finder:  # torch-lr-finder as far as where and how it trains; a made-up curve
        def __init__(self, model, optimizer, criterion, device=None, amp_backend=None,
                     amp_config=None, grad_scaler=None):
            seen.update(device=device, amp=amp_config, scaler=grad_scaler.is_enabled())
            self.history = {"lr": list(np.geomspace(1e-4, 1, 20)),
                            "loss": list(2 - np.sin(np.linspace(0, 3, 20)))}

        replay = []  # nothing kept by an earlier sweep

        def keep_in(self, path, setup):
            pass

        def range_test(self, train_iter, **kwargs):
            seen["channels_last"] = train_iter.channels_last

        def reset(self):
            pass

        def seconds(self):
            return 1.0
    monkeypatch.setattr(sweep, "KeptFinder", Finder)
    batches = OnTheGpu([(torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))] * 60)
    eva.lr_range_test(eva.PlainCNN(num_classes=10), batches, num_iter=20, verbose=False)
    assert seen == {"device": torch.device("cuda"), "scaler": True, "channels_last": True,
                    "amp": {"device_type": "cuda", "dtype": torch.float16}}


def test_other_ranks_join_fits_process_group_not_gloo(tiny, a_t4, monkeypatch):
    """Under torchrun rank 1 waits for rank 0's picks. It joins the process group fit would (NCCL
    on CUDA): a gloo group started here made fit's own start a no-op and DDP run over gloo."""
    import torch.distributed as dist
    backends = []
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # torchrun sets these too
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(backends))
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: backends.append(backend))
    monkeypatch.setattr(dist, "broadcast_object_list", lambda box, src: box.__setitem__(0, "picks"))
    batches = OnTheGpu([(torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))] * 60)
    assert eva.lr_range_test(eva.PlainCNN(num_classes=10), batches, num_iter=20) == "picks"
    assert backends == ["nccl"]


def test_suggestions_on_a_known_curve():
    from eva_utils.lr_finder import RangeTest
    lrs = np.logspace(-4, 1, 60)
    x = np.log10(lrs)
    # falls fastest at 1e-2, bottoms out near 0.3, then explodes (with a NaN at the very end)
    losses = 2 - np.tanh((x + 2) * 3) + np.where(x > -0.5, 4 * (x + 0.5) ** 2, 0)
    losses[-1] = np.nan
    result = RangeTest.from_curve(lrs, losses)
    assert result.steepest == pytest.approx(1e-2, rel=0.25)
    assert result.minimum == pytest.approx(10 ** -0.5, rel=0.25)
    # valley: halfway along the longest fall, which here runs from the start to the minimum
    end = int(np.nanargmin(losses))  # fastai's index: start + int(span / 3) + int(span / 6)
    assert result.valley == lrs[int(end / 3) + int(end / 3 / 2)] and end == 41
    with pytest.raises(ValueError, match="only 1 usable steps"):
        RangeTest.from_curve([1e-3, 1e-2], [1.0, np.inf])
    with pytest.warns(UserWarning, match="never went below its first value"):
        RangeTest.from_curve(lrs[:10], np.linspace(1, 2, 10))


def test_predict_misclassified_and_confusion(tiny, test_loader):
    torch.manual_seed(0)
    model = eva.PlainCNN(num_classes=10).train()
    p = eva.predict(model, test_loader, tiny.classes)
    assert model.training  # mode restored
    assert p.classes == eva.CIFAR10_CLASSES
    assert p.images.shape == (100, 3, 32, 32) and p.preds.shape == p.labels.shape == (100,)
    assert ((0 <= p.confidence) & (p.confidence <= 1)).all()
    wrong = eva.misclassified(p)
    assert (wrong.preds != wrong.labels).all() and len(wrong.labels) == (p.preds != p.labels).sum()
    assert (wrong.confidence[:-1] >= wrong.confidence[1:]).all()  # most confident first
    cm = eva.confusion_matrix(p)
    assert cm.sum() == 100 and cm.trace() == (p.preds == p.labels).sum()
    assert (cm.sum(1).numpy() == np.bincount(tiny.test_labels, minlength=10)).all()
    fig = eva.plot_confusion(p)
    assert len(fig.axes) == 2 and [t.get_text() for t in fig.axes[0].get_yticklabels()] == \
        list(eva.CIFAR10_CLASSES)
    with pytest.raises(ValueError, match="10 outputs but 9 class names"):
        eva.predict(model, test_loader, tiny.classes[:9])


def test_predictions_read_their_images_from_the_loader_not_copies(tiny, test_loader):
    """predict kept a float copy of every image (30 GB for ImageNet's validation set): now each
    answer points into the loader, and .images reads exactly what the loader yielded, for the
    answers selected only. A loader that cannot be read by position keeps copies, as before."""
    model = eva.PlainCNN(num_classes=10)
    classic = eva.make_loader(tiny.test_images, tiny.test_labels, tiny.mean, tiny.std, 30,
                              train=False, num_workers=0)
    as_list = list(test_loader)  # a list of batches: nothing to read again
    for loader, copies in ((test_loader, False), (classic, False), (as_list, True)):
        yielded = torch.cat([x for x, _ in loader])
        p = eva.predict(model, loader, tiny.classes)
        assert isinstance(p.source, torch.Tensor) is copies
        assert torch.equal(p.images, yielded)
        wrong = eva.misclassified(p)
        assert torch.equal(wrong[:4].images, yielded[wrong.index[:4]])
        assert torch.equal(wrong[2].images, yielded[wrong.index[2:3]]) and len(wrong[2]) == 1
        assert wrong[:0].images.shape == (0, 3, 32, 32)
    reads = []
    p = eva.predict(model, test_loader, tiny.classes)
    p.source = lambda positions: reads.append(len(positions)) or test_loader.images_at(positions)
    eva.plot_misclassified(eva.misclassified(p), tiny.mean, tiny.std, n=3)
    assert reads == [3]  # the gallery reads the three images it shows, nothing more
    with pytest.raises(ValueError, match="this loader shuffles"):
        eva.TensorLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 20,
                         train=True).images_at(torch.arange(3))


def test_misclassified_gallery_panels_and_titles(tiny, test_loader, tmp_path):
    wrong = eva.misclassified(eva.predict(eva.PlainCNN(num_classes=10), test_loader, tiny.classes))
    fig = eva.plot_misclassified(wrong, tiny.mean, tiny.std, n=7, cols=4, path=tmp_path / "m.png")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 7 and (tmp_path / "m.png").stat().st_size > 0
    c = tiny.classes
    assert shown[0].get_title() == (f"{c[wrong.labels[0]]}\n→ {c[wrong.preds[0]]} "
                                    f"({100 * wrong.confidence[0]:.1f} %)")
    from eva_utils.galleries import percent
    assert [percent(p) for p in (0.12345, 0.9994, 0.9995, 1.0)] == \
        ["12.3 %", "99.9 %", "> 99.9 %", "> 99.9 %"]
    few = eva.misclassified(eva.predict(eva.PlainCNN(num_classes=10), test_loader, tiny.classes))
    few = few[:3]
    fig = eva.plot_misclassified(few, tiny.mean, tiny.std, n=10)  # fewer than asked: what there is
    assert sum(1 for ax in fig.axes if ax.images) == 3


def test_no_mistakes_and_unnormalised_images(tiny):
    empty = answers_on(torch.zeros(0, 3, 32, 32), torch.zeros(0, dtype=torch.long),
                                    torch.zeros(0, dtype=torch.long), torch.zeros(0), tiny.classes)
    fig = eva.plot_misclassified(empty, tiny.mean, tiny.std)
    assert "No mistakes" in fig.axes[0].texts[0].get_text()
    raw = torch.from_numpy(tiny.test_images[:4]).permute(0, 3, 1, 2).float()
    bad = answers_on(raw, torch.zeros(4, dtype=torch.long),
                                  torch.ones(4, dtype=torch.long), torch.ones(4), tiny.classes)
    with pytest.raises(ValueError, match="look unnormalised"):
        eva.plot_misclassified(bad, tiny.mean, tiny.std, n=2)
    with pytest.raises(ValueError, match="look unnormalised"):
        eva.gradcam(eva.CustomResNet(num_classes=10), raw, "layer3")


@pytest.mark.parametrize("model, layer, size", [(eva.CustomResNet(num_classes=10), "layer3", 4),
                                                (eva.ResNet18(norm="layer", num_classes=10), "layer2", 16),
                                                (eva.SmallResNet(repeats=2, num_classes=10), "block2", 8)])
def test_gradcam_masks_and_model_left_untouched(tiny, test_loader, model, layer, size):
    images = next(iter(test_loader))[0][:4]
    assert layer in eva.gradcam_layers(model)
    assert probe(model, images, [layer])[0][layer][-2:] == (size, size)
    model.train()
    model.fc.weight.requires_grad_(False) if hasattr(model, "fc") else None
    flags = [p.requires_grad for p in model.parameters()]
    inplace = [m.inplace for m in model.modules() if hasattr(m, "inplace")]
    hooks, before = hook_count(model), state(model)
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
    model = eva.CustomResNet(num_classes=10)
    images = next(iter(test_loader))[0][:2]
    model(images).sum().backward()  # a student's half-done training step
    before = [p.grad.clone() for p in model.parameters()]
    eva.gradcam(model, images, "layer3")
    for p, g in zip(model.parameters(), before):
        assert torch.equal(p.grad, g)


def test_gradcam_not_corrupted_by_inplace_relu(test_loader):
    torch.manual_seed(0)
    model = eva.CustomResNet(num_classes=10).eval()
    images = next(iter(test_loader))[0][:3]
    with_inplace = eva.gradcam(model, images, "layer2.1", torch.tensor([1, 2, 3]))  # BatchNorm
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    reference = eva.gradcam(model, images, "layer2.1", torch.tensor([1, 2, 3]))
    np.testing.assert_allclose(with_inplace, reference, atol=1e-5)


def test_gradcam_targets_and_panel(tiny, test_loader):
    torch.manual_seed(0)
    model = eva.ResNet18(norm="layer", num_classes=10)
    wrong = eva.misclassified(eva.predict(model, test_loader, tiny.classes))
    images = wrong[:3].images
    by_pred = eva.gradcam(model, images, "layer3", None)
    np.testing.assert_allclose(by_pred, eva.gradcam(model, images, "layer3", wrong.preds[:3]),
                               atol=1e-5)
    fig = eva.plot_gradcam(model, wrong, ["layer2", "layer3"], tiny.mean, tiny.std, n=7,
                           target="true")
    # rows of at most 5: (image + 2 layers) x 5 columns, then the same for the last 2 images
    assert sum(1 for ax in fig.axes if ax.images) == 3 * 7 and len(fig.axes) == 6 * 5 + 1  # + bar
    assert [fig.axes[5 * r].get_ylabel() for r in range(6)] == \
        ["image", "layer2 (16x16)", "layer3 (8x8)"] * 2
    assert fig.axes[0].get_title() == f"{tiny.classes[wrong.labels[0]]} / {tiny.classes[wrong.preds[0]]}"
    # the second group's titles stand apart from the first group's last row (they sat on it)
    fig.draw_without_rendering()
    above = fig.axes[2 * 5].get_window_extent()  # first group, layer3 row
    title = fig.axes[3 * 5].title.get_window_extent()  # second group's first title
    assert title.y1 < above.y0 - 2 * title.height  # 0.4 title heights before
    with pytest.raises(ValueError, match=r"has no layer 'layer9'. Valid names: stem, .*layer2\.0\.conv1"):
        eva.gradcam(model, images, "layer9")
    with pytest.raises(ValueError, match="not part of this"):
        eva.gradcam(model, images, torch.nn.Conv2d(3, 3, 1))
    three = wrong[:3]
    fig = eva.plot_gradcam(model, three, "layer3", tiny.mean, tiny.std, n=10)  # shows the 3 there are
    assert sum(1 for ax in fig.axes if ax.images) == 2 * 3


def test_gradcam_refuses_no_grad_and_unknown_classes(test_loader):
    model = eva.CustomResNet(num_classes=10)
    images = next(iter(test_loader))[0][:2]
    with torch.no_grad(), pytest.raises(RuntimeError, match="needs gradients.*no_grad"):
        eva.gradcam(model, images, "layer3")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="needs gradients"):
        eva.gradcam(model, images, "layer3")
    with pytest.raises(ValueError, match=r"Class indices \[12\] do not exist: the model has 10"):
        eva.gradcam(model, images, "layer3", torch.tensor([1, 12]))


def test_models_name_their_gradcam_layers():
    class Student(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4, 2)
    with pytest.raises(ValueError, match="Student names no Grad-CAM layers.*features"):
        eva.gradcam_layers(Student())
    assert eva.gradcam_layers(eva.PlainCNN(num_classes=10)) == ("body.1", "body.5")


@pytest.mark.parametrize("model, total", [(eva.CustomResNet(num_classes=10), "6,573,120"),
                                          (eva.ResNet18(norm="layer", num_classes=10), "11,173,962"),
                                          (eva.SmallResNet(repeats=2, num_classes=10), "491,082"),
                                          (eva.PlainCNN(num_classes=10), "81,578")])
def test_summary_totals(model, total):
    model.train()
    text = str(eva.summary(model, (32, 32)))
    assert f"Total params: {total}" in text
    assert model.training
    if isinstance(model, eva.SmallResNet):
        assert "(recursive)" in text


def test_plots_return_figures_and_save(tiny, tmp_path):
    h = eva.History([1.0, 0.5], [50, 70], [1.1, 0.7], [45, 65], [0.1, 0.05], [1, 1])
    fig = eva.plot_history({"CNN": h, "ResNet": h}, path=tmp_path / "h.png")
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 4 and (tmp_path / "h.png").exists()
    assert fig.axes[0].lines[0].get_marker() == "o"  # few epochs: each one marked
    fig.canvas.draw()  # one legend, under the plots: inside one it covered a curve
    legend = fig.legends[0].get_window_extent()
    assert not any(ax.get_legend() for ax in fig.axes)
    assert all(legend.y1 <= ax.get_window_extent().y0 for ax in fig.axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == \
        ["CNN test", "CNN train", "ResNet test", "ResNet train"]
    assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())
    cfg = eva.TrainConfig(epochs=4, lr=0.4)
    fig = eva.plot_lr_schedule(eva.lr_schedule(cfg, 10), 10)
    assert len(fig.axes[0].lines[0].get_xdata()) == 40
    x = fig.axes[0].lines[0].get_xdata()
    assert x[0] == pytest.approx(0.1) and x[-1] == 4  # a step's rate at the end of that step
    peak = eva.lr_schedule(eva.TrainConfig(epochs=24, lr=0.4), 10)
    fig = eva.plot_lr_schedule(peak, 10)
    line = fig.axes[0].lines[0]
    assert line.get_xdata()[line.get_ydata().argmax()] == pytest.approx(5.0)  # on the peak epoch
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels == ["LRMAX 0.4", "LRMIN 0.04"]


@pytest.mark.parametrize("cfg", [
    eva.TrainConfig(epochs=24, lr=0.4, schedule="onecycle", pct_start=5 / 24, div_factor=10,
                    final_div_factor=1, anneal_strategy="linear"),   # 04: no annihilation
    eva.TrainConfig(epochs=40, lr=0.1, schedule="onecycle", pct_start=5 / 24, div_factor=10,
                    final_div_factor=100),                           # 03
    eva.TrainConfig(epochs=60, lr=0.2, schedule="onecycle", pct_start=0.3, div_factor=25,
                    final_div_factor=1e4, anneal_strategy="cos"),    # 02
    eva.TrainConfig(epochs=4, lr=0.1, schedule="constant"),
])
def test_the_schedule_labels_never_cross_the_curve(cfg):
    """The LRMAX label sat below the peak, where the falling curve ran through it."""
    fig = eva.plot_lr_schedule(eva.lr_schedule(cfg, 10), 10)
    ax, line = fig.axes[0], fig.axes[0].lines[0]
    fig.canvas.draw()
    to_data = ax.transData.inverted()
    x, y = line.get_xdata(), line.get_ydata()
    for text in ax.texts:
        (x0, y0), (x1, y1) = to_data.transform(text.get_window_extent().get_points())
        span = y[(x >= x0) & (x <= x1)]  # the curve under the label's width
        below, above = span.max() <= y0 + 1e-12, span.min() >= y1
        assert span.size and (below or above), text.get_text()  # passes beside it, not through
        assert y1 <= ax.get_ylim()[1], text.get_text()           # inside the plot


def test_figures_say_what_they_show(tiny, monkeypatch):
    """Curves of a run tested with TTA say so (and show the accuracy without it); a Grad-CAM map
    that is zero everywhere (an evenly tinted panel) is labelled, and a colour bar gives the scale."""
    h = eva.History([1.0, 0.5], [50, 70], [1.1, 0.7], [45, 65], [0.1, 0.05], [1, 1],
                    test_acc_plain=[44, 64])
    fig = eva.plot_history(h)
    assert [line.get_label() for line in fig.axes[0].lines] == \
        ["test (mirror TTA)", "train", "test, one view"]
    assert list(fig.axes[0].lines[2].get_ydata()) == [44, 64]
    plain = eva.History([1.0, 0.5], [50, 70], [1.1, 0.7], [45, 65], [0.1, 0.05], [1, 1])
    assert [line.get_label() for line in eva.plot_history(plain).axes[0].lines] == ["test", "train"]
    import eva_utils.galleries
    torch.manual_seed(0)
    model = eva.SmallResNet(num_classes=10, repeats=1)
    wrong = eva.misclassified(eva.predict(model, eva.TensorLoader(
        tiny.test_images, tiny.test_labels, tiny.mean, tiny.std, 50, train=False), tiny.classes))
    real = eva_utils.galleries.gradcam

    def first_map_zero(*args, **kwargs):
        masks = real(*args, **kwargs)
        masks[0] = 0
        return masks
    monkeypatch.setattr(eva_utils.galleries, "gradcam", first_map_zero)
    fig = eva.plot_gradcam(model, wrong, "block3", tiny.mean, tiny.std, n=2)
    said = [[t.get_text() for t in ax.texts] for ax in fig.axes]
    assert said[:4] == [[], [], ["zero\neverywhere"], []]  # row 2, column 1: the zero map
    bar = fig.axes[-1]
    assert "scaled to its own highest value" in bar.get_xlabel()
    fig = eva.plot_misclassified(wrong, tiny.mean, tiny.std, n=10)  # 2 rows of 5
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = FigureCanvasAgg(fig).get_renderer()  # pyplot let go of the figure: draw it here
    fig.draw(renderer)
    for above, below in zip(fig.axes[:5], fig.axes[5:]):  # second-row titles clear the first row
        assert below.title.get_window_extent(renderer).y1 <= above.get_window_extent(renderer).y0


def test_steepest_never_lies_past_the_loss_minimum():
    """Notebook 04's curve: falls, reaches its minimum, rises, dips steeply, rises again."""
    from eva_utils.lr_finder import RangeTest
    lrs = list(np.geomspace(1e-4, 10, 60))
    losses = list(np.r_[np.linspace(2.3, 1.2, 30), np.linspace(1.25, 2.0, 15),
                        np.linspace(1.6, 1.3, 5), np.linspace(1.4, 3.0, 10)])
    result = RangeTest.from_curve(lrs, losses)
    assert result.steepest <= result.minimum == pytest.approx(lrs[29])


def test_grad_cam_explains_bright_pictures(tiny):
    """White, light-grey and sky pictures, correctly normalised, were refused as "unnormalised"
    (no negative value), in eva.gradcam, plot_gradcam and the app (whose top classes vanished)."""
    model = eva.CustomResNet(num_classes=10)
    colours = {"white": (1.0, 1.0, 1.0), "light grey": (0.7, 0.7, 0.7), "sky": (0.6, 0.75, 0.95)}
    mean, std = torch.tensor(tiny.mean).view(1, 3, 1, 1), torch.tensor(tiny.std).view(1, 3, 1, 1)
    for name, rgb in colours.items():
        picture = torch.tensor(rgb).view(1, 3, 1, 1).expand(1, 3, 32, 32)
        normalised = (picture - mean) / std
        if normalised.max() > 1:  # white and sky: the check itself lets them through
            assert eva.gradcam(model, normalised, "layer3").shape == (1, 32, 32), name
        clf = eva.Classifier(model, tiny.classes, tiny.mean, tiny.std, (32, 32))
        seen = (picture[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert clf.heatmap(seen, "layer3", 0.5).shape == (32, 32, 3), name  # the app: every one
    with pytest.warns(UserWarning, match="may be unnormalised"):  # raw pixels as fractions?
        eva.gradcam(model, torch.rand(2, 3, 32, 32), "layer3")


def test_a_light_grey_normalised_picture_is_explained_with_a_warning_not_refused(tiny):
    """Normalised, a light grey picture is about 0.3 everywhere, exactly what dark raw fractions
    look like: Grad-CAM and its panels refused it ("look unnormalised"). They explain it and warn
    once that the values could be raw; whole numbers above 1 (raw 0-255 pixels) stay refused."""
    model = eva.CustomResNet(num_classes=10)
    grey = torch.full((2, 3, 32, 32), 0.32) + 0.05 * torch.rand(2, 3, 32, 32)  # 0.32 to 0.37
    with pytest.warns(UserWarning, match="may be unnormalised") as caught:
        assert eva.gradcam(model, grey, "layer3").shape == (2, 32, 32)
    assert len(caught) == 1
    wrong = answers_on(grey, torch.zeros(2, dtype=torch.long),
                                    torch.ones(2, dtype=torch.long), torch.ones(2), tiny.classes)
    with pytest.warns(UserWarning, match="may be unnormalised") as caught:
        eva.plot_gradcam(model, wrong, ["layer2", "layer3"], tiny.mean, tiny.std, n=2)
    assert len([w for w in caught if "unnormalised" in str(w.message)]) == 1  # not once per layer
    with pytest.raises(ValueError, match="whole numbers in \\[0, 255\\]"):
        eva.gradcam(model, torch.randint(0, 256, (2, 3, 32, 32)).float(), "layer3")
