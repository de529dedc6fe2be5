"""A trained model's answers: ``evaluate`` (loss, accuracy) and ``predict`` (every answer), through
one inference path, so a notebook's gallery, confusion matrix and Grad-CAM analyse the very
predictions whose accuracy it reports."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, SequentialSampler

from .data import check_labels
from .machinery.guards import check_test_loader
from .machinery.precision import Precision
from .machinery.runtime import check_weights, eval_mode, to_device


@torch.no_grad()
def outputs(model: nn.Module, loader, device=None, *, tta: bool = False, amp: bool | None = None,
            channels_last: bool | None = None):
    """Yield (images as the loader gave them, labels, float32 logits (B, K), float32 logits of the
    images alone (B, K)) for each batch.

    ``tta`` averages the logits of each image and its left-right mirror (the last item stays the
    plain logits, so both accuracies come from one pass). Runs in eval mode; every submodule's mode
    is restored afterwards. ``amp`` and ``channels_last`` left at None: in the arithmetic ``fit``
    trained and scored the model in (where this device runs it well), else the device's choice.
    ``device``: where the model is (the default); a model elsewhere is refused, never moved.
    """
    if not isinstance(tta, bool):  # tta="no" would be truthy
        raise TypeError(f"tta={tta!r}: give True (average each image with its mirror) or False.")
    check_test_loader(loader, "This loader")
    device = model_device(model, device)  # the device contract first: a meta model stands in
    check_weights(model)                  # for another device in the tests
    arithmetic = Precision.of(model, device, amp, channels_last)  # fit's, after fit
    with eval_mode(model):
        for x_in, y_in in loader:
            x, y = to_device(x_in, y_in, device, arithmetic.channels_last)
            with arithmetic.autocast(device):
                plain = model(x)
                logits = (plain + model(x.flip(3))) / 2 if tta else plain
            check_labels(y, logits.shape[1], "outputs")  # one sync a batch: evaluation has few
            yield x_in, y, logits.float(), plain.float()


def model_device(model: nn.Module, device=None) -> torch.device:
    """Where ``model``'s weights are: the device it answers on. A ``device`` that names another is
    refused: evaluation never moves a model it was handed (``fit`` does, as its setup)."""
    weights = next(model.parameters()).device
    if device is None:
        return weights
    device = torch.device(device)
    if device.type != weights.type or device.index not in (None, weights.index):
        raise ValueError(f"device={str(device)!r}, but the model's weights are on {weights}; the "
                         f"batches would meet them on another device. Fix: "
                         f"model.to({str(device)!r}) first, or leave device out (the model's own).")
    return weights


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
    """A model's answers on a loader, with the names of its classes. The images are not copied
    (a copy of every normalised image would be 600 KB each at 224x224, 30 GB for ImageNet's
    validation set): ``images`` fetches those of the answers at hand from the loader again.
    ``p[:10]``, ``p[mask]``, ``p[positions]`` select answers."""

    labels: torch.Tensor       # int64 (N,) true classes
    preds: torch.Tensor        # int64 (N,) predicted classes
    confidence: torch.Tensor   # float (N,) softmax probability of the predicted class, in [0, 1]
    classes: tuple[str, ...]   # classes[i] names class i
    index: torch.Tensor        # int64 (N,) each answer's position in the loader's order
    # Where the images are: positions -> float (n, 3, H, W), or a tensor of them (kept images)
    source: Callable[[torch.Tensor], torch.Tensor] | torch.Tensor = field(repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, which) -> Predictions:
        """The answers at a slice, int64 positions or a bool mask of these N, as Predictions."""
        if isinstance(which, int):  # keep the answer dimension
            which = slice(which, which + 1 or None)
        return replace(self, labels=self.labels[which], preds=self.preds[which],
                       confidence=self.confidence[which], index=self.index[which])

    @property
    def images(self) -> torch.Tensor:
        """float (N, 3, H, W) on the CPU, normalised as the loader gave them, fetched now and for
        these N answers only: ``misclassified(p)[:10].images`` reads ten images."""
        if isinstance(self.source, torch.Tensor):
            return self.source[self.index]
        if not len(self.index):  # no answers: no images, of the loader's shape
            return self.source(torch.zeros(1, dtype=torch.long))[:0]
        return self.source(self.index)

    @property
    def accuracy(self) -> float:
        """Percent correct, in [0, 100]."""
        return 100.0 * int((self.preds == self.labels).sum()) / len(self) if len(self) else 0.0


def image_source(loader) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """How to read a test loader's images again by their position in its order: ``TensorLoader``
    (``images_at``) and an unshuffled ``DataLoader`` over an indexable dataset (ours, or yours)
    can; anything else (a stream, a list of batches) cannot (None: ``predict`` keeps copies)."""
    if callable(getattr(loader, "images_at", None)):
        return loader.images_at
    dataset = getattr(loader, "dataset", None)
    if (isinstance(loader, DataLoader) and isinstance(loader.sampler, SequentialSampler)
            and loader.batch_size is not None and not isinstance(dataset, IterableDataset)):
        # Each image as the loader's workers make it, collated as the loader collates a batch.
        return lambda positions: loader.collate_fn(
            [dataset[int(i)] for i in positions])[0].cpu()
    return None


def predict(model: nn.Module, loader, classes, device=None, *, tta: bool = False,
            amp: bool | None = None, channels_last: bool | None = None) -> Predictions:
    """Every answer of ``model`` over an unshuffled ``loader``, exactly as ``evaluate`` computes
    them (pass the same ``tta``). ``classes``: one name per output, e.g. ``data.classes``. The
    images stay in the loader (``Predictions.images`` reads them again) unless it cannot be read
    by position (``image_source``): then they are kept as float copies on the CPU."""
    classes = tuple(classes)
    source = image_source(loader)
    out = {"images": [], "labels": [], "preds": [], "confidence": []}
    for x, y, logits, _ in outputs(model, loader, device, tta=tta, amp=amp,
                                   channels_last=channels_last):
        if logits.shape[1] != len(classes):
            raise ValueError(f"The model has {logits.shape[1]} outputs but {len(classes)} class "
                             f"names were given. Fix: pass one name per class (data.classes).")
        conf, pred = logits.softmax(1).max(1)
        for key, value in zip(out, (x if source is None else x[:0], y, pred, conf)):
            out[key].append(value.cpu())
    if not out["labels"]:
        raise ValueError("The loader yielded no images; check the split is not empty.")
    labels = torch.cat(out["labels"])
    return Predictions(labels, torch.cat(out["preds"]), torch.cat(out["confidence"]), classes,
                       torch.arange(len(labels)),
                       torch.cat(out["images"]) if source is None else source)


def misclassified(p: Predictions) -> Predictions:
    """The wrong answers of ``p``, most confident first (may be empty)."""
    wrong = (p.preds != p.labels).nonzero().flatten()
    return p[wrong[p.confidence[wrong].argsort(descending=True)]]


def confusion_matrix(p: Predictions) -> torch.Tensor:
    """int64 (K, K) for K = len(p.classes): row = true class, column = predicted class."""
    k = len(p.classes)
    return torch.bincount(p.labels * k + p.preds, minlength=k * k).view(k, k)
