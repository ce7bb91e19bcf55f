"""Worker side: a rank's batches for each epoch.

Materialised data (`data.ingest: materialize`) is held whole by every rank (`raytrain.data.memory`): each
epoch is a fresh seeded permutation of the whole training split, cut into equal per-rank slices, whatever
order the source was stored in. Where it lives: on the training device (the device cache: no batch crosses
PCIe; `data.device_cache`, auto on a GPU when the split fits in a quarter of the free device memory, scaled
by a fractional `gpus_per_worker`), else in host memory.

Streamed data (`data.ingest: stream`) is read by Ray Data while training; each rank shuffles its stream in a
local buffer seeded by (seed, epoch, rank): examples move between batches every epoch but not further than
the buffer (see `raytrain.data.ingest`). `device_cache: true` keeps a streamed rank's shard after one read
and permutes it whole from then on.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from raytrain.config import Experiment
from raytrain.data.prepare import DataInfo
from raytrain.data.memory import Arrays, InMemory, load

CACHE_FRACTION = 0.25
EVAL_BATCH = 256


class Batches:
    def __init__(self, exp: Experiment, info: DataInfo, shards: dict, rank: int, world: int, device: torch.device):
        self.exp, self.rank, self.world, self.device = exp, rank, world, device
        self.train_it, self.val_it = shards["train"], shards["val"]
        self.batch = exp.per_worker_batch
        self.memory: Optional[InMemory] = None
        self.val_memory: Optional[InMemory] = None
        self.cached = False  # on the training device (not host memory)
        setting = exp.data.device_cache
        if info.ingest == "materialize" or setting is True:
            train = load(self.train_it)
            self.cached = use_device_cache(setting, _nbytes(train), device, exp.parallel.gpus_per_worker)
            where = device if self.cached else torch.device("cpu")
            self.memory = InMemory(train, where)
            del train
            if info.ingest == "materialize":
                self.val_memory = InMemory(load(self.val_it), where)
        # Materialised: every rank holds the whole split and takes its slice of the epoch's permutation.
        # Streamed and kept: the rank's own stream shard, permuted whole.
        self.split = (rank, world) if info.ingest == "materialize" else (0, 1)

    def train(self, epoch: int) -> Iterator[dict]:
        if self.memory is not None:
            return self.memory.train(self.batch, self.exp.seed, epoch, *self.split)
        bs = self.batch
        return self.train_it.iter_torch_batches(batch_size=bs, local_shuffle_buffer_size=max(bs * 8, 1024),
                                                local_shuffle_seed=self.exp.seed * 1000 + epoch * self.world + self.rank,
                                                **self._transfer())

    def val(self) -> Iterator[dict]:
        if self.val_memory is not None:
            return self.val_memory.in_order(max(self.batch, EVAL_BATCH))
        return self.val_it.iter_torch_batches(batch_size=max(self.batch, EVAL_BATCH), **self._transfer())

    def _transfer(self) -> dict:
        if self.device.type == "cuda":
            return {"device": self.device, "pin_memory": True, "prefetch_batches": 2}
        return {"device": "cpu"}


def _nbytes(a: Arrays) -> int:
    return int(a.x.nbytes + a.y.nbytes)


def use_device_cache(setting, nbytes: int, device: torch.device, gpus_per_worker: float = 1.0) -> bool:
    """Whether a split of `nbytes` is kept on the training device: as set, or (auto) on a GPU when it fits in
    CACHE_FRACTION of the free memory this worker's share of the GPU has."""
    if setting is False or device.type != "cuda":  # on a CPU the training device is host memory already
        return False
    if setting is True:
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= CACHE_FRACTION * free * min(1.0, gpus_per_worker or 1.0)
