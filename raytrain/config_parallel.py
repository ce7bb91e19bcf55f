"""The experiment YAML's `parallel` section (workers, their resources, elastic ranges, pipelines) and the
cross-field rules it sets on the rest of the experiment, kept apart from raytrain.config so neither file grows
past a screenful; raytrain.config imports them back, so `from raytrain.config import ParallelConfig` is the one
way to name them (the search's `trial:` block extends `WorkerResources`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, Union

from pydantic import Field, field_validator

from raytrain.config_data import Strict

if TYPE_CHECKING:
    from raytrain.config import Experiment


class PipelineConfig(Strict):
    stages: int = Field(1, ge=1)
    """Pipeline stages per group; 1 = plain data parallelism. DP degree = workers / stages."""
    microbatches: int = Field(4, ge=1)
    """Micro-batches per step per group; the bubble is (stages-1)/(microbatches+stages-1)."""
    schedule: Literal["gpipe", "1f1b", "interleaved_1f1b"] = "1f1b"
    """gpipe | 1f1b | interleaved_1f1b (two virtual stages per rank: smaller bubble, more messages)."""
    split: Union[Literal["auto"], list[str]] = "auto"
    """auto balances parameter counts over the model's top-level blocks; or the block names where stages
    2..K (2..2K for interleaved) begin."""


class WorkerResources(Strict):
    """What each worker reserves; `bundle()` is the one place the resource dict is built."""
    workers: int = Field(2, ge=1)
    """Workers (Ray Train workers, or one process for a single in-process worker)."""
    cpus_per_worker: float = Field(1.0, gt=0.0)
    """CPUs reserved per worker; torch intra-op threads are set to max(1, floor(cpus))."""
    use_gpu: bool = False
    """One GPU (or `gpus_per_worker` of one) per worker; nccl backend, gloo on CPU."""
    gpus_per_worker: float = Field(1.0, gt=0.0)
    """With use_gpu: a fraction packs several single-rank workers (trials, one-worker runs) on one GPU."""
    worker_resources: dict[str, float] = Field(default_factory=dict)
    """Extra Ray resources per worker, e.g. {pool_gpu_8x: 1} to pin workers to a node pool of clusters/."""

    def bundle(self) -> dict[str, float]:
        """The Ray resource request of one worker."""
        gpu = {"GPU": float(self.gpus_per_worker)} if self.use_gpu else {}
        return {"CPU": float(self.cpus_per_worker), **gpu, **self.worker_resources}

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.cpus_per_worker))


class ParallelConfig(WorkerResources):
    workers: Union[int, tuple[int, int]] = 2
    """Workers (Ray Train workers, or one process for a single in-process worker); [min, max]: an elastic
    group, started once `min` fit, going on with fewer after a node is lost and growing back when nodes return
    (each resize restarts the group from the newest checkpoint, the data re-split for the new world size).
    train.batch_size stays the global batch whatever the world size: a rank whose share exceeds
    batch_size / max accumulates gradients over micro-batches of at most that size."""
    resize_check_s: float = Field(60.0, gt=0.0)
    """workers: [min, max]: how often a running group checks whether more workers now fit (a grow restarts it
    from the newest checkpoint: set checkpoint.every_steps to bound the steps redone)."""
    max_failures: int = Field(2, ge=0)
    """Failures survived by restarting from the latest checkpoint (worker group or in-process loop)."""
    isolate: bool = False
    """Run even a single worker in a Ray Train worker group (Ray's restarts, its own process) instead of
    in the calling process."""
    pipeline: PipelineConfig = PipelineConfig()
    """Pipeline-sharded model parallelism (torch.distributed.pipelining), combinable with data parallelism."""

    @field_validator("workers", mode="before")
    @classmethod
    def _range(cls, v):
        if isinstance(v, (list, tuple)) and (len(v) != 2 or not all(isinstance(x, int) for x in v)):
            raise ValueError("a number of workers, or [min, max] for an elastic group")
        return v

    @field_validator("workers")
    @classmethod
    def _ordered(cls, v):
        lo, hi = (v, v) if isinstance(v, int) else v
        if lo < 1:
            raise ValueError("at least 1 worker")
        if lo > hi:
            raise ValueError("[min, max] needs min <= max")
        return lo if lo == hi else (lo, hi)

    @property
    def min_workers(self) -> int:
        return self.workers if isinstance(self.workers, int) else self.workers[0]

    @property
    def max_workers(self) -> int:
        return self.workers if isinstance(self.workers, int) else self.workers[1]

    @property
    def elastic(self) -> bool:
        return self.min_workers < self.max_workers

    @property
    def world_sizes(self) -> range:
        """Every world size an elastic group may train at (one, for a fixed `workers`); pipelined, whole
        pipelines only (multiples of the stages: Ray Train is asked for no other size)."""
        return range(self.min_workers, self.max_workers + 1, self.pipeline.stages)

    @property
    def dp(self) -> int:
        """Data-parallel degree at full size: replicas of each pipeline stage."""
        return self.max_workers // self.pipeline.stages


def check_elastic(exp: "Experiment") -> None:
    """Every world size of the range splits the global batch into equal shares, so the batch (and the learning
    curve) does not depend on how many nodes are alive."""
    b, par = exp.train.batch_size, exp.parallel
    bad = [w for w in par.world_sizes if b % w]
    if bad:
        lcm = math.lcm(*par.world_sizes)
        raise ValueError(f"train.batch_size {b} with parallel.workers {list(par.workers)}: a group of "
                         f"{', '.join(map(str, bad))} worker(s) cannot split it into equal shares; use a multiple of "
                         f"{lcm} (e.g. {lcm * max(1, round(b / lcm))}) or narrow the range")


def check_pipeline(exp: "Experiment") -> None:
    """Pipeline settings that would fail (or hang one stage) at run time, refused up front. An elastic range
    grows and shrinks the data-parallel degree only: whole pipelines, each degree splitting the global batch into
    equal micro-batches (so the learning curve does not depend on how many pipelines are alive)."""
    t, par, pp = exp.train, exp.parallel, exp.parallel.pipeline
    if par.elastic and (par.min_workers % pp.stages or par.max_workers % pp.stages):
        raise ValueError(f"parallel.workers {list(par.workers)} with parallel.pipeline.stages {pp.stages}: an elastic "
                         f"pipeline grows and shrinks by whole pipelines; make min and max multiples of {pp.stages} "
                         f"(e.g. [{pp.stages}, {max(2, par.max_workers // pp.stages) * pp.stages}])")
    if not par.elastic and par.workers % pp.stages:
        raise ValueError(f"parallel.workers {par.workers} must be divisible by parallel.pipeline.stages {pp.stages}")
    for dp in (w // pp.stages for w in par.world_sizes):
        if t.batch_size % (dp * pp.microbatches):
            raise ValueError(f"train.batch_size {t.batch_size} must be divisible by data-parallel degree {dp} x "
                             f"parallel.pipeline.microbatches {pp.microbatches}"
                             + (f" (every degree of parallel.workers {list(par.workers)})" if par.elastic else ""))
    if pp.schedule != "gpipe" and pp.microbatches < pp.stages:
        raise ValueError(f"parallel.pipeline.microbatches {pp.microbatches} must be >= stages {pp.stages} "
                         f"for {pp.schedule}")
    if pp.schedule == "interleaved_1f1b" and pp.microbatches % pp.stages:
        raise ValueError(f"parallel.pipeline.microbatches {pp.microbatches} must be a multiple of stages "
                         f"{pp.stages} for interleaved_1f1b")
    # Techniques that do not carry over to stages (docs/pipeline.md says why).
    if t.precision == "fp16":
        raise ValueError("train.precision fp16 is not supported with parallel.pipeline (GradScaler's skip decision "
                         "would differ per stage); use bf16 or fp32")
    if exp.pruning.method != "none":
        raise ValueError("pruning.method must be none with parallel.pipeline (structured pruning changes the "
                         "tensors sent between stages)")
    if t.compile:
        raise ValueError("train.compile is not supported with parallel.pipeline")
    if t.channels_last is True:
        raise ValueError("train.channels_last true is not supported with parallel.pipeline (use auto: off)")
    if exp.data.ingest == "stream" and par.dp > 1:
        raise ValueError("data.ingest stream with parallel.pipeline needs data-parallel degree 1 (pipeline groups "
                         "share one batch order, which a stream does not repeat); use materialize")
