"""``load_image_folder(root)``: any ``root/train/<class>/*``, ``root/test/<class>/*`` tree as
``ImageData``: every format Pillow reads, two classes or more (named by their folders, sorted unless
``classes=`` gives the order), any size with ``image_size=``. Hidden and system folders and stray
files are skipped with a warning naming them; test images that are also training images are
counted in one; class names match across Unicode forms (NFC). Decoded once and cached as
``root/eva-image-cache.npz`` (plain arrays), rebuilt when a file is added, removed, renamed, resized
or touched: an image edited in place with the same size and time is not noticed (delete the cache).
"""
from __future__ import annotations

import hashlib
import os
import unicodedata
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .machinery.cache import CACHE_NAME, read_cache, signature, write_cache
from .data import ImageData, channel_stats, data_root
from .machinery.images import DataError, read_image


def hidden(name: str) -> bool:
    """Folders that tools make, never classes: ".ipynb_checkpoints", "__MACOSX", ".git", ..."""
    return name.startswith((".", "__"))


def class_folders(split: Path) -> dict[str, Path]:
    """{class name (Unicode NFC): folder} for one split's sub-folders, hidden ones skipped."""
    if not split.is_dir():
        raise DataError(f"{split} is missing: an image folder needs {split.parent / 'train'} and "
                        f"{split.parent / 'test'}, each with one sub-folder per class.")
    folders = [p for p in split.iterdir() if p.is_dir()]
    skipped = sorted(p.name for p in folders if hidden(p.name))
    if skipped:
        warnings.warn(f"Skipped {', '.join(skipped)} in {split}: hidden or system folders are not "
                      "classes.", stacklevel=3)
    # A file here (bird.zip) or a link to no folder (one to itself) is no class: said, not dropped.
    others = sorted(p.name for p in split.iterdir() if not p.is_dir() and not hidden(p.name))
    if others:
        warnings.warn(f"Skipped {', '.join(others)} in {split}: only folders are classes (a "
                      "file, or a link that leads to no folder). Fix: unpack an archive into a "
                      "folder named after its class, or remove the entry.", stacklevel=3)
    names = {}
    for p in sorted(folders):
        if hidden(p.name):
            continue
        try:  # a class name is shown, printed and saved: it must be text
            p.name.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"The class folder {os.fsencode(p)!r} has a name that is not UTF-8 text "
                            "(made on a system with another encoding?). Fix: rename it.") from None
        name = unicodedata.normalize("NFC", p.name)
        if name in names:
            raise DataError(f"{names[name]} and {p} are the same class name in two Unicode forms. "
                            "Fix: merge the two folders.")
        names[name] = p
    if not names:
        raise DataError(f"{split} has no class folders. Fix: put the images of class c in "
                        f"{split / 'c'}/.")
    return names


def image_files(root: Path, classes=None) -> tuple[list[str], list, list]:
    """(class names, [(path, label)] of train/, of test/) under ``root``, checked as the module
    doc says; ``classes`` gives the label order (None: the folder names, sorted)."""
    train_folders = class_folders(root / "train")
    test_folders = class_folders(root / "test")
    if set(test_folders) != set(train_folders):
        raise DataError(f"{root / 'train'} and {root / 'test'} must hold the same class folders; "
                        f"only in train: {sorted(set(train_folders) - set(test_folders)) or 'none'}, "
                        f"only in test: {sorted(set(test_folders) - set(train_folders)) or 'none'}.")
    found = list(train_folders)
    if len(found) < 2:
        raise DataError(f"{root / 'train'} has one class folder ({found[0]}): a classifier needs "
                        "two classes or more (with one, every answer is right). Fix: add a folder "
                        "of images for each other class.")
    if classes is None:
        classes = found
    else:
        classes = [unicodedata.normalize("NFC", str(c)) for c in classes]
        if sorted(classes) != found:
            raise DataError(f"classes={list(classes)} must name each class folder once; the "
                            f"folders are {found}.")
    return classes, _list_split(train_folders, classes), _list_split(test_folders, classes)


def image_suffixes() -> set[str]:
    """File name endings of every format Pillow can open (".png", ".jpg", ".webp", ".tif", ...)."""
    from PIL import Image

    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _list_split(folders: dict[str, Path], classes: list[str]) -> list[tuple[Path, int]]:
    files, skipped = [], []
    suffixes = image_suffixes()
    for label, name in enumerate(classes):
        folder = folders[name]
        found = []
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in suffixes and not p.is_dir():
                if not p.exists():  # a symlink whose target is gone
                    raise DataError(f"{p} is a broken link (its target does not exist). Fix: "
                                    "remove it or point it at an image.")
                found.append(p)
            elif not hidden(p.name):  # .DS_Store, Thumbs.db-like dot files: silently
                skipped.append(p)
        if not found:
            raise DataError(f"{folder} holds no images (no file Pillow can open). Fix: add its images, "
                            "or remove the folder if the class is not wanted.")
        files += [(p, label) for p in found]
    if skipped:
        folders_ = sum(p.is_dir() for p in skipped)
        names = ", ".join(f"{p.parent.name}/{p.name}{'/' * p.is_dir()}" for p in skipped[:5])
        warnings.warn(f"Skipped {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} of the "
                      f"class folders in {skipped[0].parent.parent} ({folders_} sub-folder"
                      f"{'s' * (folders_ != 1)}, {len(skipped) - folders_} other files): {names}"
                      f"{', ...' if len(skipped) > 5 else ''}. Only image files directly inside a "
                      "class folder are loaded. Fix: move images up into their class folder.",
                      stacklevel=4)
    # A fixed shuffle, so classes are mixed (as in CIFAR-10's own files) and subset(n) is balanced.
    return [files[i] for i in np.random.default_rng(0).permutation(len(files))]


def _decode(files: list[tuple[Path, int]], image_size) -> tuple[np.ndarray, np.ndarray]:
    images = None
    for i, (path, _) in enumerate(tqdm(files, desc=f"decoding {files[0][0].parent.parent.name}",
                                       leave=False, mininterval=1.0)):
        array = read_image(path, image_size)
        if images is None:
            images = np.empty((len(files), *array.shape), dtype=np.uint8)
        elif array.shape != images.shape[1:]:
            raise DataError(
                f"{path} is {array.shape[1]}x{array.shape[0]} (width x height) but "
                f"{files[0][0]} is {images.shape[2]}x{images.shape[1]}: all images must have one "
                "size. Fix: load_image_folder(root, image_size=(height, width)) resizes them all.")
        images[i] = array
    return images, np.array([label for _, label in files], dtype=np.int64)


def load_image_folder(root: str | os.PathLike | None = None, *,
                      image_size: int | tuple[int, int] | None = None,
                      classes: list[str] | tuple[str, ...] | None = None) -> ImageData:
    """Load ``<root>/train/<class>/*`` and ``<root>/test/<class>/*`` (see the module doc).

    ``image_size`` (H, W) or one int resizes every image; None requires them all to be one size.
    ``classes`` gives the label order (e.g. "zero", "one", ... "nine"); None sorts the folder names.
    """
    root = data_root(root)
    image_size = check_image_size(image_size)
    classes, train_files, test_files = image_files(root, classes)
    key = signature(train_files + test_files, (image_size, classes))
    cache = root / CACHE_NAME
    arrays = read_cache(cache, key)
    source = f"image folder {root}"
    if arrays is not None:
        source += f" (cached in {CACHE_NAME})"
    else:
        train_images, train_labels = _decode(train_files, image_size)
        test_images, test_labels = _decode(test_files, image_size)
        if train_images.shape[1:] != test_images.shape[1:]:
            raise DataError(f"Training images are {train_images.shape[2]}x{train_images.shape[1]} "
                            f"but test images {test_images.shape[2]}x{test_images.shape[1]}. Fix: "
                            "load_image_folder(root, image_size=(height, width)).")
        mean, std = channel_stats(train_images)
        arrays = dict(train_images=train_images, train_labels=train_labels,
                      test_images=test_images, test_labels=test_labels, mean=np.array(mean),
                      std=np.array(std), classes=np.array(classes), signature=np.array(key),
                      shared=np.array(shared_images(train_images, test_images)))
        write_cache(cache, arrays)
    shared = int(arrays["shared"])  # counted once, when the cache is built
    if shared:
        warnings.warn(f"{shared} of the {len(arrays['test_labels'])} test images in {root} are also "
                      "training images (the same pixels): the test accuracy overstates how the "
                      "model does on new images. Fix: test on images it never trains on (is "
                      "test/ a copy or a link of train/?).", stacklevel=2)
    return ImageData(arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                     arrays["test_labels"], tuple(arrays["mean"].tolist()),
                     tuple(arrays["std"].tolist()), tuple(arrays["classes"].tolist()), source)


def check_image_size(image_size) -> tuple[int, int] | None:
    """``image_size`` as (H, W), or None; one ValueError for anything else (0, -8, (32,), 32.0)."""
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    if not (isinstance(size, (tuple, list)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)):
        raise ValueError(f"image_size={image_size!r}: give the size to resize every image to, as "
                         "one whole number (32 for 32x32) or (height, width), each at least 1; or "
                         "None to keep the files' own size.")
    return tuple(size)


def shared_images(train: np.ndarray, test: np.ndarray) -> int:
    """How many ``test`` images (N, H, W, C) have exactly the pixels of some training image."""
    def digest(image):
        return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()
    seen = {digest(im) for im in train}
    return sum(digest(im) in seen for im in test)
