"""float32 against bfloat16 autocast on this machine's CPU: the same short training run twice, in
one invocation, each precision in its faster memory layout; images per second and test accuracy.

    python benchmarks/cpu_precision.py                       # CustomResNet, 4 epochs, 10,000 images
    python benchmarks/cpu_precision.py --models CustomResNet ResNet18 --epochs 5
    python benchmarks/cpu_precision.py --smoke --out runs/cpu_precision.json   # seconds: a check

Why: ``TrainConfig(amp=None)`` trains in bfloat16 on CPUs with AMX and in float32 on the others
(``runtime.amp_dtype``). This measures both on the machine at hand, so the choice has evidence on
each kind of processor, and checks that bfloat16 learns as well (the same seed, data and recipe;
it is kept as a default only where it is faster and within about a point of float32's accuracy).
Each precision first times a few steps in both layouts and trains in the faster one.
The record (default results/cpu_precision.json) is what README's precision table is generated
from (scripts/results_table.py). Run it on an idle machine: a second job on the cores slows the
two runs unevenly. Needs CIFAR-10 as the README's Data section says (or --smoke: synthetic).
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
from eva_utils.runtime import cpu_has_amx

MODELS = {"CustomResNet": lambda: eva.CustomResNet(num_classes=10),
          "ResNet18": lambda: eva.ResNet18(num_classes=10)}  # GroupNorm(1, C), as in notebook 03
LAYOUTS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}


def steps_per_second(model, layout, dtype, batch: int, steps: int = 4) -> float:
    """Training steps a second on random images, after one warm-up step."""
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (batch,))
    model = model.to(memory_format=layout).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["CustomResNet"], choices=list(MODELS))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train", type=int, default=10_000, help="training images (the first N)")
    p.add_argument("--test", type=int, default=10_000, help="test images (the first N)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05, help="one-cycle peak")
    p.add_argument("--smoke", action="store_true", help="synthetic data, 1 epoch: a check only")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "results"
                   / "cpu_precision.json", help="where the record goes (default: %(default)s)")
    args = p.parse_args()
    data = (eva.synthetic_data(train=1024, test=128, seed=0) if args.smoke
            else eva.load_cifar10(download=False).subset(args.train, args.test))
    epochs = 1 if args.smoke else args.epochs
    device = torch.device("cpu")
    amx = cpu_has_amx()
    print(f"device: {eva.device_name(device)}; AMX: {'yes' if amx else 'no'} "
          f"(amp=None trains in {'bfloat16' if amx else 'float32'} here)")
    print(f"{len(data.train_labels):,} training images, {len(data.test_labels):,} test images, "
          f"{epochs} epochs of one-cycle at batch {args.batch_size}")
    runs = []
    for name in args.models:
        for precision, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
            speed = {}
            for layout, fmt in LAYOUTS.items():
                torch.manual_seed(0)
                speed[layout] = steps_per_second(MODELS[name](), fmt, dtype, args.batch_size)
            layout = max(speed, key=speed.get)
            train = eva.TensorLoader(data.train_images, data.train_labels, data.mean, data.std,
                                     args.batch_size, train=True, seed=0,
                                     augment=eva.Augment(pad=4, flip=True, cutout=8))
            test = eva.TensorLoader(data.test_images, data.test_labels, data.mean, data.std, 500,
                                    train=False)
            eva.seed_everything(0)
            model = MODELS[name]()
            cfg = eva.TrainConfig(epochs=epochs, lr=args.lr, schedule="onecycle", pct_start=0.25,
                                  label_smoothing=0.1, amp=dtype is not None,
                                  channels_last=layout == "NHWC")
            history = eva.fit(model, train, test, cfg, device=device, progress=False)
            images = len(train) * args.batch_size * epochs
            run = {"model": name, "precision": precision, "layout": layout,
                   "layout_steps_per_s": {k: round(v, 3) for k, v in speed.items()},
                   "images_per_s": images / history.train_seconds,
                   "train_seconds": round(history.train_seconds, 1),
                   "test_acc": history.test_acc[-1],
                   "test_acc_per_epoch": history.test_acc}
            runs.append(run)
            print(f"{name:14s} {precision:9s} {layout}  {run['images_per_s']:7.1f} img/s  "
                  f"test {run['test_acc']:.2f} %  ({run['train_seconds']:.0f} s of training; "
                  f"layout steps/s {speed})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join(["python benchmarks/cpu_precision.py", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(), "device": eva.device_name(device),
        "amx": amx, "smoke": args.smoke, "epochs": epochs, "batch_size": args.batch_size,
        "train_images": len(data.train_labels), "test_images": len(data.test_labels),
        "runs": runs}, indent=1) + "\n")
    print(f"record: {args.out}")


if __name__ == "__main__":
    main()
