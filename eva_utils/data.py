"""Image-classification data sets as uint8 arrays in memory: ``ImageData``.

* ``load_image_folder(root)``: any ``<root>/train/<class>/*`` + ``<root>/test/<class>/*`` tree (every
  format Pillow reads: PNG, JPEG, BMP, WebP, TIFF, GIF, ...; two classes or more, named by their
  folders, sorted unless ``classes=`` gives the order; any size with ``image_size=``). Hidden and
  system folders (``.ipynb_checkpoints``, ``__MACOSX``, any name starting with "." or "__") are
  skipped, with one warning; so are other files and sub-folders of a class folder, with one warning
  per split that counts and names them. Test images that are also training images (the same
  decoded pixels: a copied or linked folder) are counted in a warning. Folder names are
  compared in Unicode NFC form, so "café" typed on a Mac matches "café" from Linux. Decoded once
  and cached beside the data as ``<root>/eva-image-cache.npz`` (plain arrays, no pickle). The cache is rebuilt when a file is added,
  removed, renamed, resized or touched (size and modification time): a file rewritten with the same
  size *and* modification time is not noticed, so delete the cache after editing images in place.
  A cache that cannot be read is rebuilt, with a warning.
* ``load_cifar10(root)``: CIFAR-10 from, in this order (local copies first, so nothing waits on a
  network): an extracted torchvision copy (``<root>/cifar-10-batches-py``), an image folder with
  exactly CIFAR-10's ten classes, or a torchvision download into ``<root>``.

``root`` is the argument, else ``$EVA_DATA_DIR``, else the nearest ``data/`` folder in the current
directory or one of its parents (so notebooks find the repository's ``data/`` from ``notebooks/``),
else ``./data``. In smoke mode (``EVA_SMOKE=1``, set by ``notebooks/conftest.py``) and only there, a
missing CIFAR-10 is replaced by a small synthetic one with a loud warning.

**Channels: one rule.** eva_utils works in RGB. Every file decodes to the pixels an image viewer
shows: turned upright by its EXIF orientation (phone photos), 16-bit files scaled to 8 bits,
transparent pixels over white; grayscale, palette, CMYK and RGBA files become RGB when decoded; grayscale arrays, (N, H, W) or (N, H, W, 1), become RGB in the loaders (``to_rgb``: the
gray value in all three channels). So every model takes 3 channels, and a grayscale data set's
three channel statistics are equal.
"""
from __future__ import annotations

import hashlib
import os
import unicodedata
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .images import DataError, read_image

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
CACHE_NAME = "eva-image-cache.npz"
DECODER = "3"  # part of the cache's key: a cache decoded (or laid out) by other rules is rebuilt


def smoke_mode() -> bool:
    """True when ``$EVA_SMOKE`` asks for the fast CPU test mode (tiny subsets, a step or two)."""
    return os.environ.get("EVA_SMOKE", "").lower() in {"1", "true", "yes"}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$EVA_DATA_DIR``, else the nearest ``data/`` here or above, else ``./data``."""
    if root or os.environ.get("EVA_DATA_DIR"):
        return Path(root or os.environ["EVA_DATA_DIR"]).expanduser()
    here = Path.cwd()
    for up, folder in enumerate((here, *here.parents)):
        if (folder / "data").is_dir():  # relative, so logs and notebooks show no machine's paths
            return Path(*[".."] * up, "data")
    return Path("data")


@dataclass(frozen=True)
class ImageData:
    """A whole data set in memory. Images uint8 (N, H, W, 3) RGB; labels int64 (N,) in
    [0, len(classes)); ``classes[i]`` names label i."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    mean: tuple[float, float, float]  # per-channel mean of the training pixels, in [0, 1]
    std: tuple[float, float, float]   # per-channel standard deviation, in [0, 1]
    classes: tuple[str, ...]
    source: str                       # where the arrays came from, for the notebook's log

    @property
    def num_classes(self) -> int:
        """len(classes): the number of outputs a model for this data needs."""
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return tuple(self.train_images.shape[1:3])

    def subset(self, train: int | None = None, test: int | None = None) -> "ImageData":
        """The first ``train``/``test`` images of each split (None keeps a split whole). Every
        source stores the classes mixed, so a prefix has roughly equal class counts; mean and std
        stay those of the full training set, so a subset is normalised like the whole."""
        return replace(self, train_images=self.train_images[:train],
                       train_labels=self.train_labels[:train],
                       test_images=self.test_images[:test], test_labels=self.test_labels[:test])

    def held_out(self, valid_pct: float = 0.1, seed: int = 0) -> "ImageData":
        """The training split cut in two, to choose a recipe on without looking at the test set
        (fastai's ``valid_pct``): ``valid_pct`` of each class's training images, drawn at random
        with ``seed``, become the returned data's test split, the rest its training split, with
        mean and std computed again from that rest. The real test split is left out: keep it for
        the number you report, from a run on the whole training split."""
        if isinstance(valid_pct, bool) or not isinstance(valid_pct, (int, float)) \
                or not 0 < valid_pct < 1:
            raise ValueError(f"valid_pct={valid_pct!r}: give the fraction of the training images "
                             "to hold out, between 0 and 1 (e.g. 0.1).")
        rng = np.random.default_rng(seed)
        held = np.zeros(len(self.train_labels), dtype=bool)
        for c in range(self.num_classes):
            members = np.flatnonzero(self.train_labels == c)
            held[rng.choice(members, round(valid_pct * len(members)), replace=False)] = True
        if held.all() or not held.any():
            raise ValueError(f"valid_pct={valid_pct}: holds out {held.sum()} of "
                             f"{len(held)} training images; leave some on each side.")
        order = np.flatnonzero(~held)  # the training part keeps its stored order, classes mixed
        mean, std = channel_stats(self.train_images[order])
        return replace(self, train_images=self.train_images[order],
                       train_labels=self.train_labels[order],
                       test_images=self.train_images[held], test_labels=self.train_labels[held],
                       mean=mean, std=std,
                       source=f"{self.source}, {held.sum():,} training images held out "
                              f"(valid_pct={valid_pct}, seed={seed})")

    def __repr__(self) -> str:
        h, w = self.image_size
        return (f"ImageData(train={len(self.train_labels):,}, test={len(self.test_labels):,}, "
                f"{h}x{w}, {len(self.classes)} classes, "
                f"mean={tuple(round(m, 4) for m in self.mean)}, "
                f"std={tuple(round(s, 4) for s in self.std)}, source={self.source!r})")


def to_rgb(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W), (N, H, W, 1) or (N, H, W, 3) -> (N, H, W, 3); gray copied to R, G, B."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 pixels in [0, 255]; got {images.dtype}. Fix: "
                         "np.clip(x * 255, 0, 255).astype(np.uint8) for floats in [0, 1].")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W) or (N, H, W, 1) grayscale, or (N, H, W, 3) "
                         f"RGB; got shape {images.shape}. Fix: channels last, and drop an alpha "
                         "channel (images[..., :3]).")
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def check_labels(labels, count: int, of: str = "classes") -> None:
    """Raise one ValueError unless every label (numpy or torch, (N,)) is in [0, ``count``):
    ``of`` says what ``count`` counts, "classes" of the data or "outputs" of a model."""
    if len(labels) == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= count:
        fix = ("build the model with num_classes=len(data.classes), or correct the labels"
               if of == "outputs" else f"labels must be 0..{count - 1}")
        raise ValueError(f"Labels run from {low} to {high}, but there are {count} {of} (labels "
                         f"0..{count - 1}). Fix: {fix}.")


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of uint8 images (N, H, W, C), or (N, H, W) grayscale
    (one channel), in float64 chunks."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    c = images.shape[-1]
    total, total_sq = np.zeros(c), np.zeros(c)
    for start in range(0, len(images), 5000):  # chunks keep the float64 copy small
        chunk = images[start:start + 5000].reshape(-1, c).astype(np.float64) / 255.0
        total += chunk.sum(0)
        total_sq += (chunk ** 2).sum(0)
    n = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean ** 2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


# --------------------------------------------------------------------------------------------------
# Image folders

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


def _signature(files: list[tuple[Path, int]], image_size) -> str:
    """Changes when a file is added, removed, renamed, resized or touched, or the size asked."""
    h = hashlib.sha256(f"{DECODER}:{image_size}\n".encode())
    for path, label in files:
        st = path.stat()
        # surrogateescape: a file name that is not UTF-8 (written on another system) hashes as
        # its bytes; a valid one as before
        h.update(f"{path.parent.name}/{path.name}:{label}:{st.st_size}:{st.st_mtime_ns}\n"
                 .encode("utf-8", "surrogateescape"))
    return h.hexdigest()


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


def _read_cache(cache: Path, signature: str):
    """The cached arrays, or None when the cache is missing, stale or unreadable."""
    if not cache.exists():
        return None
    try:
        with np.load(cache, allow_pickle=False) as z:  # plain arrays only: no pickle
            if str(z["signature"]) != signature:
                return None
            return {k: z[k] for k in ("train_images", "train_labels", "test_images",
                                      "test_labels", "mean", "std", "classes", "shared")}
    except Exception as exc:  # truncated, empty, CRC error, foreign file: never trusted
        warnings.warn(f"The cache {cache} cannot be read ({type(exc).__name__}: {exc}); "
                      "rebuilding it from the images.", stacklevel=3)
        return None


def _write_cache(cache: Path, arrays: dict) -> None:
    tmp = cache.with_name(cache.name + ".tmp.npz")
    try:  # a temporary name, then rename: an interrupted write leaves no broken cache
        np.savez(tmp, **arrays)
        os.replace(tmp, cache)
    except OSError as exc:  # a read-only folder still works, just without the cache
        warnings.warn(f"Could not write the cache {cache} ({exc}); images will be decoded each "
                      "time.", stacklevel=3)


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
    signature = _signature(train_files + test_files, (image_size, classes))
    cache = root / CACHE_NAME
    arrays = _read_cache(cache, signature)
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
                      std=np.array(std), classes=np.array(classes), signature=np.array(signature),
                      shared=np.array(shared_images(train_images, test_images)))
        _write_cache(cache, arrays)
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


# --------------------------------------------------------------------------------------------------
# CIFAR-10

def load_cifar10(root: str | os.PathLike | None = None, *, download: bool = True,
                 smoke: bool | None = None) -> ImageData:
    """CIFAR-10 from the first source found under ``data_root(root)`` (see the module doc).

    ``smoke=None`` follows ``smoke_mode()``. Raises DataError when no source works outside smoke mode.
    """
    root = data_root(root)
    smoke = smoke_mode() if smoke is None else smoke
    if (root / "cifar-10-batches-py").is_dir():
        return _from_torchvision(root, download=False)
    if (root / "train").is_dir() or (root / "test").is_dir():
        for split in ("train", "test"):
            _check_cifar10_classes(root / split)
        return load_image_folder(root)
    problem = None
    if download:
        try:
            return _from_torchvision(root, download=True)
        except Exception as exc:  # no network, a proxy, a full disk: all end the same way
            problem = exc
    if smoke:
        warnings.warn(
            f"\n{'!' * 70}\nSMOKE MODE: no CIFAR-10 under {root.resolve()} and no download, so a small "
            f"SYNTHETIC data set stands in. Accuracies below mean nothing.\n{'!' * 70}",
            stacklevel=2)
        return synthetic_data()
    raise DataError(
        f"No CIFAR-10 found under {root.resolve()}"
        + (f" and the download failed ({type(problem).__name__}: {problem})" if problem else "")
        + ".\nFix: connect to the internet so torchvision can download it, or put a copy there: "
        "'cifar-10-batches-py/' (torchvision) or 'train/<class>/*.png|jpg' and 'test/<class>/...' "
        "(e.g. `tar xJf cifar10-jpeg.tar.xz -C data`). Point elsewhere with load_cifar10(root=...) "
        "or the EVA_DATA_DIR environment variable.") from problem


def _check_cifar10_classes(split: Path) -> None:
    found = list(class_folders(split))
    missing = sorted(set(CIFAR10_CLASSES) - set(found))
    extra = sorted(set(found) - set(CIFAR10_CLASSES))
    if missing or extra:
        raise DataError(
            f"{split} must hold exactly the ten CIFAR-10 class folders {', '.join(CIFAR10_CLASSES)}; "
            + (f"missing: {', '.join(missing)}. " if missing else "")
            + (f"unexpected: {', '.join(extra)}. " if extra else "")
            + "Fix: rename or remove folders so the names match, or use load_image_folder(root) "
            "for another data set.")


def _from_torchvision(root: Path, download: bool) -> ImageData:
    from torchvision.datasets import CIFAR10

    try:
        train = CIFAR10(str(root), train=True, download=download)
        test = CIFAR10(str(root), train=False, download=download)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        if download:
            raise
        raise DataError(f"{root / 'cifar-10-batches-py'} is incomplete or corrupted ({exc}). "
                        "Fix: delete that folder and download it again.") from exc
    images = np.asarray(train.data)
    mean, std = channel_stats(images)  # about 0.3 s: cheaper than a cache to keep in sync
    return ImageData(images, np.asarray(train.targets, dtype=np.int64), np.asarray(test.data),
                     np.asarray(test.targets, dtype=np.int64), mean, std, CIFAR10_CLASSES,
                     source=f"torchvision copy in {root}")


def synthetic_data(train: int = 512, test: int = 256, *, classes=CIFAR10_CLASSES,
                   image_size: int = 32, seed: int = 0) -> ImageData:
    """A small stand-in for smoke tests: each class a noisy tint, so it is learnable."""
    rng = np.random.default_rng(seed)
    tints = rng.integers(40, 216, size=(len(classes), 3))

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n, dtype=np.int64) % len(classes)
        noise = rng.normal(0, 40, size=(n, image_size, image_size, 3))
        return np.clip(tints[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8), labels

    (xtr, ytr), (xte, yte) = make(train), make(test)
    mean, std = channel_stats(xtr)
    return ImageData(xtr, ytr, xte, yte, mean, std, tuple(classes), source="SYNTHETIC (smoke mode)")
