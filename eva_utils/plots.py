"""Figures of training for the notebooks: curves, schedules, the range test, augmentation (a trained
model's answers: ``galleries``). Each function draws what another computed, returns a matplotlib
Figure, and also saves it as a PNG when given ``path``. Sizes suit JupyterLab's cell width (about 10
inches at 100 dpi)."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .machinery.history import History
from .transforms import denormalize


def save_figure(fig: Figure, path, layout: bool = True, **padding) -> Figure:
    """Lay out ``fig`` (``padding``: tight_layout's; ``layout=False`` keeps the layout it has) and
    save it as a PNG at ``path`` (folders created) unless ``path`` is None."""
    if layout:
        fig.tight_layout(**padding)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    if not _shows_figures():  # a script: pyplot would keep every figure open (memory, warnings)
        plt.close(fig)
    return fig


def _shows_figures() -> bool:
    """True where pyplot displays figures itself (Jupyter's inline backend, which closes them
    after the cell; a GUI window); False for a file-only backend (Agg in scripts and tests)."""
    return matplotlib.get_backend().lower() not in {"agg", "pdf", "svg", "ps", "cairo", "pgf",
                                                    "template"}


def figure_path(folder, name: str) -> Path | None:
    """``folder/name``, or None (draw without saving) when ``folder`` is None."""
    return None if folder is None else Path(folder).expanduser() / name


def check_counts(n: int, cols: int) -> None:
    """Raise unless ``n`` (images to show) and ``cols`` (per row) are whole numbers >= 1."""
    for name, value in (("n", n), ("cols", cols)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r}: give a whole number >= 1.")


def plot_history(runs: History | dict[str, History], path=None) -> Figure:
    """Test (solid) and train (dashed) accuracy and loss per epoch; several runs overlaid. A run
    tested with mirror TTA says so in its legend, and its accuracy without TTA is dotted."""
    runs = runs if isinstance(runs, dict) else {"": runs}
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (name, h), color in zip(runs.items(), colors):
        epochs = np.arange(1, len(h) + 1)
        marker = "o" if len(h) <= 30 else None  # few epochs: show where the measurements are
        tta = len(h.test_acc_plain) == len(h)   # fit records both only when it tests with TTA
        test = f"{name} test{' (mirror TTA)' if tta else ''}".strip()
        for ax, tested, train in ((ax_acc, h.test_acc, h.train_acc),
                                  (ax_loss, h.test_loss, h.train_loss)):
            ax.plot(epochs, tested, color=color, marker=marker, ms=3, label=test)
            ax.plot(epochs, train, color=color, ls="--", alpha=0.6, label=f"{name} train".strip())
        if tta:
            ax_acc.plot(epochs, h.test_acc_plain, color=color, ls=":",
                        label=f"{name} test, one view".strip())
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    # One legend, under both plots: inside either it covered a curve.
    handles, labels = ax_acc.get_legend_handles_labels()
    rows = -(-len(labels) // 4)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False)
    return save_figure(fig, path, rect=(0, 0.07 * rows, 1, 1))


def plot_lr_schedule(lrs, steps_per_epoch: int | None = None, path=None) -> Figure:
    """Learning rate per training step (``eva.lr_schedule(cfg, steps)``), its lowest and highest
    values marked. With ``steps_per_epoch`` the x axis counts epochs: a step's rate is drawn at the
    end of that step, so a one-cycle peak after epoch 5 sits exactly on 5."""
    lrs = np.asarray(lrs, float)
    if lrs.ndim != 1 or len(lrs) == 0:
        raise ValueError(f"plot_lr_schedule needs one learning rate per step; got {lrs.shape}. "
                         "Fix: eva.lr_schedule(cfg, len(train_loader)) gives them.")
    per = steps_per_epoch or 1
    x = (np.arange(len(lrs)) + 1) / per
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(x, lrs)
    high, low = lrs.max(), lrs.min()
    ax.axhline(high, color="C3", ls=":", lw=1)
    ax.axhline(low, color="C2", ls=":", lw=1)
    # Each label sits just above its line, LRMAX at the left edge (where a schedule warms up from
    # low rates) and LRMIN in the middle (where it runs high): no curve lies above its maximum, so
    # neither label crosses it. The top margin leaves room for the LRMAX label.
    on_line = ax.get_yaxis_transform()  # x in axes fractions, y in learning rates
    ax.text(0.01, high, f"LRMAX {high:.3g}", transform=on_line, va="bottom", color="C3")
    ax.text(0.5, low, f"LRMIN {low:.3g}", transform=on_line, va="bottom", ha="center", color="C2")
    span = (high - low) or abs(high) or 1.0
    ax.set(xlabel="epoch" if steps_per_epoch else "step", ylabel="learning rate",
           title="Learning-rate schedule", xlim=(0, x[-1]),
           ylim=(low - 0.05 * span, high + 0.18 * span))
    if steps_per_epoch:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_lr_finder(result, path=None) -> Figure:
    """Smoothed loss against learning rate (log scale) of an LR range test, each rule's pick
    marked. The y axis shows the part that matters, from the lowest loss to the highest before it:
    the explosion at the end runs off the top. Draws any number of points."""
    lrs, losses = np.asarray(result.lrs, float), np.asarray(result.losses, float)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(lrs, losses, marker="." if len(lrs) < 30 else None)
    finite = np.isfinite(losses)
    if finite.any():
        lowest = int(np.nanargmin(np.where(finite, losses, np.nan)))
        top, bottom = np.nanmax(losses[:lowest + 1][finite[:lowest + 1]]), losses[lowest]
        margin = 0.1 * (top - bottom) or 0.1 * abs(top) or 0.1
        ax.set_ylim(bottom - margin, top + 2 * margin)
    rules = [(result.valley, "C1", "--", "suggested (valley)"),
             (result.steepest, "C2", ":", "steepest descent"),
             (result.minimum, "C3", "-", "loss minimum")]
    if result.first_minimum != result.minimum:  # the curve dipped again after its first valley
        rules.append((result.first_minimum, "C4", "-.", "first minimum"))
    for value, color, style, label in rules:
        ax.axvline(value, color=color, ls=style, label=f"{label}: {value:.2e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="smoothed loss", title="LR range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return save_figure(fig, path)


def plot_augmentations(loader, n: int = 8, seed: int = 0, path=None) -> Figure:
    """What ``loader`` trains on: top row ``n`` images as stored, bottom row as the loader
    augments them (``loader.preview``), un-normalised for display."""
    check_counts(n, 1)
    originals, augmented = loader.preview(n, seed)
    n = len(originals)
    pictures = denormalize(augmented, loader.mean, loader.std).numpy()
    fig, axes = plt.subplots(2, n, figsize=(1.25 * n, 2.9), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(originals[i])
        axes[1, i].imshow(pictures[i])
    axes[0, 0].set_ylabel("stored")
    axes[1, 0].set_ylabel("trained on")
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
    return save_figure(fig, path)

