"""torchvision's ResNet family as a suite model: the very torchvision network, built with
``num_classes``, naming its Grad-CAM layers as ours do (layer1 to layer4), so every figure helper,
``fit`` and its checkpoints work on it unchanged."""
from __future__ import annotations

from torch import nn

NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
         "wide_resnet50_2")


def torchvision_resnet(name: str = "resnet50", *, num_classes: int, small_images: bool = False,
                       weights: str | None = None) -> nn.Module:
    """torchvision's ``name`` (one of ``NAMES``) with ``num_classes`` outputs.

    ``small_images=True`` swaps the ImageNet stem (7x7 stride-2 convolution + max-pool, which
    shrinks 224 to 56) for a 3x3 stride-1 convolution, as CIFAR ResNets do: 32x32 inputs then
    reach layer4 as 4x4 maps instead of 1x1. ``weights`` (e.g. "DEFAULT": ImageNet, downloaded
    once) starts from pretrained weights with a new, randomly initialised ``fc`` for the classes.
    """
    if name not in NAMES:
        raise ValueError(f"name={name!r}: choose one of {', '.join(NAMES)}.")
    # Imported here: torchvision (with the torch._dynamo it loads) slows every `import eva_utils`,
    # and only this function and the CIFAR-10 download need it.
    from torchvision import models

    build = getattr(models, name)
    net = build(weights=weights) if weights else build(num_classes=num_classes)
    if weights:  # the pretrained head has 1000 ImageNet outputs
        net.fc = nn.Linear(net.fc.in_features, num_classes)
    if small_images:
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    net.gradcam_layers = ("layer1", "layer2", "layer3", "layer4")
    net.init_args = {"name": name, "num_classes": num_classes, "small_images": small_images,
                     "weights": weights}  # what a checkpoint checks on resume
    return net
