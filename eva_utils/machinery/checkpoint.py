"""What a run needs to survive an interruption: random states and durable checkpoint files, and the
checks that a checkpoint continues the same run (the folder that keeps them: ``run_folder``).

A checkpoint holds tensors and plain values only, so it loads with ``weights_only=True``, and
records the model's class and constructor arguments and the training config, so ``fit(resume=...)``
can refuse a checkpoint that would not continue the same run.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .runtime import TrainingError

FORMAT = 1  # the checkpoint format this eva_utils writes and reads; a newer one says so
PRECISIONS = ("float32", "bfloat16", "float16")
KEYS = ("model", "optimizer", "scheduler", "scaler", "ema", "history", "config", "rng", "epoch",
        "model_class", "model_args", "steps_per_epoch")
# Settings that may differ when a run is resumed: they change how it is watched, not what it learns
# (seed: a resumed run restores every random state instead). "epochs" may grow too, except under
# one-cycle, whose whole shape depends on the total.
MAY_CHANGE = ("checkpoint_dir", "log_every", "compile", "seed")
# The precision and layout: a resumed run keeps the checkpoint's (precision.Precision.for_run, which
# refuses an explicit contradiction), so these are not compared here.
KEPT_FROM_CHECKPOINT = ("amp", "channels_last")


class CheckpointError(TrainingError):
    """A checkpoint cannot be read or does not belong to this run; the message names the file."""


def rng_state() -> dict:
    """Every RNG as tensors and plain numbers, so checkpoints load with ``weights_only=True``."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` saved, from a checkpoint loaded on the CPU (``load_checkpoint``):
    torch, numpy and CUDA take their states from CPU tensors only. CUDA states beyond this
    machine's GPUs (a run saved on 2 GPUs, resumed on 1) are left out; missing ones keep theirs."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def saved_precision(ckpt: dict) -> tuple[str, bool]:
    """(precision name, channels-last?) a checkpoint trained with."""
    if "precision" not in ckpt:
        raise CheckpointError("The checkpoint records no precision: an eva_utils older than 0.2 "
                              "wrote it. Fix: start a new run (delete the checkpoint folder).")
    if ckpt["precision"] not in PRECISIONS:
        raise CheckpointError(f"The checkpoint records precision {ckpt['precision']!r}, none of "
                              f"{', '.join(PRECISIONS)}: it is damaged. Fix: resume from "
                              "another checkpoint (best.pt or last.pt), or start a new run.")
    return ckpt["precision"], bool(ckpt["channels_last"])


def model_identity(model: nn.Module) -> tuple[str, dict]:
    """The model's class name and constructor arguments (``init_args``, which our models keep)."""
    return type(model).__name__, dict(getattr(model, "init_args", {}))


def check_writable(folder: Path) -> None:
    """Make ``folder`` and write a probe file there, or raise one CheckpointError naming the setting."""
    probe = folder / ".eva-write-test"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CheckpointError(f"Cannot write checkpoints to {folder} ({exc.strerror or exc}). Fix: "
                              "set TrainConfig(checkpoint_dir=...) to a folder you can write to, "
                              "or None for no checkpoints.") from None


def atomic_save(obj: dict, path: Path) -> None:
    """Write, flush to disk, then rename: a crash or power cut leaves the old file or the new one,
    never a half-written or empty one. A failed write or rename (a full disk, a network drive's
    I/O error, a folder where the file goes) removes its partial file and raises CheckpointError."""
    try:
        atomic_write(path, lambda f: torch.save(obj, f))
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        kept = (f"the previous {path.name} is intact" if path.is_file() else
                f"{path} is a folder" if path.is_dir() else f"no {path.name} yet")
        raise CheckpointError(f"Could not write the checkpoint {path} ({exc}); {kept}. Fix: free "
                              "disk space, or point TrainConfig(checkpoint_dir=...) elsewhere, "
                              "then resume.") from None


def atomic_write(path: Path, write) -> None:
    """``write(file)`` into a temporary beside ``path``, flushed to disk, then renamed onto
    ``path``; on any failure the temporary is removed and the error raised."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # never another process's file
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; Windows has no folder handles)."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint written by ``fit``, loaded on the CPU whatever device it was saved from or will
    train on (``load_state_dict`` then copies weights and optimizer state to the model's device; the
    random states must stay on the CPU); one ``CheckpointError`` naming the file if it is not one."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}. Fix: give the path of a last.pt or "
                              "best.pt that fit wrote (TrainConfig.checkpoint_dir).")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # empty, truncated, not a torch file, or holds arbitrary objects
        raise CheckpointError(f"{path} cannot be read as a checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}). It may be "
                              "truncated or not written by eva.fit. Fix: resume from another "
                              "checkpoint (best.pt or last.pt) or start a new run.") from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("format"), int) and ckpt["format"] > FORMAT:
        raise CheckpointError(f"{path} was written by a newer eva_utils (checkpoint format "
                              f"{ckpt['format']}; this one reads up to {FORMAT}). Fix: pip install "
                              "-U eva-utils, or resume with the version that wrote it.")
    missing = [k for k in KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint written by eva.fit: it lacks "
                              f"{', '.join(missing)}. Fix: load plain weights with "
                              "model.load_state_dict(...) and start a new run instead of resuming.")
    return ckpt


def check_resumable(ckpt: dict, path, model: nn.Module, cfg: dict, steps_per_epoch: int,
                    data: dict | None = None, *, anew: str = "without resume=") -> None:
    """Raise one CheckpointError naming everything in which this run differs from the checkpoint's:
    model, steps per epoch, config, and the training loader's ``fingerprint`` (data, class names,
    augmentation, batch size, seed). ``anew``: how to start a new run instead, in the message."""
    problems = []
    old_data = ckpt.get("data")
    if old_data is not None and data is not None:
        for key in sorted(set(old_data) | set(data)):
            if old_data.get(key) != data.get(key):
                what = {"content": "image or label content"}.get(key, key.replace("_", " "))
                problems.append(f"training data's {what}: checkpoint {old_data.get(key)!r}, now "
                                f"{data.get(key)!r}")
    name, args = model_identity(model)
    if (ckpt["model_class"], ckpt["model_args"]) != (name, args):
        problems.append(f"model: checkpoint {ckpt['model_class']}({_args(ckpt['model_args'])}), "
                        f"now {name}({_args(args)})")
    if ckpt["steps_per_epoch"] != steps_per_epoch:
        problems.append(f"steps per epoch: checkpoint {ckpt['steps_per_epoch']}, now "
                        f"{steps_per_epoch} (another batch size or training set)")
    old = ckpt["config"]
    for key in sorted(set(old) | set(cfg)):
        before, after = (tuple(v) if isinstance(v, (list, tuple)) else v  # a list read back
                         for v in (old.get(key), cfg.get(key)))
        if key in MAY_CHANGE + KEPT_FROM_CHECKPOINT or before == after:
            continue
        if key == "epochs" and cfg["schedule"] != "onecycle" and after >= ckpt["epoch"]:
            continue
        why = ""
        if key == "epochs" and cfg["schedule"] == "onecycle":
            why = " (a one-cycle schedule's shape depends on the number of epochs)"
        elif key == "epochs":
            why = f" (the checkpoint has already trained {ckpt['epoch']} epochs)"
        problems.append(f"{key}: checkpoint {before!r}, now {after!r}{why}")
    if problems:
        raise CheckpointError(
            f"Cannot resume from {path}: this run differs from the one that wrote it in\n  "
            + "\n  ".join(problems)
            + f"\nFix: resume with the same model, data and TrainConfig (only "
            f"{', '.join(MAY_CHANGE[:-1])} and {MAY_CHANGE[-1]} may change; epochs may grow except "
            f"under one-cycle), or start a new run {anew}.")


def _args(args: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())
