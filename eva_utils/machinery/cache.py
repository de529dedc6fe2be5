"""The decode cache of an image folder: ``<root>/eva-image-cache.npz``, plain arrays (no pickle),
keyed by a signature of every file's name, size and modification time and of the size asked, and
written under a temporary name then renamed, so an interrupted write leaves no broken cache."""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

CACHE_NAME = "eva-image-cache.npz"
DECODER = "3"  # part of the cache's key: a cache decoded (or laid out) by other rules is rebuilt


def signature(files: list[tuple[Path, int]], image_size) -> str:
    """Changes when a file is added, removed, renamed, resized or touched, or the size asked."""
    h = hashlib.sha256(f"{DECODER}:{image_size}\n".encode())
    for path, label in files:
        st = path.stat()
        # surrogateescape: a file name that is not UTF-8 (written on another system) hashes as
        # its bytes; a valid one as before
        h.update(f"{path.parent.name}/{path.name}:{label}:{st.st_size}:{st.st_mtime_ns}\n"
                 .encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def read_cache(cache: Path, signature: str):
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


def write_cache(cache: Path, arrays: dict) -> None:
    tmp = cache.with_name(cache.name + ".tmp.npz")
    try:  # a temporary name, then rename: an interrupted write leaves no broken cache
        np.savez(tmp, **arrays)
        os.replace(tmp, cache)
    except OSError as exc:  # a read-only folder still works, just without the cache
        warnings.warn(f"Could not write the cache {cache} ({exc}); images will be decoded each "
                      "time.", stacklevel=3)
