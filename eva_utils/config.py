"""``TrainConfig``: every setting of a training run, with its unit and its valid range (``RULES``),
checked when built and again when ``fit`` starts."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields

SCHEDULES = ("onecycle", "step", "multistep", "plateau", "constant")
OPTIMIZERS = ("sgd", "adam", "adamw")


def number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _optional_flag(x) -> bool:
    return x is None or isinstance(x, bool)


# field -> (is it valid?, the valid range in words)
RULES = {
    "epochs": (lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "lr": (lambda v: number(v) and v > 0, "a finite number > 0"),
    "momentum": (lambda v: number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "nesterov": (lambda v: isinstance(v, bool), "True or False"),
    "betas": (lambda v: len(v) == 2 and all(number(b) and 0 <= b < 1 for b in v),
              "two numbers in [0, 1)"),
    "weight_decay": (lambda v: number(v) and v >= 0, "a finite number >= 0"),
    "schedule": (lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
    "pct_start": (lambda v: number(v) and 0 < v < 1, "a fraction in (0, 1), e.g. peak epoch / epochs"),
    "div_factor": (lambda v: number(v) and v >= 1, "a finite number >= 1"),
    "final_div_factor": (lambda v: number(v) and v >= 1, "a finite number >= 1"),
    "anneal_strategy": (lambda v: v in ("linear", "cos"), "'linear' or 'cos'"),
    "step_size": (lambda v: _whole(v) and v >= 1, "a whole number of epochs >= 1"),
    "milestones": (lambda v: all(_whole(m) and m >= 1 for m in v) and list(v) == sorted(set(v)),
                   "increasing whole numbers of epochs >= 1"),
    "gamma": (lambda v: number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "patience": (lambda v: _whole(v) and v >= 0, "a whole number of epochs >= 0"),
    "label_smoothing": (lambda v: number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "grad_clip": (lambda v: v is None or (number(v) and v > 0), "None or a finite number > 0"),
    "ema_decay": (lambda v: v is None or (number(v) and 0 < v < 1), "None or a number in (0, 1)"),
    "tta": (lambda v: isinstance(v, bool), "True or False"),
    "amp": (_optional_flag, "None, True or False"),
    "channels_last": (_optional_flag, "None, True or False"),
    "compile": (lambda v: isinstance(v, bool), "True or False"),
    "seed": (lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    "checkpoint_dir": (lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
                       "None or a folder path (\"\" would train without checkpoints)"),
    "log_every": (lambda v: _whole(v) and v >= 1, "a whole number of steps >= 1"),
}


@dataclass
class TrainConfig:
    """Everything that decides a training run. Units in the comments; checked when built."""

    epochs: int = 24                      # passes over the training set
    optimizer: str = "sgd"                # "sgd" | "adam" | "adamw"
    lr: float = 0.05                      # learning rate; for "onecycle" the peak (per step)
    momentum: float = 0.9                 # SGD momentum (dimensionless)
    nesterov: bool = True                 # Nesterov momentum for SGD
    betas: tuple[float, float] = (0.9, 0.999)  # Adam/AdamW moment decay rates
    weight_decay: float = 5e-4            # L2 penalty (Adam/SGD) or decoupled decay (AdamW), per step
    schedule: str = "onecycle"            # one of SCHEDULES
    # onecycle: lr rises from lr/div_factor to lr over pct_start of the steps, then falls to
    # lr/div_factor/final_div_factor. final_div_factor=1 is "no annihilation".
    pct_start: float = 5 / 24             # fraction of all steps spent rising (5/24: peak at epoch 5)
    div_factor: float = 10.0              # lr / starting lr
    final_div_factor: float = 1.0         # starting lr / final lr
    anneal_strategy: str = "linear"       # "linear" | "cos"
    step_size: int = 10                   # step: epochs between decays
    milestones: tuple[int, ...] = (50, 100)  # multistep: epochs at which to decay
    gamma: float = 0.1                    # step/multistep/plateau: factor per decay
    patience: int = 3                     # plateau: epochs without test-loss improvement first
    label_smoothing: float = 0.0          # target mass spread over the other classes, in [0, 1)
    grad_clip: float | None = None        # max global L2 norm of the gradients (None: off)
    ema_decay: float | None = None        # weight-averaging decay per step, e.g. 0.999 (None: off)
    tta: bool = False                     # evaluate on image + its left-right mirror, logits averaged
    amp: bool | None = None               # mixed precision; None: on for CUDA and bfloat16 CPUs (precision.amp_dtype)
    channels_last: bool | None = None     # NHWC memory layout; None: on for CUDA and CPU
    compile: bool = False                 # torch.compile the model (pays off for long runs on CUDA)
    seed: int = 0                         # seeds python, numpy and torch as a new run starts
                                          # (dropout, ...); the weights come from the model as given
    checkpoint_dir: str | None = None     # where best.pt and last.pt go (None: no checkpoints)
    log_every: int = 20                   # steps between progress-bar updates (each one syncs once)

    def __post_init__(self):
        self.validate()

    def __setattr__(self, name: str, value) -> None:
        # Canonical forms at every assignment, cfg.betas = [0.9, 0.99] after building too: tuples
        # (compared on resume), and a path as text (a checkpoint holds plain values only).
        if name in ("betas", "milestones") and isinstance(value, list):
            value = tuple(value)
        if name == "checkpoint_dir" and isinstance(value, os.PathLike):
            value = os.fspath(value)
        super().__setattr__(name, value)

    def validate(self) -> None:
        """Raise one ValueError naming every invalid field, changing none. Runs when the config is
        built and again in ``fit``, so a field changed afterwards (``cfg.schedule = "cosine"``) is
        checked too."""
        bad = []
        for f in fields(self):
            valid, words = RULES[f.name]
            value = getattr(self, f.name)
            try:
                ok = valid(value)
            except TypeError:  # e.g. len() of a number
                ok = False
            if not ok:
                bad.append(f"{f.name}={value!r}: must be {words}")
        if bad:
            raise ValueError("TrainConfig has invalid settings:\n  " + "\n  ".join(bad))
