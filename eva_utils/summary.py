"""Model tables with torchinfo, in the assignments' format ("Total params: 6,573,120")."""
from __future__ import annotations

from torch import nn
from torchinfo import ModelStatistics
from torchinfo import summary as torchinfo_summary
from torchinfo.enums import Units

from .machinery.runtime import kept_modes


def summary(model: nn.Module, input_size, depth: int = 3) -> ModelStatistics:
    """Layer table for images of ``input_size``: the data's (H, W) (``data.image_size``), one int
    for square images, or a whole batch shape (B, C, H, W); printing it shows the table. The
    model's device and every submodule's mode are left as they were; weight-shared blocks show as
    "(recursive)"."""
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    input_size = tuple(input_size)
    if len(input_size) == 2:
        input_size = (1, 3, *input_size)  # one RGB image
    if len(input_size) != 4:
        raise ValueError(f"input_size={input_size}: give the images' (H, W), e.g. data.image_size, "
                         "or a batch shape (B, C, H, W).")
    device = next(model.parameters()).device
    with kept_modes(model):
        try:
            stats = torchinfo_summary(model, input_size=input_size, depth=depth, device=device,
                                      col_names=("output_size", "num_params"), verbose=0)
        except RuntimeError as exc:  # torchinfo wraps the model's own error in "Failed to run"
            cause = exc.__cause__ or exc
            raise ValueError(f"The model cannot take input of shape {input_size}: {cause}") from None
    stats.__class__ = Summary
    return stats


class Summary(ModelStatistics):
    """torchinfo's table, with its unit names as printed on Python 3.11+: torchinfo 1.8 formats
    its str-Enum units as "(Units.MEGABYTES)" there, instead of "(M)"."""

    def __repr__(self) -> str:
        text = super().__repr__()
        for unit in Units:
            text = text.replace(f"({unit})", f"({unit.value})")
        return text
