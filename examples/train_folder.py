"""Train a ResNet on an image folder, on one process or many, CPU or GPU.

    python examples/train_folder.py shapes --epochs 20                   # one process
    torchrun --standalone --nproc-per-node 4 examples/train_folder.py shapes --epochs 20
                                                                          # 4 GPUs (or 4 CPU processes)
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint host0:29500 examples/train_folder.py /data/imagenet --model resnet50 \\
        --image-size 224 --batch-size 1024 --stream --flip      # the same on host1 with --node-rank 1

``root`` holds train/<class>/* and test/<class>/*. In memory by default (decoded once, cached);
``--stream`` decodes files in DataLoader workers for folders larger than memory. The batch size is
the global batch. Checkpoints go to --checkpoint-dir; run the same command again to resume. Rank 0
prints, writes checkpoints, the run record and the figures.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import eva_utils as eva
from eva_utils.models.torchvision_resnet import NAMES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("root", type=Path, help="folder with train/<class>/* and test/<class>/*")
    p.add_argument("--model", default="resnet18", help=f"one of {', '.join(NAMES)}")
    p.add_argument("--image-size", type=int, default=32, help="pixels a side")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=None,
                   help="global: over all processes (default: 128, or less so that an epoch of a "
                        "small folder still has 20+ steps)")
    p.add_argument("--lr", type=float, default=None, help="peak rate (default: LR range test)")
    p.add_argument("--flip", action="store_true", help="mirror training images (photos, not text)")
    p.add_argument("--stream", action="store_true", help="decode files in workers, every epoch")
    p.add_argument("--workers", type=int, default=None, help="decoding workers per process")
    p.add_argument("--checkpoint-dir", default="checkpoints/train_folder")
    p.add_argument("--out", type=Path, default=Path("runs/train_folder"), help="figures, record")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    eva.seed_everything(args.seed)
    size = args.image_size
    batch = args.batch_size or default_batch(len(eva.folders.image_files(args.root)[1]))
    if args.stream:
        train = eva.folder_loader(args.root, "train", batch, image_size=size,
                                  flip=args.flip, num_workers=args.workers, seed=args.seed)
        test = eva.folder_loader(args.root, "test", 500, image_size=size, mean=train.mean,
                                 std=train.std, num_workers=args.workers)
    else:
        data = eva.load_image_folder(args.root, image_size=size)
        augment = eva.Augment(pad=size // 8, flip=args.flip, cutout=size // 4)
        train = eva.make_loader(data.train_images, data.train_labels, data.mean, data.std,
                                batch, train=True, augment=augment,
                                classes=data.classes, num_workers=args.workers, seed=args.seed)
        test = eva.make_loader(data.test_images, data.test_labels, data.mean, data.std, 500,
                               train=False, classes=data.classes, num_workers=args.workers)
    model = eva.torchvision_resnet(args.model, num_classes=train.num_classes,
                                   small_images=size < 96)
    lr = args.lr
    if lr is None:  # under torchrun, rank 0 sweeps and every process takes its pick
        lr = eva.lr_range_test(model, train, verbose=eva.is_main(),
                               checkpoint_dir=args.checkpoint_dir).suggested_lr
    config = eva.TrainConfig(epochs=args.epochs, lr=lr, schedule="onecycle", tta=args.flip,
                             seed=args.seed, checkpoint_dir=args.checkpoint_dir)
    history = eva.fit(model, train, test, config, resume=True)
    if eva.is_main():
        record = eva.run_record(history, model, eva.get_device(), model=args.model,
                                processes=eva.distributed.world()[1], batch_size=batch)
        eva.save_json(args.out / "record.json", record)
        eva.plot_history(history, path=args.out / "curves.png")
        print(f"test accuracy {record['test_acc']:.2f}% after {len(history)} epochs, "
              f"{record['train_seconds']:.0f} s of training")
    eva.distributed.stop()


def default_batch(images: int) -> int:
    """128, or fewer for a small folder (20+ steps an epoch, as the README's example chooses),
    a multiple of the number of processes so that each takes an equal share."""
    procs = eva.distributed.world()[1]
    batch = max(1, min(128, images // 20))
    return max(procs, batch // procs * procs)


if __name__ == "__main__":
    main()
