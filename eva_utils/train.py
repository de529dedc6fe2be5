"""Training: ``fit``, one epoch of it, and one step of that: ``train_step``.

The hot loop never waits on the GPU: per-batch loss and accuracy stay on the device and are read
back every ``log_every`` steps (for the progress bar and the NaN check), not after every step.
The settings are ``config.TrainConfig``; the checks ``guards``; the arithmetic ``precision``.
"""
from __future__ import annotations

import contextlib
import gc
import math
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .machinery import distributed
from .machinery.budget import Budget, TimeBudget, as_budget
from .machinery.guards import (check_arguments, check_finite, check_first_batch, check_test_loss,
                     out_of_memory, warn_if_tta_hurt)
from .machinery.run import Run, checkpoint_folder, start_run
from .machinery.runtime import to_device, tuned_convolutions

if TYPE_CHECKING:
    from .config import TrainConfig
    from .machinery.history import History


def fit(model: nn.Module, train_loader, test_loader, cfg: TrainConfig | None = None, *,
        device: str | torch.device | None = None, resume: bool | str | os.PathLike | None = None,
        time_budget: float | None = None, progress: bool = True) -> History:
    """Train ``model`` for ``cfg.epochs`` epochs, testing after each; returns the History.

    Loaders yield (images float (B, C, H, W), labels int64 (B,)): ``TensorLoader`` or
    ``make_loader``. With ``cfg.checkpoint_dir`` it writes ``last.pt`` after every epoch and
    ``best.pt`` at each new best test accuracy, and refuses a folder that holds another run.
    ``resume=".../last.pt"`` continues such a run at the next epoch, exactly, if model, data and
    config are the same; ``resume=True`` does so from ``checkpoint_dir/last.pt`` when there is one
    and starts afresh when there is none. ``time_budget`` (seconds from this call, or a
    ``TimeBudget`` the range test drew on first) stops at the end of the last epoch that fits in it
    and raises ``BudgetSpent``: run the same code again with ``resume=True`` to go on. A new run
    trains its first epoch whatever the budget; a resumed run whose budget is shorter than one of
    its epochs is refused (TrainingError), as running again would never train one. With ``cfg.ema_decay`` the weight average is what gets tested, and
    copied into ``model`` at the end. Started by torchrun, it trains with DistributedDataParallel,
    as ``distributed`` describes. Afterwards ``evaluate`` and ``predict`` answer, by default, in
    the run's precision and layout (``Precision.of``).
    """
    cfg, device, resume = check_arguments(model, train_loader, test_loader, cfg, device, resume,
                                          time_budget, progress)
    shared = isinstance(time_budget, TimeBudget)  # the caller's, drawn on before (a range test)
    time_budget = as_budget(time_budget)  # counts from here, unless the caller's already does
    distributed.start(device)  # under torchrun: join the other processes (nothing otherwise)
    main = distributed.is_main()  # the one process that prints and writes checkpoints
    progress = progress and main
    folder = checkpoint_folder(cfg)
    with folder or contextlib.nullcontext(), tuned_convolutions(device):
        # Set up: the optimizer, schedule and precision, then the checkpoint's state if resuming.
        run = start_run(model, train_loader, cfg, device, resume, folder, progress)
        budget = Budget(time_budget, run.history, shared)
        for epoch in range(len(run.history), cfg.epochs):
            # Stop cleanly, checkpoint written, if the next epoch would overrun the budget.
            budget.check(epoch, cfg, device)
            started = time.perf_counter()
            for loader in (train_loader, test_loader):  # each epoch's shuffle and augmentation
                if hasattr(loader, "set_epoch"):
                    loader.set_epoch(epoch)
            lr = run.optimizer.param_groups[0]["lr"]
            # Train one pass, then test (both over every process's share).
            trained, tested = train_and_test(run, train_loader, test_loader, cfg, epoch, progress)
            check_test_loss(tested[0], epoch)  # never record, checkpoint or schedule on a NaN
            run.step_schedule(tested[0])
            # Record the epoch, print its line, checkpoint it.
            best = run.record(trained, tested, lr, cfg.tta)
            if progress:
                tqdm.write(run.history.line(epoch))
            if folder is not None:  # still this run's folder (a timer keeps its lock alive)?
                folder.check()
                folder.save(run.state(cfg, train_loader), best=best)
            budget.record_epoch(time.perf_counter() - started)
    if run.ema is not None:  # leave the averaged weights in the caller's model
        model.load_state_dict(run.ema.module.state_dict())
    warn_if_tta_hurt(cfg, run.history)
    return run.history


def fit_each(models: dict[str, nn.Module], train_loader, test_loader, cfg: TrainConfig, *,
             device=None, checkpoint_dir=None, time_budget: float | None = None,
             progress: bool = True) -> dict[str, History]:
    """``fit`` each of ``models`` (name -> model) with the same loaders and config, one after the
    other; returns name -> History. With ``checkpoint_dir`` each model keeps its run in
    ``checkpoint_dir/<name>`` and resumes from it (a finished one is read back, not trained
    again); ``time_budget`` (seconds) is shared by all of them."""
    time_budget = as_budget(time_budget)  # one budget, counted from here, for all of them
    histories = {}
    for name, model in models.items():
        run = replace(cfg, checkpoint_dir=f"{checkpoint_dir}/{name}" if checkpoint_dir else None)
        histories[name] = fit(model, train_loader, test_loader, run, device=device,
                              resume=checkpoint_dir is not None, time_budget=time_budget,
                              progress=progress)
    return histories


def train_and_test(run: Run, train_loader, test_loader, cfg: TrainConfig, epoch: int,
                   progress: bool) -> tuple[tuple, tuple]:
    """``train_epoch``'s and ``evaluate_epoch``'s results. Out of memory, one TrainingError, raised
    after the handler (whose traceback holds the step's activations) and with the memory freed,
    so that a smaller batch can run in the same Jupyter kernel."""
    try:
        return (train_epoch(run, train_loader, cfg, epoch, progress=progress),
                run.evaluate(test_loader, cfg))
    except torch.OutOfMemoryError:
        pass
    run.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if run.device.type == "cuda":
        torch.cuda.empty_cache()
    raise out_of_memory(run.device, epoch)


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor,
               cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch already on the run's device and in its layout: images float
    (B, C, H, W), labels int64 (B,). Forward in the run's precision, loss in float32, scaled
    backward, gradients clipped (unscaled first), step, and a per-batch schedule's and the weight
    average's steps. Returns (loss (), logits (B, K)), left on the device: nothing is read back."""
    with run.precision.autocast(run.device):
        logits = run.forward(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if cfg.grad_clip:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    # float16 (a T4): the scaler skipped a step whose gradients overflowed and lowered its scale;
    # the schedule waits for a real step. (Off, get_scale reads nothing back; on, scaler.step has
    # just waited for the GPU anyway.)
    stepped = (after := run.scaler.get_scale()) >= run.loss_scale
    run.loss_scale = after
    if run.step_every == "batch" and stepped:
        run.scheduler.step()
    if run.ema is not None:
        run.ema.update()
    return loss.detach(), logits.detach()


def train_epoch(run: Run, loader, cfg: TrainConfig, epoch: int, *,
                progress: bool = True) -> tuple[float, float, float]:
    """One pass over ``loader``; returns (mean loss, accuracy % (both averaged over every
    process), seconds of training)."""
    model, device = run.model, run.device
    model.train()
    for module in run.frozen:
        module.eval()
    steps = len(loader)
    if getattr(loader, "num_workers", 0):
        # Jupyter's progress bar keeps the last epoch's DataLoader iterator in a reference cycle;
        # workers forked now would inherit it and print "Exception ignored ... can only test a
        # child process" when they exit. Collect it first.
        gc.collect()
    losses = torch.zeros(steps, device=device)   # read back every log_every steps, not every step
    correct = torch.zeros(steps, device=device)
    rates = []  # the learning rate each step used: what a loss that blew up is reported with
    seen = 0
    bar = tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
               leave=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    run.loss_scale = run.scaler.get_scale()
    t0 = time.perf_counter()
    try:
        for i, (x, y) in enumerate(bar):
            x, y = to_device(x, y, device, run.precision.channels_last)
            if i == 0:
                check_first_batch(model, x, y, loader)
            rates.append(run.optimizer.param_groups[0]["lr"])
            losses[i], logits = train_step(run, x, y, cfg)
            correct[i] = (logits.argmax(1) == y).sum()
            seen += len(y)
            if (i + 1) % cfg.log_every == 0 or i + 1 == steps:
                if run.folder is not None:
                    run.folder.check()
                check_finite(losses[:i + 1], epoch, rates, math.log(max(logits.shape[1], 2)))
                if progress:
                    bar.set_postfix(loss=f"{losses[:i + 1].mean().item():.3f}",
                                    acc=f"{100 * correct[:i + 1].sum().item() / seen:.1f}%")
    finally:
        bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    loss, acc = distributed.mean([losses.mean().item(), 100.0 * correct.sum().item() / seen], device)
    return loss, acc, seconds
