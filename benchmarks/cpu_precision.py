"""Which arithmetic trains each suite model fastest on this CPU, and does bfloat16 learn as well?

    python benchmarks/cpu_precision.py                  # speed: every suite model, 4 variants (~3 min)
    python benchmarks/cpu_precision.py --learn CustomResNet ResNet18 --train 10000 --budget 150
    python benchmarks/cpu_precision.py --smoke --out runs/cpu_precision.json   # seconds: a check

Why: ``TrainConfig(amp=None, channels_last=None)`` picks bfloat16 autocast on CPUs with AMX and
float32 on the others, and the channels-last (NHWC) layout on every CPU (``precision.amp_dtype``,
``precision.use_channels_last``). This measures the choice on the machine at hand:

1. Speed. For every suite model, training steps at batch 128 on random 32x32 images in the four
   variants (float32 or bfloat16 autocast, NCHW or NHWC), after a warm-up step; images/s of each,
   and which one ``fit``'s default picks here.
2. Learning (``--learn``): the same short recipe in float32 and in bfloat16 (each in its faster
   layout), for each model and seed, scored on a held-out part of the training set
   (``ImageData.held_out``), never on the test set. A precision is worth defaulting to only where
   it is faster and learns as well over seeds. These runs take hours on two cores: with --budget
   MINUTES the script starts only runs that fit in it, keeps each finished run in
   checkpoints/cpu_precision-<kind>-learn.json and exits with status 75; the same command again
   trains only the runs not kept yet and writes the record when every run is there.

One record per kind of processor (results/cpu_precision-<kind>.json: amx, avx512_bf16, avx512 or
other), from which scripts/results_table.py generates docs/performance.md's tables. Run it on an idle
machine: a second job on the cores slows the variants unevenly. --learn needs CIFAR-10 as the
docs/data.md says (or --smoke: synthetic).
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
from eva_utils.machinery.precision import amp_dtype, cpu_flags, use_channels_last

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------------- settings
MODELS = {  # every model the notebooks train, for CIFAR-10's 10 classes
    "PlainCNN": lambda: eva.PlainCNN(num_classes=10),                                   # 01
    "SmallResNet": lambda: eva.SmallResNet(num_classes=10),                             # 01
    "SmallResNet(repeats=2)": lambda: eva.SmallResNet(repeats=2, num_classes=10),       # 02
    "ResNet18": lambda: eva.ResNet18(num_classes=10),  # GroupNorm(1, C)                 # 03
    "ResNet18(norm='batch')": lambda: eva.ResNet18(norm="batch", num_classes=10),
    "CustomResNet": lambda: eva.CustomResNet(num_classes=10),                           # 04
}
LAYOUTS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}
BATCH = 128        # images a step, in the speed part and the learning part
SPEED_STEPS = 4    # timed steps a variant, after one warm-up step
VALID_PCT = 0.2    # the learning part holds out 20 % of the training images (10,000 of CIFAR-10's)
FORWARD = 0.35     # a held-out image costs about a third of a training image (forward pass only)
UNFINISHED = 75    # exit status when the budget ran out: run the same command again (EX_TEMPFAIL)


def cpu_kind() -> str:
    """The kind of processor, as the defaults tell them apart: AMX, bf16 without AMX, AVX-512."""
    flags = cpu_flags()
    return ("amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags
            else "avx512" if "avx512f" in flags else "other")


def images_per_second(model, layout, dtype, steps: int = SPEED_STEPS) -> float:
    """Training images a second on random images, after one warm-up step."""
    x = torch.randn(BATCH, 3, 32, 32).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (BATCH,))
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
    return steps * BATCH / (time.perf_counter() - t0)


def speed(models, steps: int) -> list[dict]:
    """Images/s of every variant of every model, and the variant fit's default picks here."""
    cpu = torch.device("cpu")
    default = (("bfloat16" if amp_dtype(cpu, None) == torch.bfloat16 else "float32")
               + (" NHWC" if use_channels_last(cpu, None) else " NCHW"))
    rows = []
    for name in models:
        measured = {}
        for precision, dtype in PRECISIONS.items():
            for layout, fmt in LAYOUTS.items():
                torch.manual_seed(0)
                measured[f"{precision} {layout}"] = images_per_second(MODELS[name](), fmt, dtype,
                                                                      steps)
        rows.append({"model": name, "images_per_s": {k: round(v, 1) for k, v in measured.items()},
                     "default": default, "fastest": max(measured, key=measured.get)})
        base = measured["float32 NCHW"]
        print(f"{name:24s} " + "  ".join(f"{k} {v:7.1f}" for k, v in measured.items())
              + f"  img/s; default {default} = {measured[default] / base:.2f}x float32 NCHW",
              flush=True)
    return rows


def learning(data, models, seeds, epochs: int, lr: float, progress: Path | None = None,
             budget_s: float | None = None) -> list[dict] | None:
    """The same recipe in float32 and bfloat16, each in its faster layout, per model and seed:
    accuracy on the held-out images (``data``'s test split is the held-out part).

    The runs take hours on two cores, so they go in stretches: each finished run is kept in
    ``progress`` (a JSON file in an ignored folder), a run is started only if its expected time
    fits in what is left of ``budget_s``, and the same call again trains only the runs not kept
    yet (kept runs count only under the same settings). Returns every run of ``models`` x
    ``seeds`` x both precisions, or None when the budget stopped it first."""
    settings = {"epochs": epochs, "lr": lr, "batch_size": BATCH,
                "train_images": len(data.train_labels), "held_out_images": len(data.test_labels)}
    kept = json.loads(progress.read_text()) if progress and progress.exists() else {}
    done = kept.get("runs", []) if kept.get("settings") == settings else []
    deadline = time.monotonic() + (budget_s if budget_s is not None else float("inf"))
    runs = []
    for name in models:
        for seed in seeds:
            for precision, dtype in PRECISIONS.items():
                earlier = [r for r in done if (r["model"], r["seed"], r["precision"])
                           == (name, seed, precision)]
                if earlier:
                    runs.append(earlier[0])
                    print(f"{name:24s} seed {seed} {precision:9s} kept from {earlier[0]['date']}: "
                          f"held-out {earlier[0]['held_out_acc']:.2f} %", flush=True)
                    continue
                fast = {layout: images_per_second(MODELS[name](), fmt, dtype, 2)
                        for layout, fmt in LAYOUTS.items()}
                layout = max(fast, key=fast.get)
                expected = (epochs * (len(data.train_labels) + FORWARD * len(data.test_labels))
                            / fast[layout])  # seconds
                left = deadline - time.monotonic()
                if expected > left:
                    print(f"{name} seed {seed} {precision} would take about {expected / 60:.0f} "
                          f"min, more than the {left / 60:.0f} min left of the budget; "
                          f"{len(runs)} runs done. Run the same command again to go on.", flush=True)
                    return None
                train = eva.TensorLoader(data.train_images, data.train_labels, data.mean, data.std,
                                         BATCH, train=True, seed=seed,
                                         augment=eva.Augment(pad=4, flip=True, cutout=8))
                held = eva.TensorLoader(data.test_images, data.test_labels, data.mean, data.std,
                                        500, train=False)
                eva.seed_everything(seed)
                cfg = eva.TrainConfig(epochs=epochs, lr=lr, schedule="onecycle", pct_start=0.25,
                                      label_smoothing=0.1, amp=dtype is not None,
                                      channels_last=layout == "NHWC", seed=seed)
                history = eva.fit(MODELS[name](), train, held, cfg, device="cpu", progress=False)
                run = {"model": name, "seed": seed, "precision": precision, "layout": layout,
                       "images_per_s": round(len(train) * BATCH * epochs / history.train_seconds, 1),
                       "held_out_acc": history.test_acc[-1],
                       "held_out_acc_per_epoch": history.test_acc,
                       "date": datetime.date.today().isoformat()}
                runs.append(run)
                done.append(run)
                if progress:  # saved after every run: a stopped stretch loses at most the one running
                    progress.parent.mkdir(parents=True, exist_ok=True)
                    partial = progress.with_suffix(".partial")  # a stop while writing keeps the old
                    partial.write_text(json.dumps({"settings": settings, "runs": done}, indent=1))
                    partial.replace(progress)
                print(f"{name:24s} seed {seed} {precision:9s} {layout}  {run['images_per_s']:7.1f} "
                      f"img/s  held-out {run['held_out_acc']:.2f} %", flush=True)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                   help="models whose speed is measured (default: all)")
    p.add_argument("--learn", nargs="*", default=[], choices=list(MODELS),
                   help="models that also train in both precisions (default: none)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--train", type=int, default=None, help="training images (default: all left)")
    p.add_argument("--lr", type=float, default=0.05, help="one-cycle peak")
    p.add_argument("--budget", type=float, default=None,
                   help="minutes for the learning runs of this stretch (default: no limit)")
    p.add_argument("--smoke", action="store_true", help="synthetic data, 1 epoch: a check only")
    p.add_argument("--out", type=Path, default=None,
                   help="where the record goes (default: results/cpu_precision-<kind>.json)")
    args = p.parse_args()
    kind = cpu_kind()
    out = args.out or ROOT / "results" / f"cpu_precision-{kind}.json"
    device = eva.device_name("cpu")
    print(f"device: {device}; kind: {kind}")
    record = {"command": " ".join(["python benchmarks/cpu_precision.py", *sys.argv[1:]]),
              "date": datetime.date.today().isoformat(), "device": device, "kind": kind,
              "smoke": args.smoke, "batch_size": BATCH,
              "speed": speed(args.models, 1 if args.smoke else SPEED_STEPS)}
    if args.learn:
        data = (eva.synthetic_data(train=1024, test=64, seed=0) if args.smoke
                else eva.load_cifar10(download=False)).held_out(VALID_PCT, seed=0)
        data = data.subset(args.train, None)
        epochs = 1 if args.smoke else args.epochs
        print(f"{len(data.train_labels):,} training images, {len(data.test_labels):,} held out; "
              f"{epochs} epochs of one-cycle at batch {BATCH}, seeds {args.seeds}")
        progress = None if args.smoke else ROOT / "checkpoints" / f"cpu_precision-{kind}-learn.json"
        runs = learning(data, args.learn, args.seeds, epochs, args.lr, progress,
                        None if args.budget is None else args.budget * 60)
        if runs is None:
            print(f"finished runs kept in {progress}; no record written yet")
            sys.exit(UNFINISHED)
        record.update(epochs=epochs, train_images=len(data.train_labels),
                      held_out_images=len(data.test_labels), valid_pct=VALID_PCT, lr=args.lr,
                      runs=runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"record: {out}")
    if args.learn and progress:
        progress.unlink(missing_ok=True)  # the record has every run now; a new command starts afresh


if __name__ == "__main__":
    main()
