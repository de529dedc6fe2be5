"""Assignment 000 part 1's plain CNN: four unpadded 3x3 convolutions, two max-pools, a linear head."""
import torch
from torch import nn

from .common import AdaptiveAvgPool2d, check_input_size


class PlainCNN(nn.Module):
    """(B, 3, H, W) normalised images, H and W >= 32 -> (B, num_classes) logits.

    ``body``: 3->32->32, pool, ->64->64, pool, exactly the assignment's table (65,568 parameters). As
    in the assignment, there is no ReLU between the two convolutions of a pair, only after the second.
    ``head``: the assignment's "MLP", left out of its printed count; here an adaptive average pool to
    5x5 (what 32x32 inputs give anyway, so it changes nothing there) and one linear layer,
    64*5*5 -> 10 (16,010 parameters), counted. Below 32x32 the body's maps are smaller than 5x5, and
    pooling "to 5x5" would only copy pixels, so 32 is the smallest input.
    """

    gradcam_layers = ("body.1", "body.5")  # the last convolution of each pair
    min_input_size = 32  # the body leaves 5x5 maps at 32x32

    def __init__(self, *, num_classes: int):
        super().__init__()
        self.init_args = {"num_classes": num_classes}
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),  # 32->30->28->14
            nn.Conv2d(32, 64, 3), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),  # 14->12->10->5
        )
        self.head = nn.Sequential(AdaptiveAvgPool2d(5), nn.Flatten(), nn.Linear(64 * 5 * 5, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(self, x)
        return self.head(self.body(x))
