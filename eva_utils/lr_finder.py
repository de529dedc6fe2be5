"""The LR range test (Leslie Smith, 2015) on torch-lr-finder: an exponential sweep of the learning
rate recording the smoothed loss, with the model and optimizer restored afterwards, and named rules
that read a rate off the curve (as fastai names its suggestions):
* ``valley`` (fastai's default, the suggestion): halfway along the longest stretch of falling loss;
* ``steepest``: where the loss falls fastest against log(lr), at or before its minimum;
* ``minimum``: the lowest smoothed loss; ``minimum_tenth``: fastai's older rule, a tenth of it;
* ``first_minimum``: the bottom of the first valley, before the loss rises ``RISE`` above it (04's
  one-cycle peak): unlike ``minimum`` it ignores a second dip at far higher rates.
``benchmarks/lr_rules.py`` compares the rules (docs/own-assignment.md).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch_lr_finder import LRFinder, TrainDataLoaderIter

from .machinery import distributed
from .machinery.budget import BudgetSpent, as_budget, duration
from .machinery.precision import Precision
from .machinery.checkpoint import CheckpointError, atomic_save, atomic_write, rng_state, set_rng_state
from .machinery.guards import check_finite_images
from .machinery.runtime import check_weights, get_device, kept_modes, to_device

MIN_POINTS = 5   # fewer recorded steps than this and no rule means anything
RISE = 0.1  # first_minimum: a loss 10 % above the lowest so far ends the first valley
AUTO_STEPS = (50, 100)  # num_iter=None: a step per training batch, but at least 50 and at most 100


@dataclass
class RangeTest:
    lrs: list             # learning rate of each step (exponentially spaced)
    losses: list          # smoothed training loss after each step
    valley: float         # fastai's "valley" rule: the suggestion
    steepest: float       # steepest descent of the loss against log(lr)
    minimum: float        # the lowest smoothed loss (assignment 003's one-cycle LRMAX)
    seconds: float | None = None  # how long the sweep took (kept with the run: a resume's too)

    @property
    def minimum_tenth(self) -> float:
        return self.minimum / 10

    @property
    def first_minimum(self) -> float:
        """The learning rate at the bottom of the curve's first valley (see the module doc)."""
        return first_minimum_lr(self.lrs, self.losses)

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
                f"minimum {self.first_minimum:.3g}")


def lr_range_test(model: nn.Module, train_loader, *, optimizer: torch.optim.Optimizer | None = None,
                  start_lr: float = 1e-5, end_lr: float = 10.0, num_iter: int | None = None,
                  criterion: nn.Module | None = None, verbose: bool = True,
                  checkpoint_dir: str | os.PathLike | None = None,
                  device: str | torch.device | None = None, amp: bool | None = None,
                  channels_last: bool | None = None, time_budget=None) -> RangeTest:
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
    torchrun rank 0 sweeps and every process gets its result.
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"start_lr={start_lr} and end_lr={end_lr}: the sweep needs "
                         "0 < start_lr < end_lr, e.g. start_lr=1e-5, end_lr=10.")
    batches = len(train_loader)
    if batches == 0:
        raise ValueError("The training loader yields no batches. Fix: lower its batch size or give "
                         "it more images.")
    if num_iter is None:
        num_iter = min(max(batches, AUTO_STEPS[0]), AUTO_STEPS[1])
    if num_iter < MIN_POINTS:
        raise ValueError(f"num_iter={num_iter}: the range test needs at least {MIN_POINTS} steps.")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer is a {type(optimizer).__name__}, not a torch.optim.Optimizer"
                        f"{' (a learning-rate scheduler?)' if hasattr(optimizer, 'get_last_lr') else ''}"
                        ". Fix: pass the optimizer itself, e.g. torch.optim.SGD(model.parameters(), "
                        "lr=1e-5), or none for the suite's.")
    check_weights(model)
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=start_lr, momentum=0.9, nesterov=True,
                                    weight_decay=5e-4)
    own = {id(p) for p in model.parameters()}
    if not any(id(p) in own for g in optimizer.param_groups for p in g["params"]):
        raise ValueError("The optimizer holds none of this model's parameters (was it built for "
                         "another model?). Fix: build it from model.parameters(), or pass none.")
    # Where and how fit will train: the data's device (its process group is NCCL's on CUDA, so
    # fit's later start finds the right one), and the precision and layout fit picks there.
    device = get_device(device if device is not None else getattr(train_loader, "device", None))
    arithmetic = Precision.choose(device, amp, channels_last)  # fit's rule, fit's arithmetic
    dtype, nhwc = arithmetic.dtype, arithmetic.channels_last
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
    stored = _load(kept, setup)
    if stored is not None:
        if verbose:
            print(f"LR range test: loaded from {kept}, where this run stored it (delete the file to "
                  "sweep again).")
        return distributed.from_main(stored, device)
    # A sweep's steps mean the same only on the same kind of device in the same arithmetic.
    partial = (kept.with_name("range_test.part.pt") if kept is not None else None,
               {**setup, "device": device.type, "precision": arithmetic.name,
                "layout": arithmetic.layout})
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
    # torch-lr-finder's own mixed precision: autocast, and a loss scaler that scales only float16.
    precision = ({"amp_backend": "torch", "amp_config": {"device_type": device.type, "dtype": dtype},
                  "grad_scaler": arithmetic.scaler(device)}
                 if dtype is not None else {})
    finder = KeptFinder(model, optimizer, criterion, device=device, **precision)
    layout = weights_layout(model)
    with kept_modes(model):
        try:
            model.to(memory_format=arithmetic.memory_format)  # the weights in fit's layout too
            for group in optimizer.param_groups:  # the sweep starts from start_lr
                group["lr"] = start_lr
            finder.keep_in(*partial)  # after the layout change: a kept state is loaded into it
            if verbose and finder.replay:
                print(f"LR range test: going on after step {len(finder.replay)}, kept in "
                      f"{partial[0]} by a sweep that was cut off.", flush=True)
            batches_in = Batches(train_loader, device, nhwc,
                                 Progress(num_iter, optimizer, sys.stdout if verbose else None,
                                          as_budget(time_budget)))
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                # its "see the graph with .plot()" hint; torch's warning that the rate was
                # scheduled before the optimizer stepped, which replayed steps do not
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step",
                                        UserWarning)
                finder.range_test(batches_in, start_lr=start_lr, end_lr=end_lr,
                                  num_iter=num_iter, step_mode="exp")
            lrs, losses = list(finder.history["lr"]), list(finder.history["loss"])
            batches_in.progress.done(len(lrs))
        finally:
            finder.reset()  # the model's and the optimizer's state dicts, the model's device
            model.to(memory_format=layout)
    found = replace(RangeTest.from_curve(lrs, losses), seconds=round(finder.seconds(), 3))
    if kept is not None:  # kept with the run; a disk that refuses it costs a sweep, not the result
        swept = {"device": str(device), "precision": arithmetic.name, "layout": arithmetic.layout}
        text = json.dumps({"setup": setup, "swept": swept, "result": asdict(found)}, indent=1)
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(kept, lambda f: f.write(text.encode() + b"\n"))
            partial[0].unlink(missing_ok=True)  # the whole curve is kept now
        except OSError as exc:
            warnings.warn(f"Could not keep the range test in {kept} ({exc}); its result is "
                          "returned, but a resumed run will sweep again. Fix: free disk space or "
                          "give a checkpoint_dir you can write to.", stacklevel=2)
    return distributed.from_main(found, device)


def loss_name(criterion: nn.Module) -> str:
    """The loss and its settings, e.g. "CrossEntropyLoss(label_smoothing=0.2, ...)" (its repr
    leaves the settings out)."""
    settings = {k: v for k, v in vars(criterion).items() if not k.startswith("_") and k != "training"}
    return f"{type(criterion).__name__}({', '.join(f'{k}={v!r}' for k, v in sorted(settings.items()))})"


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
        self.kept = _load_part(path, setup)
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


def _load_part(path: Path | None, setup: dict) -> dict | None:
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
                  stacklevel=3)
    return None


def _load(path: Path | None, setup: dict) -> RangeTest | None:
    """The RangeTest stored at ``path`` for this same ``setup``, else None (a damaged or foreign
    file is swept again and overwritten, with a warning, never trusted)."""
    if path is None or not path.exists():
        return None
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not the range test's record. Fix: remove it (or give "
                         "another checkpoint_dir).")
    try:
        stored = json.loads(path.read_text())
        if stored["setup"] == setup:
            found = RangeTest(**stored["result"])
            lrs = np.asarray(found.lrs, float)
            picks = np.asarray([found.valley, found.steepest, found.minimum], float)
            if not (len(lrs) == len(found.losses) >= MIN_POINTS and np.isfinite(lrs).all()
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


def first_minimum_lr(lrs, losses, rise: float = RISE) -> float:
    """The learning rate of the lowest loss before the loss first climbs ``rise`` (a fraction)
    above the lowest so far; the overall minimum if it never does. Non-finite losses are skipped."""
    ok = np.isfinite(np.asarray(losses, float))
    lrs, losses = np.asarray(lrs, float)[ok], np.asarray(losses, float)[ok]
    best = 0
    for i in range(1, len(losses)):
        if losses[i] < losses[best]:
            best = i
        elif losses[i] > losses[best] * (1 + rise):  # the curve has turned up: the valley ended
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
