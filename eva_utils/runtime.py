"""Where and how a model runs: device, mixed-precision type, memory layout, seeding, eval mode."""
from __future__ import annotations

import platform
import random
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .distributed import local_cuda


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
        return device
    if torch.cuda.is_available():
        return local_cuda()  # cuda, or under torchrun this process's own GPU
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_name(device: torch.device | str) -> str:
    """A readable name for reports, e.g. "NVIDIA H100 80GB HBM3" or "cpu: AMD EPYC, 2 threads":
    CPU results differ 2-3x between processor kinds, so a CPU record names its model too."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    model = platform.processor() or platform.machine()
    try:  # Linux names the processor here; platform.processor() often says only "x86_64"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"cpu: {model}, {threads} thread{'s' * (threads != 1)}"


def amp_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """The autocast type for ``device``, or None for full float32.

    ``amp=None`` means on for CUDA only. bfloat16 needs no loss scaling, but only GPUs of compute
    capability 8.0+ (Ampere on) run it natively: on a T4 (7.5), ``torch.cuda.is_bf16_supported()``
    says True through emulation, which is slower than float32. Older GPUs get float16 + GradScaler.
    """
    if device.type != "cuda" or amp is False:
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def use_channels_last(device: torch.device, channels_last: bool | None) -> bool:
    """``channels_last=None``: NHWC on CUDA (tensor cores want it), NCHW elsewhere. On 2-core CPUs
    ``benchmarks/channels_last.py`` has found NHWC 17-30 % faster for every model (an AMD EPYC, in
    results/channels_last.json) and 14 % slower for CustomResNet (another AMD EPYC, under load): it
    depends on the machine, and the committed CPU runs trained in NCHW, so that stays the default."""
    return device.type == "cuda" if channels_last is None else channels_last


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


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
