"""User Parquet: one decoder for every path (materialised on the driver, or inside Ray Data's map tasks
while streaming), and metadata-only inspection for streaming (the driver never reads the table).

Feature columns hold numbers (arrays or lists; uint8 stays uint8, anything else becomes float32) or encoded
images (`raytrain.data.images`); labels, integer ids or class names (`raytrain.data.labels`).

Every refusal is one line naming the column, the file or the key, and what to do.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raytrain import storage
from raytrain.config import DataConfig
from raytrain.data import images, labels, splits
from raytrain.errors import UserError

SAMPLE_ROWS = 16
IMAGE_SAMPLE_ROWS = 64  # streamed images: also the sample their mean and std are measured on


def decode(table: pa.Table, features: str, label: str, shape: Optional[list] = None, image_size=None,
           channels: Optional[int] = None, expect: Optional[tuple] = None, classes: Optional[list] = None,
           rows: Optional[Callable[[int], str]] = None, threads: int = 1) -> dict:
    """{"x": (N, *shape) float32 or uint8, "y": int64 (N,)} from a table holding the feature and label columns.
    Images: `image_size`, `channels`, `expect` as in `images.decode_many`. String labels need `classes` (the
    training set's sorted names). `rows(i)` names row i in an error (default: its file, when the table has a
    `path` column as Ray Data's `include_paths` adds, else its index)."""
    y = labels.labels(table.column(label), label, classes)
    col = table.column(features).combine_chunks()
    if images.is_encoded(col.type):
        if shape:
            raise UserError(f"data.shape: column {features!r} holds encoded images, whose shape comes from the "
                            "images; remove data.shape (data.image_size and data.channels set size and channels)")
        blobs, stored = images.column_blobs(col)
        try:
            x = images.decode_many(len(blobs), blobs.__getitem__, images.hw(image_size), channels, expect, threads)
        except images.BadImage as e:
            where = rows(e.index) if rows else (f"a row of {table.column('path')[e.index]}" if "path" in
                                                 table.column_names else f"row {e.index}")
            name = f" (stored path {stored[e.index]!r})" if stored[e.index] else ""
            raise UserError(f"data.features: column {features!r}, {where}{name}: {e.reason}") from None
        return {"x": x, "y": y}
    x = _features(col, features)
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


@dataclass
class Loaded:
    x: np.ndarray
    y: np.ndarray
    classes: Optional[list]  # the label column's names (string labels), else None
    encoded: bool  # the features were encoded images (uint8 pixels: see images.stats)


def read_all(cfg: DataConfig, classes: Optional[list] = None, expect: Optional[tuple] = None,
             key: str = "data.path") -> Loaded:
    """Materialise: validate and decode a whole user Parquet file/folder (`cfg.path`, named `key` in errors)
    on the driver. A validation or test set is read with the training set's `classes` and, for images, its
    (channels, h, w) as `expect`."""
    import ray.data  # noqa: F401  registers Ray's tensor column type, so such columns keep their shape

    loc = storage.resolve(cfg.path, key)
    storage.check_reachable(loc, key)
    if not loc.exists():
        raise UserError(f"{key} {cfg.path}: no such file or directory")
    try:
        table = pq.read_table(loc.path, filesystem=loc.fs)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{key} {cfg.path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    check_columns(table.schema, cfg, cfg.path)
    if table.num_rows == 0:
        raise UserError(f"{key} {cfg.path}: dataset is empty (0 rows)")
    encoded = images.is_encoded(table.schema.field(cfg.features).type)
    if classes is None:
        classes = labels.label_classes(table.column(cfg.label), cfg.label)
    out = decode(table, cfg.features, cfg.label, cfg.shape, cfg.image_size, expect[0] if expect else cfg.channels,
                 expect[1:] if expect else None, classes, lambda i: _row_of(loc, i), images.driver_threads())
    if key == "data.path" and len(out["y"]) < 2:
        raise UserError(f"data.path {cfg.path}: need at least 2 rows to hold out a validation set")
    return Loaded(out["x"], out["y"], classes, encoded)


def _row_of(loc: storage.Location, i: int) -> str:
    """Row `i` of a file or folder as its file and the row there (pyarrow reads a folder's files sorted)."""
    if not loc.is_dir():
        return f"row {i}"
    paths = files(loc, "data.path")
    ends = np.cumsum([m.num_rows for m in footers(loc.fs, paths)])
    k = int(np.searchsorted(ends, i, side="right"))
    return f"row {i - (int(ends[k - 1]) if k else 0)} of {paths[k]}"


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
    norm: tuple = (1.0, 0.0, 1.0)  # DataInfo's (scale, mean, std)
    classes: Optional[list] = None  # class names (string labels, ImageFolder), in id order
    decode_kw: dict = field(default_factory=dict)  # what every Ray Data task decodes with (images, class names)
    paths: bool = False  # read_parquet(include_paths=...): a corrupt image is named by its file
    kind: str = "parquet"  # parquet | folder (an ImageFolder tree: raytrain.data.folders)
    test: list[str] = field(default_factory=list)  # the test split's files (empty: none)
    n_test: int = 0
    val_source: str = ""  # where validation / test come from, in words (raytrain.data.splits)
    test_source: str = ""


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
    """Uncompressed size of a user Parquet dataset, from its footers; encoded images count decoded (rows x
    the first image's decoded size: what the driver would hold)."""
    loc = storage.resolve(cfg.path, "data.path")
    paths = files(loc, "data.path")
    metas = footers(loc.fs, paths)
    schema = metas[0].schema.to_arrow_schema()
    rows = sum(m.num_rows for m in metas)
    if cfg.features in schema.names and images.is_encoded(schema.field(cfg.features).type) and rows:
        first = next(p for p, m in zip(paths, metas) if m.num_rows)
        with loc.fs.open_input_file(first) as f:
            one = next(pq.ParquetFile(f).iter_batches(batch_size=1, columns=[cfg.features])).column(0)
        blobs, _ = images.column_blobs(one)
        try:
            return rows * images.decode_many(1, blobs.__getitem__, images.hw(cfg.image_size), cfg.channels).nbytes
        except images.BadImage:
            pass  # named when the data is read
    return sum(m.row_group(i).total_byte_size for m in metas for i in range(m.num_row_groups))


def inspect(cfg: DataConfig, seed: int) -> StreamSource:
    """Validate a Parquet dataset for streaming without reading it: schema, footers, SAMPLE_ROWS rows."""
    loc = storage.resolve(cfg.path, "data.path")
    paths = files(loc, "data.path")
    test_paths = files(storage.resolve(cfg.test_path, "data.test_path"), "data.test_path") if cfg.test_path else []
    held = None  # (files held out, of): validation held out of data.path's files
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
        held = (n_val, len(paths))
    metas = footers(loc.fs, train_paths + val_paths + test_paths)
    schema = metas[0].schema.to_arrow_schema()
    for path, meta in zip(train_paths + val_paths + test_paths, metas):
        check_columns(meta.schema.to_arrow_schema(), cfg, path)
    label_type = schema.field(cfg.label).type
    value_type = label_type.value_type if pa.types.is_dictionary(label_type) else label_type
    classes = None
    if pa.types.is_string(value_type) or pa.types.is_large_string(value_type):
        classes = labels.stream_classes(loc.fs, train_paths, val_paths + test_paths, cfg.label)
    elif not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type)):
        raise UserError(f"data.label: column {cfg.label!r} must hold integer class ids or class names (strings), "
                        f"not {label_type}")
    counts = [m.num_rows for m in metas]
    n_train, n_val = sum(counts[: len(train_paths)]), sum(counts[len(train_paths):len(train_paths) + len(val_paths)])
    n_test = sum(counts[len(train_paths) + len(val_paths):])
    if n_train == 0:
        raise UserError(f"data.path {cfg.path}: dataset is empty (0 rows)")
    encoded = images.is_encoded(schema.field(cfg.features).type)
    first = next(p for p, n in zip(train_paths, counts) if n)
    with loc.fs.open_input_file(first) as f:  # a few rows, not a row group (a whole one weighs on the driver's RSS)
        sample = pa.Table.from_batches([next(pq.ParquetFile(f).iter_batches(
            batch_size=IMAGE_SAMPLE_ROWS if encoded else SAMPLE_ROWS, columns=[cfg.features, cfg.label]))])
    x = decode(sample, cfg.features, cfg.label, cfg.shape, cfg.image_size, cfg.channels, classes=classes,
               rows=lambda i: f"row {i} of {first}")["x"]
    nbytes = sum(m.row_group(i).total_byte_size for m in metas[: len(train_paths)] for i in range(m.num_row_groups))
    src = StreamSource(loc.fs, train_paths, val_paths, (cfg.features, cfg.label), cfg.shape, tuple(x.shape[1:]),
                       labels.class_count(cfg, classes, cfg.path) or cfg.num_classes or _classes(metas, cfg.label), n_train,
                       n_val, nbytes, classes=classes, decode_kw={"classes": classes} if classes else {},
                       test=test_paths, n_test=n_test, val_source=splits.describe_val(cfg, seed, n_val, files=held),
                       test_source=splits.describe_test(cfg, n_test))
    if encoded:  # every task decodes to the sample's channels and size; pixels stay uint8
        src.decode_kw.update(image_size=cfg.image_size, channels=int(x.shape[1]), expect=tuple(x.shape[2:]))
        src.norm, src.paths, src.nbytes = images.stats(x, seed), True, n_train * x[0].nbytes
    return src


def _classes(metas: list[pq.FileMetaData], label: str) -> int:
    """max(label) + 1 from the row groups' statistics (no data read)."""
    top = None
    for m in metas:
        col = next(i for i in range(m.num_columns) if m.schema.column(i).path == label)  # a leaf (structs have several)
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


def _features(arr: pa.Array, name: str) -> np.ndarray:
    if arr.null_count:
        raise UserError(f"data.features: column {name!r} has {arr.null_count} null values")
    if isinstance(arr.type, pa.ExtensionType):  # Ray tensor column: shape lives in the type
        if "VariableShaped" in type(arr.type).__name__:  # Ray's column for arrays of differing shapes
            raise UserError(f"data.features: column {name!r} is ragged (its arrays differ in shape)")
        try:
            x = np.asarray(arr.to_numpy())
            return x if x.dtype == np.uint8 else x.astype(np.float32)
        except (TypeError, ValueError) as e:
            raise UserError(f"data.features: column {name!r} is not numeric ({e})") from None
    shape = []
    t = arr.type
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
        shape.append(None)
    if not shape:
        raise UserError(f"data.features: column {name!r} must hold arrays or lists of numbers, or encoded images, "
                        f"not {arr.type}: store PNG/JPEG bytes (a binary column or a {{bytes, path}} struct) or "
                        "arrays of numbers")
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
    x = flat.to_numpy(zero_copy_only=False)
    return (x if x.dtype == np.uint8 else x.astype(np.float32)).reshape(dims)  # uint8 pixels stay uint8
