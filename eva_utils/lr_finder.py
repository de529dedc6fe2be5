"""The LR range test (Leslie Smith, 2015) on torch-lr-finder: an exponential sweep of the learning
rate recording the smoothed loss, with the model and optimizer restored afterwards, and named rules
that read a rate off the curve (as fastai names its suggestions):
* ``valley`` (fastai's default, the suggestion): halfway along the longest stretch of falling loss;
* ``steepest``: where the loss falls fastest against log(lr), at or before its minimum;
* ``minimum``: the lowest smoothed loss; ``minimum_tenth``: fastai's older rule, a tenth of it;
* ``first_minimum``: the bottom of the first valley, before the loss rises ``RISE`` above it, counted
  above its ``floor`` (04's one-cycle peak): unlike ``minimum`` it ignores a second dip far higher up.
``benchmarks/lr_rules.py`` compares the rules (docs/own-assignment.md).
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .machinery import distributed
from .machinery.budget import as_budget
from .machinery.guards import check_sweep
from .machinery.precision import Precision
from .machinery.runtime import get_device
from .machinery.sweep import keep_result, load_result, sweep

MIN_POINTS = 5   # fewer recorded steps than this and no rule means anything
RISE = 0.1  # first_minimum: a loss 10 % farther above the floor than the lowest so far ends the valley
AUTO_STEPS = (50, 100)  # num_iter=None: a step per training batch, but at least 50 and at most 100


@dataclass
class RangeTest:
    lrs: list             # learning rate of each step (exponentially spaced)
    losses: list          # smoothed training loss after each step
    valley: float         # fastai's "valley" rule: the suggestion
    steepest: float       # steepest descent of the loss against log(lr)
    minimum: float        # the lowest smoothed loss (assignment 003's one-cycle LRMAX)
    seconds: float | None = None  # how long the sweep took (kept with the run: a resume's too)
    floor: float = 0.0    # the lowest loss the criterion can reach (first_minimum counts rises above it)

    @property
    def minimum_tenth(self) -> float:
        return self.minimum / 10

    @property
    def first_minimum(self) -> float:
        """The learning rate at the bottom of the curve's first valley (see the module doc)."""
        return first_minimum_lr(self.lrs, self.losses, floor=self.floor)

    @property
    def suggested_lr(self) -> float:
        """The suggestion: the ``valley`` rule (see the module doc for why)."""
        return self.valley

    @classmethod
    def from_curve(cls, lrs, losses) -> RangeTest:
        """Every rule's pick from a recorded curve; an error when it is too short to mean
        anything, a warning when the loss never fell, or never turned up (the picks then sit at
        an edge)."""
        ok = np.isfinite(np.asarray(losses, float))
        lrs_ok = np.asarray(lrs, float)[ok]
        losses_ok = np.asarray(losses, float)[ok]
        if len(lrs_ok) < MIN_POINTS:
            raise ValueError(f"The range test recorded only {len(lrs_ok)} usable steps before the "
                             f"loss exploded (from lr {lrs[0] if lrs else float('nan'):.3g}): too "
                             f"few to suggest anything. Fix: lower start_lr (e.g. "
                             f"{(lrs[0] if lrs else 1e-3) / 100:.0e}) or raise num_iter.")
        lowest = int(np.argmin(losses_ok))
        if lowest == 0:
            warnings.warn(f"The smoothed loss never went below its first value "
                          f"({losses_ok[0]:.3g}) during the range test, so its picks are "
                          "unreliable. Fix: lower start_lr, or check the model and data.",
                          stacklevel=3)
        elif lowest == len(losses_ok) - 1:
            warnings.warn(f"The loss was still falling at the end of the sweep (lr "
                          f"{lrs_ok[-1]:.3g}), so the picks sit at its edge and may be far too "
                          "high. Fix: raise end_lr or num_iter, or use more batches (a smaller "
                          "batch size).", stacklevel=3)
        return cls(list(lrs), list(losses), valley_lr(lrs_ok, losses_ok),
                   steepest_lr(lrs_ok, losses_ok), lowest_loss_lr(lrs_ok, losses_ok))

    def __str__(self) -> str:
        return (f"LR range test over {len(self.lrs)} steps: suggested {self.valley:.3g} (valley); "
                f"steepest descent {self.steepest:.3g}; loss minimum {self.minimum:.3g}; first "
                f"minimum {self.first_minimum:.3g}"
                + (f" (rises counted above the loss's floor, {self.floor:.3g})" if self.floor else ""))


def lr_range_test(model: nn.Module, train_loader, *, optimizer: torch.optim.Optimizer | None = None,
                  start_lr: float = 1e-5, end_lr: float = 10.0, num_iter: int | None = None,
                  criterion: nn.Module | None = None, verbose: bool = True,
                  checkpoint_dir: str | os.PathLike | None = None,
                  device: str | torch.device | None = None, amp: bool | None = None,
                  channels_last: bool | None = None, time_budget=None,
                  floor: float = 0.0) -> RangeTest:
    """Sweep the learning rate from ``start_lr`` to ``end_lr`` over ``num_iter`` batches (None: one
    pass over the training set, but 50 to 100 steps), stopping early if the loss explodes; returns
    the curve and every rule's pick. Weights, buffers, optimizer state, device and train/eval modes
    are as before afterwards. It sweeps where and as ``fit`` trains: on ``device`` (None: where the
    loader keeps its batches, else fit's choice), in fit's precision and layout (``amp``,
    ``channels_last`` as in ``TrainConfig``). Pass the ``criterion`` you will train with (default
    cross-entropy) and, if you like, an ``optimizer`` (default: Nesterov SGD, momentum 0.9, weight
    decay 5e-4): the picks depend on both.

    ``checkpoint_dir``: keep the result there (``range_test.json``, loaded instead of sweeping
    again for the same model, data, loss and sweep, on any device) and, while sweeping, its steps
    (``range_test.part.pt``, every minute and at a budget stop), so a sweep cut off goes on from
    them on the same kind of device in the same arithmetic. ``time_budget`` (seconds, or the
    ``TimeBudget`` fit draws on next): a sweep its first steps show would not fit in what is left
    stops with ``BudgetSpent``; one longer than the whole budget raises TrainingError. Under
    torchrun rank 0 sweeps and every process gets its result. ``floor``: the lowest loss
    ``criterion`` can reach, 0 for cross-entropy; with label smoothing the entropy of the smoothed
    target (0.867 for 0.2 and 10 classes), which ``first_minimum`` measures its rise above.
    """
    try:
        ok = math.isfinite(float(floor)) and float(floor) >= 0  # a number, or a 0-d tensor
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"floor={floor!r}: the lowest loss the criterion can reach is a number of 0 "
                         "or more. Fix: 0 for cross-entropy, the smoothed target's entropy with "
                         "label smoothing.")
    floor = float(floor)
    batches = len(train_loader)
    if num_iter is None:  # about one pass over the training set
        num_iter = min(max(batches, AUTO_STEPS[0]), AUTO_STEPS[1])
    check_sweep(model, train_loader, optimizer, start_lr, end_lr, num_iter, MIN_POINTS)
    if optimizer is None:  # the suite's: the picks depend on the optimizer
        optimizer = torch.optim.SGD(model.parameters(), lr=start_lr, momentum=0.9, nesterov=True,
                                    weight_decay=5e-4)
    # Where and how fit will train: the data's device (its process group is NCCL's on CUDA, so
    # fit's later start finds the right one), and the precision and layout fit picks there.
    device = get_device(device if device is not None else getattr(train_loader, "device", None))
    arithmetic = Precision.choose(device, amp, channels_last)  # fit's rule, fit's arithmetic
    if not distributed.is_main():  # the other processes take rank 0's picks
        return distributed.from_main(None, device)
    size = getattr(train_loader, "batch_size", None)
    kept = (Path(checkpoint_dir).expanduser() / "range_test.json"
            if checkpoint_dir is not None else None)
    criterion = criterion or nn.CrossEntropyLoss()
    # What the stored curve means: model, data, loss, sweep and optimizer settings; not the device
    # or the arithmetic, so a run resumed on another machine keeps the rates it started with.
    setup = {"model": type(model).__name__, "model_args": repr(getattr(model, "init_args", {})),
             "batches": batches, "batch_size": size, "start_lr": start_lr, "end_lr": end_lr,
             "num_iter": num_iter, "data": getattr(train_loader, "fingerprint", None),
             "loss": loss_name(criterion),
             "optimizer": repr({k: v for k, v in optimizer.defaults.items() if k != "lr"})}
    stored = load_result(kept, setup, RangeTest, MIN_POINTS)
    if stored is not None:
        if verbose:
            print(f"LR range test: loaded from {kept}, where this run stored it (delete the file to "
                  "sweep again).")
        return distributed.from_main(replace(stored, floor=floor), device)
    if verbose:
        print(f"LR range test: {num_iter} steps{f' of {size} images' if size else ''} "
              f"({num_iter / batches:.2g} epoch{'' if f'{num_iter / batches:.2g}' == '1' else 's'} "
              f"of the training set), lr {start_lr:.0e} to "
              f"{end_lr:g}, on {device} in {arithmetic.name}, {arithmetic.layout}.",
              flush=True)
    if batches < min(num_iter, 20):
        warnings.warn(f"The training loader has only {batches} batches, so the range test "
                      f"passes over them {num_iter / batches:.2g} times: it then measures how fast "
                      "the network memorises them, and its picks run high. Fix: a smaller batch "
                      "size (more batches).", stacklevel=2)
    part = kept.with_name("range_test.part.pt") if kept is not None else None
    # A sweep's steps mean the same only on the same kind of device in the same arithmetic.
    steps_setup = {**setup, "device": device.type, "precision": arithmetic.name,
                   "layout": arithmetic.layout}
    lrs, losses, seconds = sweep(model, train_loader, optimizer, criterion, device=device,
                                 arithmetic=arithmetic, start_lr=start_lr, end_lr=end_lr,
                                 num_iter=num_iter, part=part, setup=steps_setup, verbose=verbose,
                                 budget=as_budget(time_budget))
    found = replace(RangeTest.from_curve(lrs, losses), seconds=round(seconds, 3), floor=floor)
    if kept is not None:  # kept with the run
        swept = {"device": str(device), "precision": arithmetic.name, "layout": arithmetic.layout}
        keep_result(kept, setup, swept, asdict(found), part)
    return distributed.from_main(found, device)


def loss_name(criterion: nn.Module) -> str:
    """The loss and its settings, e.g. "CrossEntropyLoss(label_smoothing=0.2, ...)" (its repr
    leaves the settings out)."""
    settings = {k: v for k, v in vars(criterion).items() if not k.startswith("_") and k != "training"}
    return f"{type(criterion).__name__}({', '.join(f'{k}={v!r}' for k, v in sorted(settings.items()))})"


def valley_lr(lrs, losses) -> float:
    """fastai's "valley": the longest run of steps over which the loss keeps falling (a longest
    decreasing subsequence), and the point halfway along it."""
    losses = np.asarray(losses, float)
    n = len(losses)
    run = np.ones(n, dtype=int)  # run[i]: longest decreasing subsequence ending at i
    for i in range(1, n):
        earlier = losses[:i] > losses[i]
        if earlier.any():
            run[i] = run[:i][earlier].max() + 1
    end = int(np.argmax(run))
    start = end - run[end] + 1
    third = (end - start) / 3
    return float(np.asarray(lrs)[start + int(third) + int(third / 2)])


def first_minimum_lr(lrs, losses, rise: float = RISE, floor: float = 0.0) -> float:
    """The learning rate of the lowest loss before the loss first climbs ``rise`` (a fraction)
    farther above ``floor`` than the lowest so far; the overall minimum if it never does.
    Non-finite losses are skipped."""
    ok = np.isfinite(np.asarray(losses, float))
    lrs, losses = np.asarray(lrs, float)[ok], np.asarray(losses, float)[ok]
    best = 0
    for i in range(1, len(losses)):
        if losses[i] < losses[best]:
            best = i
        elif losses[i] - floor > (losses[best] - floor) * (1 + rise):  # turned up: the valley ended
            break
    return float(lrs[best])


def lowest_loss_lr(lrs, losses) -> float:
    """The learning rate at the smoothed loss's minimum."""
    return float(np.asarray(lrs)[int(np.argmin(losses))])


def steepest_lr(lrs, losses) -> float:
    """The learning rate where d(loss)/d(log lr) is most negative, at or before the loss minimum
    (past it the loss is rising, and a steep dip there is noise between two rises), ignoring the
    first tenth of a long curve, where the loss is still flat."""
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    lowest = int(np.argmin(losses))
    lo = len(lrs) // 10 if len(lrs) >= 20 else 0
    hi = lowest + 1
    if hi - lo < 2:  # the minimum comes first: nothing falls before it
        return float(lrs[lowest])
    slope = np.gradient(losses[lo:hi], np.log(lrs[lo:hi]))
    return float(lrs[lo + int(np.argmin(slope))])
