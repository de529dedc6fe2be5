"""A finished run in the browser, without writing any code: the checkpoint ``fit`` wrote becomes
the web app (``export_checkpoint``), served on 127.0.0.1:7860 or kept as a folder.

    python -m eva_utils.serve runs/ckpt-04/best.pt --data data
    python -m eva_utils.serve runs/ckpt-04/best.pt --data data --out app --no-launch

(A module of its own, which ``import eva_utils`` does not import, so ``python -m`` runs it cleanly.)
"""
from __future__ import annotations

import argparse
import socket
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from .app import gradio, launch
from .machinery.checkpoint import CheckpointError, load_checkpoint
from .cifar10 import load_cifar10
from .classifier import Classifier
from .data import CIFAR10_CLASSES
from .deploy import export_app, write_app
from .folders import load_image_folder
from .machinery.images import DataError
from .inference import predict
from .loaders import TensorLoader
from .models import build_model, count_parameters


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eva_utils.serve", description=(
        "Serve a checkpoint written by eva.fit as a web app (Gradio), or export it as a folder "
        "for Hugging Face Spaces."))
    parser.add_argument("checkpoint", help="a best.pt or last.pt that fit wrote")
    parser.add_argument("--data", help="the data it trained on (for examples and mistakes)")
    parser.add_argument("--out", help="write the app folder here (default: a temporary folder)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--no-launch", action="store_true", help="export only, do not serve")
    args = parser.parse_args(argv)
    if args.out is not None and not args.out.strip():
        parser.error(f"--out {args.out!r}: give the folder to write the app into, e.g. --out app")
    if args.no_launch and not args.out:
        parser.error("--no-launch keeps only the app folder: say where with --out FOLDER")
    if not 1 <= args.port <= 65535:
        parser.error(f"--port {args.port}: give a port from 1 to 65535 (default 7860)")
    if not args.no_launch and not port_free(args.port):  # said before minutes of exporting
        parser.exit(2, f"error: port {args.port} on 127.0.0.1 is in use (another app still "
                       "running?). Fix: stop it, or give another --port.\n")
    # Without --out the app lives in a temporary folder, removed when the server stops.
    with tempfile.TemporaryDirectory(prefix="eva-app-") as scratch:
        try:
            gradio()  # the missing extra, said before minutes of exporting
            folder = export_checkpoint(args.checkpoint, args.out or Path(scratch) / "app",
                                       args.data)
        except (ImportError, CheckpointError, DataError, FileExistsError, ValueError) as exc:
            parser.exit(2, f"error: {exc}\n")  # the message is the whole story: no traceback
        print(f"App written to {folder}", flush=True)  # flushed: a log file gets it now
        if not args.no_launch:
            launch(folder, server_port=args.port)


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def export_checkpoint(path: str | Path, folder: str | Path, data_root: str | Path | None = None) -> Path:
    """``export_app`` for a checkpoint ``fit`` wrote. With ``data_root`` (the data it trained on),
    the app gets examples and the test images the model gets wrong; without, neither. A checkpoint
    whose loaders were built without ``classes=`` (the notebooks') takes the class names from
    ``data_root``, if their number is the model's."""
    ckpt = load_checkpoint(path)
    inputs = ckpt.get("inputs")
    if not inputs or not (inputs.get("classes") or data_root is not None):
        raise CheckpointError(f"{path} does not record the classes, mean/std and image size the "
                              "model takes (written by an older eva_utils, or trained from a loader "
                              "eva did not build or without classes=). Fix: give the data it "
                              "trained on (--data), or in the notebook that trained it, "
                              "eva.export_app(model, data, predictions, folder).")
    try:
        model = build_model(ckpt["model_class"], ckpt["model_args"])
        model.load_state_dict(ckpt["ema"] if ckpt.get("ema") else ckpt["model"])  # the weights tested
    except (ValueError, TypeError, RuntimeError) as exc:  # another class, or arguments and weights apart
        said = str(exc).strip().splitlines()[0][:300]
        raise CheckpointError(f"{path} holds a {ckpt['model_class']}({ckpt['model_args']}) that "
                              f"cannot be built again with its weights ({said}). The web app "
                              "rebuilds the model from the class and arguments a checkpoint "
                              "records. Fix: serve a checkpoint fit wrote for an eva_utils model, "
                              "unchanged since.") from None
    size = tuple(inputs["image_size"])
    data = None
    if inputs.get("classes"):
        classes = tuple(inputs["classes"])
    else:  # the notebooks' loaders: the classes are the data's, in its order
        data = _training_data(data_root, None, size)
        classes = tuple(data.classes)
        with torch.no_grad():
            outputs = model.eval()(torch.zeros(1, 3, *size)).shape[1]
        if outputs != len(classes):
            raise CheckpointError(f"{data_root} has {len(classes)} classes, but the model in {path} "
                                  f"has {outputs} outputs. Fix: --data the folder it trained on.")
    title = f"{ckpt['model_class']}: {len(classes)} classes"
    if data_root is None:
        clf = Classifier(model, classes, tuple(inputs["mean"]), tuple(inputs["std"]), size)
        history = ckpt["history"]
        about = (f"A {ckpt['model_class']} ({count_parameters(model):,} parameters) that tells "
                 f"{len(classes)} classes apart ({', '.join(classes)}); best test accuracy in "
                 f"training {max(history['test_acc']):.2f} %.")
        return write_app(folder, clf, [], [], title, about)
    data = data or _training_data(data_root, classes, size)
    data = replace(data, mean=tuple(inputs["mean"]), std=tuple(inputs["std"]))  # as trained
    test = TensorLoader(data.test_images, data.test_labels, data.mean, data.std, 500, train=False,
                        classes=classes, device="cpu")
    return export_app(model, data, predict(model, test, classes), folder, title=title)


def _training_data(root, classes, size):
    """The data a checkpoint trained on: CIFAR-10 (torchvision's files or the image folder, never
    downloaded) for its ten classes at 32x32, else the image folder at ``size``; ``classes`` None
    takes the folder's own."""
    if classes in (None, CIFAR10_CLASSES) and size == (32, 32):
        try:
            return load_cifar10(root, download=False, smoke=False)
        except DataError:  # not CIFAR-10: another folder of 32x32 pictures
            if classes:
                raise
    return load_image_folder(root, classes=classes, image_size=size)


if __name__ == "__main__":
    main()
