"""Training-speed benchmark: assignment 003's custom ResNet (6,573,120 parameters), 24 epochs, batch 512,
one-cycle Nesterov SGD, through each data path, on whatever device is found.

    python benchmarks/train_speed.py --data-dir data            # both paths, full length
    python benchmarks/train_speed.py --paths gpu --compile      # the fast path, torch.compile'd
    python benchmarks/train_speed.py --smoke                    # tiny, on the CPU: does it run?

Prints per-epoch seconds, total training seconds, peak GPU memory and final test accuracy, and with
--out writes them as JSON. Recipe after David Page, "How to train your ResNet" (2018): peak LR 0.4,
momentum 0.9, weight decay 5e-4, logits x 1/8, crop + flip + 8x8 cutout; plus label smoothing 0.2 and
mirror test-time augmentation.
"""
import argparse
import json
import os
import time
import warnings

import torch

import eva_utils as eva


def run(path: str, data, args, device) -> dict:
    eva.seed_everything(args.seed)
    batch = args.batch_size
    augment = eva.Augment(pad=4, flip=True, cutout=8)  # one description, either path
    if path == "gpu":
        train = eva.TensorLoader(data.train_images, data.train_labels, data.mean, data.std, batch,
                                 train=True, augment=augment, device=device, seed=args.seed)
    else:  # the classic path: per-image albumentations in DataLoader workers, fp32 by default
        train = eva.make_loader(data.train_images, data.train_labels, data.mean, data.std, batch,
                                train=True, augment=augment, num_workers=args.workers, seed=args.seed)
    test = eva.TensorLoader(data.test_images, data.test_labels, data.mean, data.std, 1000,
                            train=False, device=device)
    config = eva.TrainConfig(epochs=args.epochs, lr=0.4, momentum=0.9, nesterov=True,
                             weight_decay=5e-4, schedule="onecycle", pct_start=5 / 24,
                             div_factor=10, final_div_factor=1, label_smoothing=0.2, tta=True,
                             compile=args.compile, amp=None if path == "gpu" else args.amp_classic,
                             seed=args.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = eva.CustomResNet(num_classes=10, logit_scale=0.125)
    start = time.perf_counter()
    history = eva.fit(model, train, test, config, device=device, progress=False)
    wall = time.perf_counter() - start
    steady = history.seconds[1:] or history.seconds
    return {"path": path, "device": eva.device_name(device), "epochs": args.epochs,
            "seconds_per_epoch": [round(s, 3) for s in history.seconds],
            "steady_seconds_per_epoch": round(sorted(steady)[len(steady) // 2], 3),
            "train_seconds": round(history.train_seconds, 2), "wall_seconds_with_tests": round(wall, 2),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            if device.type == "cuda" else None,
            "test_acc": history.test_acc[-1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--paths", nargs="+", default=["gpu", "albumentations"],
                   choices=["gpu", "albumentations"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--amp-classic", action="store_true", help="mixed precision on the classic path too")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="64 images, 2 epochs, batch 32")
    p.add_argument("--out", default=None, help="write the results here as JSON")
    args = p.parse_args()
    data = eva.load_cifar10(args.data_dir, smoke=args.smoke)
    if args.smoke:
        # Does every path run, not how fast: the smallest size with a second (steady) epoch.
        data, args.epochs, args.batch_size, args.workers = data.subset(64, 64), 2, 32, 0
        warnings.filterwarnings("ignore", message=".*too few to learn well")
    device = eva.get_device()
    results = [run(path, data, args, device) for path in args.paths]
    print(f"\n{'path':15s} {'s/epoch (median after 1st)':>27s} {'train s':>8s} {'peak GiB':>9s} "
          f"{'test acc':>9s}   device")
    for r in results:
        print(f"{r['path']:15s} {r['steady_seconds_per_epoch']:27.3f} {r['train_seconds']:8.2f} "
              f"{r['peak_gpu_memory_gib'] or 0:9.2f} {r['test_acc']:8.2f}%   {r['device']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
