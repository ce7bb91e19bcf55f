"""Worker side: a rank's batches for each epoch.

Materialised data (`data.ingest: materialize`) is held whole by every rank (`raytrain.data.memory`): each
epoch is a fresh seeded permutation of the whole training split, each global batch cut into equal per-rank
shares, whatever order the source was stored in; validation and test arrive whole and each rank keeps its
part for the group's world size (an elastic group's varies from one start to the next). Where it lives: on the training device (the device cache: no batch crosses
PCIe; `data.device_cache`, auto on a GPU when the split fits in a quarter of the free device memory, scaled
by a fractional `gpus_per_worker`), else in host memory.

Streamed data (`data.ingest: stream`) is read by Ray Data while training; each rank shuffles its stream in a
local buffer seeded by (seed, epoch, rank): examples move between batches every epoch but not further than
the buffer (see `raytrain.data.ingest`). `device_cache: true` keeps a streamed rank's shard after one read
and permutes it whole from then on.

Evaluation reads a split by name (`eval`): "val" every epoch, "test" (where the dataset has one) once, at the
end of a run, so a test split is loaded only when first asked for.
"""

from __future__ import annotations

import itertools

from typing import Iterator, Optional

import torch

from raytrain.config import Experiment
from raytrain.data.prepare import DataInfo
from raytrain.data.memory import Arrays, InMemory, load, rank_part, usable

CACHE_FRACTION = 0.25
EVAL_BATCH = 256


class Batches:
    """`prenormalise`: the caller takes batches as model input when `self.normalised` says so (the device
    cache of materialised data then holds `(x * scale - mean) / std` as float32, computed once, where that
    fits its share of the GPU and no augmentation needs the raw pixels), so no step spends kernels on it."""

    def __init__(self, exp: Experiment, info: DataInfo, shards: dict, rank: int, world: int, device: torch.device,
                 prenormalise: bool = False):
        self.exp, self.rank, self.world, self.device = exp, rank, world, device
        self.norm = (info.scale, info.mean, info.std)
        self.normalised = False  # every held split is model input already (on the device)
        self.shards = shards  # split name -> this rank's shard ("train", "val", and "test" where there is one)
        self.train_it, self.val_it = shards["train"], shards["val"]
        # This rank's share of every global batch at this world size (an elastic group's size varies), and the
        # micro-batch a step accumulates over where the share is larger: the share at full size.
        self.batch = exp.train.batch_size // world
        self.micro = exp.per_worker_batch
        self.memory: Optional[InMemory] = None
        self.held: dict[str, InMemory] = {}  # materialised evaluation splits, by name
        self.where = torch.device("cpu")  # where materialised evaluation splits are held
        self.cached = False  # on the training device (not host memory)
        self.materialized = info.ingest == "materialize"
        setting = exp.data.device_cache
        if info.ingest == "materialize" or setting is True:
            train = load(self.train_it)
            self.cached = use_device_cache(setting, _nbytes(train), device, exp.parallel.gpus_per_worker)
            self.where = device if self.cached else torch.device("cpu")
            self.memory = InMemory(train, self.where)
            del train
            self.normalised = (prenormalise and self.cached and self.materialized and not exp.data.augment.enabled()
                               and use_device_cache("auto", 4 * self.memory.x.numel(), device,
                                                    exp.parallel.gpus_per_worker))
            if self.normalised:
                self.memory.x = normalise(self.memory.x, *self.norm)
            if info.ingest == "materialize":
                self.held["val"] = self._hold(load(self.val_it))
        # Materialised: every rank holds the whole split and takes its slice of the epoch's permutation.
        # Streamed and kept: the rank's own stream shard, permuted whole.
        self.split = (rank, world) if info.ingest == "materialize" else (0, 1)

    def train(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
        """The epoch's batches from batch `start_step` on. Held in memory: the rest of the same seeded order
        (exact). Streamed: the epoch's read starts again and its first `start_step` batches are read and
        dropped; Ray Data does not promise the same block order twice, so the skipped and the trained examples
        of that one epoch may differ from the interrupted run's (some seen twice, some not that epoch)."""
        if self.memory is not None:
            used = usable(len(self.memory), self.exp.parallel.world_sizes) if self.materialized else None
            return self.memory.train(self.batch, self.exp.seed, epoch, *self.split, start_step=start_step, used=used)
        bs = self.batch
        it = self.train_it.iter_torch_batches(batch_size=bs, local_shuffle_buffer_size=max(bs * 8, 1024),
                                              local_shuffle_seed=self.exp.seed * 1000 + epoch * self.world + self.rank,
                                              **self._transfer())
        return itertools.islice(it, start_step, None) if start_step else it

    def val(self) -> Iterator[dict]:
        return self.eval("val")

    def eval(self, split: str) -> Iterator[dict]:
        """This rank's part of `split` ("val", "test"), every example once, in stored order."""
        if split not in self.shards:
            raise KeyError(f"no {split!r} split in this run (splits: {', '.join(self.shards)})")
        bs = max(self.batch, EVAL_BATCH)
        if self.materialized and split not in self.held:  # a test split: loaded once, when first asked for
            self.held[split] = self._hold(load(self.shards[split]))
        if self.materialized:
            return self.held[split].in_order(bs)
        return self.shards[split].iter_torch_batches(batch_size=bs, **self._transfer())

    def _hold(self, arrays: Arrays) -> InMemory:
        """An evaluation split, whole, cut here to this rank's part: the world size is the group's as started."""
        part = rank_part(len(arrays), self.rank, self.world)
        held = InMemory(Arrays(arrays.x[part], arrays.y[part]), self.where)
        if self.normalised:
            held.x = normalise(held.x, *self.norm)
        return held

    def _transfer(self) -> dict:
        if self.device.type == "cuda":
            return {"device": self.device, "pin_memory": True, "prefetch_batches": 2}
        return {"device": "cpu"}


def normalise(x: torch.Tensor, scale: float, mean: float, std: float, chunk: int = 8192) -> torch.Tensor:
    """`(x.float() * scale - mean) / std` as float32, the same operations in the same order as a step's
    `StepEnv.inputs` (the same values), computed `chunk` examples at a time beside the stored copy."""
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for i in range(0, len(x), chunk):
        out[i:i + chunk] = (x[i:i + chunk].float() * scale - mean) / std
    return out


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
