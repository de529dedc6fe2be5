"""Seconds per request of the web app's work, on this machine: a 300x300 JPEG upload decoded,
resized to 32x32 and classified (top-k), and the same with Grad-CAM of one layer, for the
CustomResNet of notebook 04 and the ResNet18 of notebook 03.

    python benchmarks/app_speed.py                     # median of 30 requests each; the record below
    python benchmarks/app_speed.py --requests 3 --out runs/app_speed.json     # seconds: a check

Times the app's handler in this process (``Classifier``: what each request runs), not the network
or Gradio's queue. Random weights answer exactly as slowly as trained ones. The record (default
results/app_speed.json) is what docs/deploy.md's table is generated from (scripts/results_table.py). Run
it on an idle machine.
"""
import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import eva_utils as eva

MODELS = {"CustomResNet": lambda: eva.CustomResNet(num_classes=10),
          "ResNet18": lambda: eva.ResNet18(num_classes=10, norm="layer")}  # notebook 03's


def seconds(request, n: int) -> float:
    """Median seconds of ``request()`` over ``n`` calls, after two to warm up."""
    for _ in range(2):
        request()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        request()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "results"
                   / "app_speed.json", help="where the record goes (default: %(default)s)")
    args = p.parse_args()
    device = torch.device("cpu")
    print(f"device: {eva.device_name(device)}; {args.requests} requests each, median")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        upload = Path(tmp) / "photo.jpg"
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(upload)
        for name, build in MODELS.items():
            torch.manual_seed(0)
            clf = eva.Classifier(build(), eva.CIFAR10_CLASSES, (0.49, 0.48, 0.45),
                                 (0.25, 0.24, 0.26), (32, 32))
            layer = clf.layers[-1]

            def top():
                _, seen = clf.pictures(upload)
                return clf.top(clf.probabilities(seen), 3)

            def top_and_cam():
                _, seen = clf.pictures(upload)
                return clf.top(clf.probabilities(seen), 3), clf.heatmap(seen, layer, 0.5)

            run = {"model": name, "parameters": eva.count_parameters(clf.model), "layer": layer,
                   "top_k_s": seconds(top, args.requests),
                   "top_k_gradcam_s": seconds(top_and_cam, args.requests)}
            runs.append(run)
            print(f"{name:13s} top-k {run['top_k_s'] * 1000:6.1f} ms   top-k + Grad-CAM of {layer} "
                  f"{run['top_k_gradcam_s'] * 1000:6.1f} ms", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join(["python benchmarks/app_speed.py", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(), "device": eva.device_name(device),
        "requests": args.requests, "runs": runs}, indent=1) + "\n")
    print(f"record: {args.out}")


if __name__ == "__main__":
    main()
