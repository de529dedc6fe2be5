"""A trained model as a folder that runs wherever Gradio does (a Hugging Face Space, a laptop):

    eva.export_app(model, data, predictions, "app")   # then: cd app && python app.py

The folder holds ``app.py``, pinned ``requirements.txt``, the weights (safetensors) and
``model.json``, example images, the test images the model got wrong (``app.json``), a README with
the Spaces front matter, and the few modules of eva_utils the app imports (images, runtime,
gradcam, classifier, app, models): no training code. A finished run's checkpoint without code:
``python -m eva_utils.serve CHECKPOINT --data data``.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import sys
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .classifier import Classifier
from .machinery.images import resized
from .inference import misclassified
from .models import count_parameters, unwrapped
from .transforms import denormalize

CARRIED = ("machinery/images.py", "machinery/runtime.py", "gradcam.py", "classifier.py", "app.py",
           "models")
# Pinned to the versions this export was made with: a Space installs exactly these.
REQUIREMENTS = ("torch", "torchvision", "numpy", "pillow", "grad-cam", "gradio", "safetensors")
EXAMPLES = 10
PACKAGE = Path(__file__).resolve().parent


def export_app(model: nn.Module, data, predictions, folder: str | Path, *,
               title: str | None = None, mistakes: int = 20) -> Path:
    """Write the app for ``model`` into ``folder`` (created; an earlier export's files there are
    replaced and the rest kept, any other non-empty folder refused) and return its path.
    ``data``: the ``ImageData`` the model trained on (classes, mean, std, size and the test images
    the examples come from); ``predictions``: ``eva.predict`` on its test split (the ``mistakes``
    most confident wrong answers are shown in the app)."""
    model = unwrapped(model)  # torch.compile's and DataParallel's wrappers: the same network
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in model.state_dict().values()):
        model = copy.deepcopy(model).float()  # model.half(): the app computes in float32
    classes = tuple(data.classes)
    if tuple(predictions.classes) != classes:
        raise ValueError(f"The predictions name the classes {list(predictions.classes)}, the data "
                         f"{list(classes)}. Fix: predict on this data's test loader with "
                         "data.classes.")
    if isinstance(mistakes, bool) or not isinstance(mistakes, int) or mistakes < 0:
        raise ValueError(f"mistakes={mistakes!r}: give how many wrong answers to show (0 or more).")
    scored = tuple(predictions[:1].images.shape[-2:])
    if scored != tuple(data.image_size):
        raise ValueError(f"The predictions were made on {scored[1]}x{scored[0]} images, but the data "
                         f"is {data.image_size[1]}x{data.image_size[0]}: the app would resize uploads "
                         "to a size the model was not scored at. Fix: load the data at the size the "
                         "model trained on (image_size=...), and predict on it.")
    clf = Classifier(model, classes, tuple(data.mean), tuple(data.std), data.image_size)
    wrong = misclassified(predictions)
    pictures = (denormalize(wrong[:mistakes].images, data.mean, data.std) * 255).round()
    shown = [{"picture": p.to(torch.uint8).numpy(), "true": classes[t], "predicted": classes[q],
              "confidence": float(c)}
             for p, t, q, c in zip(pictures, wrong.labels, wrong.preds, wrong.confidence)]
    about = (f"A {type(model).__name__} ({count_parameters(model):,} parameters) that tells "
             f"{len(classes)} classes apart ({', '.join(classes)}) in {data.image_size[1]}x"
             f"{data.image_size[0]} pictures: {predictions.accuracy:.2f} % of "
             f"{len(predictions):,} test images right.")
    return write_app(folder, clf, examples(data.test_images, data.test_labels, classes), shown,
                     title or f"{type(model).__name__}: {len(classes)} classes", about)


def examples(images: np.ndarray, labels: np.ndarray, classes) -> list[tuple[str, np.ndarray]]:
    """Up to ``EXAMPLES`` (class name, uint8 (H, W, 3)) test pictures, one per class in class order,
    then second ones, and so on."""
    by_class = [np.flatnonzero(labels == c) for c in range(len(classes))]
    rounds = max(map(len, by_class), default=0)
    chosen = [idx[r] for r in range(min(rounds, EXAMPLES)) for idx in by_class if r < len(idx)]
    return [(classes[labels[i]], images[i]) for i in chosen[:EXAMPLES]]


def write_app(folder, clf: Classifier, pictures, mistakes, title: str, about: str) -> Path:
    """The export folder: weights, pictures, app.json, the app's modules, requirements, README.
    Written beside it first, then moved in entry by entry: an earlier export's entries are
    replaced, and nothing else in the folder is touched (a Space clone's .git, .gitattributes, your
    notes). Everything is written and checked before anything moves, so an export that fails or is
    refused leaves the folder as it was."""
    if not str(folder).strip():  # Path("") would be the current folder
        raise FileExistsError(f"folder={folder!r}: give the folder to write the app into, e.g. "
                              '"app".')
    folder = Path(folder).expanduser()
    if folder.is_symlink() and not folder.exists():
        raise FileExistsError(f"{folder} is a link to {os.readlink(folder)}, which does not "
                              "exist. Fix: give a new or empty folder (or make the link's target).")
    if folder.resolve() == PACKAGE or PACKAGE in folder.resolve().parents:
        raise FileExistsError(f"{folder} is inside the eva_utils package, which the app carries "
                              "a copy of. Fix: give a folder outside it, e.g. \"app\".")
    if not folder.resolve().name:
        raise FileExistsError(f"{folder} is the file system's root. Fix: give a new or empty folder.")
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file, not a folder. Fix: give a new or empty folder.")
    if folder.exists() and any(folder.iterdir()) and not (folder / "app.json").is_file():
        raise FileExistsError(f"{folder} holds files and no earlier export (no app.json). Fix: "
                              "give a new or empty folder.")
    draft = folder.resolve().with_name(f".{folder.resolve().name}.{os.getpid()}.draft")
    shutil.rmtree(draft, ignore_errors=True)
    try:
        try:
            (draft / "examples").mkdir(parents=True)
        except OSError as exc:  # a read-only or missing place
            raise FileExistsError(f"Cannot write the app beside {folder} ({exc.strerror or exc}). "
                                  "Fix: give a folder in a place you can write to.") from None
        _write(draft, clf, pictures, mistakes, title, about)
        _same_answers(draft, clf, [p for _, p in pictures])
        if importlib.util.find_spec("gradio") is not None:  # the page, built as app.py will
            from .app import load_app
            load_app(draft)
        folder.mkdir(parents=True, exist_ok=True)
        for entry in sorted(draft.iterdir()):
            old = folder / entry.name
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink(missing_ok=True)
            entry.rename(old)
    finally:
        shutil.rmtree(draft, ignore_errors=True)
    return folder


def _same_answers(folder: Path, clf: Classifier, pictures: list[np.ndarray]) -> None:
    """The app rebuilds its model from the folder (class and arguments, then weights): refuse an
    export whose rebuilt model answers otherwise than the model given, on the examples (or one
    drawn picture), e.g. a model changed after it was built (an activation swapped: the same
    weights in another network), or one with more outputs than the data has classes."""
    if next(clf.model.parameters()).device.type != "cpu":  # compared where the app answers:
        clf = replace(clf, model=copy.deepcopy(clf.model).cpu())  # a GPU's TF32 is not the CPU's
    drawn = np.random.default_rng(0).integers(0, 256, (*clf.image_size, 3), dtype=np.uint8)
    outputs = len(clf.probabilities(drawn))
    if outputs != len(clf.classes):
        raise ValueError(f"The model has {outputs} outputs, but the data names {len(clf.classes)} "
                         f"classes ({', '.join(clf.classes)}): every request would fail. Fix: "
                         "export with the data the model trained on (num_classes=data.num_classes).")
    rebuilt = Classifier.load(folder)  # as the app will: model.json checked, weights loaded
    for picture in pictures or [drawn]:
        seen = resized(picture, clf.image_size)
        want, got = clf.probabilities(seen), rebuilt.probabilities(seen)
        if np.abs(want - got).max() > 1e-3:
            raise ValueError(f"The app would answer otherwise than this {type(clf.model).__name__}: "
                             f"rebuilt from its class and arguments {dict(clf.model.init_args)} with "
                             f"its weights, it gives probabilities up to {np.abs(want - got).max():.3f} "
                             "apart. The model was changed after it was built (a layer replaced?), "
                             "which the app cannot repeat. Fix: build the model you train from its "
                             "class's arguments only, or serve it with your own code.")


def _write(folder: Path, clf: Classifier, pictures, mistakes, title: str, about: str) -> None:
    (folder / "examples").mkdir(parents=True, exist_ok=True)
    (folder / "mistakes").mkdir()
    clf.save(folder)
    names = []
    for i, (name, picture) in enumerate(pictures):
        names.append(f"examples/{i:02d}-{re.sub(r'[^A-Za-z0-9_-]+', '_', name)}.png")
        Image.fromarray(picture).save(folder / names[-1])
    wrong = []
    for i, m in enumerate(mistakes):
        Image.fromarray(m["picture"]).save(folder / f"mistakes/{i:03d}.png")
        wrong.append({"path": f"mistakes/{i:03d}.png", "true": m["true"],
                      "predicted": m["predicted"], "confidence": round(m["confidence"], 4)})
    (folder / "app.json").write_text(json.dumps({"title": title, "about": about, "examples": names,
                                                 "mistakes": wrong}, indent=1) + "\n")
    _carry_modules(folder / "eva_utils")
    # The same app.py for every export: the title and texts are data (app.json), never code.
    (folder / "app.py").write_text('"""A web app (Gradio) made by eva_utils.export_app; its title '
                                   'and texts are in app.json.\n\n'
                                   '    pip install -r requirements.txt && python app.py\n"""\n'
                                   "from pathlib import Path\n\nfrom eva_utils.app import launch\n\n"
                                   'if __name__ == "__main__":\n    launch(Path(__file__).parent)\n')
    (folder / "requirements.txt").write_text("".join(f"{name}=={_version(name)}\n"
                                                     for name in REQUIREMENTS))
    (folder / "README.md").write_text(_readme(title, about, clf))


def _carry_modules(target: Path) -> None:
    """The modules of eva_utils the app imports, and an __init__ that imports nothing."""
    target.mkdir()
    for name in CARRIED:
        source = PACKAGE / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (target / name).parent.mkdir(exist_ok=True)
            shutil.copy(source, target / name)
    shutil.copy(PACKAGE / "machinery" / "__init__.py", target / "machinery")  # imports nothing
    (target / "__init__.py").write_text(
        '"""The part of eva_utils this app needs: one image in, its classes and Grad-CAM out.\n'
        'No training code; the whole package trains the model (github.com/eva-resnet/'
        'eva-resnet-suite)."""\n')


def _version(name: str) -> str:
    return metadata.version(name).split("+")[0]  # torch 2.14.1+cu130: PyPI knows 2.14.1


def _readme(title: str, about: str, clf: Classifier) -> str:
    h, w = clf.image_size
    return f"""---
title: {json.dumps(title)}
emoji: 🔎
colorFrom: blue
colorTo: green
sdk: gradio
sdk_version: {_version("gradio")}
python_version: "{sys.version_info.major}.{sys.version_info.minor}"
app_file: app.py
pinned: false
---

# {title}

{about}

Upload a picture (any size, colour or grayscale; it is resized to {w}x{h}, which the page shows
next to it), or pick one of the examples, and the app lists the most probable classes with their
probabilities. Switch on Grad-CAM to see which part of the picture drove the answer, from an early
layer (fine detail) or a late one (coarse), at the opacity you choose. "Show misclassified test
images" opens the test pictures the model got wrong, most confident first, with Grad-CAM on them too.

Run it locally: `pip install -r requirements.txt && python app.py`, then open http://127.0.0.1:7860.
To put it on Hugging Face Spaces, upload this folder to a new Gradio Space (for example
`hf upload <you>/<space> . --repo-type space`).

Files: `model.safetensors` (the weights) and `model.json` (architecture, classes, mean/std, size);
`examples/` and `mistakes/` (pictures, with their labels in `app.json`); `eva_utils/` (the code
that turns a picture into the model's input and draws Grad-CAM; no training code).
"""
