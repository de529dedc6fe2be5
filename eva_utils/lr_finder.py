"""The LR range test (Leslie Smith, 2015) on torch-lr-finder: an exponential sweep of the learning
rate over a few hundred steps, recording the smoothed loss; the model and optimizer are restored."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
from torch import nn
from torch.utils.data import DataLoader
from torch_lr_finder import LRFinder, TrainDataLoaderIter


@dataclass
class RangeTest:
    lrs: list             # learning rate of each step (exponentially spaced)
    losses: list          # smoothed training loss after each step
    suggested_lr: float   # steepest descent of the loss curve: a good constant learning rate
    max_lr: float         # one-cycle peak: where the smoothed loss bottoms out, before it explodes
    min_lr: float         # one-cycle start: max_lr / div_factor


def lr_range_test(model: nn.Module, optimizer, train_loader, *, start_lr: float = 1e-5,
                  end_lr: float = 10.0, num_iter: int = 200, div_factor: float = 10.0,
                  criterion: nn.Module | None = None) -> RangeTest:
    """Sweep from ``start_lr`` to ``end_lr`` over ``num_iter`` batches (stops early if the loss
    explodes) on the model's own device. Weights, buffers, optimizer state and train/eval mode are
    the same afterwards as before.

    The suggestion is where the loss falls fastest (most negative slope against log lr). The
    one-cycle peak is the largest rate at which the loss still falls: its minimum (Smith, "Super-
    convergence", 2017); one-cycle only stays there briefly, so it can afford the edge.
    """
    if num_iter < 2:
        raise ValueError(f"num_iter={num_iter}: the range test needs at least 2 steps.")
    was_training = model.training
    finder = LRFinder(model, optimizer, criterion or nn.CrossEntropyLoss(),
                      device=next(model.parameters()).device)
    try:
        for group in optimizer.param_groups:  # the sweep starts from start_lr
            group["lr"] = start_lr
        if not isinstance(train_loader, DataLoader):  # e.g. GpuLoader: any iterable of (x, y)
            train_loader = TrainDataLoaderIter(train_loader)
        with contextlib.redirect_stdout(io.StringIO()):  # its "see the graph with .plot()" hint
            finder.range_test(train_loader, start_lr=start_lr, end_lr=end_lr, num_iter=num_iter,
                              step_mode="exp")
        lrs, losses = list(finder.history["lr"]), list(finder.history["loss"])
    finally:
        finder.reset()  # restores the model's and the optimizer's state dicts
        model.train(was_training)
    peak = lowest_loss_lr(lrs, losses)
    return RangeTest(lrs, losses, steepest_lr(lrs, losses), peak, peak / div_factor)


def _finite(lrs, losses) -> tuple[np.ndarray, np.ndarray]:
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    ok = np.isfinite(losses)
    if ok.sum() < 2:
        raise ValueError("The range test recorded fewer than 2 finite losses; lower end_lr.")
    return lrs[ok], losses[ok]


def lowest_loss_lr(lrs, losses) -> float:
    """The learning rate at the smoothed loss's minimum."""
    lrs, losses = _finite(lrs, losses)
    return float(lrs[int(np.argmin(losses))])


def steepest_lr(lrs, losses) -> float:
    """The learning rate where d(loss)/d(log lr) is most negative, ignoring the first and last
    tenth of a long curve, where the loss is still flat or already exploding."""
    lrs, losses = _finite(lrs, losses)
    cut = len(lrs) // 10 if len(lrs) >= 20 else 0
    lo, hi = cut, len(lrs) - cut
    slope = np.gradient(losses[lo:hi], np.log(lrs[lo:hi]))
    return float(lrs[lo + int(np.argmin(slope))])
