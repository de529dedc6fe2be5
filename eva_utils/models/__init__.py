"""The four networks of the suite, one module each. Parameter counts for 10 classes; every model
needs ``num_classes`` (no default: pass ``data.num_classes``, so the outputs match the data), takes
any image size from its ``min_input_size`` up, and names the layers worth a Grad-CAM look in
``gradcam_layers``. Inputs are RGB (3 channels): grayscale data is converted (``data.to_rgb``).

| class          | assignment| parameters                                 | notebook |
| PlainCNN       | 000 pt 1  | 65,568 body + 16,010 head = 81,578         | 01       |
| SmallResNet    | 000 pt 1-2| 485,952 body + 5,130 head = 491,082        | 01, 02   |
| ResNet18       | 002       | 11,173,962 (BatchNorm or GroupNorm(1, C))  | 03       |
| CustomResNet   | 003       | 6,573,120                                  | 04       |

``torchvision_resnet(name, num_classes=...)``: torchvision's own ResNets, for larger data.
``build_model(name, args)``: any of them again from what a checkpoint records, to load weights into.
"""
from torch import nn

from .cnn import PlainCNN
from .custom_resnet import CustomResNet
from .resnet18 import ResNet18
from .small_resnet import SmallResNet
from .torchvision_resnet import torchvision_resnet

__all__ = ["PlainCNN", "SmallResNet", "ResNet18", "CustomResNet", "torchvision_resnet",
           "build_model", "count_parameters"]

ARCHITECTURES = {"PlainCNN": PlainCNN, "SmallResNet": SmallResNet, "ResNet18": ResNet18,
                 "CustomResNet": CustomResNet}


def build_model(name: str, args: dict) -> nn.Module:
    """A fresh model of class ``name`` built with ``args`` (a checkpoint's ``model_class`` and
    ``model_args``), to load trained weights into."""
    if name == "ResNet" and "name" in args:  # torchvision's, as torchvision_resnet built it
        return torchvision_resnet(**{**args, "weights": None})  # the weights come from the file
    if name not in ARCHITECTURES:
        raise ValueError(f"Cannot rebuild a {name}: eva_utils builds {', '.join(ARCHITECTURES)} "
                         "and torchvision_resnet. Fix: build your model yourself and load the "
                         "checkpoint's weights into it (model.load_state_dict(ckpt['model'])).")
    return ARCHITECTURES[name](**args)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters, each shared tensor counted once."""
    return sum(p.numel() for p in module.parameters())
