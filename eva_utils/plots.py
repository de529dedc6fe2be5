"""Figures for the notebooks. Each function draws what another computed, returns a matplotlib
Figure, and also saves it as a PNG when given ``path``. Sizes suit JupyterLab's cell width
(about 10 inches at 100 dpi)."""
from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import nn

from .inference import Predictions, confusion_matrix
from .gradcam import gradcam, probe
from .history import History
from .images import check_normalised
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
        ax.legend()
    return save_figure(fig, path)


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
    for value, color, style, label in (
            (result.valley, "C1", "--", "suggested (valley)"),
            (result.steepest, "C2", ":", "steepest descent"),
            (result.minimum, "C3", "-", "loss minimum")):
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


READABLE_CLASSES = 30  # beyond this a K x K matrix is a wall of numbers: show the worst instead


def plot_confusion(predictions: Predictions, path=None, top: int = 20) -> Figure:
    """Confusion matrix (row = true, column = predicted) and per-class accuracy, sized and labelled
    from ``predictions.classes``. Beyond READABLE_CLASSES classes: the ``top`` most confused
    (true -> predicted) pairs and the ``top`` least accurate classes instead, counted without a
    K x K matrix, so 10,000 classes take a moment, not minutes."""
    classes = predictions.classes
    k = len(classes)
    if k > READABLE_CLASSES:
        return _plot_confusion_summary(predictions, top, path)
    cm = confusion_matrix(predictions).numpy()
    per_class = 100 * np.diag(cm) / np.maximum(cm.sum(1), 1)
    fig, (ax, ax_bar) = plt.subplots(1, 2, figsize=(11, 4.5 + 0.05 * k),
                                     gridspec_kw={"width_ratios": [1.2, 1]})
    ax.imshow(cm, cmap="Blues")
    if k <= 20:  # beyond that the numbers would not be readable
        for (r, c), v in np.ndenumerate(cm):
            ax.text(c, r, v, ha="center", va="center", fontsize=7,
                    color="white" if v > cm.max() / 2 else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true",
           title="Confusion matrix")
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    ax_bar.barh(classes, per_class)
    ax_bar.invert_yaxis()
    ax_bar.set(xlim=(0, 105), xlabel="accuracy (%)", title="Per-class accuracy")
    for i, v in enumerate(per_class):
        ax_bar.text(v + 1, i, f"{v:.1f}", va="center", fontsize=8)
    return save_figure(fig, path)


def _plot_confusion_summary(p: Predictions, top: int, path) -> Figure:
    """The many-class view: most confused pairs and least accurate classes, side by side."""
    k = len(p.classes)
    wrong = p.preds != p.labels
    pairs, counts = torch.unique(p.labels[wrong] * k + p.preds[wrong], return_counts=True)
    order = counts.argsort(descending=True)[:top]
    pair_names = [f"{p.classes[int(q) // k]} → {p.classes[int(q) % k]}" for q in pairs[order]]
    seen = torch.bincount(p.labels, minlength=k)
    right = torch.bincount(p.labels[~wrong], minlength=k)
    present = (seen > 0).nonzero().flatten()
    accuracy = 100 * right[present].double() / seen[present]
    worst = accuracy.argsort()[:top]
    rows = max(len(order), len(worst), 1)
    fig, (ax_pairs, ax_acc) = plt.subplots(1, 2, figsize=(11, 1.2 + 0.28 * rows))
    ax_pairs.barh(pair_names, counts[order].numpy())
    ax_pairs.invert_yaxis()
    ax_pairs.set(xlabel="test images", title=f"Most confused: true → predicted (top {len(order)})")
    ax_acc.barh([p.classes[int(present[i])] for i in worst], accuracy[worst].numpy())
    ax_acc.invert_yaxis()
    ax_acc.set(xlim=(0, 105), xlabel="accuracy (%)",
               title=f"Least accurate of {k:,} classes (top {len(worst)})")
    for ax in (ax_pairs, ax_acc):
        ax.tick_params(axis="y", labelsize=8)
    return save_figure(fig, path)


def no_mistakes(path) -> Figure:
    """A note in place of a gallery when there is nothing wrong to show."""
    fig, ax = plt.subplots(figsize=(5, 1.5))
    ax.text(0.5, 0.5, "No mistakes: every image was classified correctly.", ha="center",
            va="center")
    ax.axis("off")
    return save_figure(fig, path)


def plot_misclassified(wrong: Predictions, mean, std, n: int = 10, cols: int = 5,
                       path=None) -> Figure:
    """Gallery of the first ``n`` of ``wrong`` (``eva.misclassified(...)``: most confident first;
    fewer if there are fewer), un-normalised, each titled "true / predicted (confidence)"."""
    check_counts(n, cols)
    n = min(n, len(wrong))
    if n == 0:
        return no_mistakes(path)
    check_normalised(wrong.images)
    cols = min(cols, n)
    rows = -(-n // cols)
    # Constrained layout keeps each row's two-line titles clear of the images above them.
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.45 * rows), squeeze=False,
                             layout="constrained")
    pictures = denormalize(wrong.images[:n], mean, std).numpy()
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(pictures[i])
            ax.set_title(f"{wrong.classes[wrong.labels[i]]}\n→ {wrong.classes[wrong.preds[i]]} "
                         f"({100 * wrong.confidence[i]:.0f}%)", fontsize=10)
    fig.suptitle("Misclassified, most confident first: true → predicted (confidence)", fontsize=12)
    return save_figure(fig, path, layout=False)


def plot_gradcam(model: nn.Module, wrong: Predictions, layers, mean, std, *, n: int = 10,
                 target: str = "pred", cols: int = 5, path=None) -> Figure:
    """For the first ``n`` images of ``wrong`` (fewer if there are fewer), rows of at most ``cols``:
    the images titled "true / predicted", then one row of Grad-CAM overlays per layer, labelled with
    the layer and its map size. ``target`` "pred" explains the predicted class, "true" the true one."""
    if target not in {"pred", "true"}:
        raise ValueError(f"target={target!r}: use 'pred' (explain the prediction) or 'true'.")
    check_counts(n, cols)
    n = min(n, len(wrong))
    if n == 0:
        return no_mistakes(path)
    layers = [layers] if isinstance(layers, (str, nn.Module)) else list(layers)
    names = [name if isinstance(name, str) else type(name).__name__ for name in layers]
    images = wrong.images[:n]
    explained = wrong.preds[:n] if target == "pred" else wrong.labels[:n]
    shapes, _ = probe(model, images, layers)
    sizes = {layer: f"{shape[-2]}x{shape[-1]}" for layer, shape in shapes.items()}
    coarse = [name for name, layer in zip(names, layers) if min(shapes[layer][-2:]) < 2]
    if coarse:
        warnings.warn(f"{', '.join(coarse)}: a 1-pixel-wide feature map at this image size, so "
                      "its heat map is one flat colour and explains nothing. Fix: choose an "
                      "earlier layer (eva.gradcam_layers(model)), or larger images.", stacklevel=2)
    from pytorch_grad_cam.utils.image import show_cam_on_image  # lazily, as in gradcam.gradcam

    masks = [gradcam(model, images, layer, explained) for layer in layers]
    cols = min(cols, n)  # 2 images: 2 columns, not 5 with 3 blank
    pictures = denormalize(images, mean, std).numpy()
    groups, rows_per = -(-n // cols), 1 + len(layers)
    fig, axes = plt.subplots(groups * rows_per, cols, figsize=(2.0 * cols, 2.15 * groups * rows_per),
                             squeeze=False)
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
        ax.set_frame_on(False)
    for i in range(n):
        g, c = divmod(i, cols)
        top = axes[g * rows_per, c]
        top.imshow(pictures[i])
        top.set_title(f"{wrong.classes[wrong.labels[i]]} / {wrong.classes[wrong.preds[i]]}",
                      fontsize=10)
        for r, mask in enumerate(masks, start=1):
            panel = axes[g * rows_per + r, c]
            panel.imshow(show_cam_on_image(pictures[i], mask[i], use_rgb=True))
            if not mask[i].any():  # nothing in this layer pushed towards the class: an even tint
                panel.text(0.5, 0.5, "zero\neverywhere", transform=panel.transAxes, ha="center",
                           va="center", color="white", fontsize=9)
    for g in range(groups):
        axes[g * rows_per, 0].set_ylabel("image", fontsize=10)
        for r, (name, layer) in enumerate(zip(names, layers), start=1):
            axes[g * rows_per + r, 0].set_ylabel(f"{name} ({sizes[layer]})", fontsize=10)
    fig.suptitle(f"Grad-CAM of the {'predicted' if target == 'pred' else 'true'} class "
                 "(titles: true / predicted)", fontsize=12)
    fig.tight_layout()  # lay out the panels first, then put the colour bar beneath them
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(cmap="jet"), ax=axes, orientation="horizontal",
                       fraction=0.02, pad=0.02, aspect=60)
    bar.set_ticks([0, 1], labels=["0: none", "1: the map's highest"])
    bar.set_label("Grad-CAM, each panel scaled to its own highest value", fontsize=9)
    return save_figure(fig, path, layout=False)
