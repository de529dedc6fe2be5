"""Where a training step's time goes on this CPU: torch.profiler over a few steps of each suite model in
fit's default arithmetic, the most expensive operators, the share outside convolutions and matrix
products, and how fast those run against a reference: the best rate of a large matrix product in the
same arithmetic on the same cores, measured in the same run.

    python benchmarks/profile_step.py                       # every suite model (a few minutes)
    python benchmarks/profile_step.py --models CustomResNet --steps 5
    python benchmarks/profile_step.py --smoke --out runs/profile.json   # seconds: a check

Each model trains through fit's own step (``train.train_step``: autocast, loss, backward, SGD with
Nesterov momentum) at the notebooks' batch size, on random 32x32 images, after one warm-up step. Run
it on an idle machine: the record goes to results/profile_step-<kind>.json, from which
scripts/results_table.py generates docs/performance.md's table.
"""
import argparse
import datetime
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import eva_utils as eva
from eva_utils.machinery.precision import Precision
from eva_utils.machinery.run import Run
from eva_utils.train import train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_precision import cpu_kind  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------------- settings
MODELS = {  # model, the batch its notebook trains at
    "PlainCNN": (lambda: eva.PlainCNN(num_classes=10), 128),                             # 01
    "SmallResNet": (lambda: eva.SmallResNet(num_classes=10), 128),                       # 01
    "SmallResNet(repeats=2)": (lambda: eva.SmallResNet(repeats=2, num_classes=10), 256),  # 02
    "ResNet18": (lambda: eva.ResNet18(num_classes=10), 512),                             # 03
    "CustomResNet": (lambda: eva.CustomResNet(num_classes=10), 512),                     # 04
}
ARITHMETIC = ("convolution", "mkldnn_convolution", "addmm", "mm", "bmm", "linear", "matmul")
TOP = 10      # operators listed per model
STEPS = 3     # profiled steps at least, after one warm-up step...
MIN_SECONDS = 2.0  # ...and as many more as fill this long: a fast model's 3 steps last a blink
REFERENCE_N = 2048   # side of the square matrices whose product is the reference
REFERENCE_REPEATS = 5  # the best of this many products counts


def one_step(name: str):
    """fit's training step for ``name``, in fit's default precision and layout on this CPU."""
    make, batch = MODELS[name]
    torch.manual_seed(0)
    model = make()
    device = torch.device("cpu")
    precision = Precision.choose(device)
    model.to(memory_format=precision.memory_format).train()
    cfg = eva.TrainConfig(epochs=1, lr=0.05, schedule="constant")
    optimizer = eva.build_optimizer(model, cfg)
    scheduler, step_every = eva.build_scheduler(optimizer, cfg, 10)
    run = Run(model=model, forward=model, optimizer=optimizer, scheduler=scheduler,
              step_every=step_every, precision=precision, scaler=precision.scaler(device), ema=None,
              device=device, history=eva.History())
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=precision.memory_format)
    y = torch.randint(0, 10, (batch,))
    return (lambda: train_step(run, x, y, cfg)), precision, batch


def flops_per_image(name: str) -> float:
    """Forward and backward multiply-adds x 2 of one 32x32 image, counted by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode
    model = MODELS[name][0]()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(1, 3, 32, 32)).sum().backward()
    return counter.get_total_flops()


def reference_tflops(dtype: torch.dtype, n: int = REFERENCE_N, repeats: int = REFERENCE_REPEATS) -> float:
    """The best TFLOP/s of an n x n by n x n matrix product in ``dtype`` on this CPU's threads: what its
    cores reach on dense arithmetic through oneDNN, a yardstick for the convolutions' rate."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e12


def sig(x: float, digits: int = 4) -> float:
    """x to `digits` significant figures: a slow machine's rates stay non-zero and comparable."""
    return float(f"{x:.{digits}g}")


def profile_model(name: str, steps: int, min_seconds: float = MIN_SECONDS) -> dict:
    step, precision, batch = one_step(name)
    step()  # warm-up: oneDNN picks and caches its kernels
    start = time.perf_counter()
    step()
    steps = max(steps, math.ceil(min_seconds / (time.perf_counter() - start)))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)  # microseconds, each op counted once
    by_op = defaultdict(float)
    for e in events:
        by_op[e.key] += e.self_cpu_time_total
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:TOP]
    arithmetic = sum(t for op, t in by_op.items() if any(a in op for a in ARITHMETIC))
    seconds = total / 1e6 / steps
    flops = flops_per_image(name) * batch
    return {"model": name, "batch": batch, "steps": steps, "precision": precision.name,
            "layout": precision.layout,
            "seconds_per_step": round(seconds, 4), "images_per_s": round(batch / seconds, 1),
            "tflops": sig(flops / seconds / 1e12),
            # the same FLOPs over the time of the convolutions and matrix products alone
            "arithmetic_tflops": sig(flops / (arithmetic / 1e6 / steps) / 1e12),
            "outside_convolutions_and_matmuls": round(1 - arithmetic / total, 3),
            "top": [{"op": op, "share": round(t / total, 3)} for op, t in top]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--smoke", action="store_true", help="PlainCNN, one step: a check only")
    p.add_argument("--out", type=Path, default=None,
                   help="where the record goes (default: results/profile_step-<kind>.json)")
    args = p.parse_args()
    models, steps = (["PlainCNN"], 1) if args.smoke else (args.models, args.steps)
    kind = cpu_kind()
    device = eva.device_name("cpu")
    print(f"device: {device}; kind: {kind}")
    dtype = Precision.choose(torch.device("cpu")).dtype or torch.float32
    n = 256 if args.smoke else REFERENCE_N
    before = reference_tflops(dtype, n)  # and after the models: one slow moment would halve it
    rows = [profile_model(name, steps, 0 if args.smoke else MIN_SECONDS) for name in models]
    reference = max(before, reference_tflops(dtype, n))
    print(f"reference: a {n}x{n} matrix product in {dtype}: {reference:.3f} TFLOP/s")
    for row in rows:
        name = row["model"]
        row["of_reference"] = sig(row["arithmetic_tflops"] / reference)
        print(f"{name:24s} {row['precision']} {row['layout']}, batch {row['batch']}: "
              f"{row['images_per_s']:7.1f} img/s, {row['tflops']:.3f} TFLOP/s, "
              f"{100 * row['outside_convolutions_and_matmuls']:.0f} % outside convolutions and "
              f"matrix products, which run at {row['arithmetic_tflops']:.3f} TFLOP/s "
              f"({100 * row['of_reference']:.0f} % of the reference)", flush=True)
        for t in row["top"]:
            print(f"    {100 * t['share']:5.1f} %  {t['op']}")
    record = {"command": " ".join(["python benchmarks/profile_step.py", *sys.argv[1:]]),
              "date": datetime.date.today().isoformat(), "device": device, "kind": kind,
              "smoke": args.smoke, "steps": steps, "min_seconds": 0 if args.smoke else MIN_SECONDS,
              "reference": {"dtype": str(dtype).removeprefix("torch."), "n": n, "tflops": sig(reference)},
              "runs": rows}
    out = args.out or ROOT / "results" / f"profile_step-{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"record: {out}")


if __name__ == "__main__":
    main()
