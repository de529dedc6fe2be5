"""``RunFolder``: the checkpoint folder of one run (``TrainConfig.checkpoint_dir``): ``last.pt`` and
``best.pt`` written durably, and a lock that keeps a second live run out while letting a dead one's
folder be taken over (a Colab VM that died with its lock on Drive)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
import warnings
from pathlib import Path

import torch

from .checkpoint import CheckpointError, atomic_save, check_writable, sync_folder


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
            sync_folder(self.path)
            return
        warnings.warn(f"{self.best} {'holds epoch ' + str(held) if held else 'is missing'}, but "
                      f"the run's best test accuracy ({max(accs):.2f}%) came in epoch {best_epoch}, "
                      "whose weights were not kept. best.pt is written again at the run's next "
                      "new best; last.pt is complete.", stacklevel=3)
