"""``Run``: the live state of one training run (model, optimizer, schedule, precision, scaler,
weight average, history), what an epoch updates and what a checkpoint saves and restores."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .checkpoint import (FORMAT, CheckpointError, model_identity, rng_state, saved_precision,
                         set_rng_state)
from .run_folder import RunFolder
from .config import TrainConfig
from .ema import EMA
from .history import History
from .precision import Precision
from .runtime import device_name


@dataclass(kw_only=True)
class Run:
    """The live state of one training run: what an epoch updates and a checkpoint saves."""

    model: nn.Module
    forward: nn.Module             # the model, or its DDP / torch.compile'd wrapper
    optimizer: torch.optim.Optimizer
    scheduler: object
    step_every: str                # when the scheduler steps: a key of schedule.STEP_EVERY
    precision: Precision           # autocast type and memory layout, for the whole run
    scaler: torch.amp.GradScaler   # on for float16 only
    ema: EMA | None
    device: torch.device
    history: History
    # Submodules the caller put in eval mode inside a model in training mode (a frozen pretrained
    # backbone's batch norm): they stay in eval mode while the rest trains.
    frozen: list = field(default_factory=list)
    folder: RunFolder | None = None  # the checkpoint folder, whose lock the epochs keep alive
    loss_scale: float = 1.0          # the scaler's scale before the next step (1.0 without one)

    @property
    def tested_model(self) -> nn.Module:
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
                "steps_per_epoch": len(train_loader), "data": loader_fingerprint(train_loader),
                "inputs": model_inputs(train_loader), "precision": self.precision.name,
                "channels_last": self.precision.channels_last, "format": FORMAT}

    def restore(self, ckpt: dict) -> None:
        try:  # first what a damaged file gets wrong with torch's or dataclasses' words
            history = History(**ckpt["history"])
        except TypeError as exc:
            raise CheckpointError(f"The checkpoint's history is damaged ({exc}). Fix: resume from "
                                  "best.pt, or delete the checkpoint folder to start afresh.") from None
        before = rng_state()
        try:
            set_rng_state(ckpt["rng"])
        except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as exc:
            set_rng_state(before)  # as it was
            raise CheckpointError(f"The checkpoint's random state is damaged ({type(exc).__name__}: "
                                  f"{str(exc)[:120]}). Fix: resume from best.pt, or delete the "
                                  "checkpoint folder to start afresh.") from None
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.precision.name == saved_precision(ckpt)[0] == "float16":  # float16 to float16 only: a
            self.scaler.load_state_dict(ckpt["scaler"])  # run begun in another has no scale yet
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
        self.history = history

    def step_schedule(self, test_loss: float) -> None:
        """The scheduler's step at an epoch's end (per-batch schedules step in ``train_step``)."""
        if self.step_every == "epoch":
            self.scheduler.step()
        elif self.step_every == "plateau":
            self.scheduler.step(test_loss)

    def record(self, trained: tuple, tested: tuple, lr: float, tta: bool) -> bool:
        """Append an epoch: ``trained`` (loss, accuracy %, seconds) and ``tested`` (loss, accuracy
        %, accuracy % without TTA) at learning rate ``lr``. True if it is the best epoch yet."""
        (train_loss, train_acc, seconds), (test_loss, test_acc, plain_acc) = trained, tested
        best = test_acc > max(self.history.test_acc, default=-1.0)
        self.history.append(train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                            test_acc=test_acc, lr=lr, seconds=seconds,
                            devices=device_name(self.device), precision=self.precision.name,
                            layout=self.precision.layout)
        if tta:
            self.history.append(test_acc_plain=plain_acc)
        return best


def model_inputs(loader) -> dict | None:
    """What a trained model takes, from one of our training loaders: class names, the data's mean
    and std ([0, 1] scale) and the image size (H, W); None for a DataLoader eva did not build."""
    about = loader_fingerprint(loader)
    if about is None or not hasattr(loader, "mean"):
        return None
    return {"classes": about["classes"], "mean": [float(m) for m in loader.mean],
            "std": [float(s) for s in loader.std], "image_size": about["image_size"]}


def loader_fingerprint(loader) -> dict | None:
    """What our loaders know of their data (content hashes, classes, augmentation, batch, seed),
    kept in checkpoints so a resume with other data is refused; None for other loaders."""
    return getattr(loader, "fingerprint", None)
