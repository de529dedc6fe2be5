"""eva's models, configs and loaders under PyTorch Lightning: ``EvaModule`` does what ``fit`` does
with a ``TrainConfig`` (optimizer, schedule stepped as often, label smoothing, mirror TTA when
validating), ``EvaDataModule`` feeds our loaders, reshuffled as ``fit`` reshuffles them:
    trainer = L.Trainer(max_epochs=cfg.epochs, precision=trainer_precision(cfg),
                        gradient_clip_val=cfg.grad_clip, deterministic=True)
    trainer.fit(EvaModule(model, cfg), EvaDataModule(train, test))

Checkpoints, precision, clipping, several GPUs and logging are Lightning's own; ``ema_decay`` and
``compile`` are ``fit``'s alone (docs/scaling.md). Optional extra: ``pip install "eva-utils[lightning]"``.
"""
from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from .machinery.checkpoint import CheckpointError, check_resumable, model_identity
from .machinery.guards import check_same_classes, check_trainable
from .machinery.precision import Precision
from .machinery.runtime import get_device
from .schedule import build_optimizer, build_scheduler
from .config import TrainConfig

try:
    import lightning as L
except ImportError:
    raise ImportError("eva_utils.lightning needs PyTorch Lightning, which is not installed. Fix: "
                      'pip install "eva-utils[lightning]" (or: pip install lightning).') from None


def trainer_precision(cfg: TrainConfig, device: str | torch.device | None = None) -> str:
    """``Trainer(precision=...)`` for ``cfg.amp`` on ``device`` (default: the best available), by
    ``fit``'s rule: bf16 on GPUs and CPUs that have it, fp16 on a T4, else fp32."""
    dtype = Precision.choose(get_device(device), cfg.amp).dtype
    return {torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed"}.get(dtype, "32-true")


class EvaModule(L.LightningModule):
    """``model`` trained as ``fit`` trains it with ``cfg``. Logs train_loss, train_acc (percent),
    val_loss and val_acc (with ``cfg.tta``: each image averaged with its mirror, as ``fit`` tests)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch nn.Module, e.g. eva.CustomResNet(num_classes=10)"
                            f"; got {type(model).__name__} {model!r:.60}.")
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"cfg must be an eva.TrainConfig; got {type(cfg).__name__}.")
        if cfg.ema_decay or cfg.compile:
            raise ValueError("TrainConfig(ema_decay=..., compile=True) are eva.fit's own. Fix: "
                             "leave them unset under Lightning (its WeightAveraging callback and "
                             "torch.compile(module) do the same there).")
        self.model, self.cfg = model, cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def setup(self, stage: str) -> None:
        # The memory layout fit would choose on the device it will train on (NHWC on CUDA and the
        # CPU), set before the strategy wraps the model in DDP, whose gradient buckets take the
        # weights' layout as they are then.
        device = self.trainer.strategy.root_device
        self.nhwc = Precision.choose(device, channels_last=self.cfg.channels_last).channels_last
        if self.nhwc:
            self.model.to(memory_format=torch.channels_last)

    def on_fit_start(self) -> None:
        # What evaluate and predict answer in afterwards, as after fit: the Trainer's arithmetic.
        mixed = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
        Precision(mixed.get(str(self.trainer.precision)), self.nhwc).remember(self.model)

    def _check_the_trainer(self) -> None:
        """Refuse, naming each, what Lightning would silently do otherwise than the TrainConfig
        says: a setting changed after the module was built, clipping or precision the Trainer does
        not apply, or a model whose outputs are not the data's classes (fit refuses those too)."""
        cfg, trainer = self.cfg, self.trainer
        cfg.validate()  # a field changed after EvaModule(...) (lr=-1), checked again as fit does
        problems = []
        if cfg.ema_decay or cfg.compile:
            problems.append("TrainConfig(ema_decay=..., compile=True) are fit's own (Lightning's "
                            "WeightAveraging callback and torch.compile(module) do the same here)")
        clip = trainer.gradient_clip_val or None
        if (cfg.grad_clip or None) != clip:
            problems.append(f"TrainConfig(grad_clip={cfg.grad_clip}) but Trainer(gradient_clip_val="
                            f"{clip}): Lightning clips only as its Trainer says. Fix: "
                            "Trainer(gradient_clip_val=cfg.grad_clip)")
        have, want = str(trainer.precision), trainer_precision(cfg, self.device)
        if have not in ("32-true", "16-mixed", "bf16-mixed"):
            problems.append(f"Trainer(precision={have!r}): eva trains float32 weights, with mixed "
                            "precision at most. Fix: Trainer(precision=trainer_precision(cfg))")
        elif cfg.amp is not None and have != want:
            problems.append(f"TrainConfig(amp={cfg.amp}) means {want!r} here, but Trainer(precision="
                            f"{have!r}). Fix: Trainer(precision=trainer_precision(cfg))")
        if cfg.schedule == "plateau":  # fit steps it on the test loss after every epoch
            source = getattr(getattr(trainer.fit_loop.epoch_loop, "val_loop", None),
                             "_data_source", None)  # Lightning's own record of a val loader
            if ((source is not None and not source.is_defined()) or trainer.limit_val_batches == 0
                    or trainer.check_val_every_n_epoch != 1):
                problems.append("TrainConfig(schedule='plateau') lowers the rate when the test loss "
                                "stops falling, but this Trainer does not validate after every "
                                "epoch (no test loader, limit_val_batches=0 or "
                                "check_val_every_n_epoch other than 1). Fix: "
                                "trainer.fit(module, EvaDataModule(train_loader, test_loader)) with "
                                "the Trainer's validation defaults, or another schedule")
        data = trainer.datamodule
        loader = getattr(data, "train_loader", None)
        size = (getattr(loader, "fingerprint", None) or {}).get("image_size")
        classes = getattr(loader, "num_classes", None)
        if size and classes and not problems:
            with torch.no_grad():
                outputs = self.model.eval()(torch.zeros(1, 3, *size, device=self.device)).shape[1]
            self.model.train()
            if outputs != classes:
                problems.append(f"the model has {outputs} outputs but the data has {classes} "
                                f"classes. Fix: build it with num_classes={classes}")
        if problems:
            raise ValueError("EvaModule cannot train as its TrainConfig says:\n  "
                             + "\n  ".join(problems))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # What a resume checks: the model that trained and the config it trained with.
        name, args = model_identity(self.model)
        checkpoint["eva"] = {"model_class": name, "model_args": args, "config": asdict(self.cfg)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Before Lightning loads the weights: refuse, naming the differences, a checkpoint of
        another model (a torch size-mismatch traceback otherwise) and, when a Trainer resumes it
        (``ckpt_path=``), one trained with another TrainConfig (Lightning would go on with the old
        optimizer's learning rate under the new config's other settings)."""
        path = getattr(self._trainer, "ckpt_path", None) or "the checkpoint"
        want = {k: v.shape for k, v in self.state_dict().items()}
        have = {k: getattr(v, "shape", None) for k, v in checkpoint.get("state_dict", {}).items()}
        apart = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        if apart:
            raise ValueError(f"{path} holds the weights of another model: {len(apart)} of them "
                             f"differ from this {type(self.model).__name__}'s in name or shape "
                             f"({', '.join(apart[:3])}{', ...' if len(apart) > 3 else ''}). Fix: "
                             "build the model that trained it, or start without ckpt_path=.")
        saved = checkpoint.get("eva")
        if saved is not None and self._trainer is not None:  # resuming, not load_from_checkpoint
            try:
                check_resumable({**saved, "steps_per_epoch": 0, "epoch": checkpoint["epoch"]}, path,
                                self.model, asdict(self.cfg), 0, anew="without ckpt_path=")
            except CheckpointError as exc:
                raise ValueError(str(exc)) from None

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        nhwc = getattr(self, "nhwc", False)
        return x.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)

    def on_train_epoch_start(self) -> None:
        # Each epoch's shuffle and augmentation, as fit draws them (our loaders' set_epoch).
        data = self.trainer.datamodule
        if data is not None:
            data.set_epoch(self.current_epoch)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.model(self._layout(x))
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train_acc", 100.0 * (logits.argmax(1) == y).float().mean(), on_step=False,
                 on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        x = self._layout(x)
        logits = self.model(x)
        if self.cfg.tta:
            logits = (logits + self.model(x.flip(3))) / 2
        # Averaged over every process (sync_dist): a plateau schedule then steps alike on all.
        self.log("val_loss", F.cross_entropy(logits.float(), y), prog_bar=True, batch_size=len(y),
                 sync_dist=True)
        self.log("val_acc", 100.0 * (logits.argmax(1) == y).float().mean(), prog_bar=True,
                 batch_size=len(y), sync_dist=True)

    def configure_optimizers(self):
        self._check_the_trainer()  # before the optimizer is built from the config
        check_trainable(self.model)  # torch's "empty parameter list" otherwise
        epochs = self.trainer.max_epochs
        if self.cfg.schedule == "onecycle" and epochs != self.cfg.epochs:
            raise ValueError(f"Trainer(max_epochs={epochs}) but TrainConfig(epochs={self.cfg.epochs}"
                             "): a one-cycle schedule's shape depends on the number of epochs. Fix: "
                             "Trainer(max_epochs=cfg.epochs).")
        optimizer = build_optimizer(self.model, self.cfg)
        steps = self.trainer.estimated_stepping_batches // max(1, epochs)
        scheduler, every = build_scheduler(optimizer, self.cfg, steps)
        stepping = {"scheduler": scheduler, "interval": "step" if every == "batch" else "epoch"}
        if every == "plateau":  # reduced when the test loss stops falling, as in fit
            stepping["monitor"] = "val_loss"
        return {"optimizer": optimizer, "lr_scheduler": stepping}


class EvaDataModule(L.LightningDataModule):
    """Our training and test loaders (``TensorLoader`` or ``make_loader``) as Lightning asks for
    them. ``set_epoch`` is called by ``EvaModule`` before each training epoch."""

    def __init__(self, train_loader, test_loader):
        super().__init__()
        if getattr(train_loader, "train", None) is not True or getattr(test_loader, "train",
                                                                        None) is not False:
            raise ValueError("EvaDataModule(train_loader, test_loader) takes a loader built with "
                             "train=True, then one built with train=False (eva.TensorLoader or "
                             "eva.make_loader).")
        check_same_classes(train_loader, test_loader)  # as fit refuses them
        self.train_loader, self.test_loader = train_loader, test_loader

    def set_epoch(self, epoch: int) -> None:
        for loader in (self.train_loader, self.test_loader):
            loader.set_epoch(epoch)

    def train_dataloader(self):
        return self.train_loader

    def val_dataloader(self):
        return self.test_loader
