"""eva_utils: train and inspect image classifiers with PyTorch (the eva ResNet notebook suite).

    import eva_utils as eva
    data = eva.load_image_folder("shapes")          # train/<class>/*, test/<class>/*; or load_cifar10()
    train = eva.TensorLoader(data.train_images, data.train_labels, data.mean, data.std, 128,
                             train=True, augment=eva.Augment(pad=4, cutout=8), classes=data.classes)
    test = eva.TensorLoader(data.test_images, data.test_labels, data.mean, data.std, 500,
                            train=False, classes=data.classes)
    model = eva.ResNet18(num_classes=data.num_classes)
    history = eva.fit(model, train, test, eva.TrainConfig(epochs=24, lr=0.1))
    predictions = eva.predict(model, test, data.classes)

The teaching core, what a notebook's lesson uses (this folder):
    data, folders, cifar10  ImageData (uint8 arrays), any train/<class> tree, CIFAR-10
    transforms, loaders     Augment (one description, two backends); TensorLoader
    workers                 make_loader: albumentations per image in DataLoader workers
    models/                 the suite's four networks, torchvision's ResNets
    config, schedule        TrainConfig (every setting, its unit and range); optimizer and schedule
    train                   fit -> train_epoch -> train_step
    lr_finder               lr_range_test and its named rules
    inference, results      evaluate, predict, misclassified; run records
    plots, galleries        curves, schedules, the range test; mistakes, confusion, Grad-CAM panels
    gradcam, summary        Grad-CAM masks; torchinfo tables

machinery/, what fit runs on (the first four keep a run across interruptions):
    run, checkpoint, run_folder, budget   a run's state, its files and their lock, stretches
    precision, runtime, guards            arithmetic per device, seeding, fit's checks
    sweep                                 the range test's sweep, resumable, and its kept result
    history, ema, images, cache           per-epoch record, weight average, image files, decode cache
    distributed                           torchrun (nothing changes in a plain run)

Extras, not needed to train: classifier, app, deploy, serve (a model as a web page); streaming
(data larger than memory); lightning (import it yourself: eva_utils.lightning).

Depends only on torch, torchvision, numpy, pillow, albumentations, opencv, matplotlib, grad-cam,
torch-lr-finder, torchinfo and tqdm, so the folder can be copied into another project as it is; the
app needs gradio and safetensors and eva_utils.lightning needs lightning, each imported only when
used.
"""
from .cifar10 import load_cifar10
from .config import TrainConfig
from .data import (CIFAR10_CLASSES, ImageData, channel_stats, data_root, smoke_mode, synthetic_data,
                   to_rgb)
from .folders import load_image_folder
from .galleries import plot_confusion, plot_gradcam, plot_misclassified
from .gradcam import gradcam, gradcam_layers
from .inference import Predictions, confusion_matrix, evaluate, misclassified, predict
from .loaders import TensorLoader
from .lr_finder import RangeTest, lr_range_test
from .models import (CustomResNet, PlainCNN, ResNet18, SmallResNet, build_model, count_parameters,
                     torchvision_resnet)
from .plots import (figure_path, plot_augmentations, plot_history, plot_lr_finder, plot_lr_schedule,
                    save_figure)
from .results import run_record, save_json, save_runs
from .schedule import build_optimizer, build_scheduler, lr_schedule
from .summary import summary
from .train import fit, fit_each
from .transforms import Augment, classic_augment, denormalize
from .workers import make_loader
from .machinery import distributed
from .machinery.budget import BudgetSpent, TimeBudget
from .machinery.checkpoint import CheckpointError, load_checkpoint
from .machinery.distributed import is_main
from .machinery.history import History
from .machinery.images import DataError
from .machinery.runtime import TrainingError, device_name, eval_mode, get_device, seed_everything

__version__ = "0.2.0"

# The extras load on first use (eva.export_app, eva.Classifier, ...), so the core works without them.
EXTRAS = {"build_app": "app", "Classifier": "classifier", "export_app": "deploy",
          "folder_loader": "streaming"}


def __getattr__(name: str):
    if name in EXTRAS:
        from importlib import import_module
        return getattr(import_module(f".{EXTRAS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
