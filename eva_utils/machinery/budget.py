"""Time budgets, so a long run goes in stretches: ``TimeBudget`` (seconds for a whole notebook: the
range test and training draw on it in turn) and ``fit``'s ``Budget``, which stops at the end of the
last epoch that fits (``BudgetSpent``: run the same code again to go on) and refuses a budget that
could never fit one epoch. A new run trains its first epoch whatever the budget: until then its
length is unknown."""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch

from . import distributed
from ..config import number
from .history import History
from .runtime import TrainingError


class BudgetSpent(Exception):
    """``fit`` stopped at an epoch boundary because its ``time_budget`` would not fit another epoch.
    The checkpoint is written; calling ``fit`` again with ``resume=True`` continues the run."""

    def _render_traceback_(self) -> list[str]:
        """What IPython (Jupyter, Colab, papermill) shows instead of a red traceback: the one
        line that says where the run stopped and how to go on. It is a planned stop, not a bug."""
        return [f"BudgetSpent: {self}"]


class TimeBudget:
    """``seconds`` from now, shared by what draws on it: pass the same object as ``time_budget`` to
    ``lr_range_test`` and then to ``fit``, and both count against the one budget the user gave."""

    clock = staticmethod(time.monotonic)

    def __init__(self, seconds: float):
        if not (number(seconds) and seconds > 0):
            raise ValueError(f"time_budget={seconds!r}: give seconds, a number > 0, or None.")
        self.seconds, self.started = float(seconds), self.clock()

    def used(self) -> float:
        return self.clock() - self.started

    def left(self) -> float:
        return self.seconds - self.used()

    def too_short(self, needed: float, what: str) -> None:
        """Raise one TrainingError if ``needed`` seconds (of ``what``) exceed the whole budget: no
        stretch of it could ever finish that, however often it is run again."""
        if needed > self.seconds:
            raise TrainingError(
                f"The time budget, {duration(self.seconds)}, is shorter than {what} (about "
                f"{duration(needed)}), so running again would never get past it. Fix: "
                f"time_budget={enough(needed)} or more (seconds), or None.")


def as_budget(time_budget) -> TimeBudget | None:
    """``time_budget`` (seconds, a TimeBudget or None) as a TimeBudget counting from now, unless
    it is one already."""
    if time_budget is None or isinstance(time_budget, TimeBudget):
        return time_budget
    return TimeBudget(time_budget)


class Budget:
    """``fit``'s ``time_budget``, spent an epoch at a time."""

    def __init__(self, time_budget: TimeBudget | None, history: History, shared: bool = False):
        self.given = time_budget
        # What the caller's budget spent before this training began (a range test, say).
        self.before = time_budget.used() if time_budget and shared else 0.0
        # The longest epoch in seconds, training and testing: guessed as 1.2x the median training
        # time of a resumed run's epochs (one slow epoch does not cut every stretch short), then the
        # longest measured in this call.
        self.longest = 1.2 * statistics.median(history.seconds) if history.seconds else 0.0
        self.trained = 0  # epochs this call trained

    def check(self, epoch: int, cfg, device: torch.device) -> None:
        """Raise BudgetSpent, in every process or in none, if epoch ``epoch`` would not fit;
        TrainingError if the whole budget is shorter than one epoch."""
        if self.given is None or self.longest == 0:
            return
        if not self.trained:  # a resumed run, its epochs' length known: refused before training
            self.given.too_short(self.longest, "one epoch of this run")
        over = self.longest > self.given.left()
        if distributed.total([float(over)], device)[0]:  # every process stops, or none
            self.stop(f"Stopped after epoch {epoch} of {cfg.epochs}; the run is saved in "
                      f"{Path(cfg.checkpoint_dir) / 'last.pt'}")

    def stop(self, where: str) -> None:
        before = (f", {duration(self.before)} of it before this training began"
                  if self.before >= 1 else "")
        again = ("run the same code again with resume=True (a notebook: run it again)"
                 if self.longest <= self.given.seconds else
                 f"run it again with time_budget={enough(self.longest)} or more: the budget is "
                 "shorter than one epoch")
        raise BudgetSpent(
            f"Time budget spent: {duration(self.given.used())} of {duration(self.given.seconds)} "
            f"used{before}, and an epoch takes about {duration(self.longest)}. {where}. To go on, "
            f"{again}.")

    def record_epoch(self, seconds: float) -> None:
        """An epoch (training and testing) took ``seconds``: the next check plans for the longest."""
        self.longest = max(self.longest, seconds) if self.trained else seconds
        self.trained += 1


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def enough(seconds: float) -> int:
    """A budget that fits ``seconds`` of work with a quarter to spare, rounded up to a minute."""
    return int(math.ceil(seconds * 1.25 / 60) * 60)
