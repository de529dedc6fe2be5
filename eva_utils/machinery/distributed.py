"""torchrun behind ``fit``: PyTorch's DistributedDataParallel on N processes, each told its place by
torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE); in a plain ``python`` run they are absent and
every function here returns its input, so one process trains bit for bit as before.

The batch size given is the global batch (each process takes 1/N of it, a disjoint share of every
epoch); DDP averages the gradients; evaluation counts are summed over processes; only rank 0
prints, writes and draws (guard your own with ``is_main()``). Batch norm normalises each share on
its own (``SyncBatchNorm`` shares the statistics on CUDA). docs/scaling.md has the commands.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .runtime import TrainingError, torchrun_place

MEET_WITHIN = 300.0  # seconds a process waits for the others at the start before it gives up


def world() -> tuple[int, int]:
    """(this process's rank, number of processes): (0, 1) unless started by torchrun."""
    rank, _, size = torchrun_place()
    return rank, size


def is_main() -> bool:
    """True in the process that prints, saves and draws (rank 0), and in any plain run."""
    return world()[0] == 0


def start(device: torch.device) -> None:
    """Join torchrun's process group, once per process: NCCL on CUDA, gloo on the CPU."""
    rank, size = world()
    if size == 1 or dist.is_initialized():
        return
    missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(n)]
    if missing:
        raise TrainingError(f"WORLD_SIZE={size}, but {' and '.join(missing)} not set: where the "
                            "processes meet. Fix: start the script with torchrun (it sets them), "
                            "or unset RANK LOCAL_RANK WORLD_SIZE.")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=MEET_WITHIN))
    except (RuntimeError, dist.DistStoreError) as exc:  # a process that never came
        raise TrainingError(f"Process {rank} of {size} waited {MEET_WITHIN:.0f} s at {where} and "
                            f"not every process came ({str(exc).splitlines()[0][:200]}). Fix: "
                            f"start all {size} (torchrun --nproc-per-node ..., on every node).") from None


def stop() -> None:
    """Leave the process group (the end of a torchrun script); nothing in a plain run."""
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The model as the training step calls it: DistributedDataParallel under torchrun."""
    if world()[1] == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def total(values: list[float], device: torch.device) -> list[float]:
    """Each value summed over all processes (in float64); the values themselves in a plain run."""
    if world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def from_main(value, device: torch.device):
    """Rank 0's ``value`` in every process (any picklable object); ``value`` in a plain run."""
    if world()[1] == 1:
        return value
    start(device)
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean(values: list[float], device: torch.device) -> list[float]:
    """The mean over processes of per-process means of equal shares (e.g. an epoch's training loss)."""
    procs = world()[1]
    return values if procs == 1 else [v / procs for v in total(values, device)]


def share(batch_size: int) -> int:
    """This process's part of a global batch, or one clear error if it does not divide."""
    procs = world()[1]
    if batch_size % procs:
        raise ValueError(f"batch_size={batch_size} is the global batch, split over {procs} "
                         f"processes, so it must be a multiple of {procs}. Fix: batch_size="
                         f"{max(procs, batch_size // procs * procs)}.")
    return batch_size // procs
