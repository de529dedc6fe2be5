"""Grad-CAM heat maps (pytorch-grad-cam 1.5) and panels of them, leaving the model untouched."""
from __future__ import annotations

from contextlib import contextmanager

import matplotlib.pyplot as plt
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from .data import CLASSES
from .engine import Predictions
from .plots import _finish, _no_mistakes, check_normalised
from .transforms import denormalize

# The layers worth looking at in each of our models, with their output size on 32x32 inputs.
TARGET_LAYERS = {
    "PlainCNN": {"body.1": "32x28x28", "body.5": "64x10x10"},
    "SmallResNet": {"block1": "32x16x16", "block2": "64x8x8", "block3": "128x4x4"},
    "ResNet18": {"layer1": "64x32x32", "layer2": "128x16x16", "layer3": "256x8x8",
                 "layer4": "512x4x4"},
    "CustomResNet": {"layer1": "128x16x16", "layer2": "256x8x8", "layer3": "512x4x4"},
}


def target_layers(model: nn.Module) -> dict[str, str]:
    """Sensible Grad-CAM layers of one of our models: {name: output size}."""
    return dict(TARGET_LAYERS.get(type(model).__name__, {}))


def _layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"The layer {type(layer).__name__} given is not part of this "
                             f"{type(model).__name__}; pass one of its own modules or its name.")
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = list(target_layers(model)) or [n for n, _ in model.named_children()]
        raise ValueError(f"{type(model).__name__} has no layer {layer!r}; try one of "
                         f"{', '.join(names)}.") from None


@contextmanager
def _untouched(model: nn.Module):
    """Restore mode, requires_grad, .grad and in-place ReLUs however the block ends.

    In-place ReLUs are turned off meanwhile: they would overwrite the activations that
    Grad-CAM keeps (on the CPU its saved copy shares their memory)."""
    mode = model.training
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    inplace = [m for m in model.modules() if getattr(m, "inplace", False)]
    for m in inplace:
        m.inplace = False
    for p in params:  # activations need a graph even when the weights are frozen
        p.requires_grad_(True)
        p.grad = None  # fresh tensors for Grad-CAM's backward: the caller's stay as they were
    try:
        yield
    finally:
        model.train(mode)
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
        for m in inplace:
            m.inplace = True


def gradcam(model: nn.Module, images: torch.Tensor, layer: str | nn.Module,
            classes: torch.Tensor | None = None) -> np.ndarray:
    """Grad-CAM masks float32 (B, H, W) in [0, 1], the size of ``images`` (B, 3, H, W, normalised).

    ``classes`` (B,) are the classes explained; None explains the model's own prediction.
    """
    check_normalised(images)
    module = _layer(model, layer)
    device = next(model.parameters()).device
    targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
    with _untouched(model), GradCAM(model=model, target_layers=[module]) as cam:
        masks = cam(input_tensor=images.to(device), targets=targets)
    return masks.astype(np.float32)


def plot_gradcam(model: nn.Module, wrong: Predictions, layers, mean, std, *, n: int = 10,
                 target: str = "pred", classes=CLASSES, path=None):
    """Panel: for each of the first ``n`` images of ``wrong``, the image and one Grad-CAM overlay
    per layer in ``layers`` (names or modules), titled true / predicted. ``target`` "pred" explains
    the predicted class, "true" the true one."""
    if target not in {"pred", "true"}:
        raise ValueError(f"target={target!r}: use 'pred' (explain the prediction) or 'true'.")
    if len(wrong.labels) == 0:
        return _no_mistakes(path)
    if n > len(wrong.labels):
        raise ValueError(f"Asked for {n} images but only {len(wrong.labels)} were given.")
    layers = [layers] if isinstance(layers, (str, nn.Module)) else list(layers)
    images = wrong.images[:n]
    chosen = wrong.preds[:n] if target == "pred" else wrong.labels[:n]
    masks = {(name if isinstance(name, str) else type(name).__name__):
             gradcam(model, images, name, chosen) for name in layers}
    pictures = denormalize(images, mean, std).numpy()
    fig, axes = plt.subplots(1 + len(masks), n, figsize=(1.9 * n, 2.1 * (1 + len(masks))),
                             squeeze=False)
    for i in range(n):
        axes[0, i].imshow(pictures[i])
        axes[0, i].set_title(f"{classes[wrong.labels[i]]}\n/ {classes[wrong.preds[i]]}", fontsize=8)
        for row, (name, mask) in enumerate(masks.items(), start=1):
            axes[row, i].imshow(show_cam_on_image(pictures[i], mask[i], use_rgb=True))
    for row, name in enumerate(["image", *masks]):
        axes[row, 0].set_ylabel(name, fontsize=9)
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
    fig.suptitle(f"Grad-CAM of the {'predicted' if target == 'pred' else 'true'} class "
                 "(titles: true / predicted)")
    return _finish(fig, path)
