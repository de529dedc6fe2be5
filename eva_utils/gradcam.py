"""Grad-CAM heat maps (pytorch-grad-cam 1.5), leaving the model as it was found. Figures of them:
``galleries.plot_gradcam``; the web app (``app``) draws them too, so this module needs no matplotlib."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from .machinery.images import check_normalised
from .machinery.runtime import eval_mode


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
            classes: torch.Tensor | None = None, *, check: bool = True) -> np.ndarray:
    """Grad-CAM masks float32 (B, H, W) in [0, 1], the size of ``images`` (B, 3, H, W, normalised).

    ``classes`` (B,) are the class indices explained; None explains the model's own prediction.
    ``check=False`` skips the guess whether ``images`` are normalised, for a caller that
    normalised them itself (the app: a plain light-grey picture normalises to values in [0, 1],
    which raw pixels also have).
    """
    # Imported here, not at the top: pytorch_grad_cam loads scikit-learn and SciPy, about half a
    # second that every `import eva_utils` (each test process, each training script) would pay.
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
        raise RuntimeError("Grad-CAM needs gradients, but it was called inside torch.no_grad() or "
                           "torch.inference_mode(). Fix: call it outside that block.")
    if check:
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
