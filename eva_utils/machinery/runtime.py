"""Where a model runs and how it is handled there: device, batches moved to it, seeding, eval mode
(the arithmetic it runs in: ``precision``)."""
from __future__ import annotations

import os
import platform
import random
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn


class TrainingError(RuntimeError):
    """Training or evaluation cannot go on; the message says why and what to change."""


def get_device(preferred: str | torch.device | None = None) -> torch.device:
    """``preferred`` if given (an error if this machine lacks it), else CUDA, else Apple's MPS,
    else CPU."""
    if preferred is not None:
        device = torch.device(preferred)
        mps = getattr(torch.backends, "mps", None)
        missing = ((device.type == "cuda" and not torch.cuda.is_available())
                   or (device.type == "mps" and not (mps is not None and mps.is_available())))
        if missing or (device.type == "cuda" and device.index is not None
                       and device.index >= torch.cuda.device_count()):
            raise TrainingError(f"device={str(preferred)!r}, but this machine has no such device. "
                                "Fix: leave device out (eva picks CUDA, then MPS, then the CPU), "
                                "or in Colab choose Runtime > Change runtime type > T4 GPU.")
        if device.type == "cuda" and device.index is None:
            return local_cuda()  # "cuda" under torchrun: this process's own GPU
        return device
    if torch.cuda.is_available():
        return local_cuda()  # cuda, or under torchrun this process's own GPU
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def torchrun_place() -> tuple[int, int, int]:
    """(RANK, LOCAL_RANK, WORLD_SIZE) as torchrun sets them; (0, 0, 1) in a plain run. One
    TrainingError, naming the variables, if they cannot be torchrun's (a RANK left in the shell).
    (Here, not in ``distributed``: the web app carries this module and no training code.)"""
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
    given = {n: os.environ.get(n) for n in names}
    try:
        rank, local, size = (int(given[n] or d) for n, d in zip(names, ("0", "0", "1")))
        problem = ("WORLD_SIZE must be 1 or more" if size < 1 else
                   "RANK must be from 0 to WORLD_SIZE - 1" if not 0 <= rank < size else
                   "LOCAL_RANK must be 0 or more" if local < 0 else "")
    except ValueError:
        problem = "each must be a whole number"
    if problem:
        shown = ", ".join(f"{n}={v!r}" for n, v in given.items() if v is not None)
        raise TrainingError(f"torchrun's variables say {shown}: {problem}. Left in the shell from "
                            "another run? Fix: unset RANK LOCAL_RANK WORLD_SIZE for a plain run, "
                            "or start the script with torchrun.")
    return rank, local, size


def local_cuda() -> torch.device:
    """This process's GPU: cuda:LOCAL_RANK when torchrun started several processes, else cuda."""
    _, local, size = torchrun_place()
    return torch.device("cuda") if size == 1 else torch.device("cuda", local)


def device_name(device: torch.device | str) -> str:
    """A readable name for reports, e.g. "NVIDIA H100 80GB HBM3" or "cpu: AMD EPYC, 2 threads":
    CPU results differ 2-3x between processor kinds, so a CPU record names its model too."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    # Linux names the processor in /proc/cpuinfo; platform.processor() often says only "x86_64"
    model = cpuinfo("model name") or platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    return f"cpu: {model}, {threads} thread{'s' * (threads != 1)}"


def cpuinfo(field: str) -> str:
    """The first ``field`` line's value in Linux's /proc/cpuinfo; "" elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@contextmanager
def tuned_convolutions(device: torch.device):
    """Inside the block, on CUDA, cuDNN times its convolution algorithms once per input shape and
    keeps the fastest (every batch of our loaders has one size, but the last test batch), unless
    the user asked for deterministic algorithms (``torch.use_deterministic_algorithms(True)``),
    which benchmarking would undo. The process's setting is restored after it."""
    before = torch.backends.cudnn.benchmark
    if device.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    """A batch on ``device`` in the run's layout. Both layouts are set explicitly: a batch that
    arrives channels-last-strided (TensorLoader's un-augmented batches are views of HWC images)
    would otherwise make every convolution of an NCHW model run in NHWC. Only a copy from the host
    is asynchronous: a copy to the host may return before its bytes have landed."""
    device = torch.device(device)
    x = x.to(device, non_blocking=x.device.type == "cpu" != device.type)
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return x, y.to(device, non_blocking=y.device.type == "cpu" != device.type)


def check_weights(model: nn.Module) -> None:
    """One error unless ``model``'s weights hold numbers (not the meta device's placeholders) and
    its floating-point weights are float32, as the loaders' images are (mixed precision is
    autocast's business, not the weights')."""
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        raise ValueError("The model's weights are on the meta device: shapes without numbers, "
                         "nothing to compute with. Fix: build the model on a real device, or give "
                         "it weights, e.g. model.to_empty(device=\"cpu\") and then "
                         "model.load_state_dict(state).")
    weights = next((p for p in model.parameters() if p.is_floating_point()), None)
    if weights is not None and weights.dtype != torch.float32:
        raise TypeError(f"The model's weights are {weights.dtype}; the loaders' images are float32. "
                        "Fix: model.float() (mixed precision is TrainConfig(amp=...), not "
                        "model.half() or model.double()).")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every GPU). Loaders carry their own seeds."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds CUDA and MPS


@contextmanager
def kept_modes(model: nn.Module):
    """Give every submodule its own train/eval mode back when the block ends (a caller's frozen
    ``layer1.eval()`` inside a training model stays frozen; ``model.train(mode)`` would not)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def eval_mode(model: nn.Module):
    """``model`` in eval mode inside the block; every submodule's own mode restored after it."""
    with kept_modes(model):
        model.eval()
        yield model
