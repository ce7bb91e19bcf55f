"""MNIST from the four standard IDX files (plain or .gz), downloaded into the standard location when missing."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import urllib.request
from pathlib import Path

import numpy as np

from raytrain.errors import UserError

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Mirrors tried in order when files are missing; RAYTRAIN_MNIST_MIRROR overrides (tests use a local one).
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the classic PyTorch MNIST example's normalisation


def default_dir() -> Path:
    """`$RAYTRAIN_DATA/mnist`, else `~/.cache/raytrain/mnist` (read when the process asks, not at import)."""
    return Path(os.environ.get("RAYTRAIN_DATA", Path.home() / ".cache" / "raytrain")).expanduser() / "mnist"


def load_mnist(root: Path):
    """Read the four standard IDX files (plain or .gz) from `root`, downloading any that are missing."""
    arrays = {}
    for key, name in MNIST_FILES.items():
        path = _find_or_download(root, name)
        arrays[key] = _read_idx(path, images=key.endswith("images"))
    for split in ("train", "test"):
        xi, yi = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(xi) != len(yi):
            raise UserError(f"{root}: {split} images ({len(xi)}) and labels ({len(yi)}) differ in count")
    x_tr, x_te = arrays["train_images"][:, None], arrays["test_images"][:, None]
    return (x_tr, arrays["train_labels"]), (x_te, arrays["test_labels"])


def _find_or_download(root: Path, name: str) -> Path:
    for cand in (root / name, root / f"{name}.gz"):
        if cand.is_file():
            return cand
    root.mkdir(parents=True, exist_ok=True)
    mirrors = [os.environ["RAYTRAIN_MNIST_MIRROR"]] if os.environ.get("RAYTRAIN_MNIST_MIRROR") else MNIST_MIRRORS
    errors = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + f"/{name}.gz"
        dest = root / f"{name}.gz"
        tmp = dest.with_suffix(".gz.part")
        try:
            print(f"downloading {url}", flush=True)
            with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
            tmp.rename(dest)
            return dest
        except OSError as e:
            tmp.unlink(missing_ok=True)
            errors.append(f"{url}: {e}")
    raise UserError(f"data.path {root}: {name} missing and download failed ({'; '.join(errors)})")


def _read_idx(path: Path, images: bool) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    want_magic, ndim = (2051, 3) if images else (2049, 1)
    if len(raw) < 4 + 4 * ndim or struct.unpack(">I", raw[:4])[0] != want_magic:
        raise UserError(f"{path}: not an IDX {'image' if images else 'label'} file (bad magic number)")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path}: header says {dims} but holds {body.size} bytes (truncated?)")
    if images and dims[1:] != (28, 28):
        raise UserError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    return body.reshape(dims).astype(np.int64 if not images else np.uint8)
