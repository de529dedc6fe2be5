"""fit, TrainConfig, schedules, evaluation and the runtime choices (precision, layout, modes)."""
import json
import math
import random
import warnings
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import eva_utils as eva
import eva_utils.machinery.precision
import eva_utils.train
from eva_utils.machinery.ema import EMA
from eva_utils.machinery.precision import amp_dtype, use_channels_last
from eva_utils.machinery.runtime import TrainingError


class Tiny(nn.Module):
    """A few hundred parameters: fast enough to train many times in a test."""

    def __init__(self, in_ch=3, classes=10):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_ch, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))

    def forward(self, x):
        return self.net(x)


def answers_on(images, labels, preds, confidence, classes) -> eva.Predictions:
    """Predictions on images a test holds: float (N, 3, H, W), normalised, one per answer."""
    return eva.Predictions(labels, preds, confidence, tuple(classes), torch.arange(len(labels)),
                           images)

def loaders(data, batch=40, labels=None):
    """Few steps an epoch, so the tests run fast: the loader says so, as it should."""
    labels = data.train_labels if labels is None else labels
    few = len(labels) // batch < eva.loaders.MIN_STEPS
    with pytest.warns(UserWarning, match="too few to learn well") if few else nullcontext():
        train = eva.TensorLoader(data.train_images, labels, data.mean, data.std, batch, train=True)
    return (train,
            eva.TensorLoader(data.test_images, data.test_labels, data.mean, data.std, 50, train=False))


LEARNED = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "test_acc_plain")  # not seconds


def same_run(a: dict, b: dict) -> None:
    """Two checkpoints hold the same weights, optimizer state and learning history."""
    assert a["epoch"] == b["epoch"]
    for key in LEARNED:
        assert a["history"][key] == pytest.approx(b["history"][key], rel=1e-5), key
    for name, tensor in a["model"].items():
        torch.testing.assert_close(tensor, b["model"][name], msg=name)


def cfg(**kw):
    return eva.TrainConfig(**{"epochs": 3, "lr": 0.05, "log_every": 2, **kw})


def test_fit_returns_a_full_history_and_learns(tiny):
    torch.manual_seed(0)
    h = eva.fit(Tiny(), *loaders(tiny), cfg(epochs=4, lr=0.2), progress=False)
    assert len(h) == 4
    for key, values in asdict(h).items():
        assert len(values) == (0 if key in ("test_acc_plain", "resumed_at") else 4), key  # plain: with TTA only
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
    built = 0 if schedule == "plateau" else 1  # the others also step once when they are built
    assert len(calls) == expected + built
    if schedule == "plateau":
        assert [args[0] for args in calls] == pytest.approx(h.test_loss)


def test_onecycle_peaks_at_epoch_5_of_24_without_annihilation():
    lrs = eva.lr_schedule(eva.TrainConfig(epochs=24, lr=0.4, schedule="onecycle"), 98)
    assert len(lrs) == 24 * 98
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert peak // 98 == 4  # epoch 5, counting from 1
    assert lrs[0] == pytest.approx(0.04) and lrs[-1] == pytest.approx(0.04, rel=0.01)


def test_onecycle_guards_short_runs():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="at least 4 steps; this run has 3"):
        eva.build_scheduler(opt, eva.TrainConfig(epochs=1), 3)
    lrs = eva.lr_schedule(eva.TrainConfig(epochs=1, lr=1.0, pct_start=0.1), 4)  # 0.4 steps -> 2
    assert max(lrs) == pytest.approx(1.0) and len(lrs) == 4
    assert eva.build_scheduler(opt, eva.TrainConfig(schedule="plateau"), 10)[1] == "plateau"
    from eva_utils.config import SCHEDULES
    from eva_utils.schedule import STEP_EVERY  # every answer is explained there, and used
    assert {eva.build_scheduler(opt, eva.TrainConfig(schedule=s, epochs=2), 10)[1]
            for s in SCHEDULES} == set(STEP_EVERY)


@pytest.mark.parametrize("field, value, words", [
    ("lr", float("nan"), "lr=nan: must be a finite number > 0"),
    ("lr", float("inf"), "lr=inf: must be a finite number > 0"),
    ("lr", "0.1", "lr='0.1': must be a finite number > 0"),
    ("epochs", 2.5, "epochs=2.5: must be a whole number >= 1"),
    ("epochs", 0, "epochs=0"),
    ("label_smoothing", 1.5, r"label_smoothing=1.5: must be a number in \[0, 1\)"),
    ("weight_decay", -1, "weight_decay=-1: must be a finite number >= 0"),
    ("momentum", -0.5, r"momentum=-0.5: must be a number in \[0, 1\)"),
    ("pct_start", 5, "pct_start=5"),
    ("schedule", "cosine", "schedule='cosine': must be one of onecycle"),
    ("optimizer", "lion", "optimizer='lion': must be one of sgd"),
    ("ema_decay", 1.0, "ema_decay=1.0"),
    ("betas", (0.9,), "betas"),
])
def test_config_validates_types_and_ranges(field, value, words):
    with pytest.raises(ValueError, match=words):
        eva.TrainConfig(**{field: value})


def test_config_names_every_bad_field_at_once():
    with pytest.raises(ValueError) as err:
        eva.TrainConfig(lr=-1, epochs=2.5, momentum=2)
    assert [line.split("=")[0].strip() for line in str(err.value).splitlines()[1:]] == \
        ["epochs", "lr", "momentum"]


def test_config_keeps_canonical_forms_and_validate_changes_nothing(tmp_path):
    """validate() turned lists into tuples and paths into text as it checked them (a check with a
    side effect); now every assignment does, before and after building, and validate only reads."""
    config = eva.TrainConfig(betas=[0.9, 0.99], milestones=[2, 4], checkpoint_dir=tmp_path / "a")
    assert (config.betas, config.milestones, config.checkpoint_dir) == ((0.9, 0.99), (2, 4),
                                                                        str(tmp_path / "a"))
    config.betas, config.checkpoint_dir = [0.8, 0.9], tmp_path / "b"  # a later edit
    assert (config.betas, config.checkpoint_dir) == ((0.8, 0.9), str(tmp_path / "b"))
    before = asdict(config)
    config.validate()
    assert asdict(config) == before


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


def test_shape_mismatches_and_label_ranges_are_explained(tiny):
    with pytest.raises(TrainingError, match=r"cannot take the data's batches of shape \(40, 3, 32"):
        eva.fit(Tiny(in_ch=1), *loaders(tiny), cfg(), progress=False)
    with pytest.raises(TrainingError, match=r"model has 5 outputs but the data has 10 classes"):
        eva.fit(Tiny(classes=5), *loaders(tiny), cfg(), progress=False)
    # label 10 for a 10-class model, somewhere after the first batch: the loader counts 11 classes
    labels = tiny.train_labels.copy()
    labels[-1] = 10
    with pytest.raises(TrainingError, match=r"model has 10 outputs but the data has 11 classes"):
        eva.fit(Tiny(), *loaders(tiny, labels=labels), cfg(), progress=False)
    test = eva.TensorLoader(tiny.test_images, np.full(100, 10), tiny.mean, tiny.std, 50, train=False)
    with pytest.raises(ValueError, match="Labels run from 10 to 10"):
        eva.evaluate(Tiny(), test)


def test_empty_loaders_and_out_of_memory(tiny):
    with pytest.raises(TrainingError, match="no batches"):
        eva.fit(Tiny(), [], loaders(tiny)[1], cfg(), progress=False)
    with pytest.raises(ValueError, match="no images"):
        eva.evaluate(Tiny(), [])

    class Hungry(Tiny):
        def forward(self, x):
            if self.training:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().forward(x)
    with pytest.raises(TrainingError, match="ran out of memory in epoch 1. Fix: lower the batch"):
        eva.fit(Hungry(), *loaders(tiny), cfg(), progress=False)


class LeftHalf(nn.Module):
    """Looks only at the left half of the image: mirroring changes its answer."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 10)
        self.frozen = nn.BatchNorm1d(3)

    def forward(self, x):
        return self.fc(self.frozen(x[..., :16].mean((2, 3))))


def test_evaluate_and_predict_share_tta_and_restore_every_mode(tiny):
    torch.manual_seed(0)
    model = LeftHalf().train()
    model.frozen.eval()  # a student's frozen layer inside a training model
    _, test = loaders(tiny)
    x = torch.cat([x for x, _ in test])
    y = torch.from_numpy(tiny.test_labels)
    with eva.eval_mode(model):
        want = (model(x) + model(x.flip(3))) / 2
    assert model.training and not model.frozen.training
    # float32 pinned, as `want` is (the default on an AMX CPU is bfloat16)
    loss, acc = eva.evaluate(model, test, tta=True, amp=False)
    assert loss == pytest.approx(nn.functional.cross_entropy(want, y).item(), rel=1e-5)
    assert acc == pytest.approx(100 * (want.argmax(1) == y).float().mean().item())
    p = eva.predict(model, test, tiny.classes, tta=True, amp=False)
    assert p.accuracy == pytest.approx(acc)  # the gallery analyses what evaluate scored
    assert torch.equal(p.preds, want.argmax(1))
    assert model.training and not model.frozen.training


def test_options_run_together(tiny):
    torch.manual_seed(0)
    h = eva.fit(Tiny(), *loaders(tiny), cfg(optimizer="adamw", schedule="constant", lr=1e-2,
                                             label_smoothing=0.1, ema_decay=0.9, tta=True,
                                             grad_clip=1.0), progress=False)
    assert len(h) == 3 and h.lr == [1e-2] * 3


def test_device_choice_and_seeding():
    assert eva.get_device("cpu") == torch.device("cpu")
    assert eva.get_device().type in {"cuda", "mps", "cpu"}
    eva.seed_everything(3)
    a = (torch.rand(2), np.random.rand(), random.random())
    eva.seed_everything(3)
    b = (torch.rand(2), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


@pytest.mark.parametrize("capability, want", [((7, 5), torch.float16),   # T4 (Colab)
                                              ((7, 0), torch.float16),   # V100
                                              ((8, 0), torch.bfloat16),  # A100
                                              ((9, 0), torch.bfloat16)])  # H100
def test_mixed_precision_follows_compute_capability(monkeypatch, capability, want):
    # a T4 answers True here through emulation, which is slower than float32: not the test
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    cuda = torch.device("cuda")
    assert amp_dtype(cuda, None) is want and amp_dtype(cuda, True) is want
    assert amp_dtype(cuda, False) is None


AMX = "fpu sse sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"  # Sapphire Rapids
NO_AMX = "fpu sse sse2 avx2 avx512f avx512_bf16"                          # Zen 4: bf16 dot, no tiles
AVX512 = "fpu sse sse2 avx2 avx512f avx512bw avx512vl"                    # Ice Lake: no bfloat16


@pytest.mark.parametrize("flags, default", [(AMX, torch.bfloat16), (NO_AMX, torch.bfloat16),
                                            (AVX512, None), ("", None)])
def test_cpu_precision_follows_the_processor(monkeypatch, tmp_path, flags, default):
    """bfloat16 by default where the CPU computes it natively (AMX, or AVX-512 BF16 as on an AMD
    EPYC, where benchmarks/cpu_precision.py measured it faster for every suite model); float32
    elsewhere; explicit amp always wins."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n")
    real_path = eva.machinery.runtime.Path
    monkeypatch.setattr(eva.machinery.runtime, "Path",
                        lambda p: real_path(cpuinfo if p == "/proc/cpuinfo" else p))
    cpu = torch.device("cpu")
    assert eva.machinery.precision.cpu_has_bf16() is (default is not None)
    assert amp_dtype(cpu, None) is default
    assert amp_dtype(cpu, True) is torch.bfloat16 and amp_dtype(cpu, False) is None
    assert amp_dtype(torch.device("mps"), None) is None
    assert amp_dtype(torch.device("mps"), True) is torch.float16


def test_channels_last_default():
    assert use_channels_last(torch.device("cuda"), None)
    assert use_channels_last(torch.device("cpu"), None)  # measured: benchmarks/channels_last.py
    assert not use_channels_last(torch.device("mps"), None)
    assert not use_channels_last(torch.device("cpu"), False)
    assert use_channels_last(torch.device("mps"), True)


def mock_amx(monkeypatch, has_amx: bool) -> None:
    """A CPU with native bfloat16 (AMX or AVX-512 BF16), or one without."""
    monkeypatch.setattr(eva.machinery.precision, "cpu_has_bf16", lambda: has_amx)


@pytest.mark.parametrize("amp, layout", [(False, False), (True, True)])
def test_predict_after_fit_answers_in_the_runs_arithmetic(monkeypatch, tiny, amp, layout):
    """On an AMX CPU (bfloat16 by default) predict after fit(amp=False) answered in bfloat16: its
    confidences differed from the float32 the run was scored in. Now the run's precision and
    layout are the model's default for evaluate and predict; an explicit setting still decides."""
    mock_amx(monkeypatch, not amp)  # the device's own choice is the other precision
    torch.manual_seed(0)
    model = Tiny()
    train, test = loaders(tiny)
    history = eva.fit(model, train, test, cfg(epochs=1, amp=amp, channels_last=layout),
                      progress=False)
    trained = eva_utils.machinery.precision.Precision(torch.bfloat16 if amp else None, layout)
    assert eva_utils.machinery.precision.Precision.of(model, torch.device("cpu")) == trained
    assert not any(name.startswith("eva") for name in vars(model))  # nothing set on the model
    loss, acc = eva.evaluate(model, test)
    assert (loss, acc) == (history.test_loss[-1], history.test_acc[-1])  # the scored arithmetic
    scored = eva.predict(model, test, tiny.classes)
    kept = eva.predict(model, test, tiny.classes, amp=amp, channels_last=layout)
    other = eva.predict(model, test, tiny.classes, amp=not amp, channels_last=layout)
    assert torch.equal(scored.confidence, kept.confidence)
    assert not torch.equal(scored.confidence, other.confidence)


@pytest.mark.parametrize("has_amx, precision", [(True, "bfloat16"), (False, "float32")])
def test_records_and_checkpoints_name_precision_and_layout(monkeypatch, tiny, tmp_path, has_amx,
                                                           precision):
    mock_amx(monkeypatch, has_amx)
    model = Tiny()
    history = eva.fit(model, *loaders(tiny), cfg(epochs=1, checkpoint_dir=str(tmp_path)),
                      progress=False)
    assert history.precision == [precision] and history.layout == ["NHWC"]
    ckpt = eva.load_checkpoint(tmp_path / "last.pt")
    assert (ckpt["precision"], ckpt["channels_last"]) == (precision, True)
    record = eva.run_record(history, model, "cpu")
    assert (record["precision"], record["layout"]) == (precision, "NHWC")
    history = eva.fit(Tiny(), *loaders(tiny), cfg(epochs=1, amp=False, channels_last=False),
                      progress=False)  # explicit settings win over the processor's default
    assert history.precision == ["float32"] and history.layout == ["NCHW"]


def test_a_resumed_run_keeps_its_precision_and_layout_on_another_processor(monkeypatch, tiny,
                                                                           tmp_path, capsys):
    """Started in float32 on a CPU without AMX, resumed on one with AMX: it stays float32 NHWC,
    says so, and refuses an explicit setting that contradicts the checkpoint."""
    mock_amx(monkeypatch, False)
    run = cfg(epochs=2, checkpoint_dir=str(tmp_path))
    with pytest.raises(eva.BudgetSpent):
        eva.fit(Tiny(), *loaders(tiny), run, resume=True, time_budget=1e-9, progress=False)
    mock_amx(monkeypatch, True)
    for explicit, words in ((dict(amp=True), "amp=True means bfloat16.*trained in float32"),
                            (dict(channels_last=False), "channels_last=False means NCHW")):
        with pytest.raises(eva.CheckpointError, match=words):
            eva.fit(Tiny(), *loaders(tiny), cfg(epochs=2, checkpoint_dir=str(tmp_path), **explicit),
                    resume=True, progress=False)
    capsys.readouterr()
    history = eva.fit(Tiny(), *loaders(tiny), run, resume=True)
    assert "Kept the run's float32, NHWC" in capsys.readouterr().out
    assert history.precision == ["float32", "float32"] and history.layout == ["NHWC", "NHWC"]
    assert eva.load_checkpoint(tmp_path / "last.pt")["precision"] == "float32"


@pytest.mark.parametrize("saved, gpu, amx, amp, want", [
    ("bfloat16", (7, 5), False, None, torch.float16),  # begun on an A100 or L4, resumed on a T4
    ("bfloat16", (7, 5), False, False, None),          # ... where an explicit setting decides
    ("float16", None, False, None, None),              # a T4 run resumed on a laptop
    ("float16", None, True, None, torch.bfloat16),     # ... on an AMX Xeon
])
def test_a_resumed_run_leaves_a_precision_the_device_cannot_run(monkeypatch, saved, gpu, amx, amp,
                                                                want):
    """bfloat16 below compute capability 8.0 is emulated (slower than float32), float16 on a CPU
    has no fast convolutions: the device's own choice (or an explicit amp) takes over, in one line
    that says the run is no longer bit-exact. The layout is kept."""
    from eva_utils.machinery.precision import Precision
    mock_amx(monkeypatch, amx)
    if gpu:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: gpu)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    device = torch.device("cuda" if gpu else "cpu")
    ckpt = {"precision": saved, "channels_last": False}
    precision, note = Precision.for_run(device, cfg(amp=amp), ckpt, "last.pt")
    assert precision == Precision(want, False)
    assert note.startswith(f"The run trained in {saved}, which {'Tesla T4' if gpu else 'cpu: '}")
    assert note.endswith(f"goes on in {eva.machinery.precision.precision_name(want)}, so it is no longer "
                         "bit-exact with an unbroken run.")


def test_a_resumed_run_keeps_a_precision_the_device_runs(monkeypatch):
    from eva_utils.machinery.precision import Precision
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    ckpt = {"precision": "bfloat16", "channels_last": True}
    assert Precision.for_run(torch.device("cuda"), cfg(), ckpt) == (Precision(torch.bfloat16, True), "")
    mock_amx(monkeypatch, False)  # a CPU without native bfloat16 (emulated): the run keeps it
    precision, note = Precision.for_run(torch.device("cpu"), cfg(), ckpt)
    assert precision == Precision(torch.bfloat16, True) and note.startswith("Kept the run's bfloat16")


def test_a_skipped_float16_step_does_not_step_the_schedule(monkeypatch, tiny, tmp_path, recwarn):
    """float16 with a loss scaler, as on a T4: a step whose scaled gradients overflow is skipped
    (the scaler halves its scale), and the one-cycle schedule waits for the next real step. It
    stepped anyway, and torch warned "Detected call of lr_scheduler.step() before
    optimizer.step()" whenever the first step overflowed."""
    from torch.optim.optimizer import register_optimizer_step_post_hook
    monkeypatch.setattr(eva_utils.machinery.precision, "amp_dtype", lambda device, amp: torch.float16)  # a T4

    class Overflowing(torch.amp.GradScaler):
        """torch's scaler, whose first two steps find an overflowed (infinite) gradient."""
        overflows = 2

        def step(self, optimizer, *args, **kwargs):
            if self.overflows:
                self.overflows -= 1
                next(iter(optimizer.param_groups[0]["params"])).grad.fill_(float("inf"))
            return super().step(optimizer, *args, **kwargs)
    monkeypatch.setattr(torch.amp, "GradScaler", Overflowing)
    steps = []
    hook = register_optimizer_step_post_hook(lambda optimizer, args, kwargs: steps.append(1))
    try:
        eva.fit(Tiny(), *loaders(tiny), cfg(epochs=1, checkpoint_dir=tmp_path), progress=False)
    finally:
        hook.remove()
    ckpt = eva.load_checkpoint(tmp_path / "last.pt")
    assert ckpt["precision"] == "float16" and ckpt["scaler"]["scale"] == 2.0 ** 14  # 2 halvings
    assert len(steps) == ckpt["steps_per_epoch"] - 2
    assert ckpt["scheduler"]["last_epoch"] == len(steps)  # one schedule step per real step
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]


def test_cudnn_picks_its_fastest_convolutions_unless_determinism_is_asked(monkeypatch, tiny):
    """Inside fit only: the process's setting was left on for good after a run."""
    from eva_utils.machinery.runtime import tuned_convolutions
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    seen = []
    for device, deterministic in (("cpu", False), ("cuda", True), ("cuda", False)):
        monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: deterministic)
        with tuned_convolutions(torch.device(device)):
            seen.append(torch.backends.cudnn.benchmark)
        assert torch.backends.cudnn.benchmark is False  # restored
    assert seen == [False, False, True]
    monkeypatch.setattr(eva_utils.train, "train_epoch", lambda *a, **k: seen.append(
        torch.backends.cudnn.benchmark) or (1.0, 50.0, 0.1))
    monkeypatch.setattr(eva_utils.train, "tuned_convolutions", lambda device: tuned_convolutions(
        torch.device("cuda")))  # as on a GPU
    eva.fit(Tiny(), *loaders(tiny), cfg(epochs=1), progress=False)
    assert seen[-1] is True and torch.backends.cudnn.benchmark is False


def test_a_checkpoint_from_before_precision_was_recorded_is_refused():
    """Checkpoints written before eva_utils 0.2 recorded their arithmetic were resumed with a
    guess; none exists outside this repository's own disks, so the guess is gone: one message."""
    with pytest.raises(eva.CheckpointError, match="records no precision: an eva_utils older than 0.2"):
        eva.machinery.checkpoint.saved_precision({"config": {}, "scaler": {}, "history": {"devices": []}})


def test_ema_tracks_weights_and_buffers():
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
    def run():
        torch.manual_seed(0)
        train = eva.make_loader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 20,
                                train=True, augment=eva.Augment(cutout=8), num_workers=2)
        return eva.fit(Tiny(), train, loaders(tiny)[1], cfg(epochs=2), progress=False)
    a, b = run(), run()
    assert a.train_loss == b.train_loss and a.test_acc == b.test_acc


def test_run_record_and_save_json(tmp_path):
    h = eva.History([1.0, 0.5], [50.0, 70.0], [1.1, 0.7], [45.0, 65.0], [0.1, 0.05], [2.0, 1.0])
    record = eva.run_record(h, Tiny(), "cpu", notebook="04", model="Tiny", seed=3)
    assert list(record)[:3] == ["notebook", "model", "seed"]
    assert record["test_acc"] == 65.0 and record["train_seconds"] == 3.0 \
        and record["device"].startswith("cpu: ") and "threads" in record["device"]
    assert record["parameters"] == sum(p.numel() for p in Tiny().parameters())
    assert "test_acc_tta" not in record  # a run without TTA
    # with TTA: test_acc is the one view (what the assignments measure), TTA's has its own name
    h.test_acc_plain = [44.0, 64.5]
    tta = eva.run_record(h, Tiny(), "cpu")
    assert (tta["test_acc"], tta["best_test_acc"], tta["test_acc_tta"]) == (64.5, 64.5, 65.0)
    eva.save_json(tmp_path / "a" / "r.json", record)
    assert json.loads((tmp_path / "a" / "r.json").read_text()) == record
    eva.save_json(None, record)  # no path: nothing written, no error
    assert math.isclose(h.train_seconds, 3.0)


SUITE = {"Tiny": Tiny, "SmallResNet": lambda: eva.SmallResNet(num_classes=10, repeats=2),
         "ResNet18": lambda: eva.ResNet18(num_classes=10),  # GroupNorm(1, C), notebook 03's
         "CustomResNet": lambda: eva.CustomResNet(num_classes=10)}


@pytest.mark.parametrize("model, kw", [
    ("Tiny", dict(amp=False, channels_last=False)),
    ("Tiny", dict(amp=False, channels_last=True, grad_clip=1.0, label_smoothing=0.1)),
    ("Tiny", dict(amp=True, channels_last=True, ema_decay=0.9)),
    # each notebook's model, schedule and precision (bfloat16 on AMX CPUs, notebook 03's long run)
    ("SmallResNet", dict(amp=False, channels_last=True, schedule="onecycle", tta=True,
                         anneal_strategy="cos", final_div_factor=1e4)),                    # 02
    ("SmallResNet", dict(amp=False, channels_last=True, optimizer="adam", weight_decay=0.0,
                         schedule="multistep", milestones=(1,), lr=5e-3)),                 # 02
    ("ResNet18", dict(amp=True, channels_last=True, schedule="onecycle", tta=True,
                      final_div_factor=100)),                                              # 03
    ("ResNet18", dict(amp=True, channels_last=True, schedule="plateau", patience=0)),      # 03
    ("CustomResNet", dict(amp=True, channels_last=True, label_smoothing=0.2, tta=True)),  # 04
])
def test_fit_is_bit_for_bit_this_plain_loop(tiny, model, kw):
    """``fit``'s arithmetic is exactly this loop, for each notebook's model, schedule and precision
    (float32, or bfloat16 autocast as on AMX CPUs; CUDA's float16 scaling is the GradScaler's):
    however its code is arranged, a run resumed across a change of eva_utils continues with the
    same numbers. Compared exactly: weights, test loss and accuracy, every epoch."""
    config = cfg(epochs=2, **kw)
    torch.manual_seed(0)
    start = SUITE[model]().state_dict()
    ours, plain = SUITE[model](), SUITE[model]()
    ours.load_state_dict(start)
    plain.load_state_dict(start)
    # the two large networks on fewer images: two steps an epoch still step every schedule
    train, test = loaders(tiny.subset(80, 50) if model in ("ResNet18", "CustomResNet") else tiny)
    with warnings.catch_warnings():  # on random pictures the mirror may score lower: fit says so
        warnings.filterwarnings("ignore", "Mirror test-time augmentation lowered")
        history = eva.fit(ours, train, test, config, progress=False)

    eva.seed_everything(config.seed)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    dtype = torch.bfloat16 if config.amp else None  # the CPU's autocast type
    plain.to(memory_format=layout)
    optimizer = eva.build_optimizer(plain, config)
    scheduler, every = eva.build_scheduler(optimizer, config, len(train))
    ema = EMA(plain, config.ema_decay) if config.ema_decay else None
    scored = ema.module if ema else plain
    for epoch in range(config.epochs):
        train.set_epoch(epoch)
        plain.train()
        for x, y in train:
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = plain(x.contiguous(memory_format=layout))
                loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(plain.parameters(), config.grad_clip)
            optimizer.step()
            if every == "batch":
                scheduler.step()
            if ema:
                ema.update()
        cpu = torch.device("cpu")  # fit sums the counts over processes (torchrun) first
        loss, acc, _ = eva.inference.scores(scored, test, tta=config.tta, amp=dtype or False,
                                            channels_last=config.channels_last,
                                            total=lambda c: eva.distributed.total(c, cpu))
        if every == "epoch":
            scheduler.step()
        elif every == "plateau":
            scheduler.step(loss)
        assert (history.test_loss[epoch], history.test_acc[epoch]) == (loss, acc)
    for name, tensor in scored.state_dict().items():
        assert torch.equal(tensor, ours.state_dict()[name]), name


def test_fit_reads_in_a_few_files():
    """fit's loop is for reading: train.py imports at most five of the package's modules (it
    imported 13), so following one epoch visits few files. Imports for type hints only (under
    ``if TYPE_CHECKING``) do not count: nothing runs them."""
    import ast
    package = Path(eva.__file__).parent
    tree = ast.parse((package / "train.py").read_text())
    ours = set()
    for node in tree.body:  # top-level statements: the TYPE_CHECKING block is an If, left out
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            folder = (node.module or "").replace(".", "/")
            if (package / folder).is_dir():  # "from .machinery import distributed": a module
                ours |= {f"{node.module}.{a.name}" if node.module else a.name for a in node.names}
            else:
                ours.add(node.module)
    assert "machinery.run" in ours and len(ours) <= 5, sorted(ours)
