"""What a run needs to survive an interruption: random state, checkpoints, and the folder that
keeps them (``RunFolder``: one run per folder, last.pt and best.pt always a consistent pair).

A checkpoint holds tensors and plain values only, so it loads with ``weights_only=True``, and
records the model's class and constructor arguments and the training config, so ``fit(resume=...)``
can refuse a checkpoint that would not continue the same run.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .runtime import TrainingError

KEYS = ("model", "optimizer", "scheduler", "scaler", "ema", "history", "config", "rng", "epoch",
        "model_class", "model_args", "steps_per_epoch")
# Settings that may differ when a run is resumed: they change how it is watched, not what it learns.
# "epochs" may grow too, except under one-cycle, whose whole shape depends on the total.
# amp and channels_last: a resumed run keeps the checkpoint's precision and layout
# (precision.Precision.for_run refuses an explicit contradiction); seed: a resumed run restores every
# random state instead.
MAY_CHANGE = {"checkpoint_dir", "log_every", "compile", "amp", "channels_last", "seed"}


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
    """(precision name, channels-last?) a checkpoint trained with. Checkpoints written before they
    recorded it get the choice eva made then: float16 where a loss scaler ran, float32 with
    amp=False or on a CPU or MPS, else bfloat16 (CUDA); channels-last on CUDA unless set."""
    if "precision" in ckpt:
        return ckpt["precision"], bool(ckpt["channels_last"])
    cfg, devices = ckpt["config"], ckpt["history"].get("devices", [])
    cuda = any(not (d.startswith("cpu") or d == "mps") for d in devices)
    if ckpt.get("scaler"):
        precision = "float16"
    elif cfg.get("amp") is False or not cuda:
        precision = "float32"
    else:
        precision = "bfloat16"
    nhwc = cfg.get("channels_last")
    return precision, cuda if nhwc is None else bool(nhwc)


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
    never a half-written or empty one. A failed write (a full disk) removes its partial file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # never another process's file
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} yet"
        raise CheckpointError(f"Could not write the checkpoint {path} ({exc}); {kept}. Fix: free "
                              "disk space, or point TrainConfig(checkpoint_dir=...) elsewhere, "
                              "then resume.") from None
    os.replace(tmp, path)
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
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
        before, after = old.get(key), cfg.get(key)
        if isinstance(before, (list, tuple)):
            before = tuple(before)
        if isinstance(after, (list, tuple)):
            after = tuple(after)
        if key in MAY_CHANGE or before == after:
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
            + "\nFix: resume with the same model, data and TrainConfig (only checkpoint_dir, "
            "log_every, compile and seed may change; epochs may grow except under one-cycle), or "
            f"start a new run {anew}.")


def _args(args: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


class RunFolder:
    """``TrainConfig.checkpoint_dir`` of one run: ``last.pt`` after every epoch, ``best.pt`` at each
    new best test accuracy. Used as a context manager, it holds the folder for one process, so two
    runs never write into one folder: a lock file names its pid and host, is refreshed while the run
    trains (``beat``), and is removed on exit. A lock is taken over when its process is gone (same
    host), or when it has not been refreshed for longer than its run's longest epoch plus
    ``MARGIN`` (any host: a Colab VM that died with the lock on Drive, its successor renamed)."""

    LOCK = ".eva-run.lock"
    BEAT = 60.0     # seconds between refreshes of the lock while training
    MARGIN = 600.0  # seconds of silence, beyond the longest epoch, after which a lock is dead

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()  # "~/drive/run" means the home folder, as in a shell
        self.last, self.best, self.lock = (self.path / n for n in ("last.pt", "best.pt", self.LOCK))
        self.longest = 0.0    # the run's longest epoch so far, seconds (kept in the lock)
        self._beaten = 0.0    # time.monotonic() of the last refresh

    def __enter__(self) -> "RunFolder":
        check_writable(self.path)  # before an epoch is spent, not after
        while True:
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is None:  # its process is gone: take the folder over
                    self.lock.unlink(missing_ok=True)
                    continue
                if owner["dead"]:
                    print(f"Took over {self.path} from process {owner['pid']} on {owner['host']}, "
                          f"whose lock had not been refreshed for {owner['silent'] / 60:.0f} min "
                          "(a disconnected machine, gone).", flush=True)
                    self.lock.unlink(missing_ok=True)
                    continue
                elsewhere = owner["host"] != socket.gethostname()
                raise CheckpointError(
                    f"{self.path} is in use by another training run (process {owner['pid']} on "
                    f"{owner['host']}, last alive at {owner['seen']}, {owner['silent']:.0f} s ago): "
                    "two runs in one folder would overwrite each other's checkpoints. Fix: give "
                    "this run its own TrainConfig(checkpoint_dir=...), or stop that run. "
                    + (f"A run on another machine that died (a disconnected Colab VM) is taken "
                       f"over once its lock has not been refreshed for "
                       f"{owner['patience'] / 60:.0f} min; to take over sooner, delete "
                       if elsewhere else "If no such run is going, delete ")
                    + f"{self.lock}.") from None
            os.close(fd)
            self._write()
            # The folder is ours now: a temporary another process left (a kill during a save: a
            # whole checkpoint under a .tmp name) would otherwise stay for ever.
            for stale in self.path.glob("*.tmp"):
                if not stale.name.endswith(f".{os.getpid()}.tmp"):
                    stale.unlink(missing_ok=True)
            return self

    def __exit__(self, *exc) -> None:
        if (self._read_lock() or {}).get("pid") == os.getpid():
            self.lock.unlink(missing_ok=True)

    def beat(self, longest: float | None = None) -> None:
        """Show that this run is alive: rewrite the lock (its time is the proof), at most once a
        ``BEAT``; ``longest`` (the longest epoch so far, seconds) refreshes it at once."""
        if longest is not None:
            self.longest = max(self.longest, longest)
        elif time.monotonic() - self._beaten < self.BEAT:
            return
        self._write()

    def _write(self) -> None:
        """The lock's content, replaced atomically: who holds the folder, and how long one of its
        epochs can take (a reader waits that long, plus MARGIN, before calling it dead)."""
        tmp = self.lock.with_name(f"{self.LOCK}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                   "longest": round(self.longest, 3)}))
        os.replace(tmp, self.lock)
        self._beaten = time.monotonic()

    def _read_lock(self) -> dict | None:
        try:
            return json.loads(self.lock.read_text())
        except (OSError, ValueError):
            return None

    def _owner(self) -> dict | None:
        """Who holds the lock, with "silent" (seconds since its last refresh), "patience" (how long
        a silence means death) and "dead"; None if nobody does any more (its process on this host
        ended, or a lock left half-written by a crash)."""
        owner = self._read_lock()
        try:
            silent = max(time.time() - self.lock.stat().st_mtime, 0.0)
        except FileNotFoundError:
            return None
        if not isinstance(owner, dict) or not {"pid", "host"} <= set(owner):
            return None if silent > 10 else {"pid": "?", "host": "?", "seen": "just now",
                                             "silent": silent, "patience": self.MARGIN,
                                             "dead": False}
        longest = owner.get("longest", 0)
        patience = (longest if isinstance(longest, (int, float)) else 0) + self.MARGIN
        owner.update(seen=time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() - silent)),
                     silent=silent, patience=patience, dead=silent > patience)
        if owner["host"] != socket.gethostname():
            return owner  # cannot look at another machine's processes: only its silence tells
        if owner["pid"] == os.getpid():
            return None  # this process's own, left by an interrupted call
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return None
        except (PermissionError, OverflowError, TypeError):
            pass
        owner["dead"] = False  # a live process on this machine: never taken from it
        return owner

    def check_new_run(self, resume) -> None:
        """Refuse to start a run over another run's checkpoints (``resume`` is what fit resumes
        from: None, or a checkpoint path)."""
        if resume is not None and Path(resume).resolve().parent == self.path.resolve():
            return
        held = [p for p in (self.last, self.best) if p.exists()]
        if not held:
            return
        try:
            ckpt = torch.load(held[0], map_location="cpu", weights_only=True)
            what = (f"a run of {ckpt['model_class']} after epoch {ckpt['epoch']} of "
                    f"{ckpt['config']['epochs']}, best test accuracy "
                    f"{max(ckpt['history']['test_acc'], default=0):.2f}%")
        except Exception:  # unreadable: still not ours to overwrite
            what = "a checkpoint"
        raise CheckpointError(
            f"{self.path} already holds {what} ({', '.join(p.name for p in held)}); a new run would "
            "overwrite it. Fix: continue that run with fit(..., resume=True), or give this run "
            "another or an empty TrainConfig(checkpoint_dir=...) (or delete the folder to start "
            "afresh).")

    def save(self, state: dict, best: bool) -> None:
        """Write last.pt, and best.pt too when this epoch is the best so far."""
        atomic_save(state, self.last)
        if best:
            atomic_save(state, self.best)

    def repair_best(self, ckpt: dict) -> None:
        """Make best.pt the run's best epoch again if an interruption between the two saves
        left it behind (last.pt written, best.pt not): on resume, the best epoch comes from the
        history and best.pt would otherwise never be written again."""
        accs = ckpt["history"]["test_acc"]
        if not accs:
            return
        best_epoch = accs.index(max(accs)) + 1  # the first epoch that reached the best
        try:
            held = torch.load(self.best, map_location="cpu", weights_only=True)["epoch"]
        except Exception:  # missing, damaged or not a checkpoint
            held = None
        if held == best_epoch:
            return
        if best_epoch == ckpt["epoch"] and self.last.exists():  # last.pt is that epoch
            tmp = self.best.with_name(f"{self.best.name}.{os.getpid()}.tmp")
            shutil.copyfile(self.last, tmp)
            os.replace(tmp, self.best)
            _sync_folder(self.path)
            return
        warnings.warn(f"{self.best} {'holds epoch ' + str(held) if held else 'is missing'}, but "
                      f"the run's best test accuracy ({max(accs):.2f}%) came in epoch {best_epoch}, "
                      "whose weights were not kept. best.pt is written again at the run's next "
                      "new best; last.pt is complete.", stacklevel=3)
