"""Datasets -> what the workers read, and `DataInfo`, the facts about it they are handed.

Two ingest paths (`data.ingest`, decided here by `ingest_mode`):
  * materialize: decoded once on the driver into a content-keyed Parquet cache (train/val/test files with a
    Ray tensor column `x` and an int64 `y`), handed to a worker group's Ray Data as ready Arrow blocks
    (raytrain.data.ingest), read as arrays by a worker in the calling process;
  * stream: Ray Data reads and decodes the Parquet (local or a URI) while training; the driver reads only
    footers and a few rows (`parquet.inspect`), never the table.
Encoded images (Parquet image columns, ImageFolder trees: `images`, `folders`) are decoded to uint8 either
way; their class names, and string labels' (`labels`), travel in DataInfo.classes. Which rows are
validation and which are test, and why: `raytrain.data.splits`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raytrain.config import DataConfig
from raytrain.data import splits
from raytrain.data.mnist import MNIST_FILES, MNIST_MEAN, MNIST_STD, default_dir, load_mnist  # noqa: F401


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
    ingest: str = "materialize"
    train_bytes: int = 0  # the training set as stored (the device cache's budget check)
    classes: Optional[list] = None  # class names in id order (ImageFolder folders, string labels), else None
    test_path: Optional[str] = None  # the test split (read once, at the end of a run); None: the dataset has none
    n_test: int = 0
    val_source: str = ""  # where validation / test come from, in words (raytrain.data.splits)
    test_source: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "DataInfo":
        d = json.loads(text)
        d["in_shape"] = tuple(d["in_shape"])
        return DataInfo(**d)


def ingest_mode(cfg: DataConfig) -> str:
    """materialize or stream: as set, or (auto) by the dataset's uncompressed size against the budget."""
    if cfg.ingest != "auto":
        return cfg.ingest
    if cfg.dataset not in ("parquet", "images"):
        return "materialize"  # the built-in sets are small
    from raytrain.data import folders, parquet

    size = parquet.size_bytes(cfg) if cfg.dataset == "parquet" else folders.size_bytes(cfg, 0)
    return "stream" if size > cfg.materialize_max_mb * 1024**2 else "materialize"


def prepare(cfg: DataConfig, seed: int, cache_root: Path) -> DataInfo:
    """Decode the configured dataset and write it as train/val(/test) Parquet under `cache_root` (once per
    content and split)."""
    key = _cache_key(cfg, seed)
    out = Path(cache_root).resolve() / key  # absolute: Ray workers and Tune trials run elsewhere
    meta = out / "info.json"
    if meta.is_file():
        return _rebased(DataInfo.from_json(meta.read_text()), out)
    classes, test, folders_from = None, None, (None, None)  # test: (x, y) where the dataset has a test set
    if cfg.dataset == "digits":
        x, y, norm = _digits(cfg.upscale)
        (xt, yt), (xv, yv) = _split(x, y, cfg.val_fraction, seed)
    elif cfg.dataset == "images":
        from raytrain.data import folders, images

        (xt, yt), (xv, yv), test, tree = folders.read(cfg, seed)
        classes, folders_from = tree.classes, (tree.val_from, tree.test_from)
        norm = images.stats(xt, seed)
    elif cfg.dataset == "mnist":  # validation: held out of the 60,000 training images; test: the official 10,000
        (x, y), test = load_mnist(Path(cfg.path) if cfg.path else default_dir())
        (xt, yt), (xv, yv) = _split(x, y, cfg.val_fraction, seed)
        norm = (1 / 255.0, MNIST_MEAN, MNIST_STD)
    else:
        from raytrain.data import images, labels, parquet

        got = parquet.read_all(cfg)
        classes = got.classes
        expect = got.x.shape[1:] if got.encoded else None
        if cfg.val_path:
            val = parquet.read_all(cfg.model_copy(update={"path": cfg.val_path}), classes, expect, "data.val_path")
            (xt, yt), (xv, yv) = (got.x, got.y), (val.x, val.y)
        else:
            (xt, yt), (xv, yv) = _split(got.x, got.y, cfg.val_fraction, seed)
        if cfg.test_path:
            held = parquet.read_all(cfg.model_copy(update={"path": cfg.test_path}), classes, expect, "data.test_path")
            test = (held.x, held.y)
        norm = images.stats(xt, seed) if got.encoded else (1.0, 0.0, 1.0)
        labels.class_count(cfg, classes, cfg.path)
    top = max(int(yt.max()), int(yv.max()), int(test[1].max()) if test is not None and len(test[1]) else 0)
    num_classes = len(classes) if classes else cfg.num_classes or top + 1
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write(tmp / "train.parquet", xt, yt)
    _write(tmp / "val.parquet", xv, yv)
    if test is not None:
        _write(tmp / "test.parquet", *test)
    n_test = len(test[1]) if test is not None else 0
    info = DataInfo(str(out / "train.parquet"), str(out / "val.parquet"), tuple(int(s) for s in xt.shape[1:]),
                    num_classes, len(yt), len(yv), *norm, train_bytes=int(xt.nbytes + yt.nbytes), classes=classes,
                    test_path=str(out / "test.parquet") if test is not None else None, n_test=n_test,
                    val_source=splits.describe_val(cfg, seed, len(yv), folders_from[0]),
                    test_source=splits.describe_test(cfg, n_test, folders_from[1]))
    (tmp / "info.json").write_text(info.to_json())
    try:
        tmp.rename(out)  # atomic publish: a concurrent or killed preparer never leaves a half-written cache
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race; its copy is identical
    return _rebased(DataInfo.from_json(meta.read_text()), out)


def stream_source(cfg: DataConfig, seed: int, cache_root: Path):
    """(DataInfo, parquet.StreamSource) for streaming: user Parquet as it is, built-in sets from the cache."""
    from raytrain import storage
    from raytrain.data import parquet

    if cfg.dataset in ("parquet", "images"):
        from raytrain.data import folders

        src = parquet.inspect(cfg, seed) if cfg.dataset == "parquet" else folders.inspect(cfg, seed)
        info = DataInfo(cfg.path, cfg.val_path or cfg.path, src.in_shape, src.num_classes, src.n_train, src.n_val,
                        *src.norm, ingest="stream", train_bytes=src.nbytes, classes=src.classes,
                        test_path=(cfg.test_path or cfg.path) if src.test else None, n_test=src.n_test,
                        val_source=src.val_source, test_source=src.test_source)
        return info, src
    info = prepare(cfg, seed, cache_root)
    src = parquet.StreamSource(storage.pafs.LocalFileSystem(), [info.train_path], [info.val_path], None, None,
                               info.in_shape, info.num_classes, info.n_train, info.n_val, info.train_bytes,
                               test=[info.test_path] if info.test_path else [], n_test=info.n_test)
    return replace(info, ingest="stream"), src


def _rebased(info: DataInfo, out: Path) -> DataInfo:
    """The cache folder may have moved (or been written with relative paths): trust its location."""
    return replace(info, train_path=str(out / "train.parquet"), val_path=str(out / "val.parquet"),
                   test_path=str(out / "test.parquet") if info.test_path else None)


def _cache_key(cfg: DataConfig, seed: int) -> str:
    ident = cfg.model_dump(mode="json", exclude={"ingest", "materialize_max_mb", "stream_cpus", "device_cache", "augment"})
    ident["seed"] = seed  # mnist too: its validation split is held out of the training images
    ident["splits"] = "train/val/test"  # before: mnist's validation was its test set; never reuse such a cache
    ident["files"] = [_stats(p) for p in (cfg.path, cfg.val_path, cfg.test_path) if p]
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return f"{cfg.dataset}-{digest}"


def _stats(path: str) -> list:
    """Names, sizes and mtimes of a dataset's files (a changed file is a new cache entry)."""
    from raytrain import storage

    if storage.is_uri(path):
        loc = storage.resolve(path, "data.path")
        sel = storage.pafs.FileSelector(loc.path, recursive=True, allow_not_found=True)
        infos = loc.fs.get_file_info(sel) if loc.is_dir() else [loc.info()]
        return sorted((i.path, i.size, i.mtime_ns) for i in infos if i.type == storage.pafs.FileType.File)
    p = Path(path)
    return sorted((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in ([p] if p.is_file() else p.rglob("*"))
                  if f.is_file())


def _write(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    from raytrain._ray_compat import tensor_field  # Ray Data's tensor column, written without importing Ray

    field, column = tensor_field("x", x)
    table = pa.Table.from_arrays([column, pa.array(y.astype(np.int64))],
                                 schema=pa.schema([field, pa.field("y", pa.int64())]))
    pq.write_table(table, path, row_group_size=8192)
    # The same arrays as .npy beside it: a worker in the calling process loads them in one read (data.memory).
    np.save(path.with_suffix(".x.npy"), np.ascontiguousarray(x))
    np.save(path.with_suffix(".y.npy"), y.astype(np.int64))


def _split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int):
    tr, va = splits.hold_out(len(y), val_fraction, seed)
    return (x[tr], y[tr]), (x[va], y[va])


def _digits(upscale: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    if upscale > 1:
        x = x.repeat(upscale, axis=2).repeat(upscale, axis=3)
    mean, std = float(x.mean()), float(x.std())
    return x, d.target.astype(np.int64), (1.0, mean, std)
