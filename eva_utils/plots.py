"""Figures for the notebooks. Each function draws what another computed, returns a matplotlib
Figure, and also saves it as a PNG when given ``path``."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .data import CLASSES
from .engine import History, Predictions
from .transforms import denormalize


def _finish(fig: Figure, path) -> Figure:
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def check_normalised(images: torch.Tensor) -> None:
    """Raise if ``images`` (B, 3, H, W) look like raw pixels instead of the loaders' normalised
    tensors (which have roughly zero mean, so negative values)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"Expected images of shape (B, 3, H, W); got {tuple(images.shape)}.")
    if len(images) and images.min() >= 0:
        raise ValueError(
            f"These images look unnormalised (values in [{images.min():.3g}, {images.max():.3g}]). "
            "Pass them as the loaders yield them: normalised with the data set's mean and std "
            "(data.mean, data.std), e.g. from eva.predict(...).images.")


def plot_history(runs: History | dict[str, History], path=None) -> Figure:
    """Test (solid) and train (dashed) accuracy and loss per epoch; several runs overlaid."""
    runs = runs if isinstance(runs, dict) else {"": runs}
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for (name, h), color in zip(runs.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        epochs = np.arange(1, len(h) + 1)
        for ax, test, train in ((ax_acc, h.test_acc, h.train_acc),
                                (ax_loss, h.test_loss, h.train_loss)):
            ax.plot(epochs, test, color=color, marker=".", label=f"{name} test".strip())
            ax.plot(epochs, train, color=color, ls="--", alpha=0.6, label=f"{name} train".strip())
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    return _finish(fig, path)


def plot_lr_schedule(lrs, steps_per_epoch: int | None = None, path=None) -> Figure:
    """Learning rate per training step (e.g. ``eva.lr_schedule(cfg, steps)``); x in epochs if
    ``steps_per_epoch`` is given."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(lrs)) / (steps_per_epoch or 1)
    ax.plot(x, lrs)
    ax.set(xlabel="epoch" if steps_per_epoch else "step", ylabel="learning rate",
           title="Learning-rate schedule")
    ax.grid(alpha=0.3)
    return _finish(fig, path)


def plot_lr_finder(result, path=None) -> Figure:
    """Loss against learning rate (log scale) of an LR range test, with its suggestions marked.
    Draws any number of points (torch-lr-finder's own plot needs at least 17)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(result.lrs, result.losses, marker="." if len(result.lrs) < 30 else None)
    ax.axvline(result.suggested_lr, color="C1", ls="--",
               label=f"steepest descent: {result.suggested_lr:.2e}")
    ax.axvline(result.max_lr, color="C3", ls="-", label=f"one-cycle peak: {result.max_lr:.2e}")
    ax.axvline(result.min_lr, color="C2", ls=":", label=f"one-cycle start: {result.min_lr:.2e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="smoothed loss", title="LR range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _finish(fig, path)


def plot_augmentations(images: np.ndarray, transform, mean, std, n: int = 8, path=None) -> Figure:
    """Top row: ``n`` uint8 images (N, 32, 32, 3) as they are; bottom row: after ``transform``
    (an albumentations Compose ending in Normalize + ToTensorV2), un-normalised for display."""
    if n > len(images):
        raise ValueError(f"Asked for {n} images but only {len(images)} were given.")
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.6), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(images[i])
        axes[1, i].imshow(denormalize(transform(image=images[i])["image"], mean, std).numpy())
    axes[0, 0].set_ylabel("original")
    axes[1, 0].set_ylabel("augmented")
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
    return _finish(fig, path)


def plot_confusion(cm: torch.Tensor, classes=CLASSES, path=None) -> Figure:
    """Confusion matrix (row = true, column = predicted) and per-class accuracy."""
    cm = cm.numpy() if isinstance(cm, torch.Tensor) else np.asarray(cm)
    per_class = 100 * np.diag(cm) / np.maximum(cm.sum(1), 1)
    fig, (ax, ax_bar) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1.2, 1]})
    ax.imshow(cm, cmap="Blues")
    for (r, c), v in np.ndenumerate(cm):
        ax.text(c, r, v, ha="center", va="center", fontsize=7,
                color="white" if v > cm.max() / 2 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted",
           ylabel="true", title="Confusion matrix")
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    ax_bar.barh(classes, per_class)
    ax_bar.invert_yaxis()
    ax_bar.set(xlim=(0, 100), xlabel="accuracy (%)", title="Per-class accuracy")
    for i, v in enumerate(per_class):
        ax_bar.text(v + 1, i, f"{v:.1f}", va="center", fontsize=8)
    return _finish(fig, path)


def _no_mistakes(path) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.text(0.5, 0.5, "No mistakes: every image was classified correctly.", ha="center",
            va="center")
    ax.axis("off")
    return _finish(fig, path)


def plot_misclassified(wrong: Predictions, mean, std, n: int = 10, classes=CLASSES, cols: int = 5,
                       path=None) -> Figure:
    """Gallery of the first ``n`` of ``wrong`` (``eva.misclassified(...)``: most confident first),
    un-normalised, each titled "true / predicted (confidence)". An empty set draws a note."""
    if len(wrong.labels) == 0:
        return _no_mistakes(path)
    if n > len(wrong.labels):
        raise ValueError(f"Asked for {n} misclassified images but there are only "
                         f"{len(wrong.labels)}; ask for at most that many.")
    check_normalised(wrong.images)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows), squeeze=False)
    pictures = denormalize(wrong.images[:n], mean, std).numpy()
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(pictures[i])
            ax.set_title(f"{classes[wrong.labels[i]]} / {classes[wrong.preds[i]]}\n"
                         f"({100 * wrong.confidence[i]:.0f}%)", fontsize=9)
    fig.suptitle("Misclassified: true / predicted (confidence)")
    return _finish(fig, path)


def figure_path(folder, name: str) -> Path | None:
    """``folder/name``, or None (draw without saving) when ``folder`` is None."""
    return None if folder is None else Path(folder) / name
