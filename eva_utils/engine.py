"""Training and evaluation: ``fit``, ``evaluate``, ``TrainConfig``, seeding, devices, checkpoints.

The hot loop never waits on the GPU: per-batch loss and accuracy stay on the device and are read
back a few times an epoch (for the progress bar and the NaN check), not after every step.
"""
from __future__ import annotations

import copy
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .models import count_parameters

SCHEDULES = ("onecycle", "step", "multistep", "plateau", "constant")
OPTIMIZERS = ("sgd", "adam", "adamw")


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to change."""


@dataclass
class TrainConfig:
    """Everything that decides a training run. Units in the comments."""

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
    amp: bool | None = None               # mixed precision; None: on for CUDA (bf16, else fp16)
    channels_last: bool | None = None     # NHWC memory layout; None: on for CUDA
    compile: bool = False                 # torch.compile the model (pays off for long runs on CUDA)
    seed: int = 0                         # seeds python, numpy, torch and the loaders
    checkpoint_dir: str | None = None     # where best.pt and last.pt go (None: no checkpoints)
    log_every: int = 20                   # steps between progress-bar updates (each one syncs once)

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {self.optimizer!r}; choose one of "
                             f"{', '.join(OPTIMIZERS)}.")
        if not 0 < self.pct_start < 1:
            raise ValueError(f"pct_start={self.pct_start}: the fraction of steps spent warming up "
                             "must lie between 0 and 1 (e.g. peak epoch / epochs).")
        if self.epochs < 1 or self.lr <= 0:
            raise ValueError(f"epochs ({self.epochs}) and lr ({self.lr}) must be positive.")
        self.betas, self.milestones = tuple(self.betas), tuple(self.milestones)


@dataclass
class History:
    """Per-epoch record of a run; lists of floats, one entry per finished epoch."""

    train_loss: list = field(default_factory=list)   # mean cross-entropy over the epoch's batches
    train_acc: list = field(default_factory=list)    # percent, on augmented training batches
    test_loss: list = field(default_factory=list)
    test_acc: list = field(default_factory=list)     # percent
    lr: list = field(default_factory=list)           # learning rate at the start of the epoch
    seconds: list = field(default_factory=list)      # wall time of the epoch's training steps

    def __len__(self) -> int:
        return len(self.test_acc)

    @property
    def train_seconds(self) -> float:
        return float(sum(self.seconds))


class EMA:
    """Exponential moving average of a model's weights and buffers (BatchNorm statistics too).

    Updated in place with one fused kernel per step and no host synchronisation (torch's
    AveragedModel checks a counter on the host every step). Create it after the model is on its device.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        # state_dict() tensors share storage with the live ones, so these pairs stay current.
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values()))
        self._floats = [p for p in pairs if p[0].is_floating_point()]
        self._others = [p for p in pairs if not p[0].is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_([e for e, _ in self._floats], [m for _, m in self._floats], 1 - self.decay)
        for e, m in self._others:
            e.copy_(m)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every GPU). Loader workers: see data.seed_worker."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds CUDA and MPS


def get_device(preferred: str | torch.device | None = None) -> torch.device:
    """``preferred`` if given, else CUDA, else Apple's MPS, else CPU."""
    if preferred is not None:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_name(device: torch.device | str) -> str:
    """A readable name for reports, e.g. "NVIDIA H100 80GB HBM3" or "cpu"."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _amp_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """bf16 where the GPU has it (no loss scaling needed), else fp16; None means full fp32."""
    if device.type != "cuda" or amp is False:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """The LR schedule and how often it steps: "batch", "epoch" or "plateau" (epoch, on test loss)."""
    s = cfg.schedule
    if s == "onecycle":
        total = cfg.epochs * steps_per_epoch
        if total < 4:
            raise ValueError(f"A one-cycle schedule needs at least 4 steps; this run has {total}. "
                             "Fix: more epochs, more images or a smaller batch, or another schedule.")
        # OneCycleLR divides by each phase's length in steps: keep both at least 1 step long.
        pct_start = min(max(cfg.pct_start, 2 / total), 1 - 2 / total)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total,
            pct_start=pct_start, div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor,
            anneal_strategy=cfg.anneal_strategy, cycle_momentum=False), "batch"
    if s == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size, cfg.gamma), "epoch"
    if s == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.milestones), cfg.gamma), "epoch"
    if s == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=cfg.gamma,
                                                          patience=cfg.patience), "plateau"
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), "epoch"  # constant


def lr_schedule(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The learning rate at every training step that ``cfg`` gives (plateau: as if never reduced)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched, every = build_scheduler(opt, cfg, steps_per_epoch)
    lrs = []
    for step in range(cfg.epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if every == "batch":
            sched.step()
        elif every == "epoch" and (step + 1) % steps_per_epoch == 0:
            sched.step()
    return lrs


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device | str | None = None, *,
             tta: bool = False, amp: bool | None = None, channels_last: bool | None = None
             ) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (percent) of ``model`` over ``loader``.

    ``tta`` averages the logits of each image and its left-right mirror. The model's train/eval mode
    is restored afterwards.
    """
    device = torch.device(device) if device else next(model.parameters()).device
    amp_dtype = _amp_dtype(device, amp)
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for x, y in loader:
        x, y = _to_device(x, y, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(x)
            if tta:
                logits = (logits + model(x.flip(3))) / 2
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        n += len(y)
    model.train(was_training)
    if n == 0:
        raise ValueError("The evaluation loader yielded no batches; check the test split is not empty.")
    return loss_sum.item() / n, 100.0 * correct.item() / n


def _check_first_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Turn a shape mismatch into one clear message (runs once, on the first batch)."""
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            out = model(x[:2])
            model.train(was)
    except RuntimeError as exc:
        if "out of memory" in str(exc):
            raise
        raise TrainingError(f"The model cannot take the data's batches of shape {tuple(x.shape)}: "
                            f"{exc}\nFix: give the model 3-channel 32x32 images, or change its first "
                            "layer to match the data.") from None
    classes = int(y.max()) + 1
    if out.ndim != 2 or out.shape[1] < classes:
        raise TrainingError(f"The model outputs shape {tuple(out.shape)} but the labels go up to "
                            f"{classes - 1}; it needs (batch, {classes}) logits. Fix: set the model's "
                            "num_classes / final layer to the number of classes.")


def _rng_state() -> dict:
    """Every RNG as tensors and plain numbers, so checkpoints load with ``weights_only=True``."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj: dict, path: Path) -> None:
    """Write then rename, so an interrupted save never leaves a half-written checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """A checkpoint written by ``fit`` (tensors and plain values only: ``weights_only=True``)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def fit(model: nn.Module, train_loader, test_loader, cfg: TrainConfig | None = None, *,
        device: str | torch.device | None = None, resume: str | os.PathLike | None = None,
        progress: bool = True) -> History:
    """Train ``model`` for ``cfg.epochs`` epochs, testing after each; returns the History.

    Loaders yield (images (B, 3, H, W) float, labels (B,) int64): ``data.GpuLoader`` or
    ``data.make_loader``. With ``cfg.checkpoint_dir`` it writes ``last.pt`` after every epoch and
    ``best.pt`` at each new best test accuracy; ``resume=".../last.pt"`` continues such a run at the
    next epoch with its history, optimizer, schedule and random state. With ``cfg.ema_decay`` the
    weight average is what gets tested, and copied into ``model`` at the end.
    """
    cfg = cfg or TrainConfig()
    device = get_device(device)
    steps = len(train_loader)
    if steps == 0:
        raise TrainingError("The training loader yields no batches: the batch size is larger than "
                            "the training set and incomplete batches are dropped. Fix: lower the "
                            "batch size or use more images.")
    seed_everything(cfg.seed)
    amp_dtype = _amp_dtype(device, cfg.amp)
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = build_optimizer(model, cfg)
    scheduler, sched_every = build_scheduler(optimizer, cfg, steps)
    # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 and fp32 do not.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay else None
    history, start, best = History(), 0, -1.0
    if resume is not None:
        ckpt = load_checkpoint(resume, map_location=device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.module.load_state_dict(ckpt["ema"])
        history = History(**ckpt["history"])
        start, best = len(history), max(history.test_acc, default=-1.0)
        _set_rng_state(ckpt["rng"])
    step_fn = torch.compile(model) if cfg.compile else model
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    if ckpt_dir:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    tested = ema.module if ema is not None else model

    for epoch in range(start, cfg.epochs):
        for loader in (train_loader, test_loader):  # each epoch's shuffle/augmentation from its seed
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(cfg.seed * 100_003 + epoch)
        epoch_lr = optimizer.param_groups[0]["lr"]
        try:
            train_loss, train_acc, seconds = _train_epoch(
                model, step_fn, train_loader, optimizer, scheduler if sched_every == "batch" else None,
                scaler, ema, cfg, device, amp_dtype, channels_last, epoch,
                check_shapes=epoch == start, progress=progress)
            test_loss, test_acc = evaluate(tested, test_loader, device, tta=cfg.tta, amp=cfg.amp,
                                           channels_last=channels_last)
        except torch.OutOfMemoryError:
            raise TrainingError(
                f"{device} ran out of memory in epoch {epoch + 1}. Fix: lower the batch size, turn "
                "on mixed precision (cfg.amp=True), or free memory (restart the kernel).") from None
        if sched_every == "epoch":
            scheduler.step()
        elif sched_every == "plateau":
            scheduler.step(test_loss)
        history.train_loss.append(train_loss)
        history.train_acc.append(train_acc)
        history.test_loss.append(test_loss)
        history.test_acc.append(test_acc)
        history.lr.append(epoch_lr)
        history.seconds.append(seconds)
        if progress:
            tqdm.write(f"epoch {epoch + 1:3d}  train loss {train_loss:.3f} acc {train_acc:5.2f}%  "
                       f"test loss {test_loss:.3f} acc {test_acc:5.2f}%  lr {epoch_lr:.2e}  "
                       f"{seconds:.1f}s")
        if ckpt_dir:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                     "ema": ema.module.state_dict() if ema is not None else None,
                     "history": asdict(history), "config": asdict(cfg), "rng": _rng_state(),
                     "epoch": epoch + 1}
            _atomic_save(state, ckpt_dir / "last.pt")
            if test_acc > best:
                _atomic_save(state, ckpt_dir / "best.pt")
        best = max(best, test_acc)
    if ema is not None:  # leave the averaged weights in the caller's model
        model.load_state_dict(ema.module.state_dict())
    return history


def _train_epoch(model, step_fn, loader, optimizer, batch_scheduler, scaler, ema, cfg, device,
                 amp_dtype, channels_last, epoch, *, check_shapes, progress):
    """One pass over ``loader``; returns (mean loss, accuracy %, seconds of training).

    Per-batch loss and hits are written into device tensors and read back once every
    ``cfg.log_every`` steps (NaN check, progress bar), so the GPU is never waited on per step.
    """
    model.train()
    steps = len(loader)
    losses = torch.zeros(steps, device=device)
    correct = torch.zeros(steps, device=device)
    seen = 0
    bar = tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
               leave=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    try:
        for i, (x, y) in enumerate(bar):
            x, y = _to_device(x, y, device, channels_last)
            if check_shapes and i == 0:
                _check_first_batch(model, x, y)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                logits = step_fn(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if batch_scheduler is not None:
                batch_scheduler.step()
            if ema is not None:
                ema.update()
            losses[i] = loss.detach()
            correct[i] = (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if (i + 1) % cfg.log_every == 0 or i + 1 == steps:
                _check_finite(losses[:i + 1], epoch, optimizer)
                if progress:
                    bar.set_postfix(loss=f"{losses[:i + 1].mean().item():.3f}",
                                    acc=f"{100 * correct[:i + 1].sum().item() / seen:.1f}%")
    finally:
        bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    return losses.mean().item(), 100.0 * correct.sum().item() / seen, seconds


def _check_finite(losses: torch.Tensor, epoch: int, optimizer: torch.optim.Optimizer) -> None:
    bad = ~torch.isfinite(losses)
    if bad.any():
        batch = int(bad.nonzero()[0])
        lr = optimizer.param_groups[0]["lr"]
        raise TrainingError(f"The loss became {losses[batch].item()} in epoch {epoch + 1}, batch "
                            f"{batch + 1} (learning rate {lr:.3g}). Fix: lower the learning rate "
                            "(e.g. by 10x), or clip gradients with TrainConfig(grad_clip=1.0).")


@dataclass
class Predictions:
    """A model's answers on a loader: images kept as the loader gave them (normalised)."""

    images: torch.Tensor       # float (N, 3, H, W), normalised, on the CPU
    labels: torch.Tensor       # int64 (N,) true classes
    preds: torch.Tensor        # int64 (N,) predicted classes
    confidence: torch.Tensor   # float (N,) softmax probability of the predicted class, in [0, 1]


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device | str | None = None) -> Predictions:
    """Run ``model`` (in eval mode, restored afterwards) over an unshuffled ``loader``."""
    device = torch.device(device) if device else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = {"images": [], "labels": [], "preds": [], "confidence": []}
    for x, y in loader:
        probs = model(x.to(device)).float().softmax(1)
        conf, pred = probs.max(1)
        for key, value in zip(out, (x, y, pred, conf)):
            out[key].append(value.cpu())
    model.train(was_training)
    return Predictions(**{k: torch.cat(v) for k, v in out.items()})


def misclassified(p: Predictions) -> Predictions:
    """The wrong answers of ``p``, most confident first (may be empty)."""
    wrong = (p.preds != p.labels).nonzero().flatten()
    wrong = wrong[p.confidence[wrong].argsort(descending=True)]
    return Predictions(p.images[wrong], p.labels[wrong], p.preds[wrong], p.confidence[wrong])


def confusion_matrix(p: Predictions, num_classes: int = 10) -> torch.Tensor:
    """int64 (num_classes, num_classes): row = true class, column = predicted class."""
    return torch.bincount(p.labels * num_classes + p.preds,
                          minlength=num_classes ** 2).view(num_classes, num_classes)


def run_record(history: History, model: nn.Module, device, **labels) -> dict:
    """The numbers a results table needs from one run, with ``labels`` (notebook, seed, ...) first."""
    return {**labels, "parameters": count_parameters(model),
            "test_acc": history.test_acc[-1], "best_test_acc": max(history.test_acc),
            "train_seconds": round(history.train_seconds, 2),
            "seconds_per_epoch": [round(s, 3) for s in history.seconds],
            "device": device_name(device)}


def save_json(path: str | os.PathLike | None, record: dict) -> None:
    """Write ``record`` as JSON to ``path`` (folders created); nothing when ``path`` is None."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(record, indent=1))
