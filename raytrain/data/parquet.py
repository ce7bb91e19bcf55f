"""User Parquet: one decoder for every path (materialised on the driver, or inside Ray Data's map tasks
while streaming), and metadata-only inspection for streaming (the driver never reads the table).

Every refusal is one line naming the column, the file or the key.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raytrain import storage
from raytrain.config import DataConfig
from raytrain.errors import UserError

SAMPLE_ROWS = 16


def decode(table: pa.Table, features: str, label: str, shape: Optional[list] = None) -> dict:
    """{"x": float32 (N, *shape), "y": int64 (N,)} from a table holding the feature and label columns."""
    y = _labels(table.column(label), label)
    x = _features(table.column(features).combine_chunks(), features)
    if shape:
        if int(np.prod(shape)) != int(np.prod(x.shape[1:])):
            raise UserError(f"data.shape {shape} does not hold {int(np.prod(x.shape[1:]))} values per example")
        x = x.reshape(len(x), *shape)
    return {"x": x, "y": y}


def check_columns(schema: pa.Schema, cfg: DataConfig, where: str) -> None:
    names = schema.names
    for key, col in (("data.features", cfg.features), ("data.label", cfg.label)):
        if col not in names:
            raise UserError(f"{key}: column {col!r} not in {where} (columns: {', '.join(names)})")


def read_all(cfg: DataConfig):
    """Materialise: validate and decode a whole user Parquet file/folder into (x, y) on the driver."""
    import ray.data  # noqa: F401  registers Ray's tensor column type, so such columns keep their shape

    loc = storage.resolve(cfg.path, "data.path")
    storage.check_reachable(loc, "data.path")
    if not loc.exists():
        raise UserError(f"data.path {cfg.path}: no such file or directory")
    try:
        table = pq.read_table(loc.path, filesystem=loc.fs)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"data.path {cfg.path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    check_columns(table.schema, cfg, cfg.path)
    if table.num_rows == 0:
        raise UserError(f"data.path {cfg.path}: dataset is empty (0 rows)")
    out = decode(table, cfg.features, cfg.label, cfg.shape)
    if len(out["y"]) < 2:
        raise UserError(f"data.path {cfg.path}: need at least 2 rows to hold out a validation set")
    return out["x"], out["y"]


@dataclass
class StreamSource:
    """What the driver knows about a streamed Parquet dataset, from metadata and a few rows."""
    fs: object
    train: list[str]
    val: list[str]
    columns: Optional[tuple]  # (features, label) to decode; None: already the cache's x/y columns
    shape: Optional[list]
    in_shape: tuple
    num_classes: int
    n_train: int
    n_val: int
    nbytes: int


def files(loc: storage.Location, key: str) -> list[str]:
    """The Parquet files of a file or folder (recursively, sorted)."""
    storage.check_reachable(loc, key)
    info = loc.info()
    if info.type == storage.pafs.FileType.NotFound:
        raise UserError(f"{key} {loc.uri}: no such file or directory")
    if info.type == storage.pafs.FileType.File:
        return [loc.path]
    sel = storage.pafs.FileSelector(loc.path, recursive=True)
    found = sorted(i.path for i in loc.fs.get_file_info(sel) if i.type == storage.pafs.FileType.File
                   and i.path.endswith(".parquet") and not i.base_name.startswith((".", "_")))
    if not found:
        raise UserError(f"{key} {loc.uri}: no .parquet files inside")
    return found


def footers(fs, paths: list[str]) -> list[pq.FileMetaData]:
    """Every file's footer (a few KB each, fetched in parallel); a corrupt file is named in one line."""
    def one(path):
        try:
            with fs.open_input_file(path) as f:
                return pq.ParquetFile(f).metadata
        except (pa.ArrowInvalid, OSError) as e:
            raise UserError(f"data.path: {path} is not a readable Parquet file ({str(e).splitlines()[0][:120]})") from None
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(one, paths))


def size_bytes(cfg: DataConfig) -> int:
    """Uncompressed size of a user Parquet dataset, from its footers."""
    loc = storage.resolve(cfg.path, "data.path")
    return sum(m.row_group(i).total_byte_size for m in footers(loc.fs, files(loc, "data.path"))
               for i in range(m.num_row_groups))


def inspect(cfg: DataConfig, seed: int) -> StreamSource:
    """Validate a Parquet dataset for streaming without reading it: schema, footers, SAMPLE_ROWS rows."""
    loc = storage.resolve(cfg.path, "data.path")
    paths = files(loc, "data.path")
    if cfg.val_path:
        val_loc = storage.resolve(cfg.val_path, "data.val_path")
        val_paths = files(val_loc, "data.val_path")
        train_paths = paths
    else:
        if len(paths) < 2:
            raise UserError(f"data.path {cfg.path}: streaming holds out whole files for validation and this has one "
                            "file; give data.val_path or split the data into several files")
        order = np.random.default_rng(seed).permutation(len(paths))
        n_val = max(1, int(round(len(paths) * cfg.val_fraction)))
        val_paths = sorted(paths[i] for i in order[:n_val])
        train_paths = sorted(paths[i] for i in order[n_val:])
    metas = footers(loc.fs, train_paths + val_paths)
    schema = metas[0].schema.to_arrow_schema()
    for path, meta in zip(train_paths + val_paths, metas):
        check_columns(meta.schema.to_arrow_schema(), cfg, path)
    label_type = schema.field(cfg.label).type
    if not (pa.types.is_integer(label_type) or pa.types.is_floating(label_type)):
        raise UserError(f"data.label: column {cfg.label!r} must hold integer class ids, not {label_type}")
    counts = [m.num_rows for m in metas]
    n_train, n_val = sum(counts[: len(train_paths)]), sum(counts[len(train_paths):])
    if n_train == 0:
        raise UserError(f"data.path {cfg.path}: dataset is empty (0 rows)")
    first = next(p for p, n in zip(train_paths, counts) if n)
    with loc.fs.open_input_file(first) as f:  # a few rows, not a row group (one was 275 MB of RSS here)
        sample = pa.Table.from_batches([next(pq.ParquetFile(f).iter_batches(batch_size=SAMPLE_ROWS,
                                                                            columns=[cfg.features, cfg.label]))])
    x = decode(sample, cfg.features, cfg.label, cfg.shape)["x"]
    return StreamSource(loc.fs, train_paths, val_paths, (cfg.features, cfg.label), cfg.shape, tuple(x.shape[1:]),
                        cfg.num_classes or _classes(metas, cfg.label), n_train, n_val,
                        sum(m.row_group(i).total_byte_size for m in metas[: len(train_paths)] for i in range(m.num_row_groups)))


def _classes(metas: list[pq.FileMetaData], label: str) -> int:
    """max(label) + 1 from the row groups' statistics (no data read)."""
    top = None
    for m in metas:
        col = m.schema.to_arrow_schema().get_field_index(label)
        for i in range(m.num_row_groups):
            if m.row_group(i).num_rows == 0:  # an empty file's row group has no statistics to read
                continue
            stats = m.row_group(i).column(col).statistics
            if stats is None or not stats.has_min_max:
                raise UserError(f"data.num_classes: the label column {label!r} has no Parquet statistics; set it")
            if stats.min < 0:
                raise UserError(f"data.label: column {label!r} holds negative class ids")
            top = stats.max if top is None else max(top, stats.max)
    return int(top) + 1


def _labels(col: pa.ChunkedArray, name: str) -> np.ndarray:
    if col.null_count:
        raise UserError(f"data.label: column {name!r} has {col.null_count} null values")
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise UserError(f"data.label: column {name!r} must hold integer class ids, not {col.type}")
    y = col.to_numpy()
    if pa.types.is_floating(col.type) and not np.all(np.mod(y, 1) == 0):
        raise UserError(f"data.label: column {name!r} holds non-integer values")
    if len(y) and y.min() < 0:
        raise UserError(f"data.label: column {name!r} holds negative class ids")
    return y.astype(np.int64)


def _features(arr: pa.Array, name: str) -> np.ndarray:
    if arr.null_count:
        raise UserError(f"data.features: column {name!r} has {arr.null_count} null values")
    if isinstance(arr.type, pa.ExtensionType):  # Ray tensor column: shape lives in the type
        if "VariableShaped" in type(arr.type).__name__:  # Ray's column for arrays of differing shapes
            raise UserError(f"data.features: column {name!r} is ragged (its arrays differ in shape)")
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
