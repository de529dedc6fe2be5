"""A run's arithmetic, decided in this module: ``Precision`` (the autocast type and the memory layout),
a device's own choice of both (``amp_dtype``, ``use_channels_last``: what each device runs fast), and
which resumed precisions a device runs well (``runs_well``). ``fit`` resolves it from the device, the
config and a resumed checkpoint (``Precision.for_run``), keeps it in every epoch's record and
checkpoint, and remembers it for the model it trained (``remember``), so that ``evaluate`` and
``predict`` answer in the arithmetic the run was scored in. The range test and ``EvaModule`` take the
same rule (``Precision.choose``). (The web app answers in float32 on the CPU.)
"""
from __future__ import annotations

import weakref
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

from .checkpoint import CheckpointError, saved_precision
from .runtime import cpuinfo, device_name

LAYOUTS = {True: "NHWC (channels-last)", False: "NCHW"}
# The arithmetic each model was last trained in, kept beside the model, not on it: a model
# forgotten by the caller is forgotten here too.
TRAINED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Precision:
    """``dtype``: the autocast type (torch.bfloat16 or torch.float16), or None for float32;
    ``channels_last``: NHWC memory layout for images and weights (else NCHW)."""

    dtype: torch.dtype | None
    channels_last: bool

    @classmethod
    def choose(cls, device: torch.device, amp=None, channels_last: bool | None = None) -> "Precision":
        """``device``'s own choice (``amp_dtype``, ``use_channels_last``); an
        explicit ``amp`` (True, False or a dtype) or ``channels_last`` decides instead."""
        return cls(amp_dtype(device, amp), use_channels_last(device, channels_last))

    @classmethod
    def of(cls, model: nn.Module, device: torch.device, amp=None,
           channels_last: bool | None = None) -> "Precision":
        """The arithmetic to answer with: the one ``fit`` trained and scored ``model`` in (where
        ``device`` runs it well), else ``device``'s choice; explicit settings decide."""
        trained = TRAINED.get(model)
        if trained is None or not runs_well(trained.name, device):
            return cls.choose(device, amp, channels_last)
        dtype = trained.dtype if amp is None else amp_dtype(device, amp)
        return cls(dtype, trained.channels_last if channels_last is None else channels_last)

    def remember(self, model: nn.Module) -> None:
        """``model`` was trained in this arithmetic: ``of`` answers with it from now on."""
        TRAINED[model] = self

    @classmethod
    def for_run(cls, device: torch.device, cfg, ckpt: dict | None,
                path=None) -> tuple["Precision", str]:
        """(the run's precision, a note for a resumed run, or ""). A new run takes ``device``'s
        choice, or ``cfg.amp``/``cfg.channels_last``'s. A resumed run keeps the checkpoint's, so all
        its epochs are the same arithmetic, and refuses an explicit setting that contradicts it;
        unless this device cannot run it well (bfloat16 on a GPU before Ampere, float16 on a CPU):
        then the device's choice takes over and the note says the run is no longer bit-exact."""
        chosen = cls.choose(device, cfg.amp, cfg.channels_last)
        if ckpt is None:
            return chosen, ""
        saved, saved_nhwc = saved_precision(ckpt)
        nhwc = saved_nhwc if cfg.channels_last is None else chosen.channels_last
        if not runs_well(saved, device):
            return cls(chosen.dtype, nhwc), (
                f"The run trained in {saved}, which {device_name(device)} does not run well; it "
                f"goes on in {chosen.name}, so it is no longer bit-exact with an unbroken run.")
        problems = []
        if cfg.amp is not None and chosen.name != saved:
            problems.append(f"amp={cfg.amp} means {chosen.name} on {device}, but the run "
                            f"trained in {saved}")
        if nhwc != saved_nhwc:
            problems.append(f"channels_last={cfg.channels_last} means {LAYOUTS[nhwc]}, but the run "
                            f"trained in {LAYOUTS[saved_nhwc]}")
        if problems:
            raise CheckpointError(f"Cannot resume from {path}: " + "; ".join(problems) + ". A run "
                                  "keeps one precision and layout from start to end. Fix: leave amp "
                                  "and channels_last at None (the checkpoint's are kept), or start "
                                  "a new run.")
        kept = ""
        fresh = use_channels_last(device, None)
        if (chosen.name, fresh) != (saved, saved_nhwc):
            kept = (f"Kept the run's {saved}, {LAYOUTS[saved_nhwc]} (a new run here would train "
                    f"in {chosen.name}, {LAYOUTS[fresh]}), so every epoch has the same arithmetic.")
        return cls(None if saved == "float32" else getattr(torch, saved), saved_nhwc), kept

    @property
    def name(self) -> str:
        """"float32", "bfloat16" or "float16", as records and checkpoints name it."""
        return precision_name(self.dtype)

    @property
    def layout(self) -> str:
        return "NHWC" if self.channels_last else "NCHW"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device) -> AbstractContextManager:
        """The forward pass's mixed precision (off for float32)."""
        return torch.autocast(device.type, dtype=self.dtype or torch.float32,
                              enabled=self.dtype is not None)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """A loss scaler, on for float16 only (its small range underflows small gradients)."""
        return torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)

    def __str__(self) -> str:
        return f"{self.name}, {LAYOUTS[self.channels_last]}"


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags the processor reports (Linux's /proc/cpuinfo); empty elsewhere."""
    return frozenset(cpuinfo("flags").split())


def cpu_has_bf16() -> bool:
    """True if the CPU computes bfloat16 natively: AMX tiles (Intel Xeon since Sapphire Rapids) or
    AVX-512 BF16 (AMD EPYC since Zen 4). oneDNN's bfloat16 convolutions then train every suite
    model faster than float32 (``benchmarks/cpu_precision.py``); without them it emulates."""
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def amp_dtype(device: torch.device, amp: bool | torch.dtype | None) -> torch.dtype | None:
    """The autocast type for ``device``, or None for full float32. ``amp=None``: on where low
    precision is fast: bfloat16 on GPUs of compute capability 8.0+ (a T4's is emulated, slower than
    float32: float16 there, with a GradScaler) and on CPUs with AMX or AVX-512 BF16; float32 on other
    CPUs and on MPS. ``amp=True``: bfloat16 on any CPU, float16 on MPS. ``False`` is float32; a
    dtype is taken as it is (a resumed run keeps its own)."""
    if isinstance(amp, torch.dtype):
        return None if amp == torch.float32 else amp
    if amp is False:
        return None
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    if device.type == "cpu" and (amp or cpu_has_bf16()):
        return torch.bfloat16
    if device.type == "mps" and amp:
        return torch.float16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """"float32", "bfloat16" or "float16": how a run's records name its precision."""
    return str(dtype or torch.float32).removeprefix("torch.")


def use_channels_last(device: torch.device, channels_last: bool | None) -> bool:
    """``channels_last=None``: NHWC on CUDA (tensor cores want it) and on the CPU (oneDNN's
    convolutions are faster in NHWC for every model of the suite, with AMX and without; see
    ``benchmarks/channels_last.py``); NCHW on MPS. ``True``/``False`` always wins."""
    return device.type in ("cuda", "cpu") if channels_last is None else channels_last


def runs_well(precision: str, device: torch.device) -> bool:
    """Whether ``device`` runs a resumed run's precision natively: bfloat16 needs a GPU of compute
    capability 8.0 (a T4 emulates it, slower than float32) and is a CPU's (AMX, AVX-512 BF16, or
    slower emulation); float16 is a GPU's (a CPU's convolutions have no fast float16 path)."""
    if precision == "bfloat16" and device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if precision == "float16":
        return device.type in ("cuda", "mps")
    return precision == "float32" or device.type == "cpu"
