"""``RunFolder``: the checkpoint folder of one run (``TrainConfig.checkpoint_dir``): ``last.pt`` and
``best.pt`` written durably, and a lock that keeps a second live run out while letting a dead one's
folder be taken over (a Colab VM that died with its lock on Drive)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
import warnings
from pathlib import Path

import torch

from .checkpoint import CheckpointError, atomic_save, check_writable, sync_folder


class RunFolder:
    """``TrainConfig.checkpoint_dir`` of one run: ``last.pt`` after every epoch, ``best.pt`` at each
    new best test accuracy. Used as a context manager, it holds the folder for one process, so two
    runs never write into one folder: a lock file names its process and host and carries a token
    and a count that a timer thread rewrites every ``BEAT`` seconds while the folder is held
    (training or testing); it is removed on exit.

    A lock is taken over, in one line, when its process is gone (same host), or when it has not
    changed while watched for ``patience`` seconds (another host: a Colab VM that died with its lock
    on Drive, its successor renamed). No clock is compared: the watcher waits in place, printing
    the time left, and refuses at once if the lock changes (that run is alive). The takeover is
    atomic: of two processes that judged one lock dead, one wins."""

    LOCK = ".eva-run.lock"
    BEAT = 15.0    # seconds between the holder's rewrites of the lock
    DELAY = 90.0   # seconds a shared drive may take to show one machine's write to another: Google
    #                Drive documents no bound, so this is a guess with room (seconds are usual)
    SAY_EVERY = 30.0  # seconds between the watcher's lines

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()  # "~/drive/run" means the home folder, as in a shell
        self.last, self.best, self.lock = (self.path / n for n in ("last.pt", "best.pt", self.LOCK))
        self.token, self.count, self.host = uuid.uuid4().hex, 0, socket.gethostname()
        self.lost: dict | None = None  # who took the folder from this run, if anyone did
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    @property
    def patience(self) -> float:
        """Seconds a lock from another host must stay unchanged, watched, before it is dead: two
        missed rewrites, plus the drive's delay."""
        return 2 * self.BEAT + self.DELAY

    def __enter__(self) -> "RunFolder":
        check_writable(self.path)  # before an epoch is spent, not after
        self._take()
        self._write()
        self._timer = threading.Thread(target=self._keep_alive, daemon=True,
                                       name=f"eva lock {self.path}")
        self._timer.start()
        # The folder is ours now: a temporary another process left (a kill during a save: a
        # whole checkpoint under a .tmp name) would otherwise stay for ever.
        for stale in self.path.glob("*.tmp"):
            if not stale.name.endswith(f".{os.getpid()}.tmp"):
                stale.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
        if self.lost is None and (self._owner(self._read()) or {}).get("token") == self.token:
            self.lock.unlink(missing_ok=True)

    def check(self) -> None:
        """Raise CheckpointError if another process has taken the folder (this one was silent for
        longer than the patience: a machine suspended, a drive cut off)."""
        if self.lost is not None:
            raise CheckpointError(
                f"{self.path} was taken over by process {self.lost.get('pid', '?')} on "
                f"{self.lost.get('host', '?')} while this run's lock could not be seen; this run "
                "stops so that two runs do not overwrite each other's checkpoints. Fix: let that "
                "run go on, or stop it and run this one again with resume=True.")

    # ------------------------------------------------------------------------- the lock itself
    def _write(self) -> None:
        """The lock's content, replaced atomically: who holds the folder, and a count that changes
        with every rewrite (a watcher's proof of life)."""
        self.count += 1
        tmp = self.lock.with_name(f"{self.LOCK}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": self.host, "token": self.token,
                                   "count": self.count}))
        os.replace(tmp, self.lock)

    def _keep_alive(self) -> None:
        """The timer thread: rewrite the lock every BEAT while it is still this run's."""
        warned = False
        while not self._stop.wait(self.BEAT):
            owner = self._owner(self._read())
            if owner is not None and owner.get("token") != self.token:
                self.lost = owner  # taken: fit stops at its next check
                return
            try:
                self._write()
            except OSError as exc:  # a drive briefly gone: try again at the next beat
                if not warned:
                    warnings.warn(f"Could not refresh {self.lock} ({exc}); trying again every "
                                  f"{self.BEAT:.0f} s.", stacklevel=1)
                    warned = True

    def _read(self) -> bytes | None:
        """The lock's bytes, or None if there is none."""
        if self.lock.is_dir():
            raise CheckpointError(f"{self.lock} is a folder, not eva's lock file. Fix: remove it "
                                  "(nothing of the run is in it) and run again.")
        try:
            return self.lock.read_bytes()
        except FileNotFoundError:
            return None

    @staticmethod
    def _owner(content: bytes | None) -> dict | None:
        """The lock's holder as written (pid, host, token, count), or None if unreadable."""
        try:
            owner = json.loads(content or b"")
        except ValueError:
            return None
        return owner if isinstance(owner, dict) and {"pid", "host"} <= set(owner) else None

    def _take(self) -> None:
        """Create the lock, taking over a dead holder's; CheckpointError for a live one."""
        watched, since, said = None, 0.0, 0.0
        while True:
            try:
                os.close(os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return
            except FileExistsError:
                pass
            content = self._read()
            if content is None:
                continue  # released meanwhile
            owner = self._owner(content)
            here = owner is not None and owner["host"] == self.host
            if here and (owner["pid"] == os.getpid() or not process_alive(owner["pid"])):
                if owner["pid"] != os.getpid():
                    print(f"Took over {self.path} from process {owner['pid']} on this machine, "
                          "which has ended.", flush=True)
                self._take_over(content)
                continue
            if here:
                raise self._in_use(owner, "it is running on this machine")
            # Another host (or a lock not written yet): only a lock that stays unchanged is dead.
            now = time.monotonic()
            if content != watched:
                if watched is not None:
                    raise self._in_use(owner, "its lock changed while this run watched it")
                watched, since, said = content, now, now
                print(f"{self.path} is held by {who(owner)}, which may have disconnected. Waiting "
                      f"for its lock to stay unchanged for {self.patience:.0f} s before taking "
                      "over (a change means it is alive).", flush=True)
            silent = now - since
            if silent >= self.patience:
                print(f"Took over {self.path} from {who(owner)}, whose lock did not change for "
                      f"{silent:.0f} s (a disconnected machine, gone).", flush=True)
                if not self._take_over(content) and silent >= 2 * self.patience:
                    self.lock.with_name(self._marker(content)).unlink(missing_ok=True)
                continue
            if now - said >= self.SAY_EVERY:
                said = now
                print(f"  unchanged for {silent:.0f} s; taken over in "
                      f"{self.patience - silent:.0f} s.", flush=True)
            time.sleep(min(1.0, self.patience / 10))

    def _marker(self, content: bytes) -> str:
        return f"{self.LOCK}.takeover-{hashlib.sha1(content).hexdigest()[:12]}"

    def _take_over(self, content: bytes) -> bool:
        """Remove the lock judged dead, if it still holds ``content``: one process at a time (a
        marker file named after that content, created exclusively), so that of two that judged the
        same lock dead one removes it and the other then finds the winner's. True if removed."""
        marker = self.lock.with_name(self._marker(content))
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            time.sleep(0.1)
            return False
        try:
            if self._read() != content:
                return False
            self.lock.unlink(missing_ok=True)
            return True
        finally:
            marker.unlink(missing_ok=True)

    def _in_use(self, owner: dict | None, why: str) -> CheckpointError:
        return CheckpointError(
            f"{self.path} is in use by another training run ({who(owner)}; {why}): two runs in "
            "one folder would overwrite each other's checkpoints. Fix: give this run its own "
            "TrainConfig(checkpoint_dir=...), or stop that run. If no such run is going, delete "
            f"{self.lock}.")

    def check_new_run(self, resume) -> None:
        """Refuse to start a run over another run's checkpoints (``resume`` is what fit resumes
        from: None, or a checkpoint path)."""
        if resume is not None and Path(resume).resolve().parent == self.path.resolve():
            return
        for path in (self.last, self.best):
            if path.is_dir():
                raise CheckpointError(f"{path} is a folder, not a checkpoint, where fit writes "
                                      f"its {path.name}. Fix: remove or rename it.")
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


def who(owner: dict | None) -> str:
    return (f"process {owner['pid']} on {owner['host']}" if owner is not None
            else "a run whose lock is not written yet")


def process_alive(pid) -> bool:
    """Whether process ``pid`` runs on this machine (True when it cannot be told)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, TypeError, ValueError):
        pass
    return True
