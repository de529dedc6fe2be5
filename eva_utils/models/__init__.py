"""The four networks of the suite, one module each. Each needs ``num_classes`` (pass
``data.num_classes``), takes RGB images of any size from its ``min_input_size`` up, and names the
layers worth a Grad-CAM look in ``gradcam_layers``. Parameters for 10 classes:
PlainCNN 81,578 (01), SmallResNet 491,082 (01, 02), ResNet18 11,173,962 with BatchNorm or
GroupNorm(1, C) (03), CustomResNet 6,573,120 (04).

``torchvision_resnet(name, num_classes=...)``: torchvision's ResNets, for larger data.
``build_model(name, args)`` rebuilds any of them from what a checkpoint records;
``rebuild_problem(model)`` says why it cannot (a subclass, a wrapper, a model of your own).
"""
from torch import nn

from .cnn import PlainCNN
from .custom_resnet import CustomResNet
from .resnet18 import ResNet18
from .small_resnet import SmallResNet
from .torchvision_resnet import torchvision_resnet

__all__ = ["PlainCNN", "SmallResNet", "ResNet18", "CustomResNet", "torchvision_resnet",
           "build_model", "rebuild_problem", "unwrapped", "count_parameters"]

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


def unwrapped(model: nn.Module) -> nn.Module:
    """The network inside ``torch.compile``'s and (Distributed)DataParallel's wrappers: the same
    parameters, under the names ``build_model`` gives them."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if inner is None and isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = model.module
        if inner is None:
            return model
        model = inner


def rebuild_problem(model: nn.Module) -> str:
    """Why ``build_model`` could not build ``model`` again from its class name and ``init_args``,
    in words, or "": only the suite's classes and torchvision_resnet's ResNets rebuild as they are
    (a subclass may change ``forward``; a wrapped or own model records no arguments)."""
    name, args = type(model).__name__, getattr(model, "init_args", None)
    if type(model) is ARCHITECTURES.get(name) or (name == "ResNet" and isinstance(args, dict)
                                                  and "name" in args):
        return ""
    suite = [c.__name__ for c in ARCHITECTURES.values() if isinstance(model, c)]
    what = (f"a {name}, a subclass of {suite[0]} (whose forward may differ)" if suite else
            f"a {name}, not one of eva_utils' models")
    return (f"{what}; eva_utils rebuilds only {', '.join(ARCHITECTURES)} and torchvision_resnet's "
            "models from their class name and arguments")


def count_parameters(module: nn.Module) -> int:
    """Number of parameters, each shared tensor counted once."""
    return sum(p.numel() for p in module.parameters())
