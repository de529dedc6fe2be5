"""The Colab workflow, rehearsed on the CPU: notebook 04 at smoke size, run as Colab runs it, its
checkpoints on "Drive"; the VM dies in the middle of an epoch; a new VM (another hostname) runs all
again and the run continues from the last finished epoch, to the weights of an unbroken run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

import eva_utils as eva
from eva_utils.machinery.checkpoint import load_checkpoint
from eva_utils.machinery.run_folder import RunFolder
from eva_utils.serve import main as serve
from test_resume import ROOT, same_run, up_to_the_record

AS_COLAB = '''
# What Colab is, as far as the notebook can tell: google.colab imported, pip reaching GitHub (the
# package is installed here already), and this VM's name.
import socket, subprocess, sys, types
sys.modules["google.colab"] = types.ModuleType("google.colab")
subprocess.check_call = lambda *args, **kwargs: 0
socket.gethostname = lambda: {host!r}
# Drive's timings scaled down a hundredfold: the lock is rewritten every 0.15 s and a silent one is
# taken over after 1.2 s of watching (2 minutes by default).
from eva_utils.machinery.run_folder import RunFolder
RunFolder.BEAT, RunFolder.DELAY, RunFolder.SAY_EVERY = 0.15, 0.9, 0.3
'''

DIES_IN_EPOCH_2 = '''
# The VM dies in the middle of epoch 2: two steps after epoch 1's checkpoint, training stops here
# and the test kills the kernel (SIGKILL: no clean-up runs).
import pathlib, time
import eva_utils.train
_to_device, _steps = eva_utils.train.to_device, []
def to_device(*args):
    if pathlib.Path({last!r}).exists():
        _steps.append(1)
        if len(_steps) > 2:
            pathlib.Path({marker!r}).touch()
            time.sleep(3600)
    return _to_device(*args)
eva_utils.train.to_device = to_device
'''


def as_colab(path: Path, out: Path, host: str, extra: str = "") -> Path:
    """``path`` with a first cell that makes its kernel look like a Colab VM named ``host``."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(AS_COLAB.format(host=host) + extra))
    nbformat.write(nb, out)
    return out


def papermill(notebook: Path, out: Path, drive: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "papermill", "--no-progress-bar", str(notebook),
                             str(out), "-p", "CHECKPOINT_DIR", str(drive)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_colab_disconnect_then_run_all_again(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_SMOKE", "1")  # the kernels inherit these
    monkeypatch.setenv("EVA_DATA_DIR", os.environ.get("EVA_DATA_DIR", str(ROOT / "data")))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one core each, the same arithmetic in every run
    short = up_to_the_record(ROOT / "notebooks" / "04_custom_resnet.ipynb", tmp_path)
    drive, whole = tmp_path / "drive" / "MyDrive" / "eva" / "04", tmp_path / "whole"
    marker = tmp_path / "killed-in-epoch-2"
    unbroken = papermill(as_colab(short, tmp_path / "unbroken.ipynb", "vm-0"), tmp_path / "0.ipynb",
                         whole)
    dying = as_colab(short, tmp_path / "dying.ipynb", "vm-1",
                     DIES_IN_EPOCH_2.format(last=str(drive / "last.pt"), marker=str(marker)))
    first = papermill(dying, tmp_path / "1.ipynb", drive, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not marker.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), first.communicate()[0][-3000:] if first.poll() is not None else ""
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # papermill and its kernel: the VM is gone
        first.wait()
    assert load_checkpoint(drive / "last.pt")["epoch"] == 1
    lock = drive / RunFolder.LOCK
    assert json.loads(lock.read_text())["host"] == "vm-1"  # left behind on Drive
    # The student reconnects at once (a minute, scaled down as the lock's timings are), on a new VM.
    second = papermill(as_colab(short, tmp_path / "again.ipynb", "vm-2"), tmp_path / "2.ipynb", drive)
    log, _ = second.communicate(timeout=600)
    assert second.returncode == 0, log[-3000:]
    log0, _ = unbroken.communicate(timeout=600)
    assert unbroken.returncode == 0, log0[-3000:]
    text = "".join(o.get("text", "") for c in nbformat.read(tmp_path / "2.ipynb", as_version=4).cells
                   if c.cell_type == "code" for o in c.outputs)
    assert f"{drive} is held by process" in text and "on vm-1, which may have disconnected" in text
    assert "s; taken over in " in text  # it waited in place, saying how long
    assert f"Took over {drive} from process" in text and "on vm-1, whose lock did not change" in text
    assert "LR range test: loaded from" in text and "after epoch 1 of 2" in text
    assert not lock.exists()
    same_run(load_checkpoint(drive / "last.pt"), load_checkpoint(whole / "last.pt"))
    # The README's command serves a notebook's checkpoint (whose loaders name no classes: they
    # come from --data).
    if not (Path(os.environ["EVA_DATA_DIR"]) / "train").is_dir():
        pytest.skip("the notebook ran on stand-in data: serving its checkpoint needs CIFAR-10")
    serve([str(drive / "last.pt"), "--data", os.environ["EVA_DATA_DIR"], "--out",
           str(tmp_path / "space"), "--no-launch"])
    app = json.loads((tmp_path / "space" / "model.json").read_text())
    assert app["classes"] == list(eva.data.CIFAR10_CLASSES)
