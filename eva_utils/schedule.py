"""Optimizer and learning-rate schedule from a ``TrainConfig``, and the LR at every step."""
from __future__ import annotations

import torch
from torch import nn


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """SGD (Nesterov by default), Adam or AdamW over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


# When a scheduler steps, as build_scheduler names it (fit's Run.step_every, EvaModule's interval).
STEP_EVERY = {"batch": "after every optimizer step (one-cycle)",
              "epoch": "after every epoch (step, multistep, constant)",
              "plateau": "after every epoch, given the test loss (ReduceLROnPlateau)"}


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int):
    """The LR schedule, and when it steps: a key of ``STEP_EVERY``."""
    s = cfg.schedule
    if s == "onecycle":
        total = cfg.epochs * steps_per_epoch
        if total < 4:
            raise ValueError(f"A one-cycle schedule needs at least 4 steps; this run has {total}. "
                             "Fix: more epochs, more images or a smaller batch, or another schedule.")
        # OneCycleLR divides by each phase's length in steps: keep both at least 1 step long.
        pct_start = min(max(cfg.pct_start, 2 / total), 1 - 2 / total)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total,
            pct_start=pct_start, div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor,
            anneal_strategy=cfg.anneal_strategy, cycle_momentum=False), "batch"
    if s == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size, cfg.gamma), "epoch"
    if s == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.milestones), cfg.gamma), "epoch"
    if s == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=cfg.gamma,
                                                          patience=cfg.patience), "plateau"
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), "epoch"  # constant


def lr_schedule(cfg, steps_per_epoch: int) -> list[float]:
    """The learning rate of every training step that ``cfg`` gives (plateau: as if never reduced)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched, every = build_scheduler(opt, cfg, steps_per_epoch)
    lrs = []
    for step in range(cfg.epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if every == "batch":
            sched.step()
        elif every == "epoch" and (step + 1) % steps_per_epoch == 0:
            sched.step()
    return lrs
