"""Encoded images (PNG, JPEG, anything PIL opens) -> uint8 arrays (N, C, H, W): one decoder for Parquet
columns (binary, or the Hugging Face `{bytes, path}` struct) and ImageFolder files, on the driver
(materialised, a thread pool for larger images: PIL releases the GIL while it decodes and resizes) and inside Ray Data's
map tasks (streamed), so both paths give the same pixels.

Channels: `data.channels` (1 or 3), else the first image decides: grayscale modes give 1, everything else
(RGB, RGBA, palette, CMYK, ...) 3, and every image is converted to that (`L` or `RGB`; alpha is dropped,
16-bit grayscale keeps its top 8 bits). Size: `data.image_size` resizes every image after that conversion
(PIL, bilinear); without it every image must have the first one's size. A streamed run is handed the
channels and size its driver found, so every Ray Data task decodes to the same shape.

Pixels stay uint8 (a quarter of float32 in the cache and the device cache); the model sees `x/255`
normalised by one scalar mean and std over pixels and channels, measured on training images (`stats`).
"""

from __future__ import annotations

import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

import numpy as np
import pyarrow as pa

# What an ImageFolder tree's images may be (torchvision's list, plus gif); other files are ignored.
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
STATS_SAMPLE = 1024
CHUNK = 256
# Threads only for images this large or larger: a small image's decode is mostly Python holding the GIL,
# and threads contending for it were slower than one.
THREADED_PIXELS = 64 * 64


class BadImage(Exception):
    """Image `index` could not be used; the caller names it (a file, or a row and column)."""

    def __init__(self, index: int, reason: str):
        super().__init__(reason)
        self.index, self.reason = index, reason


def is_encoded(t: pa.DataType) -> bool:
    """A column of encoded images: binary, or a struct whose `bytes` field is binary (Hugging Face's Image)."""
    if pa.types.is_struct(t):
        i = t.get_field_index("bytes")
        return i >= 0 and is_encoded(t.field(i).type) and not pa.types.is_struct(t.field(i).type)
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def hw(image_size) -> Optional[tuple[int, int]]:
    """`data.image_size` as (height, width)."""
    if image_size is None:
        return None
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def column_blobs(arr: pa.Array) -> tuple[list, list]:
    """(the encoded bytes of each row, or None; the path stored beside them, or None) of an image column."""
    if pa.types.is_struct(arr.type):
        rows = arr.to_pylist()
        return [r and r.get("bytes") for r in rows], [r and r.get("path") for r in rows]
    return arr.to_pylist(), [None] * len(arr)


def decode_many(n: int, get: Callable[[int], bytes], size=None, channels: Optional[int] = None,
                expect: Optional[tuple] = None, threads: int = 1) -> np.ndarray:
    """uint8 (n, C, H, W) from `get(i)` -> encoded bytes of image i. `size`: (h, w) to resize to; `channels`:
    1 or 3 (None: the first image decides); `expect`: the (h, w) every image must have when not resizing
    (None: the first image's). Raises BadImage naming the index of the first unusable image."""
    if n == 0:
        return np.zeros((0, channels or 1, *(size or expect or (1, 1))), np.uint8)
    first = _open(get(0), 0)
    mode = "L" if (channels or (1 if first.mode in GRAY_MODES else 3)) == 1 else "RGB"
    a0 = _array(first, mode, size, 0)
    want = a0.shape[1:]
    if size is None and expect is not None and tuple(want) != tuple(expect):
        raise _size_error(0, want, expect)
    out = np.empty((n, *a0.shape), np.uint8)
    out[0] = a0

    def fill(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            a = _array(_open(get(i), i), mode, size, i)
            if a.shape[1:] != want:
                raise _size_error(i, a.shape[1:], want)
            out[i] = a

    spans = [(lo, min(lo + CHUNK, n)) for lo in range(1, n, CHUNK)]
    if threads <= 1 or len(spans) <= 1 or want[0] * want[1] < THREADED_PIXELS:
        for lo, hi in spans:
            fill(lo, hi)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for f in [pool.submit(fill, lo, hi) for lo, hi in spans]:
                f.result()  # the first span's error first: the lowest index is named
    return out


def driver_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def stats(x: np.ndarray, seed: int) -> tuple[float, float, float]:
    """(scale, mean, std) for `x*scale` then `(x-mean)/std`: one scalar mean and std of the pixels (over
    channels too) of up to STATS_SAMPLE training images chosen with `seed`."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(x), min(len(x), STATS_SAMPLE), replace=False)) if len(x) else []
    sample = x[idx].astype(np.float64) / 255.0
    mean, std = (float(sample.mean()), float(sample.std())) if sample.size else (0.0, 1.0)
    return 1 / 255.0, mean, std if std > 1e-6 else 1.0


def _open(data, i: int):
    from PIL import Image

    if data is None:
        raise BadImage(i, "holds no image bytes (store the PNG/JPEG bytes themselves, not only a path)")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        why = re.sub(r" <_io\.BytesIO object at \w+>", "", str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise BadImage(i, f"not a readable image ({why[:120]}); replace or remove it") from None
    return img


def _array(img, mode: str, size, i: int) -> np.ndarray:
    """(C, H, W) uint8 in `mode` (L or RGB), resized to `size` (h, w) if given."""
    from PIL import Image

    if img.mode.startswith("I;16") or (img.mode == "I" and np.asarray(img).max() > 255):
        img = Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8))  # 16-bit: the top 8 bits
    try:
        if img.mode != mode:
            img = img.convert(mode)
        if size is not None and img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.BILINEAR)
    except (OSError, ValueError) as e:
        raise BadImage(i, f"cannot be converted to {mode} ({e}); replace or remove it") from None
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _size_error(i: int, got, want) -> BadImage:
    return BadImage(i, f"is {got[1]}x{got[0]} (width x height) but the first image is {want[1]}x{want[0]}; set "
                       "data.image_size to resize every image to one size")
