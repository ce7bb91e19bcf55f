"""Datasets -> two Parquet files (train, val) with a tensor column `x` and an int64 column `y`.

Every dataset goes through the same door: decoded here on the driver, written once with pyarrow
into a content-keyed cache, then read by `ray.data.read_parquet` (see `raytrain.trainer`). The
feature column is Ray's Arrow tensor extension type, so `iter_torch_batches` hands workers a
ready (N, *shape) tensor with no per-row Python.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raytrain.config import DataConfig
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
DEFAULT_MNIST_DIR = Path(os.environ.get("RAYTRAIN_DATA", Path.home() / ".cache" / "raytrain")) / "mnist"


@dataclass(frozen=True)
class DataInfo:
    """What the workers need to know about prepared data. `x*scale` then `(x-mean)/std` gives model input."""
    train_path: str
    val_path: str
    in_shape: tuple
    num_classes: int
    n_train: int
    n_val: int
    scale: float = 1.0
    mean: float = 0.0
    std: float = 1.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "DataInfo":
        d = json.loads(text)
        d["in_shape"] = tuple(d["in_shape"])
        return DataInfo(**d)


def prepare(cfg: DataConfig, seed: int, cache_root: Path) -> DataInfo:
    """Decode the configured dataset and write it as train/val Parquet under `cache_root` (once per content)."""
    key = _cache_key(cfg, seed)
    out = cache_root.resolve() / key  # absolute: Ray workers and Tune trials run elsewhere
    meta = out / "info.json"
    if meta.is_file():
        return _rebased(DataInfo.from_json(meta.read_text()), out)
    if cfg.dataset == "digits":
        x, y, norm = _digits(cfg.upscale)
        (xt, yt), (xv, yv) = _split(x, y, cfg.val_fraction, seed)
    elif cfg.dataset == "mnist":
        (xt, yt), (xv, yv) = load_mnist(Path(cfg.path) if cfg.path else DEFAULT_MNIST_DIR)
        norm = (1 / 255.0, MNIST_MEAN, MNIST_STD)
    else:
        x, y = read_user_parquet(cfg)
        norm = (1.0, 0.0, 1.0)
        (xt, yt), (xv, yv) = _split(x, y, cfg.val_fraction, seed)
    num_classes = int(max(yt.max(), yv.max())) + 1
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write(tmp / "train.parquet", xt, yt)
    _write(tmp / "val.parquet", xv, yv)
    info = DataInfo(str(out / "train.parquet"), str(out / "val.parquet"), tuple(int(s) for s in xt.shape[1:]),
                    num_classes, len(yt), len(yv), *norm)
    (tmp / "info.json").write_text(info.to_json())
    try:
        tmp.rename(out)  # atomic publish: a concurrent or killed preparer never leaves a half-written cache
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race; its copy is identical
    return _rebased(DataInfo.from_json(meta.read_text()), out)


def _rebased(info: DataInfo, out: Path) -> DataInfo:
    """The cache folder may have moved (or been written with relative paths): trust its location."""
    from dataclasses import replace

    return replace(info, train_path=str(out / "train.parquet"), val_path=str(out / "val.parquet"))


def _cache_key(cfg: DataConfig, seed: int) -> str:
    ident = cfg.model_dump(mode="json")
    if cfg.dataset == "mnist":
        ident["seed"] = None  # official split: seed does not matter
    else:
        ident["seed"] = seed
    if cfg.path:
        p = Path(cfg.path)
        stats = sorted((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
        ident["files"] = stats
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return f"{cfg.dataset}-{digest}"


def _write(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    from ray.data.extensions import ArrowTensorArray  # Ray's tensor column: one contiguous buffer, shape in the type

    table = pa.table({"x": ArrowTensorArray.from_numpy(np.ascontiguousarray(x)), "y": pa.array(y.astype(np.int64))})
    pq.write_table(table, path, row_group_size=8192)


def _split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int):
    n = len(y)
    n_val = max(1, int(round(n * val_fraction)))
    if n - n_val < 1:
        raise UserError(f"data.val_fraction {val_fraction} leaves no training examples out of {n}")
    perm = np.random.default_rng(seed).permutation(n)
    tr, va = perm[n_val:], perm[:n_val]
    return (x[tr], y[tr]), (x[va], y[va])


def _digits(upscale: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    if upscale > 1:
        x = x.repeat(upscale, axis=2).repeat(upscale, axis=3)
    mean, std = float(x.mean()), float(x.std())
    return x, d.target.astype(np.int64), (1.0, mean, std)


# --------------------------------------------------------------------------- MNIST (IDX)

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


# --------------------------------------------------------------------------- user Parquet

def read_user_parquet(cfg: DataConfig):
    """Validate and decode a user Parquet file/dir into (x float32 (N, *shape), y int64 (N,))."""
    path = Path(cfg.path)
    if not path.exists():
        raise UserError(f"data.path {path}: no such file or directory")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"data.path {path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    for key, col in (("data.features", cfg.features), ("data.label", cfg.label)):
        if col not in table.column_names:
            raise UserError(f"{key}: column {col!r} not in {path} (columns: {', '.join(table.column_names)})")
    if table.num_rows == 0:
        raise UserError(f"data.path {path}: dataset is empty (0 rows)")
    y = _labels(table.column(cfg.label), cfg.label)
    x = _features(table.column(cfg.features).combine_chunks(), cfg.features)
    if cfg.shape:
        if int(np.prod(cfg.shape)) != int(np.prod(x.shape[1:])):
            raise UserError(f"data.shape {cfg.shape} does not hold {int(np.prod(x.shape[1:]))} values per example")
        x = x.reshape(len(x), *cfg.shape)
    if len(y) < 2:
        raise UserError(f"data.path {path}: need at least 2 rows to hold out a validation set")
    return x, y


def _labels(col: pa.ChunkedArray, name: str) -> np.ndarray:
    if col.null_count:
        raise UserError(f"data.label: column {name!r} has {col.null_count} null values")
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise UserError(f"data.label: column {name!r} must hold integer class ids, not {col.type}")
    y = col.to_numpy()
    if pa.types.is_floating(col.type) and not np.all(np.mod(y, 1) == 0):
        raise UserError(f"data.label: column {name!r} holds non-integer values")
    if y.min() < 0:
        raise UserError(f"data.label: column {name!r} holds negative class ids")
    return y.astype(np.int64)


def _features(arr: pa.Array, name: str) -> np.ndarray:
    if arr.null_count:
        raise UserError(f"data.features: column {name!r} has {arr.null_count} null values")
    if isinstance(arr.type, pa.ExtensionType):  # Ray tensor column: shape lives in the type
        try:
            return np.asarray(arr.to_numpy(), dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise UserError(f"data.features: column {name!r} is not numeric ({e})") from None
    shape = []
    t = arr.type
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
        shape.append(None)
    if not shape:
        raise UserError(f"data.features: column {name!r} must hold arrays or lists of numbers, not {arr.type}")
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise UserError(f"data.features: column {name!r} is not numeric (element type {t})")
    flat = arr
    dims = [len(arr)]
    for _ in shape:  # peel one list level at a time, checking every row has the same length
        lengths = flat.value_lengths().to_numpy(zero_copy_only=False) if not pa.types.is_fixed_size_list(flat.type) \
            else np.full(len(flat), flat.type.list_size)
        if len(lengths) and (lengths != lengths[0]).any():
            raise UserError(f"data.features: column {name!r} is ragged (lengths {lengths.min()}..{lengths.max()})")
        dims.append(int(lengths[0]) if len(lengths) else 0)
        flat = flat.flatten()
    return flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(dims)
