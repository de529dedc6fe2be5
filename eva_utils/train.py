"""Training: ``TrainConfig`` (every setting, with units), ``fit`` and one epoch of it.

The hot loop never waits on the GPU: per-batch loss and accuracy stay on the device and are read
back every ``log_every`` steps (for the progress bar and the NaN check), not after every step.
"""
from __future__ import annotations

import contextlib
import gc
import math
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import (CheckpointError, RunFolder, check_resumable, load_checkpoint,
                         model_identity, rng_state, saved_precision, set_rng_state)
from .ema import EMA
from .history import History
from .data import check_labels
from .inference import scores
from .runtime import (TrainingError, amp_dtype, device_name, eval_mode, get_device,
                      precision_name, seed_everything, to_device, tune_convolutions,
                      use_channels_last)
from .schedule import build_optimizer, build_scheduler

DIVERGED = 100  # a loss this many times that of guessing (log classes) means training diverged
SCHEDULES = ("onecycle", "step", "multistep", "plateau", "constant")
OPTIMIZERS = ("sgd", "adam", "adamw")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _optional_flag(x) -> bool:
    return x is None or isinstance(x, bool)


# field -> (is it valid?, the valid range in words)
RULES = {
    "epochs": (lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "lr": (lambda v: _number(v) and v > 0, "a finite number > 0"),
    "momentum": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "nesterov": (lambda v: isinstance(v, bool), "True or False"),
    "betas": (lambda v: len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
              "two numbers in [0, 1)"),
    "weight_decay": (lambda v: _number(v) and v >= 0, "a finite number >= 0"),
    "schedule": (lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
    "pct_start": (lambda v: _number(v) and 0 < v < 1, "a fraction in (0, 1), e.g. peak epoch / epochs"),
    "div_factor": (lambda v: _number(v) and v >= 1, "a finite number >= 1"),
    "final_div_factor": (lambda v: _number(v) and v >= 1, "a finite number >= 1"),
    "anneal_strategy": (lambda v: v in ("linear", "cos"), "'linear' or 'cos'"),
    "step_size": (lambda v: _whole(v) and v >= 1, "a whole number of epochs >= 1"),
    "milestones": (lambda v: all(_whole(m) and m >= 1 for m in v) and list(v) == sorted(set(v)),
                   "increasing whole numbers of epochs >= 1"),
    "gamma": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "patience": (lambda v: _whole(v) and v >= 0, "a whole number of epochs >= 0"),
    "label_smoothing": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "grad_clip": (lambda v: v is None or (_number(v) and v > 0), "None or a finite number > 0"),
    "ema_decay": (lambda v: v is None or (_number(v) and 0 < v < 1), "None or a number in (0, 1)"),
    "tta": (lambda v: isinstance(v, bool), "True or False"),
    "amp": (_optional_flag, "None, True or False"),
    "channels_last": (_optional_flag, "None, True or False"),
    "compile": (lambda v: isinstance(v, bool), "True or False"),
    "seed": (lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    "checkpoint_dir": (lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
                       "None or a folder path (\"\" would train without checkpoints)"),
    "log_every": (lambda v: _whole(v) and v >= 1, "a whole number of steps >= 1"),
}


@dataclass
class TrainConfig:
    """Everything that decides a training run. Units in the comments; checked when built."""

    epochs: int = 24                      # passes over the training set
    optimizer: str = "sgd"                # "sgd" | "adam" | "adamw"
    lr: float = 0.05                      # learning rate; for "onecycle" the peak (per step)
    momentum: float = 0.9                 # SGD momentum (dimensionless)
    nesterov: bool = True                 # Nesterov momentum for SGD
    betas: tuple[float, float] = (0.9, 0.999)  # Adam/AdamW moment decay rates
    weight_decay: float = 5e-4            # L2 penalty (Adam/SGD) or decoupled decay (AdamW), per step
    schedule: str = "onecycle"            # one of SCHEDULES
    # onecycle: lr rises from lr/div_factor to lr over pct_start of the steps, then falls to
    # lr/div_factor/final_div_factor. final_div_factor=1 is "no annihilation".
    pct_start: float = 5 / 24             # fraction of all steps spent rising (5/24: peak at epoch 5)
    div_factor: float = 10.0              # lr / starting lr
    final_div_factor: float = 1.0         # starting lr / final lr
    anneal_strategy: str = "linear"       # "linear" | "cos"
    step_size: int = 10                   # step: epochs between decays
    milestones: tuple[int, ...] = (50, 100)  # multistep: epochs at which to decay
    gamma: float = 0.1                    # step/multistep/plateau: factor per decay
    patience: int = 3                     # plateau: epochs without test-loss improvement first
    label_smoothing: float = 0.0          # target mass spread over the other classes, in [0, 1)
    grad_clip: float | None = None        # max global L2 norm of the gradients (None: off)
    ema_decay: float | None = None        # weight-averaging decay per step, e.g. 0.999 (None: off)
    tta: bool = False                     # evaluate on image + its left-right mirror, logits averaged
    amp: bool | None = None               # mixed precision; None: on for CUDA and AMX CPUs (runtime.amp_dtype)
    channels_last: bool | None = None     # NHWC memory layout; None: on for CUDA and CPU
    compile: bool = False                 # torch.compile the model (pays off for long runs on CUDA)
    seed: int = 0                         # seeds python, numpy and torch as a new run starts
                                          # (dropout, ...); the weights come from the model as given
    checkpoint_dir: str | None = None     # where best.pt and last.pt go (None: no checkpoints)
    log_every: int = 20                   # steps between progress-bar updates (each one syncs once)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise one ValueError naming every invalid field. Runs when the config is built and again
        in ``fit``, so a field changed afterwards (``cfg.schedule = "cosine"``) is checked too."""
        if isinstance(self.checkpoint_dir, os.PathLike):
            self.checkpoint_dir = os.fspath(self.checkpoint_dir)
        if isinstance(self.betas, (list, tuple)):
            self.betas = tuple(self.betas)
        if isinstance(self.milestones, (list, tuple)):
            self.milestones = tuple(self.milestones)
        bad = []
        for f in fields(self):
            valid, words = RULES[f.name]
            value = getattr(self, f.name)
            try:
                ok = valid(value)
            except TypeError:  # e.g. len() of a number
                ok = False
            if not ok:
                bad.append(f"{f.name}={value!r}: must be {words}")
        if bad:
            raise ValueError("TrainConfig has invalid settings:\n  " + "\n  ".join(bad))


class BudgetSpent(Exception):
    """``fit`` stopped at an epoch boundary because its ``time_budget`` would not fit another epoch.
    The checkpoint is written; calling ``fit`` again with ``resume=True`` continues the run."""

    def _render_traceback_(self) -> list[str]:
        """What IPython (Jupyter, Colab, papermill) shows instead of a red traceback: the one
        line that says where the run stopped and how to go on. It is a planned stop, not a bug."""
        return [f"BudgetSpent: {self}"]


class Budget:
    """``fit``'s ``time_budget``: seconds of this call, spent an epoch at a time."""

    def __init__(self, seconds: float | None, history: History):
        self.seconds, self.started = seconds, time.perf_counter()
        # The longest epoch, training and testing, in seconds: first guessed from the median of
        # the epochs a resumed run already trained (a median, so that one epoch slowed by other
        # work on the machine does not cut every later stretch short; 1.2x, since only training
        # time is kept and testing adds ~15 % for CustomResNet on CPU), then the longest measured.
        self.longest = 1.2 * statistics.median(history.seconds) if history.seconds else 0.0

    def check(self, epoch: int, cfg: TrainConfig, device: torch.device) -> None:
        """Raise BudgetSpent, in every process or in none, if epoch ``epoch`` would not fit."""
        elapsed = time.perf_counter() - self.started
        over = self.seconds is not None and self.longest > 0 and elapsed + self.longest > self.seconds
        if distributed.total([float(over)], device)[0]:  # every process stops, or none
            raise BudgetSpent(
                f"Time budget spent: {_duration(elapsed)} of {_duration(self.seconds)} used, and an "
                f"epoch takes about {_duration(self.longest)}. Stopped after epoch {epoch} of "
                f"{cfg.epochs}; the run is saved in {Path(cfg.checkpoint_dir) / 'last.pt'}. To go "
                "on, run the same code again with resume=True (a notebook: run it again).")

    def took(self, seconds: float) -> None:
        self.longest = max(self.longest, seconds)


@dataclass
class Run:
    """The live state of one training run: what an epoch updates and a checkpoint saves."""

    model: nn.Module
    forward: nn.Module             # the model, or its DDP / torch.compile'd wrapper
    optimizer: torch.optim.Optimizer
    scheduler: object
    step_every: str                # when the scheduler steps: "batch", "epoch" or "plateau"
    scaler: torch.amp.GradScaler
    ema: EMA | None
    amp_dtype: torch.dtype | None
    channels_last: bool
    history: History
    # Submodules the caller put in eval mode inside a model in training mode (a frozen pretrained
    # backbone's batch norm): they stay in eval mode while the rest trains.
    frozen: list = field(default_factory=list)
    folder: RunFolder | None = None  # the checkpoint folder, whose lock the epochs keep alive

    @property
    def scored(self) -> nn.Module:
        """What each epoch is tested on: the weight average with EMA, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def state(self, cfg: TrainConfig, train_loader) -> dict:
        """The checkpoint: everything ``restore`` needs, what a resume compares, and what the model
        takes (``inputs``), so the app can serve it without the data."""
        name, args = model_identity(self.model)
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "history": asdict(self.history), "config": asdict(cfg), "rng": rng_state(),
                "epoch": len(self.history), "model_class": name, "model_args": args,
                "steps_per_epoch": len(train_loader), "data": fingerprint(train_loader),
                "inputs": model_inputs(train_loader),
                "precision": precision_name(self.amp_dtype), "channels_last": self.channels_last}

    def restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
        self.history = History(**ckpt["history"])
        set_rng_state(ckpt["rng"])

    def step_schedule(self, test_loss: float) -> None:
        """The scheduler's step at an epoch's end (per-batch schedules stepped in train_epoch)."""
        if self.step_every == "epoch":
            self.scheduler.step()
        elif self.step_every == "plateau":
            self.scheduler.step(test_loss)


def fit(model: nn.Module, train_loader, test_loader, cfg: TrainConfig | None = None, *,
        device: str | torch.device | None = None, resume: bool | str | os.PathLike | None = None,
        time_budget: float | None = None, progress: bool = True) -> History:
    """Train ``model`` for ``cfg.epochs`` epochs, testing after each; returns the History.

    Loaders yield (images float (B, C, H, W), labels int64 (B,)): ``TensorLoader`` or
    ``make_loader``. With ``cfg.checkpoint_dir`` it writes ``last.pt`` after every epoch and
    ``best.pt`` at each new best test accuracy, and refuses a folder that holds another run.
    ``resume=".../last.pt"`` continues such a run at the next epoch, exactly, if model, data and
    config are the same; ``resume=True`` does so from ``checkpoint_dir/last.pt`` when there is one
    and starts afresh when there is none. ``time_budget`` (seconds of this call) stops at the end
    of the last epoch that fits in it and raises ``BudgetSpent``: run the same code again with
    ``resume=True`` to go on. With ``cfg.ema_decay`` the weight average is what gets tested, and
    copied into ``model`` at the end. Started by torchrun, it trains with DistributedDataParallel,
    as ``distributed`` describes.
    """
    cfg, device, resume = check_arguments(model, train_loader, test_loader, cfg, device, resume,
                                          time_budget, progress)
    main = distributed.is_main()  # the one process that prints and writes checkpoints
    progress = progress and main
    folder = RunFolder(cfg.checkpoint_dir) if cfg.checkpoint_dir and main else None
    with folder or contextlib.nullcontext():
        # Set up: the optimizer, schedule and precision, then the checkpoint's state if resuming.
        run = start_run(model, train_loader, cfg, device, resume, folder, progress)
        budget = Budget(time_budget, run.history)
        best = max(run.history.test_acc, default=-1.0)
        for epoch in range(len(run.history), cfg.epochs):
            # Stop cleanly, checkpoint written, if the next epoch would overrun the budget.
            budget.check(epoch, cfg, device)
            epoch_start = time.perf_counter()
            for loader in (train_loader, test_loader):  # each epoch's shuffle and augmentation
                if hasattr(loader, "set_epoch"):
                    loader.set_epoch(epoch)
            lr = run.optimizer.param_groups[0]["lr"]
            # Train one pass, then test (on every process's share, summed).
            with out_of_memory_explained(device, epoch):
                train_loss, train_acc, seconds = train_epoch(run, train_loader, cfg, device, epoch,
                                                             progress=progress)
                train_loss, train_acc = distributed.mean([train_loss, train_acc], device)
                test_loss, test_acc, plain_acc = evaluate_epoch(run, test_loader, cfg, device)
            check_test_loss(test_loss, epoch)  # never record, checkpoint or schedule on a NaN
            run.step_schedule(test_loss)
            # Record the epoch, print its line, checkpoint it.
            run.history.append(train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                               test_acc=test_acc, lr=lr, seconds=seconds,
                               devices=device_name(device), precision=precision_name(run.amp_dtype),
                               layout="NHWC" if run.channels_last else "NCHW")
            if cfg.tta:
                run.history.append(test_acc_plain=plain_acc)
            if progress:
                tqdm.write(epoch_line(run.history, epoch))
            if folder is not None:
                folder.save(run.state(cfg, train_loader), best=test_acc > best)
            best = max(best, test_acc)
            budget.took(time.perf_counter() - epoch_start)
            if folder is not None:  # alive, and how long the next epoch may stay silent
                folder.beat(longest=budget.longest)
    if run.ema is not None:  # leave the averaged weights in the caller's model
        model.load_state_dict(run.ema.module.state_dict())
    warn_if_tta_hurt(cfg, run.history)
    return run.history


def check_arguments(model, train_loader, test_loader, cfg, device, resume, time_budget, progress):
    """fit's arguments checked before anything is spent: (config, device, the checkpoint path to
    resume from or None). Raises one clear error for the first thing wrong."""
    if not isinstance(progress, bool):
        raise TypeError(f"progress={progress!r}: give True or False.")
    cfg = cfg or TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be an eva.TrainConfig; got {type(cfg).__name__}.")
    cfg.validate()
    device = get_device(device)
    distributed.start(device)
    check_loader(train_loader, "train_loader")
    check_loader(test_loader, "test_loader")
    if getattr(test_loader, "train", False) is True:
        raise TrainingError("test_loader was built with train=True: it would be scored on "
                            "augmented, reshuffled images (the accuracy changes every call) and "
                            "drop its last partial batch. Fix: build it with train=False.")
    if getattr(train_loader, "train", True) is False:
        warnings.warn("train_loader was built with train=False: it is neither shuffled nor "
                      "augmented, so every epoch sees the same batches in the same order. Fix: "
                      "build it with train=True.", stacklevel=3)
    if not any(p.requires_grad for p in model.parameters()):
        raise TrainingError("Every parameter of the model is frozen (requires_grad=False): there "
                            "is nothing to train. Fix: unfreeze what should learn, e.g. "
                            "model.fc.requires_grad_(True) for a new head on a frozen backbone.")
    if len(train_loader) == 0:
        raise TrainingError("The training loader yields no batches: the batch size is larger than "
                            "the training set and incomplete batches are dropped. Fix: lower the "
                            "batch size or use more images.")
    if len(test_loader) == 0:
        raise TrainingError("The test loader yields no batches, so no epoch could be scored. Fix: "
                            "give it the test split's images (is the split empty?).")
    ckpt_dir = Path(cfg.checkpoint_dir).expanduser() if cfg.checkpoint_dir else None
    if (resume is True or time_budget is not None) and ckpt_dir is None:
        raise ValueError(f"{'resume=True' if resume is True else 'time_budget'} needs "
                         "TrainConfig(checkpoint_dir=...): that is where the run is kept between "
                         "stretches.")
    if time_budget is not None and not (_number(time_budget) and time_budget > 0):
        raise ValueError(f"time_budget={time_budget!r}: give seconds, a number > 0, or None.")
    if resume is True:
        resume = ckpt_dir / "last.pt" if (ckpt_dir / "last.pt").exists() else None
    elif resume is False:  # e.g. resume=CHECKPOINT_DIR is not None, with no folder given
        resume = None
    elif resume is not None and not isinstance(resume, (str, os.PathLike)):
        raise TypeError(f"resume={resume!r}: give True (this run's checkpoint_dir), False or "
                        "None (a new run), or the path of a last.pt or best.pt.")
    return cfg, device, resume


def start_run(model: nn.Module, train_loader, cfg: TrainConfig, device: torch.device, resume,
              folder: RunFolder | None, progress: bool) -> Run:
    """Everything an epoch needs, on ``device``: a new run, or the one ``resume`` continues
    (exactly: weights, optimizer, schedule, history and random state)."""
    if folder is not None:
        folder.check_new_run(resume)
    ckpt = load_checkpoint(resume) if resume is not None else None
    dtype, nhwc, kept = run_precision(device, cfg, ckpt, resume)
    seed_everything(cfg.seed)
    tune_convolutions(device)
    model.to(device, memory_format=torch.channels_last if nhwc else torch.preserve_format)
    optimizer = build_optimizer(model, cfg)
    scheduler, step_every = build_scheduler(optimizer, cfg, len(train_loader))
    forward = distributed.wrap(model, device)  # DDP under torchrun; the model itself otherwise
    run = Run(model, torch.compile(forward) if cfg.compile else forward, optimizer, scheduler,
              step_every, torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
              EMA(model, cfg.ema_decay) if cfg.ema_decay else None, dtype, nhwc, History(),
              [m for m in model.modules() if not m.training] if model.training else [], folder)
    if ckpt is not None:
        check_resumable(ckpt, resume, model, asdict(cfg), len(train_loader),
                        fingerprint(train_loader))
        run.restore(ckpt)
        if folder is not None:
            folder.repair_best(ckpt)
        done = len(run.history)
        if done < cfg.epochs:
            run.history.resumed_at.append(done)
        if progress:  # the whole run's lines, so a resumed notebook shows every epoch
            earlier = "epoch 1 as" if done == 1 else f"epochs 1-{done} as"
            before = list(dict.fromkeys(run.history.devices))
            moved = f" on {', '.join(before)}" if before and before != [device_name(device)] else ""
            tqdm.write(f"Resumed from {resume} after epoch {done} of {cfg.epochs}; {earlier} "
                       f"trained before{moved}:")
            for i in range(done):
                tqdm.write(epoch_line(run.history, i))
            if kept:
                tqdm.write(kept)
    if progress and len(run.history) < cfg.epochs:
        tqdm.write(f"Training on {device_name(device)} in {precision_name(dtype)}, "
                   f"{'NHWC (channels-last)' if nhwc else 'NCHW'}.")
    return run


def model_inputs(loader) -> dict | None:
    """What a trained model takes, from one of our training loaders: class names, the data's mean
    and std ([0, 1] scale) and the image size (H, W); None for a DataLoader eva did not build."""
    about = fingerprint(loader)
    if about is None or not hasattr(loader, "mean"):
        return None
    return {"classes": about["classes"], "mean": [float(m) for m in loader.mean],
            "std": [float(s) for s in loader.std], "image_size": about["image_size"]}


def fingerprint(loader) -> dict | None:
    """What our loaders know of their data (content hashes, classes, augmentation, batch, seed),
    kept in checkpoints so a resume with other data is refused; None for other loaders."""
    return getattr(loader, "fingerprint", None)


@contextlib.contextmanager
def out_of_memory_explained(device: torch.device, epoch: int):
    """Turn running out of memory into one message that says what to change."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise TrainingError(
            f"{device} ran out of memory in epoch {epoch + 1}. Fix: lower the batch size, turn "
            "on mixed precision (cfg.amp=True), or free memory (restart the kernel).") from None


def check_test_loss(test_loss: float, epoch: int) -> None:
    if not math.isfinite(test_loss):
        raise TrainingError(f"The test loss became {test_loss} after epoch {epoch + 1}, though "
                            "the training loss stayed finite. Fix: lower the learning rate, or "
                            "turn off mixed precision (cfg.amp=False) if it overflows.")


def warn_if_tta_hurt(cfg: TrainConfig, h: History) -> None:
    if cfg.tta and h.test_acc_plain and h.test_acc[-1] < h.test_acc_plain[-1]:
        warnings.warn(f"Mirror test-time augmentation lowered the test accuracy from "
                      f"{h.test_acc_plain[-1]:.2f}% to {h.test_acc[-1]:.2f}%: these images may not "
                      "keep their class when mirrored (digits, text). Fix: TrainConfig(tta=False), "
                      "and Augment(flip=False) unless mirrored images are still the same class.",
                      stacklevel=3)


def evaluate_epoch(run: Run, loader, cfg: TrainConfig,
                   device: torch.device) -> tuple[float, float, float]:
    """(mean test loss, accuracy %, accuracy % without TTA) of the run's scored model, in the
    run's precision and layout, over every process's share of ``loader``."""
    return scores(run.scored, loader, device, tta=cfg.tta, amp=run.amp_dtype or False,
                  channels_last=run.channels_last, total=lambda c: distributed.total(c, device))


def run_precision(device: torch.device, cfg: TrainConfig, ckpt: dict | None,
                  path=None) -> tuple[torch.dtype | None, bool, str]:
    """(autocast dtype or None, channels-last?, a note for a resumed run, or "").

    A new run takes ``amp_dtype``/``use_channels_last``'s choice for ``device``. A resumed run keeps
    the checkpoint's precision and layout wherever it resumes (a float32 run stays float32 on an
    AMX CPU), so all its epochs are the same arithmetic; an explicit ``cfg.amp``/``channels_last``
    that contradicts the checkpoint is refused. Except where the saved precision cannot run well
    here (bfloat16 on a GPU older than Ampere, float16 on a CPU): then the device's own choice, or
    the explicit ``cfg.amp``'s, takes over, and the note says the run is no longer bit-exact."""
    dtype, nhwc = amp_dtype(device, cfg.amp), use_channels_last(device, cfg.channels_last)
    if ckpt is None:
        return dtype, nhwc, ""
    saved, saved_nhwc = saved_precision(ckpt)
    layout = {True: "NHWC (channels-last)", False: "NCHW"}
    if cfg.channels_last is None:
        nhwc = saved_nhwc
    if not runs_well(saved, device):
        return dtype, nhwc, (f"The run trained in {saved}, which {device_name(device)} does not "
                             f"run well; it goes on in {precision_name(dtype)}, so it is no longer "
                             "bit-exact with an unbroken run.")
    problems = []
    if cfg.amp is not None and precision_name(dtype) != saved:
        problems.append(f"amp={cfg.amp} means {precision_name(dtype)} on {device}, but the run "
                        f"trained in {saved}")
    if nhwc != saved_nhwc:
        problems.append(f"channels_last={cfg.channels_last} means {layout[nhwc]}, but the run "
                        f"trained in {layout[saved_nhwc]}")
    if problems:
        raise CheckpointError(f"Cannot resume from {path}: " + "; ".join(problems) + ". A run keeps "
                              "one precision and layout from start to end. Fix: leave amp and "
                              "channels_last at None (the checkpoint's are kept), or start a new run.")
    kept = ""
    fresh = use_channels_last(device, None)
    if (precision_name(dtype), fresh) != (saved, saved_nhwc):
        kept = (f"Kept the run's {saved}, {layout[saved_nhwc]} (a new run here would train in "
                f"{precision_name(dtype)}, {layout[fresh]}), so every epoch has the same arithmetic.")
    return None if saved == "float32" else getattr(torch, saved), saved_nhwc, kept


def runs_well(precision: str, device: torch.device) -> bool:
    """Whether ``device`` runs a resumed run's precision natively: bfloat16 needs a GPU of compute
    capability 8.0 (a T4 emulates it, slower than float32) and is a CPU's (AMX, AVX-512 BF16, or
    slower emulation); float16 is a GPU's (a CPU's convolutions have no fast float16 path)."""
    if precision == "bfloat16" and device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if precision == "float16":
        return device.type in ("cuda", "mps")
    return precision == "float32" or device.type == "cpu"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def epoch_line(h: History, i: int) -> str:
    """Epoch ``i``'s progress line (0-based), as printed after it and replayed on resume."""
    plain = f" (no TTA {h.test_acc_plain[i]:5.2f}%)" if i < len(h.test_acc_plain) else ""
    return (f"epoch {i + 1:3d}  train loss {h.train_loss[i]:.3f} acc {h.train_acc[i]:5.2f}%  "
            f"test loss {h.test_loss[i]:.3f} acc {h.test_acc[i]:5.2f}%{plain}  lr {h.lr[i]:.2e}  "
            f"{h.seconds[i]:.1f}s")


def check_loader(loader, name: str) -> None:
    """Raise one TypeError unless ``loader`` is something that yields batches with a length."""
    kind = type(loader).__name__
    if hasattr(loader, "train_images"):
        raise TypeError(f"{name} is an ImageData (a whole data set); fit needs a loader of "
                        "batches. Fix: eva.TensorLoader(data.train_images, data.train_labels, "
                        "data.mean, data.std, 128, train=True) and the same for the test split.")
    if isinstance(loader, torch.utils.data.Dataset) or not hasattr(loader, "__iter__") \
            or not hasattr(loader, "__len__"):
        raise TypeError(f"{name} is a {kind}, not a loader of (images, labels) batches. Fix: wrap "
                        "a dataset in torch.utils.data.DataLoader(dataset, batch_size=128, "
                        "shuffle=True), or use eva.TensorLoader / eva.make_loader.")


def train_epoch(run: Run, loader, cfg: TrainConfig, device: torch.device, epoch: int, *,
                progress: bool = True) -> tuple[float, float, float]:
    """One pass over ``loader``; returns (mean loss, accuracy %, seconds of training)."""
    model = run.model
    model.train()
    for module in run.frozen:
        module.eval()
    steps = len(loader)
    if getattr(loader, "num_workers", 0):
        # Jupyter's progress bar keeps the last epoch's DataLoader iterator in a reference cycle;
        # workers forked now would inherit it and print "Exception ignored ... can only test a
        # child process" when they exit. Collect it first.
        gc.collect()
    losses = torch.zeros(steps, device=device)   # read back every log_every steps, not every step
    correct = torch.zeros(steps, device=device)
    seen = 0
    bar = tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
               leave=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    scale = run.scaler.get_scale()  # the loss scale before each step (1.0 without a scaler)
    t0 = time.perf_counter()
    try:
        for i, (x, y) in enumerate(bar):
            x, y = to_device(x, y, device, run.channels_last)
            if i == 0:
                _check_first_batch(model, x, y, loader)
            with torch.autocast(device.type, dtype=run.amp_dtype or torch.float32,
                                enabled=run.amp_dtype is not None):
                logits = run.forward(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            if cfg.grad_clip:
                run.scaler.unscale_(run.optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            run.scaler.step(run.optimizer)
            run.scaler.update()
            # float16 (a T4): the scaler skipped a step whose gradients overflowed and lowered its
            # scale; the schedule waits for a real step. (Off, get_scale reads nothing back; on,
            # scaler.step has just waited for the GPU anyway.)
            stepped = (after := run.scaler.get_scale()) >= scale
            scale = after
            if run.step_every == "batch" and stepped:
                run.scheduler.step()
            if run.ema is not None:
                run.ema.update()
            losses[i] = loss.detach()
            correct[i] = (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if (i + 1) % cfg.log_every == 0 or i + 1 == steps:
                if run.folder is not None:
                    run.folder.beat()  # at most once a minute
                _check_finite(losses[:i + 1], epoch, run.optimizer,
                              math.log(max(logits.shape[1], 2)))
                if progress:
                    bar.set_postfix(loss=f"{losses[:i + 1].mean().item():.3f}",
                                    acc=f"{100 * correct[:i + 1].sum().item() / seen:.1f}%")
    finally:
        bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return losses.mean().item(), 100.0 * correct.sum().item() / seen, time.perf_counter() - t0


def _check_first_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loader) -> None:
    """Turn a model that does not fit the data into one clear message, before training."""
    if y.ndim != 1 or y.is_floating_point():
        raise TrainingError(f"The labels come as {y.dtype} {tuple(y.shape)}; fit needs class "
                            "numbers, int64 (batch,). Fix: one-hot labels y become y.argmax(1).")
    if y.dtype != torch.int64:
        raise TrainingError(f"The labels come as {y.dtype}; the loss needs int64 class numbers. "
                            "Fix: return labels as int64 from your dataset (torch.as_tensor(y, "
                            "dtype=torch.int64), or int(y) per image).")
    if not x.is_floating_point():
        raise TrainingError(f"The images come as {x.dtype} (raw pixels?); fit needs float images "
                            "(batch, channels, H, W), normalised. Fix: torchvision's ToTensor() + "
                            "Normalize(mean, std) in your dataset, or eva.TensorLoader / "
                            "eva.make_loader.")
    weights = next((p for p in model.parameters() if p.is_floating_point()), None)
    if weights is not None and weights.dtype != x.dtype:
        raise TrainingError(f"The model's weights are {weights.dtype} but the images "
                            f"{x.dtype}. Fix: model.float() (mixed precision is "
                            "TrainConfig(amp=True), not model.half() or model.double()).")
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x[:2])
    except (RuntimeError, ValueError) as exc:
        if "out of memory" in str(exc):
            raise
        raise TrainingError(f"The model cannot take the data's batches of shape {tuple(x.shape)}: "
                            f"{exc}\nFix: build the model for this image size and channel count, "
                            "or resize the images (load_image_folder(..., image_size=...)).") from None
    if not isinstance(out, torch.Tensor):
        raise TrainingError(f"The model returns a {type(out).__name__}; fit needs one tensor of "
                            "logits (batch, classes). Fix: return only the logits from forward(), "
                            "e.g. out[0] of a tuple.")
    if out.ndim != 2:
        raise TrainingError(f"The model outputs shape {tuple(out.shape)}; it needs (batch, classes) "
                            "logits.")
    if out.shape[1] < 2:
        raise TrainingError(f"The model has {out.shape[1]} output: a classifier needs two classes "
                            "or more (with one, every answer is right and the loss is 0). Fix: "
                            "give the data at least two classes, and num_classes=data.num_classes.")
    classes = getattr(loader, "num_classes", None)  # our loaders know the data's classes
    if classes is not None and out.shape[1] != classes:
        raise TrainingError(f"The model has {out.shape[1]} outputs but the data has {classes} "
                            f"classes. Fix: build it with num_classes={classes} "
                            "(num_classes=data.num_classes).")
    labels = getattr(loader, "labels", None)  # both our loaders keep every label: check them all
    check_labels(torch.as_tensor(labels) if labels is not None else y, out.shape[1], "outputs")


def _check_finite(losses: torch.Tensor, epoch: int, optimizer: torch.optim.Optimizer,
                  chance: float) -> None:
    """Raise if a loss is NaN or infinite, or has blown up to DIVERGED times the loss of guessing
    (``chance`` = log(classes)): no run recovers from that, and it would only waste the epochs."""
    bad = ~torch.isfinite(losses) | (losses > DIVERGED * chance)
    if bad.any():
        batch = int(bad.nonzero()[0])
        lr = optimizer.param_groups[0]["lr"]
        raise TrainingError(f"The loss became {losses[batch].item():.4g} in epoch {epoch + 1}, batch "
                            f"{batch + 1} (learning rate {lr:.3g}). Fix: lower the learning rate "
                            "(e.g. by 10x), or clip gradients with TrainConfig(grad_clip=1.0).")
