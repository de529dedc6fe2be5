"""What only a GPU shows (marked `cuda`, skipped without one; `scripts/gpu_check.sh` runs them):
resume after a killed process, the range test on the data's device, float16 with a loss scaler as on
a T4, bfloat16, Lightning's deterministic mode, and DDP over NCCL with two GPUs or more. The CPU
tests mock what differs on a GPU; these run it."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import eva_utils as eva
from test_train import same_run

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TRAIN = '''
import os, signal, sys
import torch
import eva_utils as eva
import eva_utils.train
torch.use_deterministic_algorithms(True)  # exact comparisons between processes
folder, die = sys.argv[1], sys.argv[2] == "die"
if die:  # killed (SIGKILL: no clean-up) two steps into epoch 2, after epoch 1's checkpoint
    to_device, steps = eva_utils.train.to_device, []
    def dying(*args):
        if os.path.exists(os.path.join(folder, "last.pt")):
            steps.append(1)
            if len(steps) > 2:
                os.kill(os.getpid(), signal.SIGKILL)
        return to_device(*args)
    eva_utils.train.to_device = dying
data = eva.synthetic_data(train=512, test=256, seed=1)
train = eva.TensorLoader(data.train_images, data.train_labels, data.mean, data.std, 32, train=True,
                         augment=eva.Augment(pad=4, flip=True, cutout=8))
test = eva.TensorLoader(data.test_images, data.test_labels, data.mean, data.std, 128, train=False)
eva.seed_everything(0)
model = eva.CustomResNet(num_classes=10, logit_scale=0.125)
config = eva.TrainConfig(epochs=3, lr=0.1, checkpoint_dir=folder)
history = eva.fit(model, train, test, config, resume=True, progress=False)
print("precision", history.precision[-1], "devices", sorted(set(history.devices)))
'''


def train(folder, how="live"):
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}  # cuBLAS's deterministic mode
    return subprocess.run([sys.executable, "-c", TRAIN, str(folder), how], capture_output=True,
                          text=True, timeout=600, env=env, cwd=ROOT)


def test_a_killed_run_resumes_on_the_gpu_to_an_unbroken_runs_weights(tmp_path):
    killed = train(tmp_path / "cut", "die")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert eva.load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    for folder in ("cut", "whole"):
        done = train(tmp_path / folder)
        assert done.returncode == 0, done.stderr[-3000:]
    assert "precision bfloat16" in done.stdout or torch.cuda.get_device_capability()[0] < 8
    same_run(eva.load_checkpoint(tmp_path / "cut" / "last.pt"),
             eva.load_checkpoint(tmp_path / "whole" / "last.pt"))


def loaders(device="cuda", batch=32):
    data = eva.synthetic_data(train=512, test=256, seed=1)
    return (eva.TensorLoader(data.train_images, data.train_labels, data.mean, data.std, batch,
                             train=True, device=device),
            eva.TensorLoader(data.test_images, data.test_labels, data.mean, data.std, 128,
                             train=False, device=device))


def test_the_range_test_runs_on_the_datas_gpu_for_a_model_on_the_cpu():
    model = eva.CustomResNet(num_classes=10)  # built on the CPU, as notebook 04 does
    seen = []
    model.prep[0].register_forward_hook(lambda m, i, out: seen.append((out.device.type, out.dtype)))
    train, _ = loaders()
    found = eva.lr_range_test(model, train, num_iter=10, verbose=False)
    assert set(seen) == {("cuda", eva.machinery.precision.amp_dtype(torch.device("cuda"), None))}
    assert next(model.parameters()).device.type == "cpu"  # handed back where it was
    assert 1e-5 <= found.suggested_lr <= 10


@pytest.mark.parametrize("capability, precision", [((7, 5), "float16"), (None, "bfloat16")])
def test_fit_trains_in_the_gpus_precision(monkeypatch, capability, precision):
    """(7, 5): float16 with a loss scaler, as on a T4 (this GPU told it is one); None: this GPU's own
    choice, bfloat16 from Ampere on."""
    if capability:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    elif torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("this GPU predates bfloat16")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. lr_scheduler.step() before optimizer.step()
        history = eva.fit(eva.CustomResNet(num_classes=10), *loaders(),
                          eva.TrainConfig(epochs=3, lr=0.1), progress=False)
    assert history.precision == [precision] * 3 and history.layout == ["NHWC"] * 3
    assert history.train_loss[-1] < history.train_loss[0]


@pytest.mark.parametrize("make", [eva.CustomResNet, eva.SmallResNet, eva.PlainCNN, eva.ResNet18])
def test_lightning_trains_every_model_deterministically(make, tmp_path):
    L = pytest.importorskip("lightning", reason="the optional extra: pip install lightning")
    from eva_utils.lightning import EvaDataModule, EvaModule, trainer_precision
    cfg = eva.TrainConfig(epochs=1, lr=0.05)
    run = L.Trainer(max_epochs=1, accelerator="gpu", devices=1, deterministic=True, logger=False,
                    precision=trainer_precision(cfg), enable_checkpointing=False,
                    enable_progress_bar=False, default_root_dir=tmp_path)
    run.fit(EvaModule(make(num_classes=10), cfg), EvaDataModule(*loaders("cpu")))
    assert run.callback_metrics["val_loss"].isfinite()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_over_nccl_trains_as_one_process(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from test_distributed import SCRIPT
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "two"
    out.mkdir()
    ran = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", str(script), str(out)],
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    h = json.loads((out / "history-0.json").read_text())
    assert len(h["test_acc"]) == 2 and all(d.startswith("NVIDIA") for d in h["devices"])


def test_a_cpu_model_scores_a_gpu_loader_as_it_scores_a_cpu_one():
    """Copies to the host are synchronous: with the GPU kept busy first (torch.cuda._sleep), an
    asynchronous copy would hand the CPU model bytes that have not landed yet."""
    torch.manual_seed(0)
    model = eva.CustomResNet(num_classes=10)
    _, on_gpu = loaders("cuda")
    _, on_cpu = loaders("cpu")
    want = eva.evaluate(model, on_cpu, amp=False)
    torch.cuda._sleep(1_000_000_000)  # about a second of GPU cycles queued before the copies
    assert eva.evaluate(model, on_gpu, amp=False) == want


def test_a_bfloat16_run_resumes_on_a_t4_in_float16(tmp_path, monkeypatch):
    """Begun in bfloat16 (this GPU, Ampere or later), resumed as on a T4 (capability patched):
    float16 with a fresh loss scaler, not torch's "source state dict is empty"."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("this GPU predates bfloat16")
    train, test = loaders()
    config = eva.TrainConfig(epochs=2, lr=0.05, checkpoint_dir=str(tmp_path))
    with pytest.raises(eva.BudgetSpent):
        eva.fit(eva.CustomResNet(num_classes=10), train, test, config, time_budget=1e-9,
                progress=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    history = eva.fit(eva.CustomResNet(num_classes=10), train, test, config, resume=True,
                      progress=False)
    assert history.precision == ["bfloat16", "float16"]


def test_a_sweep_kept_on_the_gpu_is_the_cpus_too(tmp_path, capsys):
    """The kept range test belongs to the model, data, loss and sweep, not the device: swept on
    the GPU, loaded on the CPU (the same loader's images there)."""
    data = eva.synthetic_data(train=512, test=256, seed=1)
    kw = dict(num_iter=10, verbose=True, checkpoint_dir=tmp_path)
    on_gpu = eva.lr_range_test(eva.PlainCNN(num_classes=10), eva.TensorLoader(
        data.train_images, data.train_labels, data.mean, data.std, 32, train=True,
        device="cuda"), **kw)
    capsys.readouterr()
    on_cpu = eva.lr_range_test(eva.PlainCNN(num_classes=10), eva.TensorLoader(
        data.train_images, data.train_labels, data.mean, data.std, 32, train=True), **kw)
    assert on_cpu == on_gpu and "loaded from" in capsys.readouterr().out


def test_device_arguments_on_a_gpu(tmp_path):
    """evaluate refuses a device the model is not on; Classifier.load puts the model there."""
    pytest.importorskip("safetensors")
    model = eva.PlainCNN(num_classes=10)
    _, test = loaders("cpu")
    with pytest.raises(ValueError, match=r"device='cuda', but the model's weights are on cpu"):
        eva.evaluate(model, test, device="cuda")
    assert eva.evaluate(model.to("cuda"), test, device="cuda") == eva.evaluate(model, test)
    eva.Classifier(model.cpu(), [str(i) for i in range(10)], (0.5,) * 3, (0.25,) * 3,
                   (32, 32)).save(tmp_path)
    loaded = eva.Classifier.load(tmp_path, device="cuda")
    assert next(loaded.model.parameters()).is_cuda


def test_after_running_out_of_memory_a_smaller_batch_trains_in_the_same_process():
    """The friendly error no longer keeps the failed step's activations alive: the memory comes
    back, and the smaller batch the message suggests trains in the same process (a notebook)."""
    data = eva.synthetic_data(train=64, test=64, seed=1)
    free = torch.cuda.mem_get_info()[0]
    side = int((free / 4 / 3 / 16) ** 0.5)  # one batch of 16 images whose activations cannot fit
    huge = torch.nn.functional.interpolate(torch.from_numpy(data.train_images[:16]).permute(
        0, 3, 1, 2).float(), size=side).permute(0, 2, 3, 1).to(torch.uint8).numpy()
    train = eva.TensorLoader(huge, data.train_labels[:16], data.mean, data.std, 16, train=True)
    test = eva.TensorLoader(huge[:2], data.train_labels[:2], data.mean, data.std, 2, train=False)
    before = torch.cuda.memory_allocated()
    with pytest.raises(eva.TrainingError, match="ran out of memory") as info:
        eva.fit(eva.PlainCNN(num_classes=10), train, test, eva.TrainConfig(epochs=1, lr=0.05),
                progress=False)
    assert info.value.__context__ is None
    assert torch.cuda.memory_allocated() - before < 2**30
    small, test = loaders()
    history = eva.fit(eva.PlainCNN(num_classes=10), small, test, eva.TrainConfig(epochs=1,
                      lr=0.05), progress=False)
    assert len(history) == 1


def test_export_app_takes_a_gpu_model(tmp_path):
    """Compared with its rebuild on the CPU, where the app answers: TF32 convolutions on the GPU
    (Ampere on) no longer refuse a correct model."""
    pytest.importorskip("gradio")
    torch.backends.cudnn.allow_tf32 = True
    data = eva.synthetic_data(train=64, test=40, seed=1)
    train = eva.TensorLoader(data.train_images, data.train_labels, data.mean, data.std, 16,
                             train=True, classes=data.classes)
    test = eva.TensorLoader(data.test_images, data.test_labels, data.mean, data.std, 40,
                            train=False, classes=data.classes)
    model = eva.CustomResNet(num_classes=10)
    eva.fit(model, train, test, eva.TrainConfig(epochs=1, lr=0.05), progress=False)
    assert next(model.parameters()).is_cuda
    folder = eva.export_app(model, data, eva.predict(model, test, data.classes), tmp_path / "app")
    assert (folder / "model.safetensors").is_file()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_with_device_cuda_resumes_every_node_from_rank_0(tmp_path):
    """device="cuda" under torchrun is each process's own GPU, and a node-local checkpoint folder
    resumes every process from rank 0's checkpoint, to an unbroken run's weights."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_distributed import NODE_LOCAL
    script = tmp_path / "train.py"
    script.write_text("import torch\ntorch.use_deterministic_algorithms(True)\n"
                      + NODE_LOCAL.replace("progress=False)", 'progress=False, device="cuda")'))
    ran = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", str(script), str(tmp_path)],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert [json.loads((tmp_path / f"done-{r}.json").read_text()) for r in (0, 1)] == [[1], [1]]
