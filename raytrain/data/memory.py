"""Materialised data held whole in a worker's memory (or on its device), and the epoch order cut from it.

Why whole: a buffer shuffle only moves examples a few batches apart, so data stored sorted (by label, by
class folder) trains on one class at a time and converges somewhere else, silently. Every epoch here is a
fresh seeded permutation of the *whole* training split, like torch's DistributedSampler: global step g trains
on the permutation's g-th global batch, rank r of w taking the r-th equal part of it, so the partition across
ranks also changes every epoch. The order depends only on (seed, epoch) and a step's examples not on the world
size, so a resumed run (even by a resized elastic group) sees the same order as an uninterrupted one.

Nothing here knows Ray: arrays come from the cache's Parquet files (read with pyarrow, the path that starts
no Ray) or from a Ray Data shard the host hands over (`load`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch


@dataclass
class Arrays:
    """One split as arrays: features as stored (uint8 stays uint8) and int64 labels."""
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def read_cache(path: str, in_shape: tuple) -> Arrays:
    """A cache split: its .npy copies where the cache has them (one read each), else the Parquet file."""
    base = Path(path)
    xs, ys = base.with_suffix(".x.npy"), base.with_suffix(".y.npy")
    if xs.is_file() and ys.is_file():
        return Arrays(np.load(xs), np.load(ys))
    arrays = read_parquet(path, in_shape)
    for dest, arr in ((xs, arrays.x), (ys, arrays.y)):  # a cache written before the copies: add them once
        tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}.npy")
        try:
            np.save(tmp, arr)
            os.replace(tmp, dest)
        except OSError:  # a read-only cache is still a cache
            tmp.unlink(missing_ok=True)
    return arrays


def read_parquet(path: str, in_shape: tuple) -> Arrays:
    """A cache file (x: Ray's tensor column, y: int64) read with pyarrow alone. Without Ray's extension type
    registered the column reads as its storage (a list per row), which is flattened and given its shape."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    col = table.column("x").combine_chunks()
    storage = getattr(col, "storage", col)  # an ExtensionArray when Ray's types are registered
    flat = storage.flatten().to_numpy(zero_copy_only=False)
    x = flat.reshape(len(storage), *in_shape)
    return Arrays(x, table.column("y").to_numpy().astype(np.int64))


def load(source) -> Arrays:
    """A split from what a host hands over: `Arrays` as they are, or a Ray Data shard read once in full."""
    if isinstance(source, Arrays):
        return source
    xs, ys = [], []
    for b in source.iter_batches(batch_size=8192, batch_format="numpy"):
        xs.append(np.asarray(b["x"]))
        ys.append(np.asarray(b["y"]))
    return Arrays(np.concatenate(xs), np.concatenate(ys).astype(np.int64))


def epoch_order(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The epoch's permutation of all `n` examples: the same on every rank and every pipeline group."""
    gen = torch.Generator(device=device).manual_seed(seed * 1000 + epoch)
    return torch.randperm(n, generator=gen, device=device)


class InMemory:
    """A split as tensors on `device` (the device cache) or in host memory, cut into batches."""

    def __init__(self, arrays: Arrays, device: torch.device):
        self.device = device
        # Arrow buffers are read-only: copied once here (torch wants writable memory), then moved.
        self.x = torch.from_numpy(np.require(arrays.x, requirements=["C", "W"])).to(device)
        self.y = torch.from_numpy(np.require(arrays.y, requirements=["C", "W"])).to(device)

    def __len__(self) -> int:
        return len(self.y)

    def train(self, batch: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
              drop_last: bool = False, start_step: int = 0, used: Optional[int] = None) -> Iterator[dict]:
        """Rank `rank`'s batches of the epoch, `batch` examples each: of global step g (0-based), the rank's
        contiguous share of the epoch's g-th global batch (`global_batch(...)`), from step `start_step` on (a
        run resumed mid-epoch: the rest of the same order). So step g means the same examples whatever the world
        size, and a group resized between a checkpoint and its resume goes on exactly where it stopped. The
        epoch uses the order's first `used` examples (default: the most `world` divides; the remainder is left
        out this epoch, as DistributedSampler(drop_last=True) does); `drop_last` ends it at the last whole batch."""
        order = epoch_order(len(self), seed, epoch, self.y.device)
        used = usable(len(self), [world]) if used is None else used
        size = batch * world
        end = used - used % size if drop_last else used
        for start in range(start_step * size, end, size):
            idx = order[global_batch(start, min(size, end - start), rank, world)]
            yield {"x": self.x[idx], "y": self.y[idx]}

    def in_order(self, batch: int) -> Iterator[dict]:
        """Every example once, in stored order (evaluation)."""
        for i in range(0, len(self), batch):
            yield {"x": self.x[i:i + batch], "y": self.y[i:i + batch]}


def global_batch(start: int, size: int, rank: int, world: int) -> slice:
    """Rank `rank`'s share of the global batch order[start:start + size] (`size` divisible by `world`)."""
    share = size // world
    return slice(start + rank * share, start + (rank + 1) * share)


def usable(n: int, worlds) -> int:
    """Examples of an `n`-example epoch order that every world size in `worlds` splits into equal shares at
    every step (the most a multiple of all of them fits): the same count, so the same steps, at any size."""
    import math

    return n - n % math.lcm(*worlds)


def rank_part(n: int, rank: int, world: int) -> slice:
    """Rank `rank`'s consecutive part of an `n`-example evaluation split: every example once over the ranks
    (parts differ by at most one example; evaluation sums are reduced, not averaged per rank)."""
    return slice(rank * n // world, (rank + 1) * n // world)
