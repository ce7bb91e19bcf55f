"""Driver side: the Ray Datasets a run's workers read, and the name each rank reads them by.

materialize: the cached Arrow tables go to Ray Data as ready blocks (`from_blocks`: metadata computed
here, so not even a metadata task): every split whole for every rank (each holds the training split and takes
its share of each global batch of each epoch's permutation, `raytrain.data.memory`; each keeps its part of
validation and test, cut for the group's world size when the group starts, `raytrain.data.batches`): no read
task, no split coordinator, and nothing of Ray Data needs a CPU while the workers (or nested trials' workers)
hold every one of them. A worker that trains in the calling process (a one-worker run, with or without Ray, and a
one-worker search trial in its Tune trial process: `raytrain.driver.in_memory`) reads the same cache files as
arrays instead.

stream: `read_parquet` + a decoding `map_batches`, with the CPUs reserved for them (`data.stream_cpus`)
checked against the cluster before anything starts; Ray Train splits the stream across ranks with
`streaming_split(equal=True)` (DDP ranks need equal step counts). Shuffling: the read tasks are handed
the files in a seeded order (`FileShuffleConfig`), the same every epoch (blocks arrive in about that
order: with several reads at once, not exactly), and each epoch each rank shuffles within a local buffer
seeded by (seed, epoch, rank): examples move between batches every epoch, but not across blocks further
apart than the buffer; it is not a global shuffle. (`randomize_block_order` is an all-to-all: it would
read a whole epoch before handing out its first block.) Streamed reads use Parquet datasource V1 whatever
RAY_DATA_USE_DATASOURCE_V2 says (see `_stream_context`).
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import pyarrow.parquet as pq

from raytrain.config import Experiment
from raytrain.data.prepare import DataInfo
from raytrain.data.memory import usable
from raytrain.data.parquet import StreamSource, decode


STREAM_BLOCK_BYTES = 8 << 20
log = logging.getLogger("raytrain")


@dataclass
class Ingest:
    datasets: dict  # name -> ray.data.Dataset
    shards: dict[str, list[str]]  # "train"/"val"(/"test": where there is a test set) -> the dataset each rank reads
    split: list[str] = field(default_factory=list)  # names Ray Train splits across ranks (stream)


def steps_per_epoch(exp: Experiment, info: DataInfo) -> int:
    """Optimizer steps per epoch on every rank, the same at every world size of an elastic range (global
    batches of train.batch_size over the examples every size splits equally: `memory.usable`); the driver
    passes this to the workers (never re-derived)."""
    par = exp.parallel
    if par.pipeline.stages > 1:  # whole batches only (micro-batches must be equal), shared by dp groups
        return max(1, (info.n_train // exp.per_worker_batch) // par.dp)
    return max(1, math.ceil(usable(info.n_train, par.world_sizes) / exp.train.batch_size))


def build(exp: Experiment, info: DataInfo, src: Optional[StreamSource] = None) -> Ingest:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = ctx.enable_operator_progress_bars = False  # per-epoch lines are the progress
    world, pipeline = exp.parallel.max_workers, exp.parallel.pipeline.stages > 1
    if info.ingest == "stream":
        if src.columns is not None:
            warn_if_sorted(src, exp)
        with _stream_context(ctx):
            datasets = {"train": _read(src.train, src, exp, shuffle=True), "val": _read(src.val, src, exp)}
            if src.test:
                datasets["test"] = _read(src.test, src, exp)
        return Ingest(datasets, {s: [s] * world for s in datasets}, [] if pipeline else list(datasets))
    paths = {"train": info.train_path, "val": info.val_path, **({"test": info.test_path} if info.test_path else {})}
    tables = {name: pq.read_table(path) for name, path in paths.items()}
    # Every rank reads every split whole: data parallel, it takes its share of every global batch of each epoch's
    # fresh permutation (raytrain.data.memory) and cuts its part of validation and test for the group's world size
    # when the group starts (`batches.Batches`: an elastic group's differs from start to start); pipelined, each
    # group's first stage picks its batches.
    return Ingest({name: ray.data.from_blocks(_blocks(t)) for name, t in tables.items()},
                  {name: [name] * world for name in tables})


def warn_if_sorted(src: StreamSource, exp: Experiment) -> None:
    """A stream shuffles within a buffer only: data stored sorted by label (read from the row groups' label
    statistics, no data) would train class by class. Said loudly, with what to do."""
    from raytrain.data.parquet import footers

    label, one_class, groups, ordered = src.columns[1], 0, 0, False
    for meta in footers(src.fs, src.train):
        col = next(i for i in range(meta.num_columns) if meta.schema.column(i).path == label)  # the label's leaf
        ranges = []
        for i in range(meta.num_row_groups):
            stats = meta.row_group(i).column(col).statistics
            if meta.row_group(i).num_rows and stats is not None and stats.has_min_max:
                ranges.append((stats.min, stats.max))
        groups += len(ranges)
        one_class += sum(lo == hi for lo, hi in ranges)
        ordered |= len(ranges) > 1 and ranges[0] != ranges[-1] and all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))
    if ordered or (groups and one_class * 2 >= groups):
        log.warning(f"data.path {exp.data.path}: stored sorted by {label!r} (row-group statistics); streaming shuffles "
                    f"only within a buffer, so batches would hold one class at a time. Shuffle the files once, or use "
                    f"data.ingest: materialize (a full shuffle every epoch)")


@contextmanager
def _stream_context(ctx):
    """Settings each streamed Dataset snapshots when created (the caller's own context is put back):
    Parquet datasource V1, a single read operator (V2's ListFiles -> ReadFiles waits longer for each epoch's
    first block: docs/data.md), and blocks of STREAM_BLOCK_BYTES, so an epoch's first batch waits for one
    small block rather than a whole file (a Parquet file is one block by default)."""
    saved = ctx.use_datasource_v2, ctx.target_max_block_size
    ctx.use_datasource_v2, ctx.target_max_block_size = False, STREAM_BLOCK_BYTES
    try:
        yield
    finally:
        ctx.use_datasource_v2, ctx.target_max_block_size = saved


def task_cpus(stream_cpus: float) -> tuple[float, int]:
    """(CPUs per read/decode task, tasks at once) within the reserved `stream_cpus`."""
    per = min(1.0, stream_cpus)
    return per, max(1, int(stream_cpus // per))


def _read(paths: list[str], src: StreamSource, exp: Experiment, shuffle: bool = False):
    import ray.data

    cpus, concurrency = task_cpus(exp.data.stream_cpus)
    columns = list(src.columns) if src.columns else None
    order = ray.data.FileShuffleConfig(seed=exp.seed, reseed_after_execution=False) if shuffle else None
    if src.kind == "folder":  # an ImageFolder tree: image files read and decoded by Ray Data tasks
        from raytrain.data import folders

        return folders.read_stream(paths, src, cpus, concurrency, order)
    ds = ray.data.read_parquet(paths, filesystem=src.fs, columns=columns, num_cpus=cpus, concurrency=concurrency,
                               file_extensions=None, shuffle=order, include_paths=src.paths)
    if src.columns is None:  # the cache's x/y columns are already decoded
        return ds
    features, label = src.columns
    return ds.map_batches(decode, batch_format="pyarrow", num_cpus=cpus, concurrency=concurrency,
                          fn_kwargs={"features": features, "label": label, "shape": src.shape, **src.decode_kw})


def from_user(datasets: dict, exp: Experiment, seed: int):
    """(DataInfo, Ingest, decoded datasets) from the user's own `ray.data.Dataset`s (Python API: "train",
    "val", and "test" if there is a test set): checked like Parquet (columns, a sample decoded for shape and
    type), decoded by the same function, then materialised and cut per rank, or streamed, like every other
    dataset."""
    import pyarrow as pa
    import ray

    from raytrain.errors import UserError

    cfg = exp.data
    missing = [k for k in ("train", "val") if k not in datasets]
    if missing:
        raise UserError(f"datasets: needs 'train' and 'val' ray.data.Dataset entries (missing: {', '.join(missing)})")
    unknown = sorted(set(datasets) - {"train", "val", "test"})
    if unknown:
        raise UserError(f"datasets: unknown entry {unknown[0]!r}; give 'train', 'val' and optionally 'test'")
    names = [k for k in ("train", "val", "test") if k in datasets]
    shapes = {}
    for name in names:
        cols = datasets[name].schema().names
        for key, col in (("data.features", cfg.features), ("data.label", cfg.label)):
            if col not in cols:
                raise UserError(f"{key}: column {col!r} not in datasets[{name!r}] (columns: {', '.join(cols)})")
        table = pa.concat_tables(ray.get(datasets[name].limit(256).to_arrow_refs()))
        shapes[name] = decode(table, cfg.features, cfg.label, cfg.shape)["x"].shape[1:]
    for name in names[1:]:
        if shapes[name] != shapes["train"]:
            raise UserError(f"datasets: train examples have shape {shapes['train']} but {name} {shapes[name]}")
    kw = {"features": cfg.features, "label": cfg.label, "shape": cfg.shape}
    decoded = {k: datasets[k].select_columns([cfg.features, cfg.label]).map_batches(decode, batch_format="pyarrow",
                                                                                 fn_kwargs=kw) for k in names}
    stream = cfg.ingest == "stream"
    if not stream:
        decoded = {k: v.materialize() for k, v in decoded.items()}
    counts = {k: decoded[k].count() for k in names}
    num_classes = cfg.num_classes or max(_max_label(decoded[k], stream) for k in names) + 1
    given = "<ray.data.Dataset>"
    info = DataInfo(given, given, tuple(int(s) for s in shapes["train"]), num_classes, counts["train"], counts["val"],
                    ingest="stream" if stream else "materialize", train_bytes=0,
                    test_path=given if "test" in counts else None, n_test=counts.get("test", 0),
                    val_source=f"datasets['val'] ({counts['val']:,})",
                    test_source=f"datasets['test'] ({counts['test']:,})" if "test" in counts
                    else "none: no datasets['test']")
    world = exp.parallel.max_workers
    split = list(decoded) if stream and exp.parallel.pipeline.stages == 1 else []
    return info, Ingest(decoded, {s: [s] * world for s in decoded}, split), decoded


def _max_label(ds, lazy: bool) -> int:
    """The largest label. Materialised blocks are read where they lie by a few small tasks (Dataset.max is an
    all-to-all over every block); a lazy dataset has to be read once anyway."""
    if lazy:
        return int(ds.max("y"))
    import pyarrow.compute as pc
    import ray

    @ray.remote(num_cpus=0)
    def blocks_max(*blocks) -> int:
        return max((pc.max(b.column("y")).as_py() for b in blocks if b.num_rows), default=-1)

    refs = ds.to_arrow_refs()
    if not refs:
        return -1
    per = -(-len(refs) // 8)  # a few tasks, each given a run of blocks (one task per block costs a worker each)
    return int(max(ray.get([blocks_max.remote(*refs[i:i + per]) for i in range(0, len(refs), per)])))


def _blocks(table, rows_per_block: int = 8192, min_blocks: int = 8) -> list:
    """Several blocks, not one: the iterator formats one block while the model trains on the last
    (and a pipeline group's first stage reads whole blocks)."""
    n = max(min_blocks, -(-table.num_rows // rows_per_block))
    step = max(1, -(-table.num_rows // n))
    return [table.slice(i, step) for i in range(0, max(table.num_rows, 1), step)]
