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

The teaching core, what a notebook's lesson uses:
    data, folders, cifar10  ImageData (uint8 arrays), any train/<class> tree, CIFAR-10
    transforms, loaders     Augment (one description, two backends); TensorLoader
    models                  the suite's four networks, torchvision's ResNets
    config, schedule        TrainConfig (every setting, its unit and range); optimizer and schedule
    train                   fit -> train_epoch -> train_step
    lr_finder               lr_range_test and its named rules
    inference, results      evaluate, predict, misclassified; run records
    plots, galleries        curves, schedules, the range test; mistakes, confusion, Grad-CAM panels
    gradcam, summary        Grad-CAM masks; torchinfo tables

The machinery fit runs on (the first four keep a run across interruptions):
    run, checkpoint, run_folder, budget   a run's state, its files and their lock, stretches
    precision, runtime, guards            arithmetic per device, seeding, fit's checks
    history, ema, cache, images, workers  per-epoch record, weight average, decode cache,
                                          one file as input, albumentations in DataLoader workers

Extras: classifier, app, deploy, serve (a model as a web page); distributed (torchrun); streaming
(data larger than memory); lightning (import it yourself: eva_utils.lightning).

Depends only on torch, torchvision, numpy, pillow, albumentations, opencv, matplotlib, grad-cam,
torch-lr-finder, torchinfo and tqdm, so the folder can be copied into another project as it is; the
app needs gradio and safetensors and eva_utils.lightning needs lightning, each imported only when
used.
"""
from . import distributed
from .app import build_app
from .checkpoint import CheckpointError, load_checkpoint
from .classifier import Classifier
from .cifar10 import load_cifar10
from .data import (CIFAR10_CLASSES, ImageData, channel_stats, data_root, smoke_mode, synthetic_data,
                   to_rgb)
from .deploy import export_app
from .distributed import is_main
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
from .runtime import TrainingError, device_name, eval_mode, get_device, seed_everything
from .schedule import build_optimizer, build_scheduler, lr_schedule
from .streaming import folder_loader
from .summary import summary
from .history import History
from .images import DataError
from .budget import BudgetSpent, TimeBudget
from .config import TrainConfig
from .train import fit, fit_each
from .transforms import Augment, classic_augment, denormalize
from .workers import make_loader

__version__ = "0.2.0"
