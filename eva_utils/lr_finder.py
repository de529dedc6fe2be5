"""The LR range test (Leslie Smith, 2015) on torch-lr-finder: an exponential sweep of the learning
rate over a few hundred steps, recording the smoothed loss; the model and optimizer are restored.

Two named picks from one curve (as fastai names its suggestion rules):
* ``suggested_lr``, "steepest descent": where the loss falls fastest; a good constant rate;
* ``max_lr``, "loss minimum": the largest rate at which the loss still falls, the one-cycle peak
  (Smith, "Super-convergence", 2017: one-cycle stays there only briefly, so it can afford the
  edge); ``min_lr = max_lr / div_factor`` is where the cycle starts and ends.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch_lr_finder import LRFinder, TrainDataLoaderIter

from .runtime import kept_modes

MIN_POINTS = 5  # fewer recorded steps than this and no pick means anything


@dataclass
class RangeTest:
    lrs: list             # learning rate of each step (exponentially spaced)
    losses: list          # smoothed training loss after each step
    suggested_lr: float   # steepest descent of the loss curve: a good constant learning rate
    max_lr: float         # one-cycle LRMAX: where the smoothed loss bottoms out, before it explodes
    min_lr: float         # one-cycle LRMIN: max_lr / div_factor

    def __str__(self) -> str:
        return (f"LR range test over {len(self.lrs)} steps: suggested {self.suggested_lr:.3g} "
                f"(steepest descent); one-cycle LRMAX {self.max_lr:.3g} (loss minimum), "
                f"LRMIN {self.min_lr:.3g}")


def lr_range_test(model: nn.Module, train_loader, *, optimizer: torch.optim.Optimizer | None = None,
                  start_lr: float = 1e-5, end_lr: float = 10.0, num_iter: int = 200,
                  div_factor: float = 10.0, criterion: nn.Module | None = None) -> RangeTest:
    """Sweep from ``start_lr`` to ``end_lr`` over ``num_iter`` batches (stops early if the loss
    explodes) on the model's own device. Weights, buffers, optimizer state and every submodule's
    train/eval mode are the same afterwards as before.

    ``optimizer`` defaults to the suite's: Nesterov SGD, momentum 0.9, weight decay 5e-4.
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"start_lr={start_lr} and end_lr={end_lr}: the sweep needs "
                         "0 < start_lr < end_lr, e.g. start_lr=1e-5, end_lr=10.")
    if num_iter < MIN_POINTS:
        raise ValueError(f"num_iter={num_iter}: the range test needs at least {MIN_POINTS} steps.")
    if len(train_loader) == 0:
        raise ValueError("The training loader yields no batches. Fix: lower its batch size or give "
                         "it more images.")
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=start_lr, momentum=0.9, nesterov=True,
                                    weight_decay=5e-4)
    own = {id(p) for p in model.parameters()}
    if not any(id(p) in own for g in optimizer.param_groups for p in g["params"]):
        raise ValueError("The optimizer holds none of this model's parameters (was it built for "
                         "another model?). Fix: build it from model.parameters(), or pass none.")
    finder = LRFinder(model, optimizer, criterion or nn.CrossEntropyLoss(),
                      device=next(model.parameters()).device)
    with kept_modes(model):
        try:
            for group in optimizer.param_groups:  # the sweep starts from start_lr
                group["lr"] = start_lr
            if not isinstance(train_loader, DataLoader):  # e.g. TensorLoader: any (x, y) iterable
                train_loader = TrainDataLoaderIter(train_loader)
            with contextlib.redirect_stdout(io.StringIO()):  # its "see the graph with .plot()" hint
                finder.range_test(train_loader, start_lr=start_lr, end_lr=end_lr,
                                  num_iter=num_iter, step_mode="exp")
            lrs, losses = list(finder.history["lr"]), list(finder.history["loss"])
        finally:
            finder.reset()  # restores the model's and the optimizer's state dicts
    return picks(lrs, losses, div_factor)


def picks(lrs, losses, div_factor: float = 10.0) -> RangeTest:
    """Both picks from a recorded curve; an error when it is too short to mean anything, a warning
    when the loss never fell (the picks then sit at the edge of the sweep)."""
    ok = np.isfinite(np.asarray(losses, float))
    lrs_ok = np.asarray(lrs, float)[ok]
    losses_ok = np.asarray(losses, float)[ok]
    if len(lrs_ok) < MIN_POINTS:
        raise ValueError(f"The range test recorded only {len(lrs_ok)} usable steps before the loss "
                         f"exploded (from lr {lrs[0] if lrs else float('nan'):.3g}): too few to "
                         "suggest anything. Fix: lower start_lr (e.g. 1e-5) or raise num_iter.")
    if int(np.argmin(losses_ok)) == 0:
        warnings.warn("The loss never fell during the range test, so its picks are unreliable. "
                      "Fix: lower start_lr, or check the model and data.", stacklevel=3)
    peak = lowest_loss_lr(lrs_ok, losses_ok)
    return RangeTest(list(lrs), list(losses), steepest_lr(lrs_ok, losses_ok), peak, peak / div_factor)


def lowest_loss_lr(lrs, losses) -> float:
    """The learning rate at the smoothed loss's minimum."""
    return float(np.asarray(lrs)[int(np.argmin(losses))])


def steepest_lr(lrs, losses) -> float:
    """The learning rate where d(loss)/d(log lr) is most negative, ignoring the first and last
    tenth of a long curve, where the loss is still flat or already exploding."""
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    cut = len(lrs) // 10 if len(lrs) >= 20 else 0
    lo, hi = cut, len(lrs) - cut
    slope = np.gradient(losses[lo:hi], np.log(lrs[lo:hi]))
    return float(lrs[lo + int(np.argmin(slope))])
