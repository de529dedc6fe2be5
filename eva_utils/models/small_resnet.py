"""Assignment 000's small ResNet (part 1) and its weight-shared "recursive" variant (part 2)."""
import torch
from torch import nn

from .common import AdaptiveAvgPool2d, check_input_size


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    """x + F(x), F = conv-BN-ReLU-conv-BN-ReLU (3x3 convolutions with bias, as in the seed's table;
    F ends in a ReLU, so F(x) >= 0). ``skip=False``: F(x) alone, the same block without its skip."""

    def __init__(self, channels: int, skip: bool = True):
        super().__init__()
        self.skip = skip
        self.f = nn.Sequential(conv_bn_relu(channels, channels), conv_bn_relu(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x) if self.skip else self.f(x)


class SmallResNet(nn.Module):
    """(B, 3, H, W), H and W >= 16 -> (B, num_classes) logits.

    Body (485,952 parameters): 7x7/2 stem to 32 channels (16x16 at 32x32 input), ResBlock, 3x3/2 conv
    to 64 (8x8), ResBlock, 3x3/2 conv to 128 (4x4), ResBlock, average pool to 2x2 (the assignment's
    AvgPool2d(2) at 32x32; adaptive, so other sizes work). Head: linear 512 -> 10 (5,130).
    ``repeats=2`` applies each ResBlock twice with the *same* weights (assignment 000 part 2's
    "(recursive)" rows): twice the block compute for no extra parameter. ``skip=False`` drops the
    blocks' skip connections (a plain network of the same layers, for comparison).
    """

    gradcam_layers = ("block1", "block2", "block3")
    min_input_size = 16

    def __init__(self, repeats: int = 1, *, num_classes: int, skip: bool = True):
        super().__init__()
        self.init_args = {"repeats": repeats, "num_classes": num_classes}
        if not skip:  # only when set, so that checkpoints of the usual model keep their identity
            self.init_args["skip"] = False
        self.repeats = repeats
        self.stem = conv_bn_relu(3, 32, kernel=7, stride=2)
        self.block1 = ResBlock(32, skip)
        self.down2 = conv_bn_relu(32, 64, stride=2)
        self.block2 = ResBlock(64, skip)
        self.down3 = conv_bn_relu(64, 128, stride=2)
        self.block3 = ResBlock(128, skip)
        self.pool = AdaptiveAvgPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(128 * 2 * 2, num_classes))

    def _repeat(self, block: ResBlock, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.repeats):
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(self, x)
        x = self._repeat(self.block1, self.stem(x))
        x = self._repeat(self.block2, self.down2(x))
        x = self._repeat(self.block3, self.down3(x))
        return self.head(self.pool(x))
