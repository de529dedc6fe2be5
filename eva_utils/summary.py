"""Model tables with torchinfo, in the seeds' format ("Total params: 6,573,120")."""
from __future__ import annotations

from torch import nn
from torchinfo import ModelStatistics
from torchinfo import summary as torchinfo_summary


def summary(model: nn.Module, input_size=(1, 3, 32, 32), depth: int = 3) -> ModelStatistics:
    """Layer table for one ``input_size`` batch (printing it shows the table). The model's device
    and train/eval mode are left as they were; repeated blocks show as "(recursive)"."""
    was_training = model.training
    device = next(model.parameters()).device
    try:
        return torchinfo_summary(model, input_size=input_size, depth=depth, device=device,
                                 col_names=("output_size", "num_params"), verbose=0)
    finally:
        model.train(was_training)
