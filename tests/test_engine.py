from dataclasses import asdict

import pytest
import torch
from torch import nn

import eva_utils as eva
from eva_utils.engine import TrainingError, build_scheduler, load_checkpoint


class Tiny(nn.Module):
    """A few hundred parameters: fast enough to train many times in a test."""

    def __init__(self, in_ch=3, classes=10):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_ch, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))

    def forward(self, x):
        return self.net(x)


def loaders(data, batch=40):
    return (eva.GpuLoader(data.train_images, data.train_labels, data.mean, data.std, batch, train=True),
            eva.GpuLoader(data.test_images, data.test_labels, data.mean, data.std, 50, train=False))


def cfg(**kw):
    return eva.TrainConfig(**{"epochs": 3, "lr": 0.05, "log_every": 2, **kw})


def test_fit_returns_a_full_history_and_learns(tiny):
    torch.manual_seed(0)
    h = eva.fit(Tiny(), *loaders(tiny), cfg(epochs=4, lr=0.2), progress=False)
    assert len(h) == 4
    for values in asdict(h).values():
        assert len(values) == 4
    assert h.test_acc[-1] > 50  # the synthetic classes are colours: easy to learn
    assert h.train_seconds > 0


@pytest.mark.parametrize("schedule, cls, expected", [
    ("onecycle", torch.optim.lr_scheduler.OneCycleLR, 3 * 5),  # per batch: 5 batches x 3 epochs
    ("step", torch.optim.lr_scheduler.StepLR, 3),                # per epoch
    ("multistep", torch.optim.lr_scheduler.MultiStepLR, 3),
    ("plateau", torch.optim.lr_scheduler.ReduceLROnPlateau, 3),  # per epoch, on the test loss
])
def test_scheduler_steps_at_its_granularity(tiny, monkeypatch, schedule, cls, expected):
    calls = []
    original = cls.step

    def counting(self, *args, **kw):
        calls.append(args)
        return original(self, *args, **kw)
    monkeypatch.setattr(cls, "step", counting)
    h = eva.fit(Tiny(), *loaders(tiny), cfg(schedule=schedule), progress=False)
    # schedulers other than plateau also step once when they are built
    built = 0 if schedule == "plateau" else 1
    assert len(calls) == expected + built
    if schedule == "plateau":
        assert [args[0] for args in calls] == pytest.approx(h.test_loss)


def test_onecycle_peaks_at_epoch_5_of_24_without_annihilation():
    lrs = eva.lr_schedule(eva.TrainConfig(epochs=24, lr=0.4, schedule="onecycle"), 98)
    assert len(lrs) == 24 * 98
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert peak // 98 == 4  # epoch 5, counting from 1
    assert lrs[0] == pytest.approx(0.04) and lrs[-1] == pytest.approx(0.04, rel=0.01)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="Unknown schedule 'cosine'; choose one of onecycle"):
        eva.TrainConfig(schedule="cosine")
    with pytest.raises(ValueError, match="Unknown optimizer"):
        eva.TrainConfig(optimizer="lion")


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_resume_continues_exactly(tiny, tmp_path, ema_decay):
    torch.manual_seed(0)
    full_model = Tiny()
    start = {k: v.clone() for k, v in full_model.state_dict().items()}
    full = eva.fit(full_model, *loaders(tiny), cfg(checkpoint_dir=str(tmp_path / "full"),
                                                   ema_decay=ema_decay), progress=False)

    class Interrupt(Exception):
        pass

    train, test = loaders(tiny)
    epochs_started = []
    original = train.set_epoch

    def set_epoch(seed):
        epochs_started.append(seed)
        if len(epochs_started) == 2:  # the user stops the kernel as epoch 2 starts
            raise Interrupt
        original(seed)
    train.set_epoch = set_epoch
    model = Tiny()
    model.load_state_dict(start)
    with pytest.raises(Interrupt):
        eva.fit(model, train, test, cfg(checkpoint_dir=str(tmp_path / "cut"), ema_decay=ema_decay),
                progress=False)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    torch.manual_seed(123)  # whatever happened in between must not matter
    resumed_model = Tiny()
    resumed = eva.fit(resumed_model, *loaders(tiny),
                      cfg(checkpoint_dir=str(tmp_path / "cut"), ema_decay=ema_decay),
                      resume=tmp_path / "cut" / "last.pt", progress=False)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert getattr(resumed, key) == pytest.approx(getattr(full, key), rel=1e-5), key
    for (k, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_checkpoints_are_complete_and_atomic(tiny, tmp_path):
    eva.fit(Tiny(), *loaders(tiny), cfg(epochs=2, checkpoint_dir=str(tmp_path)), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no .tmp left
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)  # loads without pickle code
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "scaler", "history", "config", "rng"}
    assert ckpt["epoch"] == 2 and ckpt["config"]["epochs"] == 2
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["history"]["test_acc"][-1] == max(ckpt["history"]["test_acc"])


def test_nan_loss_names_epoch_and_batch(tiny):
    class Explodes(Tiny):
        calls = 0

        def forward(self, x):
            if self.training:
                self.calls += 1
                if self.calls == 3:  # the shape check runs in eval mode, so this is batch 3
                    return super().forward(x) * float("nan")
            return super().forward(x)
    with pytest.raises(TrainingError, match=r"epoch 1, batch 3 .*lower the learning rate"):
        eva.fit(Explodes(), *loaders(tiny), cfg(), progress=False)


def test_shape_mismatches_are_explained(tiny):
    with pytest.raises(TrainingError, match=r"cannot take the data's batches of shape \(40, 3, 32"):
        eva.fit(Tiny(in_ch=1), *loaders(tiny), cfg(), progress=False)
    with pytest.raises(TrainingError, match=r"outputs shape \(2, 5\) but the labels go up to 9"):
        eva.fit(Tiny(classes=5), *loaders(tiny), cfg(), progress=False)


def test_empty_loader_and_out_of_memory(tiny):
    with pytest.raises(TrainingError, match="no batches"):
        eva.fit(Tiny(), [], loaders(tiny)[1], cfg(), progress=False)

    class Hungry(Tiny):
        def forward(self, x):
            if self.training:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().forward(x)
    with pytest.raises(TrainingError, match="ran out of memory in epoch 1. Fix: lower the batch"):
        eva.fit(Hungry(), *loaders(tiny), cfg(), progress=False)


def test_evaluate_tta_averages_mirror_and_restores_mode(tiny):
    class LeftHalf(nn.Module):  # looks only at the left half: mirroring changes its answer
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 10)

        def forward(self, x):
            return self.fc(x[..., :16].mean((2, 3)))
    torch.manual_seed(0)
    model = LeftHalf().train()
    _, test = loaders(tiny)
    x = torch.cat([x for x, _ in test])
    y = torch.from_numpy(tiny.test_labels)
    want = (model(x) + model(x.flip(3))) / 2
    loss, acc = eva.evaluate(model, test, tta=True)
    assert loss == pytest.approx(nn.functional.cross_entropy(want, y).item(), rel=1e-5)
    assert acc == pytest.approx(100 * (want.argmax(1) == y).float().mean().item())
    assert model.training


def test_options_run_together(tiny):
    torch.manual_seed(0)
    h = eva.fit(Tiny(), *loaders(tiny), cfg(optimizer="adamw", schedule="constant", lr=1e-2,
                                             label_smoothing=0.1, ema_decay=0.9, tta=True,
                                             grad_clip=1.0), progress=False)
    assert len(h) == 3 and h.lr == [1e-2] * 3


def test_build_scheduler_granularity():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    assert build_scheduler(opt, eva.TrainConfig(schedule="plateau"), 10)[1] == "plateau"
    assert build_scheduler(opt, eva.TrainConfig(schedule="onecycle"), 10)[1] == "batch"


def test_device_choice_and_seeding():
    assert eva.get_device("cpu") == torch.device("cpu")
    assert eva.get_device().type in {"cuda", "mps", "cpu"}
    eva.seed_everything(3)
    a = (torch.rand(2), __import__("numpy").random.rand(), __import__("random").random())
    eva.seed_everything(3)
    b = (torch.rand(2), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_onecycle_guards_short_runs_and_bad_pct():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="at least 4 steps; this run has 3"):
        build_scheduler(opt, eva.TrainConfig(epochs=1), 3)
    lrs = eva.lr_schedule(eva.TrainConfig(epochs=1, lr=1.0, pct_start=0.1), 4)  # 0.4 steps -> 2
    assert max(lrs) == pytest.approx(1.0) and len(lrs) == 4
    with pytest.raises(ValueError, match="pct_start=5"):
        eva.TrainConfig(pct_start=5)


def test_ema_tracks_weights_and_buffers():
    from eva_utils.engine import EMA
    model = Tiny()
    ema = EMA(model, decay=0.5)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(4, 3, 8, 8))  # moves BatchNorm's running statistics
    ema.update()
    for (k, e), m in zip(ema.module.state_dict().items(), model.state_dict().values()):
        if e.is_floating_point():
            torch.testing.assert_close(e, (start[k] + m) / 2, msg=k)
        else:
            assert torch.equal(e, m), k
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_classic_path_trains_reproducibly_with_workers(tiny):
    """albumentations in two DataLoader workers: same seed, same run (shuffle and augmentations)."""
    from eva_utils.data import make_loader
    from eva_utils.transforms import crop_flip_cutout

    def run():
        torch.manual_seed(0)
        train = make_loader(tiny.train_images, tiny.train_labels,
                            crop_flip_cutout(tiny.mean, tiny.std), 40, train=True, num_workers=2)
        test = loaders(tiny)[1]
        return eva.fit(Tiny(), train, test, cfg(epochs=2), progress=False)
    a, b = run(), run()
    assert a.train_loss == b.train_loss and a.test_acc == b.test_acc


def test_mixed_precision_choice(monkeypatch):
    from eva_utils.engine import _amp_dtype
    cuda = torch.device("cuda")
    assert _amp_dtype(torch.device("cpu"), None) is None and _amp_dtype(torch.device("cpu"), True) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert _amp_dtype(cuda, None) is torch.bfloat16 and _amp_dtype(cuda, False) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a T4
    assert _amp_dtype(cuda, None) is torch.float16


def test_evaluate_needs_batches():
    with pytest.raises(ValueError, match="no batches"):
        eva.evaluate(Tiny(), [])


def test_run_record_and_save_json(tmp_path):
    import json
    h = eva.History([1.0, 0.5], [50.0, 70.0], [1.1, 0.7], [45.0, 65.0], [0.1, 0.05], [2.0, 1.0])
    record = eva.run_record(h, Tiny(), "cpu", notebook="04", seed=3)
    assert list(record)[:2] == ["notebook", "seed"]
    assert record["test_acc"] == 65.0 and record["train_seconds"] == 3.0 and record["device"] == "cpu"
    assert record["parameters"] == sum(p.numel() for p in Tiny().parameters())
    eva.save_json(tmp_path / "a" / "r.json", record)
    assert json.loads((tmp_path / "a" / "r.json").read_text()) == record
    eva.save_json(None, record)  # no path: nothing written, no error
