"""Seed 000 part 1's plain CNN: four unpadded 3x3 convolutions, two max-pools, a linear head."""
import torch
from torch import nn


class PlainCNN(nn.Module):
    """(B, 3, 32, 32) normalised images -> (B, 10) logits.

    ``body``: 3->32->32, pool, ->64->64, pool, exactly the seed's table (65,568 parameters). As in the
    seed, there is no ReLU between the two convolutions of a pair, only after the second one.
    ``head``: the seed's "MLP", left out of its printed count; here one linear layer, 64*5*5 -> 10
    (16,010 parameters), counted.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),  # 32->30->28->14
            nn.Conv2d(32, 64, 3), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),  # 14->12->10->5
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 5 * 5, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
