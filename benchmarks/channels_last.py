"""Channels-last (NHWC) against the default layout (NCHW): training images per second of each
model on this machine's default device, both layouts measured in one run, alternating.

    python benchmarks/channels_last.py                          # every model, batch 128
    python benchmarks/channels_last.py --models SmallResNet --steps 30 --out runs/layouts.json

Why: ``precision.use_channels_last`` turns NHWC on for CUDA only; this prints the evidence for the
CPU (and checks it on a GPU). The record (default results/channels_last.json) names the device and
is what docs/performance.md's layout table is generated from (scripts/results_table.py). Run it on an idle
machine: a second job on the two cores halves both layouts' speeds unevenly.
"""
import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import eva_utils as eva

MODELS = {"PlainCNN": lambda: eva.PlainCNN(num_classes=10),
          "SmallResNet": lambda: eva.SmallResNet(num_classes=10),
          "SmallResNet(repeats=2)": lambda: eva.SmallResNet(repeats=2, num_classes=10),
          "CustomResNet": lambda: eva.CustomResNet(num_classes=10),
          "ResNet18": lambda: eva.ResNet18(num_classes=10)}


def images_per_second(model, layout, device, batch, steps) -> float:
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (batch,), device=device)
    model = model.to(device, memory_format=layout).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2, help="alternations of the two layouts")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "results"
                   / "channels_last.json", help="where the record goes (default: %(default)s)")
    args = p.parse_args()
    device = eva.get_device()
    print(f"device: {eva.device_name(device)}, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds per layout")
    print(f"{'model':24s} {'NCHW img/s':>11s} {'NHWC img/s':>11s} {'NHWC/NCHW':>10s}")
    runs = []
    for name in args.models:
        speed = {torch.contiguous_format: [], torch.channels_last: []}
        for _ in range(args.rounds):
            for layout in speed:
                torch.manual_seed(0)
                speed[layout].append(images_per_second(MODELS[name](), layout, device,
                                                       args.batch_size, args.steps))
        nchw, nhwc = max(speed[torch.contiguous_format]), max(speed[torch.channels_last])
        print(f"{name:24s} {nchw:11.0f} {nhwc:11.0f} {nhwc / nchw:10.2f}", flush=True)
        runs.append({"model": name, "nchw_images_per_s": nchw, "nhwc_images_per_s": nhwc})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join(["python benchmarks/channels_last.py", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(), "device": eva.device_name(device),
        "batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds,
        "runs": runs}, indent=1) + "\n")
    print(f"record: {args.out}")


if __name__ == "__main__":
    main()
