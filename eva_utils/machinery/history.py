"""``History``: what a run learned, epoch by epoch (what ``fit`` returns and checkpoints keep)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class History:
    """Per-epoch record of a run; lists of floats, one entry per finished epoch."""

    train_loss: list = field(default_factory=list)   # mean cross-entropy over the epoch's batches
    train_acc: list = field(default_factory=list)    # percent, on augmented training batches
    test_loss: list = field(default_factory=list)
    test_acc: list = field(default_factory=list)     # percent (with TTA when cfg.tta)
    lr: list = field(default_factory=list)           # learning rate at the start of the epoch
    seconds: list = field(default_factory=list)      # wall time of the epoch's training steps
    test_acc_plain: list = field(default_factory=list)  # percent without TTA (only when cfg.tta)
    resumed_at: list = field(default_factory=list)  # epochs after which a later stretch resumed
    devices: list = field(default_factory=list)     # device_name() each epoch trained on
    precision: list = field(default_factory=list)   # "float32", "bfloat16" or "float16", per epoch
    layout: list = field(default_factory=list)      # "NCHW" or "NHWC" (channels-last), per epoch

    def __len__(self) -> int:
        return len(self.test_acc)

    def __post_init__(self):  # lists of floats, whatever a checkpoint stored them as
        for f in fields(self):
            setattr(self, f.name, list(getattr(self, f.name)))

    @property
    def train_seconds(self) -> float:
        return float(sum(self.seconds))

    def append(self, **values) -> None:
        for key, value in values.items():
            getattr(self, key).append(value)

    def line(self, i: int) -> str:
        """Epoch ``i``'s progress line (0-based), as ``fit`` prints it after the epoch and replays
        it on resume."""
        plain = f" (no TTA {self.test_acc_plain[i]:5.2f}%)" if i < len(self.test_acc_plain) else ""
        return (f"epoch {i + 1:3d}  train loss {self.train_loss[i]:.3f} acc {self.train_acc[i]:5.2f}%  "
                f"test loss {self.test_loss[i]:.3f} acc {self.test_acc[i]:5.2f}%{plain}  "
                f"lr {self.lr[i]:.2e}  {self.seconds[i]:.1f}s")
