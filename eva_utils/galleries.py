"""Figures of a trained model's answers: the confusion matrix, the most confident mistakes, and
Grad-CAM panels over them. Each returns a matplotlib Figure, saved as a PNG when given ``path``."""
from __future__ import annotations

import warnings

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from .gradcam import gradcam, probe
from .machinery.images import check_normalised
from .inference import Predictions, confusion_matrix
from .plots import check_counts, save_figure
from .transforms import denormalize

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


def percent(p: float) -> str:
    """A probability in [0, 1] as a percentage with one decimal; "> 99.9 %" rather than a 100.0
    that no softmax reaches (whole percentages made most confident mistakes read 100 %)."""
    return "> 99.9 %" if p >= 0.9995 else f"{100 * p:.1f} %"


def plot_misclassified(wrong: Predictions, mean, std, n: int = 10, cols: int = 5,
                       path=None) -> Figure:
    """Gallery of the first ``n`` of ``wrong`` (``eva.misclassified(...)``: most confident first;
    fewer if there are fewer), un-normalised, each titled "true / predicted (confidence)"."""
    check_counts(n, cols)
    n = min(n, len(wrong))
    if n == 0:
        return no_mistakes(path)
    images = wrong[:n].images  # read from the loader: these n only
    check_normalised(images)
    cols = min(cols, n)
    rows = -(-n // cols)
    # Constrained layout keeps each row's two-line titles clear of the images above them.
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.45 * rows), squeeze=False,
                             layout="constrained")
    pictures = denormalize(images, mean, std).numpy()
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(pictures[i])
            ax.set_title(f"{wrong.classes[wrong.labels[i]]}\n→ {wrong.classes[wrong.preds[i]]} "
                         f"({percent(float(wrong.confidence[i]))})", fontsize=10)
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
    images = wrong[:n].images  # read from the loader: these n only
    explained = wrong.preds[:n] if target == "pred" else wrong.labels[:n]
    shapes, _ = probe(model, images, layers)
    sizes = {layer: f"{shape[-2]}x{shape[-1]}" for layer, shape in shapes.items()}
    coarse = [name for name, layer in zip(names, layers) if min(shapes[layer][-2:]) < 2]
    if coarse:
        warnings.warn(f"{', '.join(coarse)}: a 1-pixel-wide feature map at this image size, so "
                      "its heat map is one flat colour and explains nothing. Fix: choose an "
                      "earlier layer (eva.gradcam_layers(model)), or larger images.", stacklevel=2)
    from pytorch_grad_cam.utils.image import show_cam_on_image  # lazily, as in gradcam.gradcam

    check_normalised(images)  # once, not once per layer
    masks = [gradcam(model, images, layer, explained, check=False) for layer in layers]
    cols = min(cols, n)  # 2 images: 2 columns, not 5 with 3 blank
    pictures = denormalize(images, mean, std).numpy()
    groups, rows_per = -(-n // cols), 1 + len(layers)
    # A thin empty row between groups, so that a group's titles stand apart from the group above.
    step, gap = rows_per + 1, 0.2
    ratios = ([1.0] * rows_per + [gap]) * groups
    fig, grid = plt.subplots(groups * step - 1, cols, squeeze=False,
                             figsize=(2.0 * cols, 2.15 * (groups * rows_per + (groups - 1) * gap)),
                             gridspec_kw={"height_ratios": ratios[:-1]})
    for ax in grid.flat:
        ax.set(xticks=[], yticks=[])
        ax.set_frame_on(False)
    for g in range(1, groups):
        for ax in grid[g * step - 1]:
            ax.remove()
    axes = np.stack([grid[g * step + r] for g in range(groups) for r in range(rows_per)])
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
