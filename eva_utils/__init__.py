"""eva_utils: the helper package of the eva ResNet notebook suite (CIFAR-10, PyTorch).

    import eva_utils as eva
    data = eva.load_cifar10()                       # uint8 arrays + mean/std, from a local copy or a download
    train = eva.GpuLoader(data.train_images, data.train_labels, data.mean, data.std, 512, train=True)
    test = eva.GpuLoader(data.test_images, data.test_labels, data.mean, data.std, 1024, train=False)
    history = eva.fit(eva.CustomResNet(), train, test, eva.TrainConfig(epochs=24, lr=0.4))

Depends only on torch, torchvision, numpy, albumentations, opencv, matplotlib, grad-cam,
torch-lr-finder, torchinfo and tqdm, so the folder can be copied into another project as it is.
"""
from .data import (CIFAR10, CLASSES, DataError, GpuLoader, data_root, load_cifar10, make_loader,
                   smoke_mode, synthetic_cifar10)
from .engine import (History, Predictions, TrainConfig, TrainingError, build_optimizer,
                     build_scheduler, confusion_matrix, device_name, evaluate, fit, get_device,
                     load_checkpoint, lr_schedule, misclassified, predict, run_record, save_json,
                     seed_everything)
from .gradcam import gradcam, plot_gradcam, target_layers
from .lr_finder import RangeTest, lr_range_test
from .models import CustomResNet, PlainCNN, ResNet18, SmallResNet, count_parameters
from .plots import (figure_path, plot_augmentations, plot_confusion, plot_history, plot_lr_finder,
                    plot_lr_schedule, plot_misclassified)
from .summary import summary
from .transforms import crop_flip_cutout, denormalize, eval_transforms, gpu_augment, seed000_augment

__version__ = "0.1.0"
