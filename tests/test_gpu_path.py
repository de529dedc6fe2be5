"""The CUDA path, rehearsed on the CPU where a stand-in exists: a T4 or an A100 told apart by their
capability (patched), a checkpoint moved between them, the device contract of every ``device=``
argument, torchrun's device, and the memory kept after running out of it. tests/test_cuda.py runs
what only a real GPU can show."""
import pytest
import torch

import eva_utils as eva
import eva_utils.machinery.precision
import eva_utils.train
from eva_utils.machinery.checkpoint import load_checkpoint
from test_train import Tiny, cfg, loaders, mock_amx


def as_t4(monkeypatch):
    """This CPU stands in for a T4 (capability 7.5): bfloat16 does not run well on it, and its own
    choice is float16 with a loss scaler (``amp=False``: float32)."""
    monkeypatch.setattr(eva_utils.machinery.precision, "runs_well", lambda precision, device:
                        precision != "bfloat16")
    real = eva_utils.machinery.precision.amp_dtype
    monkeypatch.setattr(eva_utils.machinery.precision, "amp_dtype", lambda device, amp:
                        real(device, amp) if amp is False or isinstance(amp, torch.dtype)
                        else torch.float16)


@pytest.mark.parametrize("first, then, amp, want", [
    ("bfloat16", "t4", None, "float16"),     # begun on an A100 or L4, resumed on a T4
    ("bfloat16", "t4", False, "float32"),    # ... where an explicit setting decides
    ("float16", "t4", None, "float16"),      # a T4 run resumed on another T4: its scaler goes on
    ("float16", "cpu", None, "float32"),     # a T4 run resumed on a laptop
    ("float16", "bf16 cpu", None, "bfloat16"),  # ... on a CPU with native bfloat16
])
def test_every_row_of_the_precision_table_resumes_through_fit(monkeypatch, tiny, tmp_path, first,
                                                              then, amp, want):
    """A bfloat16 checkpoint resumed on a T4 crashed before its first epoch: the T4's float16 builds
    an enabled loss scaler, which refused the checkpoint's empty (disabled) scaler state. The scaler
    state is loaded from float16 to float16 only; every row of the table trains on, end to end."""
    folder = str(tmp_path)
    with monkeypatch.context() as m:  # epoch 1 in the first precision
        if first == "float16":
            as_t4(m)
        with pytest.raises(eva.BudgetSpent):
            eva.fit(Tiny(), *loaders(tiny), cfg(epochs=2, amp=True if first == "bfloat16" else None,
                                                checkpoint_dir=folder),
                    time_budget=1e-9, resume=True, progress=False)
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["precision"] == first
    if then == "t4":
        as_t4(monkeypatch)
    else:
        mock_amx(monkeypatch, then == "bf16 cpu")
    history = eva.fit(Tiny(), *loaders(tiny), cfg(epochs=2, amp=amp, checkpoint_dir=folder),
                      resume=True, progress=False)
    assert history.precision == [first, want] and len(history) == 2
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["precision"] == want
    if first == want == "float16":  # the scaler went on counting its steps where it stopped
        assert ckpt["scaler"]["_growth_tracker"] == 2 * saved["scaler"]["_growth_tracker"] > 0


class OnDevice:
    """A batch that says it lives on ``device`` (a GPU here) and records how it is copied."""

    def __init__(self, tensor, device, copies):
        self.tensor, self.device, self.copies = tensor, torch.device(device), copies

    def to(self, device, non_blocking=False):
        self.copies.append((self.device.type, torch.device(device).type, non_blocking))
        return self.tensor


def test_only_copies_from_the_host_are_asynchronous():
    """A CUDA-to-CPU copy with non_blocking=True returns pinned memory before the bytes land, and
    the next CPU operation reads stale ones: a CPU model evaluated on a GPU loader's batches got a
    plausible wrong accuracy. Host-to-device copies stay asynchronous (the GPU orders them)."""
    from eva_utils.machinery.runtime import to_device
    copies = []
    x, y = torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long)
    to_device(OnDevice(x, "cuda", copies), OnDevice(y, "cuda", copies), torch.device("cpu"), False)
    to_device(OnDevice(x, "cpu", copies), OnDevice(y, "cpu", copies), torch.device("cuda"), False)
    to_device(OnDevice(x, "cpu", copies), OnDevice(y, "cpu", copies), "cpu", True)
    assert copies == [("cuda", "cpu", False)] * 2 + [("cpu", "cuda", True)] * 2 + \
        [("cpu", "cpu", False)] * 2


def test_evaluation_refuses_a_device_the_model_is_not_on(tiny):
    """evaluate/predict/scores(device=...) sent the batches there and left the model where it was:
    torch's device-mismatch error on a GPU (the meta device stands in for it here). The model is
    never moved behind the caller's back: one message says how to do it."""
    _, test = loaders(tiny)
    model = Tiny().to("meta")
    for call in (lambda: eva.evaluate(model, test, device="cpu"),
                 lambda: eva.predict(model, test, tiny.classes, device="cpu"),
                 lambda: eva.evaluate(Tiny(), test, device="meta")):
        with pytest.raises(ValueError, match=r"device='(cpu|meta)', but the model's weights are on "
                                             r"(meta|cpu).*Fix: model.to\("):
            call()
    here = Tiny()  # the device it is on, named or not, answers the same
    assert eva.evaluate(here, test, device="cpu") == eva.evaluate(here, test)


def test_a_classifier_is_loaded_onto_its_device_before_it_is_probed(tmp_path):
    """Classifier.load(device=...) probed the model with a batch on the device while the model was
    still on the CPU (a CUDA device failed there; the meta device stands in for it)."""
    pytest.importorskip("safetensors", reason="the app's optional extra: pip install safetensors")
    classes = [f"c{i}" for i in range(10)]
    eva.Classifier(eva.PlainCNN(num_classes=10), classes, (0.5,) * 3, (0.25,) * 3,
                   (32, 32)).save(tmp_path)
    loaded = eva.Classifier.load(tmp_path, device="meta")
    assert {p.device.type for p in loaded.model.parameters()} == {"meta"}


def test_an_explicit_cuda_under_torchrun_is_this_processs_gpu(monkeypatch):
    """device="cuda" under torchrun reached torch.cuda.set_device without an index (a ValueError):
    it means this process's GPU, cuda:LOCAL_RANK, as the default does."""
    from eva_utils.machinery.runtime import get_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert get_device("cuda") == torch.device("cuda")  # one process: as given
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert get_device("cuda") == get_device(None) == torch.device("cuda", 1)
    assert get_device("cuda:0") == torch.device("cuda", 0)  # an index given is kept


def test_running_out_of_memory_lets_the_memory_go(tiny, monkeypatch):
    """The friendly error was raised inside the handler, so its __context__ held the OOM, whose
    traceback held the step's activations: Jupyter kept them, and "lower the batch size and run
    again" ran out of memory again in the same kernel. The error now comes alone, the activations
    are freed, and on CUDA the cache is emptied."""
    import weakref
    activations = []

    class Hungry(Tiny):
        def forward(self, x):
            out = super().forward(x)
            if self.training:
                big = torch.zeros(1000, 1000)  # stands in for the step's activations
                activations.append(weakref.ref(big))
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return out
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    with pytest.raises(eva.TrainingError, match="ran out of memory in epoch 1") as info:
        eva.fit(Hungry(), *loaders(tiny), cfg(), progress=False)
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert activations and activations[0]() is None
    model = Tiny()
    from eva_utils.train import train_and_test
    run = type("Run", (), {"device": torch.device("cuda"), "optimizer":
                           torch.optim.SGD(model.parameters(), lr=0.1)})()
    monkeypatch.setattr(eva_utils.train, "train_epoch", lambda *a, **k: Hungry().train()(
        torch.zeros(1, 3, 8, 8)))
    with pytest.raises(eva.TrainingError, match="cuda ran out of memory in epoch 3"):
        train_and_test(run, None, None, cfg(), 2, False)
    assert emptied == [1]


def test_notebook_04_sweeps_the_range_test_with_the_loss_it_trains_with(monkeypatch, tmp_path):
    """Label smoothing raises the whole curve (a floor near 0.87 for 0.2 and 10 classes) and moves
    its picks, so 04's sweep must use the smoothed loss its training uses, not plain cross-entropy,
    and name that floor.
    Runs 04's code cells in smoke mode on stand-in data up to the sweep, which a spy stops."""
    import nbformat
    from pathlib import Path
    from torch import nn

    monkeypatch.setenv("EVA_SMOKE", "1")
    monkeypatch.setenv("EVA_DATA_DIR", str(tmp_path))  # no images there: the synthetic stand-in
    monkeypatch.setattr("matplotlib.pyplot.show", lambda *a, **k: None)
    seen = {}

    class Swept(Exception):
        pass

    def spy(model, loader, **kwargs):
        seen.update(kwargs)
        raise Swept

    monkeypatch.setattr(eva, "lr_range_test", spy)
    path = Path(__file__).resolve().parent.parent / "notebooks" / "04_custom_resnet.ipynb"
    namespace = {}
    # the stand-in data and smoke mode's few steps an epoch, each said in a warning
    with pytest.warns(UserWarning, match="SYNTHETIC data set stands in"), \
            pytest.warns(UserWarning, match="too few to learn well"):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                source = "\n".join(line for line in cell.source.splitlines()
                                   if not line.startswith("%"))  # IPython magics
                try:
                    exec(compile(source, "04", "exec"), namespace)
                except Swept:
                    break
    criterion = seen["criterion"]
    assert isinstance(criterion, nn.CrossEntropyLoss)
    assert criterion.label_smoothing == namespace["LABEL_SMOOTHING"] == 0.2
    # and the floor that loss cannot go below, so the first minimum counts rises above it
    assert float(seen["floor"]) == pytest.approx(0.867, abs=1e-3)
