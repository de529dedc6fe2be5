"""What every model of the suite shares: a clear error for images too small for its layer table,
and adaptive pooling whose CUDA backward is deterministic at the assignments' image sizes."""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair


def check_input_size(model: nn.Module, x: torch.Tensor) -> None:
    """Raise if ``x`` (B, C, H, W) is smaller than ``model.min_input_size`` pixels a side."""
    h, w = x.shape[-2:]
    if min(h, w) < model.min_input_size:
        m = model.min_input_size
        raise ValueError(f"{type(model).__name__} needs images of at least {m}x{m} pixels (its "
                         f"down-sampling would leave no feature map); got {h}x{w}. Fix: resize the "
                         f"images, e.g. load_image_folder(root, image_size={m}).")


def _cells(x: torch.Tensor, output_size) -> tuple[int, int] | None:
    """The (kh, kw) cells that tile ``x``'s H x W into ``output_size`` exactly, else None."""
    h, w = x.shape[-2:]
    oh, ow = _pair(output_size)
    oh, ow = oh or h, ow or w  # None keeps that side
    return None if h % oh or w % ow else (h // oh, w // ow)


class AdaptiveMaxPool2d(nn.AdaptiveMaxPool2d):
    """torch's adaptive max pool, computed as a plain ``max_pool2d`` (the same numbers) where the
    input's sides are multiples of the output's, as at every assignment's image size (CustomResNet:
    4x4 -> 1x1, assignment 003's MaxPool(4)). Why: on CUDA plain pooling has a deterministic
    backward and adaptive pooling has none, so ``Trainer(deterministic=True)`` and
    ``torch.use_deterministic_algorithms(True)`` refused these models. Other sizes pool adaptively."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = None if self.return_indices else _cells(x, self.output_size)
        return F.max_pool2d(x, cells) if cells else super().forward(x)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """torch's adaptive average pool, computed as a plain ``avg_pool2d`` where the sides divide
    (SmallResNet: 4x4 -> 2x2, PlainCNN: 5x5 -> 5x5), for the same reason as ``AdaptiveMaxPool2d``.
    (To 1x1 torch itself takes a mean, which is deterministic.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = _cells(x, self.output_size)
        return F.avg_pool2d(x, cells) if cells else super().forward(x)
