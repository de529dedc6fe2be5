"""Exponential moving average of a model's weights (``TrainConfig(ema_decay=...)``)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Exponential moving average of a model's weights and buffers (BatchNorm statistics too).

    Updated in place with one fused kernel per step and no host synchronisation (torch's
    AveragedModel checks a counter on the host every step). Create it after the model is on its device.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        # state_dict() tensors share storage with the live ones, so these pairs stay current.
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values()))
        self._floats = [p for p in pairs if p[0].is_floating_point()]
        self._others = [p for p in pairs if not p[0].is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_([e for e, _ in self._floats], [m for _, m in self._floats], 1 - self.decay)
        for e, m in self._others:
            e.copy_(m)
