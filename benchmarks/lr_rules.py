"""Which learning-rate rule of the range test is safe and effective on a student's small data set?

    python benchmarks/lr_rules.py                      # every model, seeds 0 and 1 (~15 min, 2 CPU cores)
    python benchmarks/lr_rules.py --models PlainCNN --seeds 0 --epochs 2   # a quick look

Draws 4 classes of outlined shapes (240 training and 120 test images, 28x28 grayscale, resized to
32x32, since PlainCNN needs 32), then for each model and seed runs the README's own-assignment
recipe: one LR range test (the default length), and for each rule a fresh copy of the same initial
weights trained with one-cycle at that rule's learning rate. A run whose loss blows up counts as
"diverged". Writes results/lr_rules.json, from which scripts/results_table.py draws docs/own-assignment.md's table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ("circle", "cross", "square", "triangle")
RULES = ("valley", "steepest", "minimum", "minimum_tenth")
MODELS = {  # name -> constructor, for data with 4 classes
    "PlainCNN": lambda eva: eva.PlainCNN(num_classes=4),
    "SmallResNet": lambda eva: eva.SmallResNet(num_classes=4),
    "SmallResNet(repeats=2)": lambda eva: eva.SmallResNet(repeats=2, num_classes=4),
    "ResNet18(norm='batch')": lambda eva: eva.ResNet18(norm="batch", num_classes=4),
    "ResNet18(norm='layer')": lambda eva: eva.ResNet18(norm="layer", num_classes=4),
    "CustomResNet": lambda eva: eva.CustomResNet(num_classes=4),
}


def draw_shapes(root: Path, size: int = 28, gray: bool = True, per_class=(60, 30), seed=0) -> None:
    """root/{train,test}/<shape>/NNN.png: an outlined circle, cross, square or triangle of random
    size, place and colour on a noisy background; grayscale ("L") or RGB files of size x size."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class):
        for shape in SHAPES:
            (root / split / shape).mkdir(parents=True)
            for i in range(n):
                noise = rng.integers(0, 256, (size, size, 3)) // 3 + 40
                img = Image.fromarray(noise.astype(np.uint8))
                draw, width = ImageDraw.Draw(img), max(1, size // 14)
                r = rng.uniform(0.2, 0.4) * size
                x, y = rng.uniform(r, size - r, 2)
                colour = tuple(int(c) for c in rng.integers(150, 256, 3))
                box = [x - r, y - r, x + r, y + r]
                if shape == "circle":
                    draw.ellipse(box, outline=colour, width=width)
                elif shape == "square":
                    draw.rectangle(box, outline=colour, width=width)
                elif shape == "cross":
                    draw.line([x - r, y, x + r, y], fill=colour, width=width)
                    draw.line([x, y - r, x, y + r], fill=colour, width=width)
                else:
                    draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], outline=colour,
                                 width=width)
                img.convert("L" if gray else "RGB").save(root / split / shape / f"{i:03d}.png")


def main() -> None:
    import eva_utils as eva

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "lr_rules.json")
    args = p.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)  # small-data advice: known here
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        draw_shapes(Path(tmp) / "shapes")
        data = eva.load_image_folder(Path(tmp) / "shapes", image_size=32)
    batch = max(1, min(128, len(data.train_labels) // 20))  # the README's rule: 20 steps an epoch
    side = min(data.image_size)
    augment = eva.Augment(pad=side // 8, rotate=5, cutout=side // 4)
    for seed in args.seeds:
        for name in args.models:
            train = eva.TensorLoader(data.train_images, data.train_labels, data.mean, data.std,
                                     batch, train=True, augment=augment, classes=data.classes,
                                     seed=seed)
            test = eva.TensorLoader(data.test_images, data.test_labels, data.mean, data.std, 500,
                                    train=False, classes=data.classes)
            eva.seed_everything(seed)
            model = MODELS[name](eva)
            start = {k: v.clone() for k, v in model.state_dict().items()}
            found = eva.lr_range_test(model, train, verbose=False)
            for rule in RULES:
                model.load_state_dict(start)
                lr = getattr(found, rule)
                config = eva.TrainConfig(epochs=args.epochs, lr=lr, schedule="onecycle", seed=seed)
                try:
                    acc = eva.fit(model, train, test, config, progress=False).test_acc[-1]
                except eva.TrainingError:  # the loss blew up
                    acc = None
                runs.append({"model": name, "seed": seed, "rule": rule, "lr": lr, "test_acc": acc})
                print(f"{name:24s} seed {seed}  {rule:14s} lr {lr:9.3g}  "
                      f"{'diverged' if acc is None else f'{acc:5.1f} %'}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join(["python benchmarks/lr_rules.py", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(), "device": eva.device_name("cpu"),
        "epochs": args.epochs, "data": "4 classes of drawn shapes, 240 train / 120 test, 28x28 "
        "grayscale at 32x32", "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
