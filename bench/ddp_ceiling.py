"""The machine's own data-parallel ceiling: the same loop as plain PyTorch DDP processes (gloo, no Ray),
1 process vs `world` processes with one thread each, same global batch. If plain DDP scales no better
than Ray Train here, the 2-worker figure is this machine's limit, not raytrain's overhead.

`independent=True` is the ceiling under that one: every process trains its own model on the whole
1-process workload (same batch), with no gradient exchange at all, so the ratio is what two busy
processes get out of this machine's two vCPUs (shared caches, memory bandwidth, the host's scheduling)."""

from __future__ import annotations

import time

import numpy as np
import pyarrow.parquet as pq
import torch

from raytrain.data.prepare import prepare
from raytrain.storage import local_cache_root
from raytrain.epoch import SchedulerStepper, StepEnv, train_epoch
from raytrain.models import build_model
from raytrain.optim import build_optimizer
from raytrain.parallel.spawn import run_ranks
from raytrain.techniques.schedule import build_scheduler


def _rank_rate(exp_json: str, independent: bool = False) -> dict:
    import torch.distributed as dist

    from raytrain.config import Experiment

    exp = Experiment.model_validate_json(exp_json)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    info = prepare(exp.data, exp.seed, local_cache_root(exp.output) / "data")
    t = pq.read_table(info.train_path)
    x = torch.from_numpy(np.stack(t.column("x").to_numpy(zero_copy_only=False)).astype(np.float32)).reshape(-1, *info.in_shape)
    y = torch.from_numpy(t.column("y").to_numpy())
    if not independent:
        x, y = x[rank::world], y[rank::world]
    model = build_model(exp.model.name, info.in_shape, info.num_classes, exp.model.width)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 and not independent else model
    opt = build_optimizer(model, exp.train.optimizer)
    bs = exp.train.batch_size if independent else exp.train.batch_size // world
    steps = len(y) // bs
    stepper = SchedulerStepper(build_scheduler(opt, exp.train.schedule, 1, steps, exp.train.optimizer.lr), steps)
    env = StepEnv(torch.device("cpu"), "fp32", False, info.scale, info.mean, info.std)
    batches = ({"x": x[i * bs:(i + 1) * bs], "y": y[i * bs:(i + 1) * bs]} for i in range(steps))
    dist.barrier()
    t0 = time.perf_counter()
    stats = train_epoch(wrapped, batches, opt, stepper, torch.amp.GradScaler("cpu", enabled=False), env)
    return {"count": stats.count, "seconds": time.perf_counter() - t0}


def samples_per_s(exp, world: int, independent: bool = False) -> float:
    ranks = run_ranks(_rank_rate, world, exp.model_dump_json(), independent, timeout=1800)
    return sum(r["count"] for r in ranks) / max(r["seconds"] for r in ranks)
