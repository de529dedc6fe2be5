"""``Run``: the live state of one training run (model, optimizer, schedule, precision, scaler,
weight average, history), what an epoch updates and what a checkpoint saves and restores."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from tqdm.auto import tqdm

from . import distributed
from .checkpoint import (FORMAT, CheckpointError, check_resumable, load_checkpoint, model_identity,
                         rng_state, saved_precision, set_rng_state)
from ..config import TrainConfig
from .ema import EMA
from .history import History
from ..inference import scores
from .precision import Precision
from .run_folder import RunFolder
from .runtime import device_name, seed_everything
from ..schedule import build_optimizer, build_scheduler


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

    def evaluate(self, loader, cfg: TrainConfig) -> tuple[float, float, float]:
        """(mean test loss, accuracy %, accuracy % without TTA) of the tested model (the weight
        average with EMA), in the run's precision and layout, over every process's share of
        ``loader``."""
        device = self.device
        return scores(self.tested_model, loader, device, tta=cfg.tta,
                      amp=self.precision.dtype or False, channels_last=self.precision.channels_last,
                      total=lambda c: distributed.total(c, device))

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


def checkpoint_folder(cfg: TrainConfig) -> RunFolder | None:
    """The folder that keeps the run's checkpoints, held while the run trains (``with`` it); None
    without ``cfg.checkpoint_dir`` and in torchrun's other processes, which never write."""
    return RunFolder(cfg.checkpoint_dir) if cfg.checkpoint_dir and distributed.is_main() else None


def start_run(model: nn.Module, train_loader, cfg: TrainConfig, device: torch.device, resume,
              folder: RunFolder | None, progress: bool) -> Run:
    """Everything an epoch needs, on ``device``: a new run, or the one ``resume`` continues
    (exactly: weights, optimizer, schedule, history and random state)."""
    if folder is not None:
        folder.check_new_run(resume)
    # Under torchrun rank 0 decides whether the run resumes and sends its checkpoint to every
    # process: a node-local checkpoint folder has it on one node only.
    ckpt = load_checkpoint(resume) if resume is not None and distributed.is_main() else None
    ckpt = distributed.from_main(ckpt, device)
    precision, kept = Precision.for_run(device, cfg, ckpt, resume)
    seed_everything(cfg.seed)
    model.to(device, memory_format=torch.channels_last if precision.channels_last
             else torch.preserve_format)
    precision.remember(model)  # what evaluate and predict answer in afterwards
    optimizer = build_optimizer(model, cfg)
    scheduler, step_every = build_scheduler(optimizer, cfg, len(train_loader))
    run = Run(model=model, forward=model, optimizer=optimizer, scheduler=scheduler,
              step_every=step_every, precision=precision, scaler=precision.scaler(device),
              ema=EMA(model, cfg.ema_decay) if cfg.ema_decay else None, device=device,
              history=History(), folder=folder,
              frozen=[m for m in model.modules() if not m.training] if model.training else [])
    if ckpt is not None:
        check_resumable(ckpt, resume, model, asdict(cfg), len(train_loader),
                        loader_fingerprint(train_loader))
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
                tqdm.write(run.history.line(i))
            if kept:
                tqdm.write(kept)
    # DDP under torchrun, wrapped after the restore: its first broadcast then starts every process
    # from the same weights. The model itself otherwise.
    forward = distributed.wrap(model, device)
    run.forward = torch.compile(forward) if cfg.compile else forward
    if progress and len(run.history) < cfg.epochs:
        tqdm.write(f"Training on {device_name(device)} in {precision}.")
    return run
