"""Checkpoints and resume: an interrupted run continues exactly; anything else is refused clearly."""
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import eva_utils as eva
from eva_utils.machinery.checkpoint import CheckpointError, atomic_save, load_checkpoint
from eva_utils.machinery.run_folder import RunFolder
from test_train import Tiny, cfg, loaders

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_resume_continues_exactly(tiny, tmp_path, ema_decay):
    torch.manual_seed(0)
    full_model = Tiny()
    start = {k: v.clone() for k, v in full_model.state_dict().items()}
    full = eva.fit(full_model, *loaders(tiny), cfg(checkpoint_dir=str(tmp_path / "full"),
                                                   ema_decay=ema_decay), progress=False)

    class Interrupt(Exception):
        pass

    train, test = loaders(tiny)
    epochs_started = []
    original = train.set_epoch

    def set_epoch(epoch):
        epochs_started.append(epoch)
        if len(epochs_started) == 2:  # the user stops the kernel as epoch 2 starts
            raise Interrupt
        original(epoch)
    train.set_epoch = set_epoch
    model = Tiny()
    model.load_state_dict(start)
    with pytest.raises(Interrupt):
        eva.fit(model, train, test, cfg(checkpoint_dir=str(tmp_path / "cut"), ema_decay=ema_decay),
                progress=False)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    torch.manual_seed(123)  # whatever happened in between must not matter
    resumed_model = Tiny()
    resumed = eva.fit(resumed_model, *loaders(tiny),
                      cfg(checkpoint_dir=str(tmp_path / "cut"), ema_decay=ema_decay, log_every=1),
                      resume=tmp_path / "cut" / "last.pt", progress=False)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert getattr(resumed, key) == pytest.approx(getattr(full, key), rel=1e-5), key
    for (k, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_checkpoints_are_complete_durable_and_atomic(tiny, tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    eva.fit(Tiny(), *loaders(tiny), cfg(epochs=2, checkpoint_dir=tmp_path), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no .tmp left
    assert len(synced) >= 2 * 2  # each save flushes the file and its folder before trusting them
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)  # loads without pickle code
    assert ckpt["epoch"] == 2 and ckpt["config"]["epochs"] == 2
    assert ckpt["model_class"] == "Tiny" and ckpt["steps_per_epoch"] == 5
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["history"]["test_acc"][-1] == max(ckpt["history"]["test_acc"])


def test_a_failed_save_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    atomic_save({"a": torch.ones(2)}, tmp_path / "last.pt")

    def power_cut(*args, **kwargs):
        raise OSError("disk gone")
    monkeypatch.setattr(os, "fsync", power_cut)
    with pytest.raises(CheckpointError, match="disk gone.*previous last.pt is intact"):
        atomic_save({"a": torch.zeros(2)}, tmp_path / "last.pt")
    assert torch.equal(torch.load(tmp_path / "last.pt")["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no last.pt.tmp left behind


@pytest.fixture
def finished(tiny, tmp_path):
    """A finished 2-epoch one-cycle run's last.pt."""
    torch.manual_seed(0)
    eva.fit(Tiny(), *loaders(tiny), cfg(epochs=2, checkpoint_dir=tmp_path), progress=False)
    return tmp_path / "last.pt"


@pytest.mark.parametrize("change, words", [
    ({"lr": 0.1}, "lr: checkpoint 0.05, now 0.1"),
    ({"schedule": "step"}, "schedule: checkpoint 'onecycle', now 'step'"),
    ({"epochs": 4}, "epochs: checkpoint 2, now 4 (a one-cycle schedule's shape"),
    ({"optimizer": "adam"}, "optimizer: checkpoint 'sgd', now 'adam'"),
    ({"ema_decay": 0.9}, "ema_decay: checkpoint None, now 0.9"),
])
def test_resume_refuses_a_different_config(tiny, finished, change, words):
    settings = {"epochs": 2, "checkpoint_dir": str(finished.parent), **change}
    with pytest.raises(CheckpointError, match=rf"(?s)Cannot resume from {re.escape(str(finished))}.*{re.escape(words)}.*Fix"):
        eva.fit(Tiny(), *loaders(tiny), cfg(**settings), resume=finished, progress=False)


def test_what_may_change_on_resume_is_said_from_the_one_list(tiny, finished):
    """The settings a resumed run may change were listed by hand in the message and the docs (4 of
    the 6 names the check skipped); both now say exactly MAY_CHANGE, and each name in it may
    really change."""
    from eva_utils.machinery.checkpoint import MAY_CHANGE
    with pytest.raises(CheckpointError) as refused:
        eva.fit(Tiny(), *loaders(tiny), cfg(epochs=2, lr=0.1), resume=finished, progress=False)
    said = re.search(r"only (.*) may change", str(refused.value)).group(1)
    assert re.split(r", | and ", said) == list(MAY_CHANGE)
    for page in ("reliability.md", "scaling.md"):
        text = " ".join((ROOT / "docs" / page).read_text().split())
        listed = re.search(r"only (`[a-z_]+`(?:, `[a-z_]+`)*,? and `[a-z_]+`) may change", text)
        assert listed and re.findall(r"`([a-z_]+)`", listed.group(1)) == list(MAY_CHANGE), page
    changed = {"checkpoint_dir": str(finished.parent), "log_every": 3, "compile": False, "seed": 7}
    assert set(changed) == set(MAY_CHANGE)
    history = eva.fit(Tiny(), *loaders(tiny), cfg(epochs=2, **changed), resume=finished,
                      progress=False)
    assert len(history) == 2  # accepted: the finished run, read back


def test_resume_refuses_other_data_or_model(tiny, finished):
    with pytest.raises(CheckpointError, match="steps per epoch: checkpoint 5, now 10"):
        eva.fit(Tiny(), *loaders(tiny, batch=20), cfg(epochs=2), resume=finished, progress=False)
    with pytest.raises(CheckpointError, match=r"model: checkpoint Tiny\(\), now SmallResNet"):
        eva.fit(eva.SmallResNet(num_classes=10), *loaders(tiny), cfg(epochs=2), resume=finished, progress=False)


def test_weight_shared_model_is_not_resumed_from_a_plain_one(tiny, tmp_path):
    train, test = loaders(tiny, batch=100)
    eva.fit(eva.SmallResNet(num_classes=10), train, test, cfg(epochs=1, schedule="constant",
                                                checkpoint_dir=tmp_path), progress=False)
    with pytest.raises(CheckpointError, match=r"SmallResNet\(repeats=1, num_classes=10\), now "
                                              r"SmallResNet\(repeats=2, num_classes=10\)"):
        eva.fit(eva.SmallResNet(repeats=2, num_classes=10), train, test, cfg(epochs=1, schedule="constant"),
                resume=tmp_path / "last.pt", progress=False)


def test_a_finished_run_can_be_extended_where_the_schedule_allows(tiny, tmp_path):
    torch.manual_seed(0)
    settings = {"schedule": "step", "step_size": 1, "gamma": 0.5, "checkpoint_dir": str(tmp_path)}
    h2 = eva.fit(Tiny(), *loaders(tiny), cfg(epochs=2, **settings), progress=False)
    h4 = eva.fit(Tiny(), *loaders(tiny), cfg(epochs=4, **settings), resume=tmp_path / "last.pt",
                 progress=False)
    assert len(h4) == 4 and h4.test_acc[:2] == h2.test_acc
    assert h4.lr == pytest.approx([0.05, 0.025, 0.0125, 0.00625])  # the decay goes on


@pytest.mark.parametrize("content, words", [
    (b"", "cannot be read as a checkpoint"),
    ("truncated", "cannot be read as a checkpoint"),
    ({"model": {}}, "not a checkpoint written by eva.fit: it lacks optimizer"),
])
def test_unreadable_checkpoints_name_the_file(tiny, finished, tmp_path, content, words):
    bad = tmp_path / "bad.pt"
    if content == "truncated":
        raw = finished.read_bytes()
        bad.write_bytes(raw[:len(raw) // 2])
    elif isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        torch.save(content, bad)
    with pytest.raises(CheckpointError, match=f"{bad}.*{words}" if "lacks" not in words
                       else f"{bad} is {words}"):
        eva.fit(Tiny(), *loaders(tiny), cfg(epochs=2), resume=bad, progress=False)
    with pytest.raises(CheckpointError, match=f"No checkpoint at {tmp_path / 'nope.pt'}"):
        load_checkpoint(tmp_path / "nope.pt")


def test_a_new_run_never_overwrites_another_runs_checkpoints(tiny, finished):
    before = {p.name: p.read_bytes() for p in finished.parent.glob("*.pt")}
    for resume in (None, False):
        with pytest.raises(CheckpointError, match=r"(?s)already holds a run of Tiny after epoch 2 "
                           r"of 2.*resume=True.*another or an empty"):
            eva.fit(Tiny(), *loaders(tiny), cfg(epochs=2, checkpoint_dir=finished.parent),
                    resume=resume, progress=False)
    assert {p.name: p.read_bytes() for p in finished.parent.glob("*.pt")} == before
    eva.fit(Tiny(), *loaders(tiny), cfg(epochs=2, checkpoint_dir=finished.parent), resume=True,
            progress=False)  # continuing it is the way in (here: already finished, nothing to do)


def test_one_run_owns_a_folder(tiny, tmp_path, monkeypatch):
    """A lock names the owner; a second run is refused while it lives, and takes over once its
    process is gone (a killed kernel). fit removes its own lock when it ends, however it ends."""
    lock = tmp_path / RunFolder.LOCK
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp_path.mkdir(exist_ok=True)
        lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        with pytest.raises(CheckpointError, match=rf"in use by another training run \(process "
                           rf"{other.pid} on .*its own.*delete"):
            eva.fit(Tiny(), *loaders(tiny), cfg(epochs=1, checkpoint_dir=tmp_path), progress=False)
    finally:
        other.kill()
        other.wait()
    assert not (tmp_path / "last.pt").exists()
    eva.fit(Tiny(), *loaders(tiny), cfg(epochs=1, checkpoint_dir=tmp_path), progress=False)
    assert not lock.exists() and (tmp_path / "last.pt").exists()  # taken over, then released

    def crash(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(eva.train, "train_epoch", crash)
    with pytest.raises(RuntimeError, match="boom"):
        eva.fit(Tiny(), *loaders(tiny), cfg(epochs=1, checkpoint_dir=tmp_path / "b"),
                progress=False)
    assert not (tmp_path / "b" / RunFolder.LOCK).exists()


@pytest.mark.parametrize("accs, best_pt, repaired", [
    ([10.0, 20.0, 30.0], 2, True),      # killed between the renames: last.pt is the best epoch
    ([10.0, 20.0, 30.0], None, True),   # best.pt lost
    ([10.0, 30.0, 20.0], None, False),  # the best epoch's weights are gone: said, not hidden
])
def test_resume_makes_best_pt_the_best_epoch_again(tiny, finished3, accs, best_pt, repaired):
    folder = finished3.parent
    last = load_checkpoint(finished3)
    last["history"]["test_acc"] = accs
    atomic_save(last, folder / "last.pt")
    (folder / "best.pt").unlink()
    if best_pt is not None:
        atomic_save({**last, "epoch": best_pt}, folder / "best.pt")
    resume = lambda: eva.fit(Tiny(), *loaders(tiny), cfg(epochs=3, checkpoint_dir=folder),
                             resume=True, progress=False)
    if repaired:
        resume()
        assert (folder / "best.pt").read_bytes() == (folder / "last.pt").read_bytes()
    else:
        with pytest.warns(UserWarning, match="best.pt is missing, but the run's best test accuracy "
                                             r"\(30.00%\) came in epoch 2"):
            resume()


@pytest.fixture
def finished3(tiny, tmp_path):
    """A finished 3-epoch run's last.pt."""
    torch.manual_seed(0)
    eva.fit(Tiny(), *loaders(tiny), cfg(epochs=3, checkpoint_dir=tmp_path), progress=False)
    return tmp_path / "last.pt"


def test_a_run_resumes_on_a_gpu(tiny, tmp_path, monkeypatch):
    """On a GPU, a checkpoint loaded with map_location=<the GPU> holds its numpy random state there,
    and resuming failed ("can't convert cuda:0 device type tensor to numpy"). The meta device stands
    in for the GPU: every load that is not onto the CPU lands there, so only a checkpoint loaded on
    the CPU (weights then copied to the model's device by load_state_dict) resumes."""
    real_load = torch.load

    def load_as_on_a_gpu(f, *args, map_location=None, **kwargs):
        return real_load(f, *args, map_location="cpu" if map_location == "cpu" else "meta",
                         **kwargs)
    torch.manual_seed(0)
    whole = eva.fit(Tiny(), *loaders(tiny), cfg(epochs=2), progress=False)
    torch.manual_seed(0)
    with pytest.raises(eva.BudgetSpent):  # the first epoch, then the budget stops it
        eva.fit(Tiny(), *loaders(tiny), cfg(epochs=2, checkpoint_dir=tmp_path), progress=False,
                time_budget=1e-9)
    monkeypatch.setattr(torch, "load", load_as_on_a_gpu)
    resumed = eva.fit(Tiny(), *loaders(tiny), cfg(epochs=2, checkpoint_dir=tmp_path),
                      resume=True, progress=False)
    assert resumed.test_acc == whole.test_acc and resumed.train_loss == whole.train_loss


def test_cuda_random_states_of_more_gpus_than_this_machine_has(monkeypatch):
    """A run saved on 2 GPUs and resumed on 1 restores the first GPU's state and no other."""
    from eva_utils.machinery.checkpoint import rng_state, set_rng_state
    restored = []

    def set_all(states):  # torch's own: one state per GPU, "invalid device ordinal" past the last
        raise RuntimeError("CUDA error: invalid device ordinal") if len(states) > 1 else None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": restored.append(
        (device, s)))
    state = {**rng_state(), "cuda": [torch.zeros(16, dtype=torch.uint8),
                                     torch.ones(16, dtype=torch.uint8)]}
    set_rng_state(state)
    assert [(d, s.sum().item()) for d, s in restored] == [(0, 0)]


@pytest.fixture
def quick_lock(monkeypatch):
    """The lock's timings in tenths of a second: a beat, a drive's delay (patience 0.5 s)."""
    monkeypatch.setattr(RunFolder, "BEAT", 0.1)
    monkeypatch.setattr(RunFolder, "DELAY", 0.3)
    monkeypatch.setattr(RunFolder, "SAY_EVERY", 0.2)


def vanish(folder: RunFolder) -> None:
    """The machine holding ``folder`` is gone: its timer stops, its lock stays on the drive."""
    folder._stop.set()
    folder._timer.join()


def test_a_dead_machines_lock_is_taken_over_after_watching_it(tiny, tmp_path, monkeypatch,
                                                              capsys, quick_lock):
    """After a Colab disconnect the new VM has another hostname and the old VM's lock is still on
    Drive. The new run waits in place, saying how long, while the lock stays unchanged, then takes
    over. No clock is read: a lock dated an hour ahead (another machine's clock) is taken all the
    same, where it blocked for the hour."""
    monkeypatch.setattr(socket, "gethostname", lambda: "old-vm")
    dead = RunFolder(tmp_path)
    dead.__enter__()
    vanish(dead)
    lock = tmp_path / RunFolder.LOCK
    ahead = time.time() + 3600
    os.utime(lock, (ahead, ahead))
    monkeypatch.setattr(socket, "gethostname", lambda: "new-vm")
    eva.fit(Tiny(), *loaders(tiny), cfg(epochs=1, checkpoint_dir=tmp_path), progress=False)
    out = capsys.readouterr().out
    assert (f"{tmp_path} is held by process {os.getpid()} on old-vm, which may have disconnected. "
            "Waiting for its lock to stay unchanged for ") in out
    assert re.search(r"\n  unchanged for \d s; taken over in \d s\.\n", out)
    assert re.search(rf"Took over {re.escape(str(tmp_path))} from process {os.getpid()} on old-vm, "
                     r"whose lock did not change for \d s \(a disconnected machine, gone\)\.", out)
    assert not lock.exists() and (tmp_path / "last.pt").exists()


def test_a_live_machines_lock_is_refused_whatever_its_date(tiny, tmp_path, monkeypatch,
                                                           quick_lock):
    """A lock that changes while watched belongs to a live run on another machine (a second
    notebook on the same Drive folder): refused, however old the file's date says it is (a
    reader's clock an hour ahead took live runs)."""
    monkeypatch.setattr(socket, "gethostname", lambda: "vm-a")
    live = RunFolder(tmp_path).__enter__()
    lock = tmp_path / RunFolder.LOCK
    old = time.time() - 3600
    os.utime(lock, (old, old))
    monkeypatch.setattr(socket, "gethostname", lambda: "vm-b")
    try:
        with pytest.raises(CheckpointError, match=rf"in use by another training run \(process "
                           rf"{os.getpid()} on vm-a; its lock changed while this run watched it\)"):
            eva.fit(Tiny(), *loaders(tiny), cfg(epochs=1, checkpoint_dir=tmp_path),
                    progress=False)
    finally:
        live.__exit__(None, None, None)
    assert not lock.exists() and not (tmp_path / "last.pt").exists()


TAKE = """
import socket, sys, time
from eva_utils.machinery.run_folder import RunFolder
RunFolder.BEAT, RunFolder.DELAY = 0.1, 0.3
socket.gethostname = lambda: sys.argv[2]
try:
    with RunFolder(sys.argv[1]):
        print("won", flush=True)
        time.sleep(1.5)
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_of_runs_that_find_one_dead_lock_one_takes_the_folder(tmp_path):
    """Taking over was read, check, unlink, create: two processes that read one stale lock both
    took the folder (last.pt's epochs on disk went 7, 6, 8). Now one wins; the others find the
    winner's lock and are refused."""
    (tmp_path / RunFolder.LOCK).write_text(json.dumps({"pid": 1, "host": "gone", "count": 9}))
    runs = [subprocess.Popen([sys.executable, "-c", TAKE, str(tmp_path), f"vm-{i}"],
                             stdout=subprocess.PIPE, text=True) for i in range(3)]
    said = [run.communicate(timeout=60)[0] for run in runs]
    assert sum("won" in s for s in said) == 1, said
    assert sum("in use by another training run" in s for s in said) == 2, said
    assert not any(tmp_path.glob("*takeover*"))


def test_a_run_whose_folder_was_taken_stops(tmp_path, quick_lock):
    """beat() rewrote the lock without checking it was still its own, so a run whose folder was
    taken (its machine suspended past the patience) went on for ever beside the new owner. The
    timer stops rewriting, the run stops at its next check, and leaves the new owner's lock."""
    held = RunFolder(tmp_path).__enter__()
    lock = tmp_path / RunFolder.LOCK
    lock.write_text(json.dumps({"pid": 4242, "host": "thief", "token": "other", "count": 1}))
    time.sleep(0.5)
    with pytest.raises(CheckpointError, match=r"was taken over by process 4242 on thief.*stops"):
        held.check()
    held.__exit__(None, None, None)
    assert json.loads(lock.read_text())["host"] == "thief"


def test_the_lock_is_kept_alive_by_a_timer_while_testing_too(tmp_path, quick_lock):
    """The lock was refreshed every log_every steps and never while testing (73 s gaps in an
    epoch of 6 slow steps). A timer rewrites it every BEAT, whatever the run is doing."""
    with RunFolder(tmp_path):
        lock = tmp_path / RunFolder.LOCK
        first = json.loads(lock.read_text())["count"]
        time.sleep(0.55)  # the main thread busy elsewhere (a long test pass)
        assert json.loads(lock.read_text())["count"] >= first + 3
    assert not lock.exists()


def test_a_dead_local_process_is_taken_over_in_one_line_and_odd_locks_are_named(
        tiny, tmp_path, capsys, quick_lock):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True).stdout.strip()
    lock = tmp_path / RunFolder.LOCK
    lock.write_text(json.dumps({"pid": int(ended), "host": socket.gethostname()}))
    eva.fit(Tiny(), *loaders(tiny), cfg(epochs=1, checkpoint_dir=tmp_path), progress=False)
    assert (f"Took over {tmp_path} from process {ended} on this machine, which has ended."
            in capsys.readouterr().out)
    lock.mkdir()
    with pytest.raises(CheckpointError, match=r"\.eva-run\.lock is a folder, not eva's lock "
                                              r"file. Fix: remove it"):
        eva.fit(Tiny(), *loaders(tiny), cfg(epochs=1, checkpoint_dir=tmp_path), resume=True,
                progress=False)
    lock.rmdir()
    lock.write_text("")  # a lock created and never written (its process killed at once)
    eva.fit(Tiny(), *loaders(tiny), cfg(epochs=1, checkpoint_dir=tmp_path), resume=True,
            progress=False)
    assert "Took over" in capsys.readouterr().out and not lock.exists()
