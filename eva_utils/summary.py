"""Model tables with torchinfo, in the assignments' format ("Total params: 6,573,120")."""
from __future__ import annotations

from torch import nn
from torchinfo import ModelStatistics
from torchinfo import summary as torchinfo_summary

from .runtime import kept_modes


def summary(model: nn.Module, input_size=(1, 3, 32, 32), depth: int = 3) -> ModelStatistics:
    """Layer table for one ``input_size`` batch (B, C, H, W); printing it shows the table. The
    model's device and every submodule's mode are left as they were; weight-shared blocks show as
    "(recursive)"."""
    device = next(model.parameters()).device
    with kept_modes(model):
        return torchinfo_summary(model, input_size=input_size, depth=depth, device=device,
                                 col_names=("output_size", "num_params"), verbose=0)
