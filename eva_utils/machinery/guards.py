"""What ``fit`` checks, so that a mistake costs one clear message instead of an epoch or a traceback
from deep inside torch: its arguments (before anything is spent), the first batch against the model,
the losses as they come (NaN, divergence), the test loss, running out of memory, and TTA that hurt.
Checks only: none of them changes anything."""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .budget import TimeBudget
from .checkpoint import CheckpointError
from ..config import TrainConfig, number
from ..data import check_labels
from .history import History
from .runtime import TrainingError, check_weights, eval_mode, get_device

DIVERGED = 100  # a loss this many times that of guessing (log classes) means training diverged


def check_arguments(model, train_loader, test_loader, cfg, device, resume, time_budget, progress):
    """fit's arguments checked before anything is spent, changing nothing: (config, device, the
    checkpoint path to resume from or None). Raises one clear error for the first thing wrong."""
    if not isinstance(progress, bool):
        raise TypeError(f"progress={progress!r}: give True or False.")
    cfg = cfg or TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be an eva.TrainConfig; got {type(cfg).__name__}.")
    cfg.validate()
    device = get_device(device)
    check_loader(train_loader, "train_loader")
    check_loader(test_loader, "test_loader")
    check_test_loader(test_loader, "test_loader", TrainingError)
    check_same_classes(train_loader, test_loader)
    if getattr(train_loader, "train", True) is False:
        warnings.warn("train_loader was built with train=False: it is neither shuffled nor "
                      "augmented, so every epoch sees the same batches in the same order. Fix: "
                      "build it with train=True.", stacklevel=3)
    check_weights(model)
    check_trainable(model)
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
    if time_budget is not None and not isinstance(time_budget, TimeBudget) \
            and not (number(time_budget) and time_budget > 0):
        raise ValueError(f"time_budget={time_budget!r}: give seconds, a number > 0, or None.")
    if resume is True:
        last = ckpt_dir / "last.pt"
        if last.is_symlink() and not last.exists():  # a drive not mounted yet, or a loop
            raise CheckpointError(f"{last} is a link to {os.readlink(last)}, which does not lead "
                                  "to a file: is the drive it points into mounted? Fix: mount it "
                                  "(in Colab: drive.mount(...)) and run again, or remove the link.")
        resume = last if last.exists() else None
    elif resume is False:  # e.g. resume=CHECKPOINT_DIR is not None, with no folder given
        resume = None
    elif resume is not None and not isinstance(resume, (str, os.PathLike)):
        raise TypeError(f"resume={resume!r}: give True (this run's checkpoint_dir), False or "
                        "None (a new run), or the path of a last.pt or best.pt.")
    return cfg, device, resume


def out_of_memory(device: torch.device, epoch: int) -> TrainingError:
    """Running out of memory, as one message that says what to change."""
    return TrainingError(f"{device} ran out of memory in epoch {epoch + 1}. Fix: lower the batch "
                         "size and run again (the memory is freed), or turn on mixed precision "
                         "(cfg.amp=True).")


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


def check_test_loader(loader, name: str, error: type[Exception] = ValueError) -> None:
    """One ``error`` if ``loader`` was built to train (augmenting, reshuffling, dropping a batch)."""
    if getattr(loader, "train", False) is True:
        raise error(f"{name} was built with train=True: it augments and reshuffles, and drops its "
                    "last partial batch, so its scores would change every call and images would "
                    "be missing. Fix: build it with train=False.")


def check_same_classes(train_loader, test_loader) -> None:
    """One TrainingError if the loaders name different classes (where both name them)."""
    names = [(getattr(loader, "fingerprint", None) or {}).get("classes")
             for loader in (train_loader, test_loader)]
    if all(names) and names[0] != names[1]:
        raise TrainingError(f"The test loader's classes ({', '.join(names[1])}) are not the "
                            f"training loader's ({', '.join(names[0])}): its images would be "
                            "scored against other names. Fix: build both loaders from the same "
                            "data, with classes=data.classes.")


def check_trainable(model: nn.Module) -> None:
    """One TrainingError if no parameter of ``model`` would learn."""
    if not any(p.requires_grad for p in model.parameters()):
        raise TrainingError("Every parameter of the model is frozen (requires_grad=False): there "
                            "is nothing to train. Fix: unfreeze what should learn, e.g. "
                            "model.fc.requires_grad_(True) for a new head on a frozen backbone.")


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


def check_finite_images(x: torch.Tensor, error: type[Exception]) -> None:
    """Raise ``error`` if a batch of images holds NaN or infinite values: every loss would then
    be NaN, whatever the learning rate (one read-back; for a first batch)."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise error(f"The first training batch holds {bad:,} NaN or infinite pixel values (of "
                    f"{x.numel():,}), so every loss would be NaN whatever the learning rate. Fix: "
                    "check the images and their normalisation (a std of 0 in a channel divides by "
                    "zero).")


def check_first_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loader) -> None:
    """Turn a model that does not fit the data into one clear message, before training."""
    if y.ndim != 1 or y.is_floating_point():
        raise TrainingError(f"The labels come as {y.dtype} {tuple(y.shape)}; fit needs class "
                            "numbers, int64 (batch,). Fix: one-hot labels y become y.argmax(1).")
    if y.dtype != torch.int64:
        raise TrainingError(f"The labels come as {y.dtype}; the loss needs int64 class numbers. "
                            "Fix: return labels as int64 from your dataset (torch.as_tensor(y, "
                            "dtype=torch.int64), or int(y) per image).")
    check_finite_images(x, TrainingError)
    if not x.is_floating_point():
        raise TrainingError(f"The images come as {x.dtype} (raw pixels?); fit needs float images "
                            "(batch, channels, H, W), normalised. Fix: torchvision's ToTensor() + "
                            "Normalize(mean, std) in your dataset, or eva.TensorLoader / "
                            "eva.make_loader.")
    if x.dtype != torch.float32:  # the weights are float32 (check_weights, at the start)
        raise TrainingError(f"The images come as {x.dtype}; the model's weights are float32. Fix: "
                            "return float32 images from your dataset (x.float()); mixed precision "
                            "is TrainConfig(amp=True).")
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


def check_finite(losses: torch.Tensor, epoch: int, rates: list[float], chance: float) -> None:
    """Raise if a loss is NaN or infinite, or has blown up to DIVERGED times the loss of guessing
    (``chance`` = log(classes)): no run recovers from that, and it would only waste the epochs.
    ``rates``: the learning rate each of these steps used."""
    bad = ~torch.isfinite(losses) | (losses > DIVERGED * chance)
    if bad.any():
        batch = int(bad.nonzero()[0])
        lr = rates[batch]
        raise TrainingError(f"The loss became {losses[batch].item():.4g} in epoch {epoch + 1}, batch "
                            f"{batch + 1} (learning rate {lr:.3g}). Fix: lower the learning rate "
                            "(e.g. by 10x), or clip gradients with TrainConfig(grad_clip=1.0).")


def check_sweep(model: nn.Module, loader, optimizer, start_lr: float, end_lr: float, num_iter: int,
                min_steps: int) -> None:
    """``lr_range_test``'s arguments, before anything is spent: one clear error for the first thing
    wrong (``optimizer`` None: the test's own, built for ``model``)."""
    if not 0 < start_lr < end_lr:
        raise ValueError(f"start_lr={start_lr} and end_lr={end_lr}: the sweep needs "
                         "0 < start_lr < end_lr, e.g. start_lr=1e-5, end_lr=10.")
    if len(loader) == 0:
        raise ValueError("The training loader yields no batches. Fix: lower its batch size or give "
                         "it more images.")
    if num_iter < min_steps:
        raise ValueError(f"num_iter={num_iter}: the range test needs at least {min_steps} steps.")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer is a {type(optimizer).__name__}, not a torch.optim.Optimizer"
                        f"{' (a learning-rate scheduler?)' if hasattr(optimizer, 'get_last_lr') else ''}"
                        ". Fix: pass the optimizer itself, e.g. torch.optim.SGD(model.parameters(), "
                        "lr=1e-5), or none for the suite's.")
    check_weights(model)
    own = {id(p) for p in model.parameters()}
    if optimizer is not None and not any(id(p) in own for g in optimizer.param_groups
                                         for p in g["params"]):
        raise ValueError("The optimizer holds none of this model's parameters (was it built for "
                         "another model?). Fix: build it from model.parameters(), or pass none.")
