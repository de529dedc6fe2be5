"""A trained model's answers: ``evaluate`` (loss, accuracy) and ``predict`` (every answer), through
one inference path, so a notebook's gallery, confusion matrix and Grad-CAM analyse the very
predictions whose accuracy it reports."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import check_labels
from .precision import Precision
from .runtime import eval_mode, to_device


@torch.no_grad()
def outputs(model: nn.Module, loader, device=None, *, tta: bool = False, amp: bool | None = None,
            channels_last: bool | None = None):
    """Yield (images as the loader gave them, labels, float32 logits (B, K), float32 logits of the
    images alone (B, K)) for each batch.

    ``tta`` averages the logits of each image and its left-right mirror (the last item stays the
    plain logits, so both accuracies come from one pass). Runs in eval mode; every submodule's mode
    is restored afterwards. ``amp`` and ``channels_last`` left at None: in the arithmetic ``fit``
    trained and scored the model in (where this device runs it well), else the device's choice.
    """
    if not isinstance(tta, bool):  # tta="no" would be truthy
        raise TypeError(f"tta={tta!r}: give True (average each image with its mirror) or False.")
    if getattr(loader, "train", False) is True:
        raise ValueError("This loader was built with train=True: it augments and reshuffles, and "
                         "drops the last partial batch, so answers would change every call and "
                         "images would be missing. Fix: a loader built with train=False.")
    weights = next((p for p in model.parameters() if p.is_floating_point()), None)
    if weights is not None and weights.dtype != torch.float32:
        raise TypeError(f"The model's weights are {weights.dtype}; the loaders' images are float32. "
                        "Fix: model.float() (mixed precision is amp=..., not model.half() or "
                        "model.double()).")
    device = torch.device(device) if device else next(model.parameters()).device
    arithmetic = Precision.of(model, device, amp, channels_last)  # fit's, after fit
    with eval_mode(model):
        for x_in, y_in in loader:
            x, y = to_device(x_in, y_in, device, arithmetic.channels_last)
            with arithmetic.autocast(device):
                plain = model(x)
                logits = (plain + model(x.flip(3))) / 2 if tta else plain
            check_labels(y, logits.shape[1], "outputs")  # one sync a batch: evaluation has few
            yield x_in, y, logits.float(), plain.float()


def evaluate(model: nn.Module, loader, device=None, *, tta: bool = False, amp: bool | None = None,
             channels_last: bool | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (percent, in [0, 100]) of ``model`` over ``loader``."""
    loss, acc, _ = scores(model, loader, device, tta=tta, amp=amp, channels_last=channels_last)
    return loss, acc


def scores(model: nn.Module, loader, device=None, *, tta: bool = False, amp: bool | None = None,
           channels_last: bool | None = None, total=None) -> tuple[float, float, float]:
    """``evaluate``'s loss and accuracy, and the accuracy without test-time augmentation (percent).
    ``total`` sums the counts over processes first (``fit`` under torchrun: each saw a share)."""
    loss_sum, correct, plain_correct, n = 0.0, 0, 0, 0
    for _, y, logits, plain in outputs(model, loader, device, tta=tta, amp=amp,
                                       channels_last=channels_last):
        loss_sum = loss_sum + F.cross_entropy(logits, y, reduction="sum")
        correct = correct + (logits.argmax(1) == y).sum()
        plain_correct = plain_correct + (plain.argmax(1) == y).sum()
        n += len(y)
    counts = [float(loss_sum), int(correct), int(plain_correct), n]
    if total is not None:
        counts = total(counts)
    loss_sum, correct, plain_correct, n = counts
    if n == 0:
        raise ValueError("The evaluation loader yielded no images; check the test split is not empty.")
    return loss_sum / n, 100.0 * correct / n, 100.0 * plain_correct / n


@dataclass
class Predictions:
    """A model's answers on a loader, with the names of its classes."""

    images: torch.Tensor       # float (N, 3, H, W), normalised as the loader gave them, on the CPU
    labels: torch.Tensor       # int64 (N,) true classes
    preds: torch.Tensor        # int64 (N,) predicted classes
    confidence: torch.Tensor   # float (N,) softmax probability of the predicted class, in [0, 1]
    classes: tuple[str, ...]   # classes[i] names class i

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def accuracy(self) -> float:
        """Percent correct, in [0, 100]."""
        return 100.0 * int((self.preds == self.labels).sum()) / len(self) if len(self) else 0.0


def predict(model: nn.Module, loader, classes, device=None, *, tta: bool = False,
            amp: bool | None = None, channels_last: bool | None = None) -> Predictions:
    """Every answer of ``model`` over an unshuffled ``loader``, exactly as ``evaluate`` computes
    them (pass the same ``tta``). ``classes``: one name per output, e.g. ``data.classes``."""
    classes = tuple(classes)
    out = {"images": [], "labels": [], "preds": [], "confidence": []}
    for x, y, logits, _ in outputs(model, loader, device, tta=tta, amp=amp,
                                   channels_last=channels_last):
        if logits.shape[1] != len(classes):
            raise ValueError(f"The model has {logits.shape[1]} outputs but {len(classes)} class "
                             f"names were given. Fix: pass one name per class (data.classes).")
        conf, pred = logits.softmax(1).max(1)
        for key, value in zip(out, (x, y, pred, conf)):
            out[key].append(value.cpu())
    if not out["labels"]:
        raise ValueError("The loader yielded no images; check the split is not empty.")
    return Predictions(**{k: torch.cat(v) for k, v in out.items()}, classes=classes)


def misclassified(p: Predictions) -> Predictions:
    """The wrong answers of ``p``, most confident first (may be empty)."""
    wrong = (p.preds != p.labels).nonzero().flatten()
    wrong = wrong[p.confidence[wrong].argsort(descending=True)]
    return Predictions(p.images[wrong], p.labels[wrong], p.preds[wrong], p.confidence[wrong],
                       p.classes)


def confusion_matrix(p: Predictions) -> torch.Tensor:
    """int64 (K, K) for K = len(p.classes): row = true class, column = predicted class."""
    k = len(p.classes)
    return torch.bincount(p.labels * k + p.preds, minlength=k * k).view(k, k)
