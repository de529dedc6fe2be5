"""Run records: the numbers a results table needs from one run, written as JSON."""
from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from .models import count_parameters
from .machinery.runtime import device_name
from .machinery.history import History


def run_record(history: History, model: nn.Module, device, /, **labels) -> dict:
    """Accuracy (percent: ``test_acc`` one view, as the assignments measure it; ``test_acc_tta``
    with mirror TTA, when the run used it), training seconds (every epoch, over all stretches),
    parameters, device, precision and memory layout of a run, ``labels`` first. A run resumed on
    other hardware names every device it trained on ("Tesla T4 + NVIDIA L4")."""
    devices = list(dict.fromkeys(history.devices)) or [device_name(device)]  # a hand-made History
    one_view = history.test_acc_plain or history.test_acc  # test_acc holds TTA's when cfg.tta
    return {**labels, "parameters": count_parameters(model),
            "test_acc": one_view[-1], "best_test_acc": max(one_view),
            **({"test_acc_tta": history.test_acc[-1]} if history.test_acc_plain else {}),
            "train_seconds": round(history.train_seconds, 2),
            "seconds_per_epoch": [round(s, 3) for s in history.seconds],
            **({"resumed_after_epochs": history.resumed_at} if history.resumed_at else {}),
            "device": " + ".join(devices),
            "precision": _named(history.precision),
            "layout": _named(history.layout)}


def _named(per_epoch: list) -> str:
    """One name for a per-epoch list ("float32"), or each in order ("float32 + bfloat16")."""
    return " + ".join(dict.fromkeys(per_epoch))


def save_json(path: str | os.PathLike | None, record: dict) -> None:
    """Write ``record`` as JSON to ``path`` (folders created); nothing when ``path`` is None."""
    if path is not None:
        path = Path(path).expanduser()  # "~/runs/04.json" means the home folder, as in a shell
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")


def save_runs(path: str | os.PathLike | None, histories: dict[str, History],
              models: dict[str, nn.Module], device, /, **labels) -> list[dict]:
    """Each run's ``run_record`` (labelled with its model's name and ``labels``), written to
    ``path`` as {"runs": [...]} (nothing written when ``path`` is None); returns the records."""
    records = [run_record(h, models[name], device, **labels, model=name)
               for name, h in histories.items()]
    save_json(path, {"runs": records})
    return records
