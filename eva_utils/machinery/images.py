"""One image as a model sees it: a file decoded to the RGB picture a viewer shows (``read_image``,
the package's one channel rule), resized, then normalised to a model's input (``model_input``).

``data`` decodes whole folders with these functions, and the web app (``app``) decodes an upload
with the same ones, so a picture gets the same answer in a notebook and in the app. Depends only
on numpy, Pillow and torch: the exported app carries this module.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

# Larger files are refused before they are decoded: 50 megapixels (a 12000x12000 upload is 144)
# would take 150 MB as RGB, and an image classifier gains nothing from them.
MAX_PIXELS = 50_000_000


class DataError(RuntimeError):
    """The data set could not be found or read; the message says where and how to fix it."""


def read_image(path: str | Path, image_size: tuple[int, int] | None = None, *,
               max_pixels: int | None = None) -> np.ndarray:
    """One file as uint8 RGB (H, W, 3), resized to ``image_size`` (H, W) if given; one DataError
    naming the file if it cannot be read or holds more than ``max_pixels`` pixels (None:
    ``MAX_PIXELS``)."""
    from PIL import Image

    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with Image.open(path) as im:
            width, height = im.size  # read from the header: nothing decoded yet
            if width * height > max_pixels:
                raise DataError(f"Image {path} is {width}x{height} pixels ({width * height / 1e6:.0f} "
                                f"megapixels), more than the {max_pixels / 1e6:.0f} this decodes. "
                                "Fix: shrink it first (any image editor).")
            picture = np.asarray(viewer_rgb(im))
            return picture if image_size is None else resized(picture, image_size)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow refuses at open what we would at the size
        raise DataError(f"Image {path} claims more pixels than Pillow will open ({exc}), more than "
                        f"the {max_pixels / 1e6:.0f} megapixels this decodes. Fix: shrink it first "
                        "(any image editor), or do not use it.") from None
    except Exception as exc:
        raise DataError(f"Cannot read image {path} ({exc}). Fix: delete or replace that "
                        "file.") from exc


def resized(picture: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB (H, W, 3) resized to ``image_size`` (H, W), bilinear."""
    from PIL import Image

    size = (image_size[1], image_size[0])
    return np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.BILINEAR))


def viewer_rgb(im):
    """A Pillow image as the RGB picture a viewer shows (``data``'s channel rule): upright by its
    EXIF orientation, 16-bit scaled to 8 bits, transparent pixels over white, any mode to RGB."""
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)  # phone photos are stored sideways with an EXIF turn
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit (and 32-bit) grayscale: convert("RGB") would clip everything above 255 to white.
        a = np.asarray(im, dtype=np.float64)
        top = (65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255
               else 1.0 if im.mode == "F" and a.max(initial=0) <= 1 else 255.0)
        im = Image.fromarray(np.clip(a / top * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    return im.convert("RGB")


def model_input(pictures: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 RGB (H, W, 3) or (N, H, W, 3) -> float32 (N, 3, H, W), normalised with the data's
    ``mean`` and ``std`` (per channel, on the [0, 1] scale): the arithmetic of ``TensorLoader``."""
    x = torch.from_numpy(np.array(pictures, dtype=np.uint8))  # a copy: decoded arrays are read-only
    x = (x[None] if x.ndim == 3 else x).permute(0, 3, 1, 2)
    mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(std).view(1, 3, 1, 1) * 255
    return (x.float() - mean) / std


def check_normalised(images: torch.Tensor) -> None:
    """Raise if ``images`` (B, 3, H, W) are whole numbers above 1 (raw 0-255 pixels), warn if they
    could be raw fractions (all in [0, 1]). Normalised images, (x - mean) / std, are negative
    wherever a pixel is darker than the mean; a picture with no such pixel is bright (white is about
    2 with CIFAR-10's statistics) or light and flat, and a light grey one, about 0.3 everywhere,
    looks exactly like dark raw fractions: so that case is a warning, never a refusal."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"Expected images of shape (B, 3, H, W); got {tuple(images.shape)}.")
    if not len(images) or images.min() < 0:
        return
    low, top = images.min(), images.max()
    fix = ("Pass them as the loaders yield them: normalised with the data set's mean and std "
           "(data.mean, data.std), e.g. from eva.predict(...).images.")
    if top > 1 and torch.equal(images, images.round()):
        raise ValueError(f"These images look unnormalised: whole numbers in [{low:.3g}, {top:.3g}], "
                         f"raw 0-255 pixels. {fix}")
    if top <= 1:
        warnings.warn(f"These images may be unnormalised: every value is in [{low:.3g}, {top:.3g}], "
                      "as raw pixels in [0, 1] are. If they are normalised (a light, flat picture "
                      f"looks like this too), ignore this warning; if not: {fix}", stacklevel=3)
