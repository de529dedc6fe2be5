"""How fast can the streaming loader feed a model? Decode throughput against the in-memory path.

    python benchmarks/streaming.py                  # 2,000 JPEGs at 64x64 and at 224x224
    python benchmarks/streaming.py --images 200     # a quick look

Writes a synthetic image folder of random-texture JPEGs (quality 90) at each size, then times one
training epoch of batches (no model: the loader alone) for ``eva.folder_loader`` with 0, 1, 2, ...
workers (decoding, random-resized crop, normalising), and, where the data fits in memory, for
``make_loader`` over arrays decoded once by ``load_image_folder`` (the same worker counts) and for
``TensorLoader`` (batched tensor augmentation). Prints images per second and writes
results/streaming.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def write_folder(root: Path, n: int, size: int, classes: int = 10, seed: int = 0) -> None:
    """n JPEGs in root/train/<class>/ (and n // 5 in root/test/): smooth random textures."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("test", max(classes, n // 5))):
        for i in range(count):
            folder = root / split / f"class{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).save(
                folder / f"{i:05d}.jpg", quality=90)


def images_per_second(loader) -> float:
    loader.set_epoch(0)
    t0 = time.perf_counter()
    seen = sum(len(y) for _, y in loader)
    return seen / (time.perf_counter() - t0)


def main() -> None:
    import eva_utils as eva

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    p.add_argument("--workers", type=int, nargs="+", default=sorted({0, 1, os.cpu_count() or 1}))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "streaming.json")
    args = p.parse_args()
    runs = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            write_folder(root, args.images, size)
            for workers in args.workers:
                loader = eva.folder_loader(root, "train", args.batch_size, image_size=size,
                                           flip=True, num_workers=workers, mean=0.5, std=0.25)
                runs.append({"size": size, "path": "folder_loader (decode every epoch)",
                             "workers": workers, "images_per_s": images_per_second(loader)})
                print(runs[-1], flush=True)
            t0 = time.perf_counter()
            data = eva.load_image_folder(root)
            decode = time.perf_counter() - t0
            augment = eva.Augment(pad=size // 8, flip=True, cutout=size // 4)
            for workers in args.workers:
                loader = eva.make_loader(data.train_images, data.train_labels, data.mean, data.std,
                                         args.batch_size, train=True, augment=augment,
                                         num_workers=workers)
                runs.append({"size": size, "path": "make_loader (decoded once, in memory)",
                             "workers": workers, "images_per_s": images_per_second(loader),
                             "decode_once_s": round(decode, 2)})
                print(runs[-1], flush=True)
            loader = eva.TensorLoader(data.train_images, data.train_labels, data.mean, data.std,
                                      args.batch_size, train=True, augment=augment)
            runs.append({"size": size, "path": "TensorLoader (in memory, batched)", "workers": 0,
                         "images_per_s": images_per_second(loader)})
            print(runs[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join(["python benchmarks/streaming.py", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(), "device": eva.device_name("cpu"),
        "images": args.images, "batch_size": args.batch_size, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
