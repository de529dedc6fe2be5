"""fit under torchrun: shares of every epoch, exact equivalence with one process (2 gloo processes on
the CPU, a model without batch norm), identical weights in both, one writer, the range test shared
and kept, and a resumed run; the example script under torchrun."""
import json
import runpy
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

import eva_utils as eva

ROOT = Path(__file__).resolve().parent.parent
N = 120


def indexed(n=N):
    """Images whose pixels spell their own index, so a batch tells which images it holds."""
    images = np.zeros((n, 4, 4, 3), np.uint8)
    images[..., 0], images[..., 1] = (np.arange(n) % 256)[:, None, None], (np.arange(n) // 256)[:, None, None]
    return images, np.arange(n) % 4


def seen(loader, epoch):
    loader.set_epoch(epoch)
    return [sorted((torch.round(x[:, 0, 0, 0] * 255) + 256 * torch.round(x[:, 1, 0, 0] * 255))
                   .long().tolist()) for x, _ in loader]


@pytest.mark.parametrize("kind", ["tensor", "albumentations"])
def test_each_process_sees_a_disjoint_share_of_every_global_batch(monkeypatch, kind):
    images, labels = indexed()

    def loader(train, procs=1, rank=0, seed=3):
        monkeypatch.setenv("WORLD_SIZE", str(procs))
        monkeypatch.setenv("RANK", str(rank))
        make = eva.TensorLoader if kind == "tensor" else eva.make_loader
        extra = {} if kind == "tensor" else {"num_workers": 0}
        with pytest.warns(UserWarning, match="6 steps an epoch") if train else nullcontext():
            return make(images, labels, (0, 0, 0), (1, 1, 1), 20 if train else 25, train=train,
                        seed=seed, **extra)

    for train in (True, False):
        whole = loader(train)
        shares = [loader(train, 2, rank) for rank in (0, 1)]
        assert len(shares[0]) == len(shares[1])  # every process takes the same number of steps
        for epoch in (0, 1):
            parts = [seen(s, epoch) for s in shares]
            flat = [i for part in parts for batch in part for i in batch]
            assert len(flat) == len(set(flat))  # disjoint
            if train:
                assert all(len(b) == 10 for part in parts for b in part)  # global batch 20
                if kind == "tensor":  # the slices of the one-process run's batches
                    assert [sorted(a + b) for a, b in zip(*parts)] == seen(whole, epoch)
                assert parts == [seen(loader(True, 2, r), epoch) for r in (0, 1)]  # reproducible
            else:  # the test split once, in all
                assert sorted(flat) == list(range(N))
    with pytest.raises(ValueError, match="batch_size=21 is the global batch.*multiple of 2"), \
            pytest.warns(UserWarning, match="5 steps an epoch"):
        monkeypatch.setenv("WORLD_SIZE", "2")
        eva.TensorLoader(images, labels, (0, 0, 0), (1, 1, 1), 21, train=True)


SCRIPT = '''
import json, os, sys, warnings
from dataclasses import asdict
from pathlib import Path
import torch
from torch import nn
import eva_utils as eva
import eva_utils.machinery.run_folder

out = Path(sys.argv[1])
rank = int(os.environ.get("RANK", 0))
saved = eva_utils.machinery.run_folder.atomic_save
def counted(state, path):  # which process writes checkpoints
    with open(out / f"saves-{rank}.txt", "a") as f:
        f.write(f"{path.name}\\n")
    saved(state, path)
eva_utils.machinery.run_folder.atomic_save = counted

data = eva.synthetic_data(train=240, test=101, seed=1)  # 101: shares of 51 and 50
eva.seed_everything(0)
model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(8, 10))  # no batch norm: its statistics are per process
train = eva.TensorLoader(data.train_images, data.train_labels, data.mean, data.std, 40, train=True)
test = eva.TensorLoader(data.test_images, data.test_labels, data.mean, data.std, 30, train=False)
# float32 pinned: one process and two are compared to 1e-4, which bfloat16 (the default on an AMX
# CPU) cannot meet when the gradients are summed in another order.
config = eva.TrainConfig(epochs=2, lr=0.05, schedule="onecycle", seed=0, amp=False,
                         checkpoint_dir=str(out / "checkpoints"))
with warnings.catch_warnings():  # a 6-step sweep: where it is shared matters, not its picks
    warnings.simplefilter("ignore")
    found = eva.lr_range_test(model, train, num_iter=6, verbose=eva.is_main(), amp=False,
                              checkpoint_dir=config.checkpoint_dir)  # rank 0 sweeps, all take it
history = eva.fit(model, train, test, config)
torch.save(model.state_dict(), out / f"weights-{rank}.pt")
(out / f"history-{rank}.json").write_text(json.dumps(asdict(history)))
# The same code run again: every process loads the stored range test and resumes the finished run.
again = eva.lr_range_test(model, train, num_iter=6, verbose=eva.is_main(), amp=False,
                          checkpoint_dir=config.checkpoint_dir)
resumed = eva.fit(model, train, test, config, resume=True)
assert again.suggested_lr == found.suggested_lr and resumed.test_acc == history.test_acc
eva.distributed.stop()
'''


def test_two_gloo_processes_train_as_one(tmp_path, monkeypatch):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    # One process: this one (a process fewer to start); the script's counting atomic_save is undone.
    import eva_utils.machinery.run_folder
    monkeypatch.setattr(eva_utils.machinery.run_folder, "atomic_save", eva_utils.machinery.run_folder.atomic_save)
    monkeypatch.setattr(sys, "argv", [str(script), str(one)])
    with pytest.warns(UserWarning, match="6 steps an epoch"):  # small on purpose: shares of 20
        runpy.run_path(str(script), run_name="__main__")
    ran = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", str(script), str(two)],
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    printed = ran.stdout + ran.stderr
    assert printed.count("epoch   2  train loss") == 2  # only rank 0 prints: trained, replayed
    assert printed.count("Resumed from") == 1 and printed.count("LR range test: loaded from") == 1
    kept = sorted(p.name for p in (two / "checkpoints").iterdir())
    assert kept == ["best.pt", "last.pt", "range_test.json"]
    assert not (two / "saves-1.txt").exists() and (two / "saves-0.txt").exists()
    w1, w2a, w2b = (torch.load(p, weights_only=True) for p in
                    (one / "weights-0.pt", two / "weights-0.pt", two / "weights-1.pt"))
    for name in w1:
        assert torch.equal(w2a[name], w2b[name]), name  # both processes hold the same weights
        torch.testing.assert_close(w2a[name], w1[name], rtol=1e-4, atol=1e-6, msg=name)
    h1, h2 = (json.loads((d / "history-0.json").read_text()) for d in (one, two))
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert h2[key] == pytest.approx(h1[key], rel=1e-4), key  # test: all 101 images, once


def test_the_example_script_trains_under_torchrun(tmp_path):
    """examples/train_folder.py at smoke size: 2 CPU processes, the streaming loader, a torchvision
    ResNet, the range test shared from rank 0, one record and one figure; resumable (its wiring)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from lr_rules import draw_shapes
    draw_shapes(tmp_path / "shapes", size=16, gray=False, per_class=(16, 4))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               "2", str(ROOT / "examples" / "train_folder.py"), str(tmp_path / "shapes"),
               "--stream", "--workers", "0", "--epochs", "2", "--batch-size", "8",
               "--image-size", "16", "--checkpoint-dir", str(tmp_path / "ckpt"), "--out", str(out)]
    ran = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    record = json.loads((out / "record.json").read_text())
    assert record["processes"] == 2 and len(record["seconds_per_epoch"]) == 2
    assert (out / "curves.png").exists() and (tmp_path / "ckpt" / "range_test.json").exists()
    assert ran.stdout.count("test accuracy") == 1  # rank 0 alone reports
    # Run again, it resumes: its range test and fit keep to --checkpoint-dir (all processes
    # resuming a run and loading a stored range test is the gloo test's, above).
    code = (ROOT / "examples" / "train_folder.py").read_text()
    assert "checkpoint_dir=args.checkpoint_dir).suggested_lr" in code
    assert ("checkpoint_dir=args.checkpoint_dir)\n"
            "    history = eva.fit(model, train, test, config, resume=True)") in code


NODE_LOCAL = '''
import json, os, sys, warnings
from pathlib import Path
import torch
from torch import nn
import eva_utils as eva

out, rank = Path(sys.argv[1]), int(os.environ["RANK"])
data = eva.synthetic_data(train=240, test=100, seed=1)
train = eva.TensorLoader(data.train_images, data.train_labels, data.mean, data.std, 40, train=True)
test = eva.TensorLoader(data.test_images, data.test_labels, data.mean, data.std, 50, train=False)

def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))

def config(folder):  # each process's own folder: a node-local disk, as on two machines
    return eva.TrainConfig(epochs=3, lr=0.05, seed=0, amp=False, checkpoint_dir=str(folder))

whole = model()
eva.fit(whole, train, test, config(out / f"whole-{rank}"), progress=False)
try:  # a first stretch: one epoch, then the budget stops every process
    eva.fit(model(), train, test, config(out / f"cut-{rank}"), time_budget=1e-9, progress=False)
except eva.BudgetSpent:
    pass
cut = model()
history = eva.fit(cut, train, test, config(out / f"cut-{rank}"), resume=True, progress=False)
for a, b in zip(cut.state_dict().values(), whole.state_dict().values()):
    assert torch.equal(a, b)
(out / f"done-{rank}.json").write_text(json.dumps(history.resumed_at))
eva.distributed.stop()
'''


def test_a_run_resumes_on_every_node_from_rank_0s_checkpoint(tmp_path):
    """With a node-local checkpoint folder only rank 0's node holds last.pt: each process decided
    on its own, node 1 started from scratch after DDP's one broadcast, the replicas diverged and
    hung in an all-reduce. Rank 0 decides and sends its checkpoint; the restore comes before DDP's
    broadcast; both finish as an unbroken run."""
    script = tmp_path / "train.py"
    script.write_text(NODE_LOCAL)
    ran = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", str(script), str(tmp_path)],
                         capture_output=True, text=True, timeout=240)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert [json.loads((tmp_path / f"done-{r}.json").read_text()) for r in (0, 1)] == [[1], [1]]
    assert not (tmp_path / "cut-1" / "last.pt").exists()  # rank 1's node never held one


@pytest.mark.parametrize("env, words", [
    ({"RANK": "1", "WORLD_SIZE": "1"}, r"RANK='1', WORLD_SIZE='1': RANK must be from 0 to WORLD_SIZE - 1"),
    ({"WORLD_SIZE": "0"}, r"WORLD_SIZE='0': WORLD_SIZE must be 1 or more"),
    ({"WORLD_SIZE": "abc"}, r"WORLD_SIZE='abc': each must be a whole number"),
    ({"WORLD_SIZE": "-2"}, r"WORLD_SIZE='-2': WORLD_SIZE must be 1 or more"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, r"WORLD_SIZE=2, but MASTER_ADDR and MASTER_PORT not set"),
])
def test_torchruns_variables_are_checked(monkeypatch, tiny, env, words):
    """A RANK left in a shell gave an IndexError in loaders.py, WORLD_SIZE=0 a ZeroDivisionError,
    'abc' int()'s ValueError, -2 torch's "number of sections", a missing MASTER_ADDR torch's
    rendezvous error: one message naming the variables instead."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(eva.TrainingError, match=words + r".*Fix: "):
        train = eva.TensorLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 20,
                                 train=True)
        eva.fit(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)), train,
                eva.TensorLoader(tiny.test_images, tiny.test_labels, tiny.mean, tiny.std, 50,
                                 train=False), eva.TrainConfig(epochs=1, lr=0.1), progress=False)


def test_a_process_that_never_comes_is_named_after_a_timeout(monkeypatch):
    """A missing second process hung without a word: the first waits MEET_WITHIN seconds, then
    says where it waited and for how many."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setattr(eva.distributed, "MEET_WITHIN", 2.0)
    with pytest.raises(eva.TrainingError, match=rf"Process 0 of 2 waited 2 s at 127.0.0.1:{port} "
                                                r"and not every process came.*Fix: start all 2"):
        eva.distributed.start(torch.device("cpu"))
    assert not torch.distributed.is_initialized()
