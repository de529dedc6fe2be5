"""What every model of the suite shares: a clear error for images too small for its layer table."""
import torch
from torch import nn


def check_input_size(model: nn.Module, x: torch.Tensor) -> None:
    """Raise if ``x`` (B, C, H, W) is smaller than ``model.min_input_size`` pixels a side."""
    h, w = x.shape[-2:]
    if min(h, w) < model.min_input_size:
        m = model.min_input_size
        raise ValueError(f"{type(model).__name__} needs images of at least {m}x{m} pixels (its "
                         f"down-sampling would leave no feature map); got {h}x{w}. Fix: resize the "
                         f"images, e.g. load_image_folder(root, image_size={m}).")
