"""Seed 002's ResNet18 for CIFAR (3x3 stem, no max-pool), with BatchNorm or "LayerNorm"."""
import torch
from torch import nn
import torch.nn.functional as F

from .common import check_input_size


def make_norm(kind: str, channels: int) -> nn.Module:
    """"batch": BatchNorm2d. "layer": GroupNorm(1, C), i.e. LayerNorm over (C, H, W) per image, with
    a scale and shift per channel: the same 2*C parameters as BatchNorm, no batch statistics."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    raise ValueError(f"norm={kind!r} is not known; use 'batch' or 'layer'.")


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = make_norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = make_norm(norm, c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:  # 1x1 projection where the shape changes
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          make_norm(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """(B, 3, H, W), H and W >= 8 -> (B, num_classes) logits; 11,173,962 parameters with either
    norm and 10 classes.

    At 32x32, layer1..layer4 output 64x32x32, 128x16x16, 256x8x8, 512x4x4 (Grad-CAM: ``layer2`` is
    the assignment's "layer 2 (16x16)", ``layer3`` its "layer 3 (8x8)").
    """

    gradcam_layers = ("layer1", "layer2", "layer3", "layer4")
    min_input_size = 8

    def __init__(self, norm: str = "layer", *, num_classes: int):
        super().__init__()
        self.init_args = {"norm": norm, "num_classes": num_classes}
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), make_norm(norm, 64),
                                  nn.ReLU(inplace=True))
        widths, c_in, layers = (64, 128, 256, 512), 64, []
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(c_in, width, stride, norm),
                                        BasicBlock(width, width, 1, norm)))
            c_in = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(self, x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))
