"""Grad-CAM heat maps (pytorch-grad-cam 1.5) and panels of them, leaving the model as it was found."""
from __future__ import annotations

from contextlib import contextmanager

import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from .inference import Predictions
from .plots import check_counts, check_normalised, no_mistakes, save_figure
from .runtime import eval_mode
from .transforms import denormalize


def gradcam_layers(model: nn.Module) -> tuple[str, ...]:
    """The layers a model names as worth a Grad-CAM look (its ``gradcam_layers`` attribute)."""
    layers = getattr(model, "gradcam_layers", None)
    if not layers:
        raise ValueError(f"{type(model).__name__} names no Grad-CAM layers. Fix: pass layer names, "
                         f"e.g. one of {', '.join(_spatial_names(model)[-6:])}, or give the class a "
                         "gradcam_layers = (...) attribute.")
    return tuple(layers)


def _spatial_names(model: nn.Module) -> list[str]:
    """Dotted names of the modules that can make feature maps (not activations or the head)."""
    return [name for name, m in model.named_modules()
            if name and not isinstance(m, (nn.ReLU, nn.Linear, nn.Flatten, nn.Dropout))]


def find_layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    """The submodule ``layer`` (a dotted name such as "layer2" or "body.1", or the module itself)."""
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"The layer {type(layer).__name__} given is not part of this "
                             f"{type(model).__name__}; pass one of its own modules or its name.")
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError:
        raise ValueError(f"{type(model).__name__} has no layer {layer!r}. Valid names: "
                         f"{', '.join(_spatial_names(model))}.") from None


def probe(model: nn.Module, images: torch.Tensor, layers) -> tuple[dict, int]:
    """({layer: output shape}, number of model outputs) for ``images[:1]``, from one forward pass
    (hooks removed); an error naming the layer when its output is not a (B, C, H, W) feature map."""
    sizes, handles = {}, []
    for layer in layers:
        def hook(module, args, out, layer=layer):
            sizes.setdefault(layer, tuple(out.shape) if isinstance(out, torch.Tensor) else None)
        handles.append(find_layer(model, layer).register_forward_hook(hook))
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), eval_mode(model):
            outputs = model(images[:1].to(device)).shape[1]
    finally:
        for h in handles:
            h.remove()
    for layer, shape in sizes.items():
        if shape is None or len(shape) != 4:
            name = layer if isinstance(layer, str) else type(layer).__name__
            good = getattr(model, "gradcam_layers", None) or _spatial_names(model)[-6:]
            raise ValueError(f"Layer {name!r} outputs {shape}, not (B, C, H, W) feature maps, so "
                             "Grad-CAM cannot weigh its channels. Fix: pick a convolutional stage, "
                             f"e.g. one of {', '.join(good)}.")
    return sizes, outputs


@contextmanager
def _untouched(model: nn.Module):
    """Restore every submodule's mode, requires_grad, .grad and in-place ReLUs however the block
    ends. In-place ReLUs are turned off meanwhile: they would overwrite the activations that
    Grad-CAM keeps (on the CPU its saved copy shares their memory)."""
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
        with eval_mode(model):
            yield
    finally:
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
        for m in inplace:
            m.inplace = True


def gradcam(model: nn.Module, images: torch.Tensor, layer: str | nn.Module,
            classes: torch.Tensor | None = None) -> np.ndarray:
    """Grad-CAM masks float32 (B, H, W) in [0, 1], the size of ``images`` (B, 3, H, W, normalised).

    ``classes`` (B,) are the class indices explained; None explains the model's own prediction.
    """
    if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
        raise RuntimeError("Grad-CAM needs gradients, but it was called inside torch.no_grad() or "
                           "torch.inference_mode(). Fix: call it outside that block.")
    check_normalised(images)
    module = find_layer(model, layer)
    device = next(model.parameters()).device
    images = images.to(device)
    _, outputs = probe(model, images, [layer])  # one forward checks the layer and the classes
    targets = None
    if classes is not None:
        if len(classes) != len(images):
            raise ValueError(f"{len(classes)} class indices for {len(images)} images: give one "
                             "class per image (or None to explain each prediction).")
        bad = [int(c) for c in classes if not 0 <= int(c) < outputs]
        if bad:
            raise ValueError(f"Class indices {bad} do not exist: the model has {outputs} outputs "
                             f"(classes 0..{outputs - 1}).")
        targets = [ClassifierOutputTarget(int(c)) for c in classes]
    with _untouched(model):
        # Not ``with GradCAM(...) as cam``: its __exit__ swallows an IndexError (printing it), so
        # the real cause would be lost. The hooks are released here either way.
        cam = GradCAM(model=model, target_layers=[module])
        try:
            masks = cam(input_tensor=images, targets=targets)
        finally:
            cam.activations_and_grads.release()
    return masks.astype(np.float32)


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
            axes[g * rows_per + r, c].imshow(show_cam_on_image(pictures[i], mask[i], use_rgb=True))
    for g in range(groups):
        axes[g * rows_per, 0].set_ylabel("image", fontsize=10)
        for r, (name, layer) in enumerate(zip(names, layers), start=1):
            axes[g * rows_per + r, 0].set_ylabel(f"{name} ({sizes[layer]})", fontsize=10)
    fig.suptitle(f"Grad-CAM of the {'predicted' if target == 'pred' else 'true'} class "
                 "(titles: true / predicted)", fontsize=12)
    return save_figure(fig, path)
