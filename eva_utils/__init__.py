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

Modules, one noun each:
    data          ImageData (uint8 arrays in memory), held-out splits, channel statistics
    folders       load_image_folder: any train/<class>, test/<class> tree
    cache         the decode cache beside an image folder
    cifar10       load_cifar10: a local copy or a download
    images        one file as a model's input (channels, size, normalisation)
    transforms    Augment: one description of the augmentation, two backends
    loaders       the Loader protocol; TensorLoader (whole split on the device, batched augmentation)
    workers       make_loader: albumentations per image in DataLoader workers
    streaming     folder_loader: data larger than memory
    models        the suite's four networks, torchvision's ResNets, build_model
    runtime       device, the device's precision choice, seeding, eval mode
    config        TrainConfig: every setting, its unit and valid range
    precision     Precision: a run's arithmetic (autocast type, layout), decided once
    schedule      optimizer and learning-rate schedule
    train         fit -> train_epoch -> train_step
    run           Run: a run's live state, saved and restored by checkpoints
    guards        fit's checks (arguments, first batch, NaN, divergence, memory)
    budget        TimeBudget, BudgetSpent: long runs in stretches
    checkpoint    random states, durable checkpoint files, the resume checks
    run_folder    RunFolder: one run per checkpoint folder, its lock kept alive
    history       History: a run's per-epoch record
    ema           the weight average
    inference     evaluate and predict, one path; misclassified, confusion_matrix
    results       run_record, save_runs, save_json
    lr_finder     lr_range_test and its named rules
    plots         figures of training: curves, schedules, the range test, augmentation
    galleries     figures of answers: confusion matrix, mistakes, Grad-CAM panels
    gradcam       Grad-CAM masks, the model left as it was
    summary       torchinfo tables in the assignments' format
    distributed   torchrun: process group, DDP, sums over processes
    classifier    one image in: top classes and Grad-CAM; the app's weights folder
    app, deploy   the Gradio page; export_app (the page as a folder for Spaces)
    serve         python -m eva_utils.serve CHECKPOINT; export_checkpoint
    lightning     EvaModule, EvaDataModule (import it yourself: eva_utils.lightning)

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
