"""A trained model answering for one image at a time, as the web app asks: its top classes and a
Grad-CAM picture of where it looked; and the folder a trained model travels in (``save``/``load``:
safetensors weights, read without unpickling, beside ``model.json``: architecture and arguments,
classes, mean/std, image size).

    clf = Classifier.load("app")                   # a folder written by eva.export_app
    original, seen = clf.pictures("cat.jpg")       # the upload as a viewer shows it; the model's view
    clf.top(clf.probabilities(seen), k=3)          # {"cat": 0.91, "dog": 0.06, "frog": 0.01}
Uploads are read as data sets are (``images``), so the app answers as ``eva.predict`` does.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .gradcam import gradcam, gradcam_layers
from .machinery.images import model_input, read_image, resized
from .models import build_model, rebuild_problem, unwrapped
from .machinery.runtime import eval_mode

MAX_TOP = 10  # the app lists at most this many classes


@dataclass
class Classifier:
    """``model`` with what it takes: ``classes`` (one name per output), the data's ``mean`` and
    ``std`` per RGB channel on the [0, 1] scale, and ``image_size`` (H, W). It answers in eval
    mode and leaves the model's own mode as it was."""

    model: nn.Module
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: tuple[int, int]
    # The app answers requests in threads, and Grad-CAM hooks the model and toggles its gradients
    # while it runs: one request at a time uses the model.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self):
        self.classes, self.image_size = tuple(self.classes), tuple(self.image_size)

    @property
    def layers(self) -> tuple[str, ...]:
        """The layers the model names for Grad-CAM, earliest first."""
        return gradcam_layers(self.model)

    def pictures(self, path: str | Path,
                 max_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(the file as a viewer shows it, uint8 (H0, W0, 3); the same resized to the model's input,
        uint8 (H, W, 3)). One ``images.DataError`` saying what is wrong with the file otherwise, or
        that it holds more than ``max_pixels`` pixels (read from its header, before decoding; None:
        ``images.MAX_PIXELS``)."""
        original = read_image(path, max_pixels=max_pixels)  # decoded once
        return original, resized(original, self.image_size)

    def probabilities(self, seen: np.ndarray) -> np.ndarray:
        """float32 (K,) softmax over the classes for one uint8 (H, W, 3) picture of the model's size."""
        device = next(self.model.parameters()).device
        with self.lock, torch.no_grad(), eval_mode(self.model):  # the caller's mode comes back
            logits = self.model(model_input(seen, self.mean, self.std).to(device))
        return logits.float().softmax(1)[0].cpu().numpy()

    def top(self, probabilities: np.ndarray, k) -> dict[str, float]:
        """The ``k`` most probable classes, most probable first: {name: probability in [0, 1]}."""
        most = min(MAX_TOP, len(self.classes))
        if isinstance(k, float) and k.is_integer():  # a slider may send 3.0
            k = int(k)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= most:
            raise ValueError(f"Top {k!r} classes: choose a whole number from 1 to {most} (the model "
                             f"knows {len(self.classes)} classes; the app lists at most {MAX_TOP}).")
        order = np.argsort(-probabilities, kind="stable")[:k]
        return {self.classes[i]: float(probabilities[i]) for i in order}

    def heatmap(self, seen: np.ndarray, layer: str, opacity: float,
                class_index: int | None = None) -> np.ndarray:
        """uint8 (H, W, 3): Grad-CAM of ``layer`` for ``class_index`` (None: the predicted class)
        over the picture, the heat map at ``opacity`` in [0, 1] (0 shows the picture alone)."""
        from pytorch_grad_cam.utils.image import show_cam_on_image

        if layer not in self.layers:
            raise ValueError(f"Layer {layer!r}: choose one of {', '.join(self.layers)}.")
        if isinstance(opacity, bool) or not isinstance(opacity, (int, float)) or not 0 <= opacity <= 1:
            raise ValueError(f"Opacity {opacity!r}: choose a number from 0 to 1.")
        device = next(self.model.parameters()).device
        x = model_input(seen, self.mean, self.std).to(device)
        with self.lock:
            mask = gradcam(self.model, x, layer,  # x is model_input's: normalised
                           None if class_index is None else torch.tensor([class_index]),
                           check=False)[0]
        # The colour map alone, blended here: show_cam_on_image divides its blend by the blend's
        # maximum, which brightens a dark picture and would show it changed even at opacity 0.
        heat = show_cam_on_image(seen.astype(np.float32) / 255, mask, use_rgb=True, image_weight=0)
        blend = (1 - float(opacity)) * seen + float(opacity) * heat
        return np.clip(blend + 0.5, 0, 255).astype(np.uint8)

    def save(self, folder: str | Path) -> None:
        """Write ``model.safetensors`` and ``model.json`` into ``folder``."""
        save_model = safetensors().save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model = unwrapped(self.model)  # torch.compile's and DataParallel's: the same weights
        problem = rebuild_problem(model)
        if problem:
            raise ValueError(f"The app cannot rebuild this model: it is {problem} (model.json "
                             "records just those). Fix: export a model built as one of them, e.g. "
                             "eva.SmallResNet(num_classes=...), or serve yours with your own code "
                             "(eva.Classifier(model, ...) answers one picture at a time).")
        name, args = type(model).__name__, dict(model.init_args)
        # safetensors stores plain contiguous tensors: a channels-last model is saved as NCHW
        # (the same numbers), shared weights (SmallResNet's) once.
        cpu = build_model(name, args)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        fresh = cpu.state_dict()
        differ = sorted(set(state) ^ set(fresh)) or [k for k in fresh if state[k].shape != fresh[k].shape]
        if differ:  # a layer wrapped or replaced after the model was built
            raise ValueError(f"The app cannot rebuild this model: its layers differ from a new "
                             f"{name}(**{args}) in {', '.join(differ[:4])}"
                             f"{', ...' if len(differ) > 4 else ''} (was a layer wrapped or "
                             "replaced after it was built?). Fix: export a model as its class "
                             "builds it, or serve yours with your own code (eva.Classifier(model, "
                             "...) answers one picture at a time).")
        cpu.load_state_dict(state)
        save_model(cpu, str(folder / "model.safetensors"))
        with torch.no_grad(), eval_mode(cpu):
            answer = cpu(drawn_picture(self.image_size))[0].tolist()
        about = {"architecture": name, "arguments": args, "classes": list(self.classes),
                 "mean": list(self.mean), "std": list(self.std), "image_size": list(self.image_size),
                 "answer": answer}
        (folder / "model.json").write_text(json.dumps(about, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "Classifier":
        """The classifier ``save`` wrote into ``folder``, its model on ``device``."""
        load_model = safetensors().load_model

        folder = Path(folder)
        about = read_json(folder / "model.json")
        damaged = model_json_problem(about)
        if damaged:
            raise ValueError(f"{folder / 'model.json'} is damaged: {damaged}. Fix: {AGAIN}.")
        model = build_model(about["architecture"], about["arguments"])
        try:
            load_model(model, str(folder / "model.safetensors"))
        except Exception as exc:  # missing, truncated, not safetensors, or another model's weights
            said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{folder / 'model.safetensors'} cannot be loaded into the "
                             f"{about['architecture']} that model.json names ({said[:200]}). "
                             f"Fix: {AGAIN}.") from None
        with torch.no_grad(), eval_mode(model):  # on the CPU, in float32, as save answered
            answer = model(drawn_picture(about["image_size"]))[0]
        if len(answer) != len(about["classes"]):
            raise ValueError(f"{folder / 'model.json'} names {len(about['classes'])} classes for a "
                             f"model with {len(answer)} outputs. Fix: export the app again.")
        kept = about.get("answer")  # exports before eva_utils kept it have none
        if kept is not None and not torch.allclose(answer, torch.tensor(kept), rtol=1e-3, atol=1e-4):
            raise ValueError(f"The {about['architecture']} rebuilt from {folder / 'model.json'} answers "
                             "a drawn picture otherwise than the exported model did (its arguments "
                             f"were changed?). Fix: {AGAIN}.")
        model.to(device)  # before the probe, which runs on the device
        with torch.no_grad(), eval_mode(model):  # every request would fail otherwise
            model(torch.zeros(1, 3, *about["image_size"], device=device))
        return cls(model, about["classes"], tuple(about["mean"]), tuple(about["std"]),
                   tuple(about["image_size"]))


AGAIN = "export the app again (eva.export_app, or python -m eva_utils.serve ... --out)"


def read_json(path: Path):
    """The settings in ``path`` (model.json or app.json), or one ValueError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} is missing: {path.parent} is not a folder export_app wrote, or "
                         f"it lost a file. Fix: {AGAIN}.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is damaged: it is not JSON ({exc}). Fix: {AGAIN}.") from None


LARGEST = 4096  # pixels a side of a model's input that an app serves (beyond: out of memory)


def model_json_problem(about) -> str:
    """What makes a ``model.json`` unusable, in words, or "" (a hand edit or a damaged copy: std 0
    would answer NaN, image size 0 or 100000 fail or exhaust memory on every request)."""
    def numbers(v, n):
        return (isinstance(v, list) and len(v) == n and
                all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)
                    for x in v))
    if not isinstance(about, dict):
        return "it holds no settings"
    if not isinstance(about.get("architecture"), str) or not isinstance(about.get("arguments"), dict):
        return "architecture and arguments are missing"
    classes = about.get("classes")
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
        return f"classes={classes!r}: give two class names or more"
    if len(set(classes)) != len(classes):
        return f"classes={classes!r}: a class name appears twice, give each class its own name"
    wrong = arguments_problem(about["architecture"], about["arguments"], len(classes))
    if wrong:
        return wrong
    if not (numbers(about.get("mean"), 3) and all(abs(x) <= 1e6 for x in about["mean"])):
        return f"mean={about.get('mean')!r}: give three numbers from -1e6 to 1e6"
    if not (numbers(about.get("std"), 3) and all(1e-6 <= x <= 1e6 for x in about["std"])):
        return f"std={about.get('std')!r}: give three numbers > 0 (from 1e-6 to 1e6)"
    answer = about.get("answer", [0.0] * len(classes))
    if not numbers(answer, len(classes)):
        return f"answer: give {len(classes)} numbers, the exported model's logits"
    size = about.get("image_size")
    if not (numbers(size, 2) and all(isinstance(x, int) and 1 <= x <= LARGEST for x in size)):
        return f"image_size={size!r}: give [height, width], whole numbers from 1 to {LARGEST}"
    return ""


LARGEST_REPEAT = 64  # an integer argument other than num_classes (SmallResNet's repeats): at most


def arguments_problem(architecture: str, arguments: dict, classes: int) -> str:
    """What makes ``arguments`` unusable for ``architecture``'s constructor, or "": names it does
    not take, values of another type than its defaults, num_classes other than the class count,
    other whole numbers beyond ``LARGEST_REPEAT`` (a model that would never answer)."""
    import inspect

    from .models import ARCHITECTURES
    if arguments.get("num_classes") != classes or type(arguments.get("num_classes")) is not int:
        return f"arguments: num_classes={arguments.get('num_classes')!r}, but {classes} classes are named"
    if architecture not in ARCHITECTURES:
        return ""  # torchvision's ResNet: build_model names its own problems
    takes = inspect.signature(ARCHITECTURES[architecture]).parameters
    for key, value in arguments.items():
        if key not in takes:
            return f"arguments: {architecture} takes no argument {key!r}"
        default = takes[key].default
        if key == "num_classes" or default is inspect.Parameter.empty:
            continue
        want = float if type(default) is float else type(default)
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if want is float \
            else type(value) is want
        if not ok:
            kind = {int: "a whole number", float: "a number", bool: "true or false",
                    str: "text"}.get(want, want.__name__)
            return f"arguments: {key}={value!r}: give {kind}, like its default {default!r}"
        if want is int and not 0 <= value <= LARGEST_REPEAT:
            return f"arguments: {key}={value!r}: give a whole number from 0 to {LARGEST_REPEAT}"
        if want is float and not np.isfinite(value):
            return f"arguments: {key}={value!r}: give a finite number"
    return ""


def drawn_picture(size) -> torch.Tensor:
    """(1, 3, H, W) float32: a fixed, smooth pattern of the size a model takes, the picture whose
    answer model.json keeps (any picture would do; this one needs no file)."""
    h, w = int(size[0]), int(size[1])
    y = torch.linspace(-1, 1, h).view(1, 1, h, 1)
    x = torch.linspace(-1, 1, w).view(1, 1, 1, w)
    c = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    return torch.sin(3 * c * x) * torch.cos(2 * c * y) + 0.5 * x * y


def safetensors():
    """safetensors.torch, or one ImportError with the fix (it comes with the app's extra)."""
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError("Saving or loading the app's weights needs safetensors. Fix: pip install "
                          '"eva-utils[app]" (or: pip install safetensors gradio).') from None
    return safetensors.torch
