"""The LR range test's machinery (``lr_finder`` holds the lesson): ``sweep`` runs torch-lr-finder's
sweep as ``fit`` trains (``Batches``: on the device, in its layout), with progress lines and a time
budget (``Progress``), resumable after a cut (``KeptFinder``: its steps kept in a file); the result
is kept with the run (``keep_result``) and read back only for the same setup (``load_result``)."""
from __future__ import annotations

import contextlib
import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch_lr_finder import LRFinder, TrainDataLoaderIter

from .budget import BudgetSpent, duration
from .checkpoint import CheckpointError, atomic_save, atomic_write, rng_state, set_rng_state
from .guards import check_finite_images
from .precision import Precision
from .runtime import kept_modes, to_device


def sweep(model: nn.Module, loader, optimizer: torch.optim.Optimizer, criterion: nn.Module, *,
          device: torch.device, arithmetic: Precision, start_lr: float, end_lr: float,
          num_iter: int, part: Path | None, setup: dict, verbose: bool,
          budget) -> tuple[list, list, float]:
    """torch-lr-finder's exponential sweep in ``arithmetic``, from the steps kept at ``part`` for
    this ``setup`` if a cut-off sweep left some; returns (learning rates, smoothed losses, seconds
    of sweeping). Weights, optimizer, layout, device and every submodule's mode are restored."""
    # torch-lr-finder's own mixed precision: autocast, and a loss scaler that scales only float16.
    precision = ({"amp_backend": "torch", "amp_config": {"device_type": device.type,
                                                         "dtype": arithmetic.dtype},
                  "grad_scaler": arithmetic.scaler(device)} if arithmetic.dtype is not None else {})
    finder = KeptFinder(model, optimizer, criterion, device=device, **precision)
    layout = weights_layout(model)
    with kept_modes(model):
        try:
            model.to(memory_format=arithmetic.memory_format)  # the weights in fit's layout too
            for group in optimizer.param_groups:  # the sweep starts from start_lr
                group["lr"] = start_lr
            finder.keep_in(part, setup)  # after the layout change: a kept state is loaded into it
            if verbose and finder.replay:
                print(f"LR range test: going on after step {len(finder.replay)}, kept in {part} by "
                      "a sweep that was cut off.", flush=True)
            batches = Batches(loader, device, arithmetic.channels_last,
                              Progress(num_iter, optimizer, sys.stdout if verbose else None, budget))
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                # its "see the graph with .plot()" hint; torch's warning that the rate was
                # scheduled before the optimizer stepped, which replayed steps do not
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step",
                                        UserWarning)
                finder.range_test(batches, start_lr=start_lr, end_lr=end_lr, num_iter=num_iter,
                                  step_mode="exp")
            lrs, losses = list(finder.history["lr"]), list(finder.history["loss"])
            batches.progress.done(len(lrs))
        finally:
            finder.reset()  # the model's and the optimizer's state dicts, the model's device
            model.to(memory_format=layout)
    return lrs, losses, finder.seconds()


def weights_layout(model: nn.Module) -> torch.memory_format:
    """channels_last if the model's 4-d weights are stored NHWC, else contiguous_format."""
    nhwc = any(p.dim() == 4 and not p.is_contiguous()  # 1x1 kernels are both
               and p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters())
    return torch.channels_last if nhwc else torch.contiguous_format


class KeptFinder(LRFinder):
    """torch-lr-finder's ``LRFinder``, whose sweep survives being cut off: every ``EVERY`` seconds
    and at a budget stop, the raw losses so far, weights, optimizer, loss scaler and random states
    go to a file. A sweep begun again replays the kept losses (drawing and dropping their batches,
    so the data comes in the same order), loads the kept state and trains on: the same curve as a
    sweep never cut off (unless a model that draws random numbers meets a loader that reshuffles
    mid-sweep)."""

    EVERY = 60.0  # seconds between keeps: at most this much sweeping is lost to a disconnect

    def keep_in(self, path: Path | None, setup: dict) -> None:
        """Keep the sweep's steps at ``path`` (None: nowhere); load the ones kept there for this
        ``setup``, if any, to replay."""
        self.path, self.setup, self.raw = path, setup, []
        self.kept = load_part(path, setup)
        self.replay = self.kept["raw"] if self.kept else []
        self.started = self.kept_at = time.perf_counter()

    def seconds(self) -> float:
        """Time spent sweeping, in this call and in those whose steps it replayed."""
        return (self.kept["seconds"] if self.kept else 0.0) + time.perf_counter() - self.started

    def _train_batch(self, train_iter, accumulation_steps, non_blocking_transfer=True):
        # A kept step: its batch drawn and dropped, its loss as recorded; after the last one, the
        # state the sweep was in when it was kept.
        if len(self.raw) < len(self.replay):
            for _ in range(accumulation_steps):
                train_iter.skip()
            self.raw.append(self.replay[len(self.raw)])
            if len(self.raw) == len(self.replay):
                self._restore(self.kept)
            return self.raw[-1]
        try:
            loss = super()._train_batch(train_iter, accumulation_steps, non_blocking_transfer)
        except BudgetSpent as stop:  # raised before the step's batch was drawn
            raise BudgetSpent(f"{stop} {self._keep_now()}") from None
        self.raw.append(loss)
        if self.path is not None and time.perf_counter() - self.kept_at >= self.EVERY:
            self._keep_now()
        return loss

    def _keep_now(self) -> str:
        """Write the steps taken so far; say where (or why not) for a stop's message."""
        if self.path is None:
            return "Nothing is kept without a checkpoint_dir: to go on, run the same code again."
        state = {"setup": self.setup, "raw": list(self.raw), "seconds": self.seconds(),
                 "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.grad_scaler.state_dict() if self.grad_scaler else None,
                 "rng": rng_state()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save(state, self.path)
        except (OSError, CheckpointError) as exc:  # costs the steps since the last keep, no more
            warnings.warn(f"Could not keep the range test's steps: {exc}", stacklevel=4)
            return "Its steps could not be kept: run the same code again to sweep from the start."
        self.kept_at = time.perf_counter()
        return (f"Its {len(self.raw)} steps are kept in {self.path}: to go on from there, run the "
                "same code again.")

    def _restore(self, kept: dict) -> None:
        self.model.load_state_dict(kept.pop("model"))  # popped: no second copy held while sweeping
        self.optimizer.load_state_dict(kept.pop("optimizer"))
        if self.grad_scaler is not None and kept["scaler"]:
            self.grad_scaler.load_state_dict(kept["scaler"])
        set_rng_state(kept["rng"])


class Batches(TrainDataLoaderIter):
    """The training batches as ``fit`` feeds them: on ``device``, in its memory layout (an NHWC
    batch makes every convolution run NHWC). Any loader of (images, labels) batches. Each batch
    taken is a step begun, which ``progress`` counts before the batch is drawn."""

    def __init__(self, loader, device: torch.device, channels_last: bool, progress: Progress):
        super().__init__(loader)
        self.device, self.channels_last, self.progress = device, channels_last, progress
        self.dropping = False

    def __next__(self):
        self.progress.step()
        return super().__next__()

    def skip(self) -> None:
        """Draw the next batch (as a step would, so the ones after come in the same order) and
        drop it."""
        self.progress.skip()
        self.dropping = True  # drawn, never moved to the device or checked
        try:
            super().__next__()
        finally:
            self.dropping = False

    def inputs_labels_from_batch(self, batch):
        x, y = super().inputs_labels_from_batch(batch)
        if self.dropping:
            return x, y
        if self.progress.begun == 1:
            check_finite_images(x, ValueError)
        return to_device(x, y, self.device, self.channels_last)


class Progress:
    """A sweep's progress as lines of text (torch-lr-finder's bar is a Jupyter widget, which
    papermill's log never shows), at most one every ``EVERY`` seconds. ``out`` None: silent."""

    EVERY = 60.0  # seconds between lines
    MEASURE = 3   # steps timed before the sweep's length is judged against a time budget

    def __init__(self, steps: int, optimizer: torch.optim.Optimizer, out, budget=None):
        self.steps, self.optimizer, self.out, self.budget = steps, optimizer, out, budget
        self.begun, self.skipped, self.started = 0, 0, time.perf_counter()
        self.last = self.started

    def skip(self) -> None:
        """A step kept by an earlier sweep is replayed: counted, not timed."""
        self.begun += 1
        self.skipped += 1
        self.started = self.last = time.perf_counter()

    def step(self) -> None:
        """A step begins: ``begun - 1`` are done, ``skipped`` of them replayed."""
        self.begun += 1
        now, done = time.perf_counter(), self.begun - 1
        timed = done - self.skipped
        if timed == 0:
            return
        each = (now - self.started) / timed
        if self.budget is not None and timed == self.MEASURE and done < self.steps:
            self.budget.too_short(each * self.steps, "the LR range test")
            if each * (self.steps - done) > self.budget.left():
                raise BudgetSpent(
                    f"The rest of the LR range test would take about "
                    f"{duration(each * (self.steps - done))}, more than the "
                    f"{duration(self.budget.left())} left of the "
                    f"{duration(self.budget.seconds)} budget: stopped after {done} of its "
                    f"{self.steps} steps.")
        if self.out is None or now - self.last < self.EVERY:
            return
        self.last = now
        lr = self.optimizer.param_groups[0]["lr"]
        print(f"LR range test: {done}/{self.steps} steps, lr {lr:.2g}, "
              f"{duration(now - self.started)} so far, about "
              f"{duration(each * (self.steps - done))} to go.", file=self.out, flush=True)

    def done(self, steps: int) -> None:
        if self.out is not None:
            early = "" if steps == self.steps else f" (of {self.steps}: the loss diverged)"
            kept = f", {self.skipped} of them kept from before" if self.skipped else ""
            print(f"LR range test: {steps} steps{early} in "
                  f"{duration(time.perf_counter() - self.started)}{kept}.", file=self.out,
                  flush=True)


def load_part(path: Path | None, setup: dict) -> dict | None:
    """The steps a cut-off sweep of this same ``setup`` kept at ``path``, else None (a damaged
    file, or one of another setup, device kind or arithmetic, is swept over, with a warning)."""
    if path is None or not path.is_file():
        return None
    try:
        kept = torch.load(path, map_location="cpu", weights_only=True)
        if kept["setup"] != setup:
            why = "another model, loss, loader, sweep, kind of device or arithmetic"
        elif not (len(kept["raw"]) < setup["num_iter"]
                  and all(isinstance(v, float) for v in kept["raw"])):
            why = "damaged: its losses are not a sweep's"
        else:
            return kept
    except Exception as exc:  # truncated, not a torch file, or missing a key
        why = f"unreadable: {type(exc).__name__}: {str(exc)[:100]}"
    warnings.warn(f"{path} holds the steps of a range test of {why}; sweeping from the start.",
                  stacklevel=4)
    return None


def load_result(path: Path | None, setup: dict, make, min_points: int):
    """``make(**result)`` of the result stored at ``path`` for this same ``setup``, else None (a damaged or foreign
    file is swept again and overwritten, with a warning, never trusted)."""
    if path is None or not path.exists():
        return None
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not the range test's record. Fix: remove it (or give "
                         "another checkpoint_dir).")
    try:
        stored = json.loads(path.read_text())
        if stored["setup"] == setup:
            found = make(**stored["result"])
            lrs = np.asarray(found.lrs, float)
            picks = np.asarray([found.valley, found.steepest, found.minimum], float)
            if not (len(lrs) == len(found.losses) >= min_points and np.isfinite(lrs).all()
                    and (lrs > 0).all() and np.isfinite(picks).all()
                    and (lrs.min() <= picks).all() and (picks <= lrs.max()).all()):
                raise ValueError("picks outside its own curve")
            return found
        why = "another model, loss, loader or sweep"
    except (ValueError, KeyError, TypeError) as exc:
        why = f"unreadable: {type(exc).__name__}: {str(exc)[:100]}"
    warnings.warn(f"{path} holds a range test of {why}; sweeping again and replacing it.",
                  stacklevel=3)
    return None


def keep_result(path: Path, setup: dict, swept: dict, result: dict, part: Path) -> None:
    """Write the sweep's ``result`` for this ``setup`` to ``path`` and drop its ``part`` file; a
    disk that refuses costs a warning (and a sweep when the run resumes), not the result."""
    text = json.dumps({"setup": setup, "swept": swept, "result": result}, indent=1)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(text.encode() + b"\n"))
        part.unlink(missing_ok=True)  # the whole curve is kept now
    except OSError as exc:
        warnings.warn(f"Could not keep the range test in {path} ({exc}); its result is "
                      "returned, but a resumed run will sweep again. Fix: free disk space or "
                      "give a checkpoint_dir you can write to.", stacklevel=3)
