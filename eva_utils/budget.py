"""``fit``'s ``time_budget``: stop at the end of the last epoch that fits (``BudgetSpent``), so a
long run goes in stretches, each resumed from its checkpoint."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from . import distributed
from .history import History


class BudgetSpent(Exception):
    """``fit`` stopped at an epoch boundary because its ``time_budget`` would not fit another epoch.
    The checkpoint is written; calling ``fit`` again with ``resume=True`` continues the run."""

    def _render_traceback_(self) -> list[str]:
        """What IPython (Jupyter, Colab, papermill) shows instead of a red traceback: the one
        line that says where the run stopped and how to go on. It is a planned stop, not a bug."""
        return [f"BudgetSpent: {self}"]


class Budget:
    """``fit``'s ``time_budget``: seconds of this call, spent an epoch at a time."""

    def __init__(self, seconds: float | None, history: History):
        self.seconds, self.started = seconds, time.perf_counter()
        # The longest epoch, training and testing, in seconds: first guessed from the median of
        # the epochs a resumed run already trained (a median, so that one epoch slowed by other
        # work on the machine does not cut every later stretch short; 1.2x, since only training
        # time is kept and testing adds ~15 % for CustomResNet on CPU), then the longest measured.
        self.longest = 1.2 * statistics.median(history.seconds) if history.seconds else 0.0

    def check(self, epoch: int, cfg, device: torch.device) -> None:
        """Raise BudgetSpent, in every process or in none, if epoch ``epoch`` would not fit."""
        elapsed = time.perf_counter() - self.started
        over = self.seconds is not None and self.longest > 0 and elapsed + self.longest > self.seconds
        if distributed.total([float(over)], device)[0]:  # every process stops, or none
            raise BudgetSpent(
                f"Time budget spent: {duration(elapsed)} of {duration(self.seconds)} used, and an "
                f"epoch takes about {duration(self.longest)}. Stopped after epoch {epoch} of "
                f"{cfg.epochs}; the run is saved in {Path(cfg.checkpoint_dir) / 'last.pt'}. To go "
                "on, run the same code again with resume=True (a notebook: run it again).")

    def record_epoch(self, seconds: float) -> None:
        """An epoch (training and testing) took ``seconds``: the next check plans for the longest."""
        self.longest = max(self.longest, seconds)


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
