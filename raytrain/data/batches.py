"""Worker side: a rank's batches for each epoch, from Ray Data or from a copy kept on the device.

Ray Data (the default): `iter_torch_batches` over the rank's dataset, shuffled in a local buffer seeded
by (seed, epoch, rank); on a GPU the batches arrive on the device from pinned memory, two prefetched.

Device cache (`data.device_cache`): the rank's whole training shard is read once and kept on the
device as stored (uint8 stays uint8, normalised per batch like every other batch); each epoch a
seeded permutation cuts the batches there, so no batch crosses PCIe. `auto` uses it on a GPU when the
shard fits in a quarter of the free device memory, never on a CPU. The two paths see the same
examples but shuffle differently (a full permutation vs a local buffer), so their metrics agree exactly
only when an epoch is one batch (the parity test) and statistically otherwise.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch

from raytrain.config import Experiment
from raytrain.data import DataInfo

CACHE_FRACTION = 0.25


class Batches:
    def __init__(self, exp: Experiment, info: DataInfo, shards: dict, rank: int, world: int, device: torch.device):
        self.exp, self.rank, self.world, self.device = exp, rank, world, device
        self.train_it, self.val_it = shards["train"], shards["val"]
        self.batch = exp.per_worker_batch
        self.cache: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        if use_device_cache(exp.data.device_cache, info, world, device):
            self.cache = self._load(self.train_it)

    @property
    def cached(self) -> bool:
        return self.cache is not None

    def seed(self, epoch: int) -> int:
        return self.exp.seed * 1000 + epoch * self.world + self.rank

    def train(self, epoch: int) -> Iterator[dict]:
        if self.cache is not None:
            return self._from_cache(epoch)
        bs = self.batch
        return self.train_it.iter_torch_batches(batch_size=bs, local_shuffle_buffer_size=max(bs * 8, 1024),
                                                local_shuffle_seed=self.seed(epoch), **self._transfer())

    def val(self) -> Iterator[dict]:
        return self.val_it.iter_torch_batches(batch_size=max(self.batch, 256), **self._transfer())

    def _transfer(self) -> dict:
        if self.device.type == "cuda":
            return {"device": self.device, "pin_memory": True, "prefetch_batches": 2}
        return {"device": "cpu"}

    def _load(self, it) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for b in it.iter_batches(batch_size=8192, batch_format="numpy"):
            xs.append(np.asarray(b["x"]))
            ys.append(np.asarray(b["y"]))
        x = torch.from_numpy(np.concatenate(xs)).to(self.device)
        return x, torch.from_numpy(np.concatenate(ys)).to(self.device)

    def _from_cache(self, epoch: int) -> Iterator[dict]:
        x, y = self.cache
        gen = torch.Generator(device=self.device).manual_seed(self.seed(epoch))
        order = torch.randperm(len(y), generator=gen, device=self.device)
        for i in range(0, len(y), self.batch):
            idx = order[i:i + self.batch]
            yield {"x": x[idx], "y": y[idx]}


def use_device_cache(setting, info: DataInfo, world: int, device: torch.device) -> bool:
    if setting is False or info.ingest == "stream" and setting == "auto":
        return False
    if setting is True:
        return True
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return info.train_bytes / max(world, 1) <= CACHE_FRACTION * free
