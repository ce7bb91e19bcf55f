"""The per-worker training loop: the only module that talks to Ray Train from inside a worker.

`train_loop_per_worker` is handed to `TorchTrainer`. It rebuilds the typed experiment from the
config dict, restores from the latest readable checkpoint, and runs epochs of `raytrain.loop`,
reporting aggregated metrics (and a checkpoint from rank 0) through `ray.train.report`.
"""

from __future__ import annotations

import logging
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from raytrain import checkpoint as ckpt
from raytrain.config import Experiment
from raytrain.data import DataInfo
from raytrain.loop import SchedulerStepper, StepEnv, evaluate, train_epoch
from raytrain.models import build_model
from raytrain.optim import build_optimizer
from raytrain.techniques import pruning, prepare_model
from raytrain.techniques.allocator import keep_freed_memory
from raytrain.techniques.early_stopping import EarlyStopper
from raytrain.techniques.memory_format import wants_channels_last
from raytrain.techniques.precision import make_grad_scaler, resolve_precision
from raytrain.techniques.schedule import build_scheduler, current_lr


@dataclass
class Session:
    """Everything one worker trains with. `raw` is the unwrapped model; `model` is what steps run on."""
    exp: Experiment
    info: DataInfo
    env: StepEnv
    raw: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    stepper: SchedulerStepper
    scaler: torch.amp.GradScaler
    stopper: Optional[EarlyStopper]
    start_epoch: int = 0
    elapsed_s: float = 0.0
    pruned: float = 0.0
    launch_time: Optional[float] = None  # wall clock when `raytrain train` started (for time-to-first-step)
    startup_marks: Optional[dict] = None  # wall clock when this worker's loop began / its model was ready


def quiet_report_log() -> None:
    """Train V2 logs every report's full metrics at INFO from a logger named after its file; the
    epoch line below says the same in one line."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(config: dict) -> None:
    entered = time.time()
    quiet_report_log()
    exp = Experiment.model_validate(config["experiment"])
    info = DataInfo.from_json(config["data"])
    torch.set_num_threads(exp.parallel.cpus_per_worker)  # Ray sets OMP_NUM_THREADS=1; use the CPUs we reserved
    if exp.train.keep_freed_memory:
        keep_freed_memory()
    if exp.train.compile and config.get("compile_cache"):  # one Inductor cache for every worker and run
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", config["compile_cache"])
    seed_all(exp.seed)
    if exp.parallel.pipeline.stages > 1:
        from raytrain.worker_pipeline import run_pipeline  # its own loop: stages, micro-batches, shards

        run_pipeline(exp, info, ray.train.get_checkpoint(), config.get("launch_time"))
        return
    s = _build_session(exp, info, ray.train.get_checkpoint())
    s.launch_time = config.get("launch_time")
    s.startup_marks = {"worker_entered": entered, "model_ready": time.time()}
    run_epochs(s)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _steps_per_epoch(exp: Experiment, info: DataInfo) -> int:
    # trainer._equal_parts gives every worker floor(n / world) rows
    rows = info.n_train // exp.parallel.workers
    return max(1, math.ceil(rows / exp.per_worker_batch))


def _wrap_ddp(module: nn.Module) -> nn.Module:
    if ray.train.get_context().get_world_size() == 1:
        return module
    return ray.train.torch.prepare_model(module, move_to_device=False)


def _build_session(exp: Experiment, info: DataInfo, checkpoint) -> Session:
    device = ray.train.torch.get_device()
    precision = resolve_precision(exp.train.precision, device)
    raw = build_model(exp.model.name, info.in_shape, info.num_classes, exp.model.width, exp.model.dropout)
    channels_last = wants_channels_last(exp.train.channels_last, raw)
    state = _load_checkpoint(checkpoint)
    if state is not None:  # restore the pruned structure first, then the weights
        pruning.resize_like(raw, state["model"])
        pruning.restore_masks(raw, state["model"])
        raw.load_state_dict(state["model"])
    env = StepEnv(device, precision, channels_last, info.scale, info.mean, info.std)
    model = prepare_model(raw, device, channels_last, exp.train.compile, _wrap_ddp)
    optimizer = build_optimizer(raw, exp.train.optimizer)
    steps = _steps_per_epoch(exp, info)
    scheduler = build_scheduler(optimizer, exp.train.schedule, exp.train.epochs, steps, exp.train.optimizer.lr)
    stepper = SchedulerStepper(scheduler, exp.train.epochs * steps)
    scaler = make_grad_scaler(precision, device)
    stopper = EarlyStopper(exp.train.early_stopping) if exp.train.early_stopping else None
    s = Session(exp, info, env, raw, model, optimizer, stepper, scaler, stopper)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        stepper.taken = int(state["scheduler_steps"])
        if stopper and state.get("stopper"):
            stopper.load_state_dict(state["stopper"])
        s.start_epoch, s.elapsed_s, s.pruned = int(state["epoch"]) + 1, float(state["elapsed_s"]), float(state["pruned"])
    return s


def _load_checkpoint(checkpoint) -> Optional[dict]:
    """Latest readable checkpoint: Ray's latest first, then older siblings if it is corrupt."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        latest = Path(d)
        candidates = [latest] + [c for c in ckpt.checkpoint_dirs(latest.parent) if c.name != latest.name]
        state, used = ckpt.load_latest(candidates)
    if state is not None and ray.train.get_context().get_world_rank() == 0:
        print(f"[raytrain] resumed from {used} (epoch {int(state['epoch']) + 1} done)", flush=True)
    return state


def _prune_if_due(s: Session, epoch: int) -> None:
    cfg = s.exp.pruning
    target = pruning.target_ratio(cfg, epoch, s.exp.pruning_end_epoch)
    if target <= s.pruned + 1e-9:
        return
    # Pruning flattens weights with .view(): give it the default layout; channels_last is re-applied after.
    raw = s.raw.cpu().to(memory_format=torch.contiguous_format)
    if cfg.method == "magnitude":
        pruning.apply_magnitude_pruning(raw, target)
    else:
        example = torch.zeros(1, *s.info.in_shape)
        pruning.apply_structured_pruning(raw, pruning.ratio_increment(s.pruned, target), example)
    s.pruned = target
    # Rebuild DDP around the new parameters; keep optimizer state only for parameters that survived.
    s.model = prepare_model(raw, s.env.device, s.env.channels_last, s.exp.train.compile, _wrap_ddp)
    s.raw = raw
    params = [p for p in raw.parameters() if p.requires_grad]
    alive = set(map(id, params))
    s.optimizer.param_groups[0]["params"] = params
    for p in [p for p in s.optimizer.state if id(p) not in alive]:
        del s.optimizer.state[p]


def reduce_sums(values: dict) -> dict:
    """Sum each value across workers (exact: the loops return sums, not means)."""
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def run_epochs(s: Session) -> None:
    exp, ctx = s.exp, ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    bs = exp.per_worker_batch
    train_it = ray.train.get_dataset_shard(f"train_{rank}")  # trainer.shard_name: cut per rank by the driver
    val_it = ray.train.get_dataset_shard(f"val_{rank}")
    for epoch in range(s.start_epoch, exp.train.epochs):
        _prune_if_due(s, epoch)
        t0 = time.perf_counter()
        batches = train_it.iter_torch_batches(batch_size=bs, local_shuffle_buffer_size=max(bs * 8, 1024),
                                              local_shuffle_seed=exp.seed * 1000 + epoch * world + rank)
        local = train_epoch(s.model, batches, s.optimizer, s.stepper, s.scaler, s.env, exp.train.max_grad_norm)
        first_step_at = local.pop("first_step_at")
        tr = reduce_sums(local)
        train_s = time.perf_counter() - t0
        va = reduce_sums(evaluate(s.model, val_it.iter_torch_batches(batch_size=max(bs, 256)), s.env))
        epoch_s = time.perf_counter() - t0
        s.elapsed_s += epoch_s
        metrics = epoch_metrics(s, epoch, tr, va, train_s, epoch_s, world)
        if s.launch_time and epoch == s.start_epoch:
            metrics["first_step_s"] = first_step_at - s.launch_time
            for name, t in (s.startup_marks or {}).items():
                metrics[f"startup_{name}_s"] = t - s.launch_time
        stop = stop_reason(s, epoch, metrics)
        final = stop is not None or epoch == exp.train.epochs - 1
        if final and exp.pruning.method == "magnitude":
            pruning.make_pruning_permanent(s.raw)
        if final:
            metrics.update(stop_reason=stop or "completed", **_model_stats(s))
        if rank == 0:
            print(progress_line(metrics, exp.train.epochs), flush=True)
        _report(s, epoch, metrics, save=final or (epoch + 1) % exp.checkpoint.every_epochs == 0, rank=rank)
        if final:
            break


def epoch_metrics(s: Session, epoch: int, tr: dict, va: dict, train_s: float, epoch_s: float, world: int) -> dict:
    steps = max(tr["steps"] / world, 1.0)
    return {
        "epoch": epoch + 1, "train_loss": tr["loss_sum"] / max(tr["count"], 1),
        "train_accuracy": tr["correct"] / max(tr["count"], 1), "val_loss": va["loss_sum"] / max(va["count"], 1),
        "val_accuracy": va["correct"] / max(va["count"], 1), "samples_per_s": tr["count"] / max(train_s, 1e-9),
        "epoch_s": epoch_s, "elapsed_s": s.elapsed_s, "step_ms": 1000 * tr["step_seconds"] / world / steps,
        "input_wait_s": max(0.0, train_s - tr["step_seconds"] / world),  # time not spent in steps: data, sync
        "lr": current_lr(s.optimizer), "skipped_steps": int(tr["skipped_steps"]), "precision": s.env.precision,
        "channels_last": s.env.channels_last, "pruned_ratio": s.pruned,
    }


def stop_reason(s: Session, epoch: int, metrics: dict) -> Optional[str]:
    if not math.isfinite(metrics["train_loss"]) or not math.isfinite(metrics["val_loss"]):
        return "diverged"
    if s.stopper is None:
        return None
    reason = s.stopper.update(epoch, float(metrics[s.stopper.cfg.metric]), s.elapsed_s)
    if s.stopper.target_epoch is not None:
        metrics.update(time_to_target_s=s.stopper.target_seconds, time_to_target_epochs=s.stopper.target_epoch)
    return reason


def rank_spread(params, group=None) -> float:
    """max - min across the ranks of `group` (default: all) of a position-weighted parameter checksum:
    0.0 iff the replicas agree."""
    with torch.no_grad():
        flat = torch.cat([p.detach().double().flatten().cpu() for p in params])
        check = (flat * (1 + torch.arange(flat.numel(), dtype=torch.float64) % 7)).sum()
    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    hi, lo = check.clone(), -check.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
    dist.all_reduce(lo, op=dist.ReduceOp.MAX, group=group)
    return float(hi + lo)


def _model_stats(s: Session) -> dict:
    total, nonzero = pruning.param_counts(s.raw)
    wt, wnz = pruning.weight_sparsity_counts(s.raw)
    return {"rank_weight_spread": rank_spread(s.raw.parameters()), "params_total": total, "params_nonzero": nonzero,
            "weight_sparsity": 1 - wnz / max(wt, 1), "flops_per_sample": pruning.forward_flops(s.raw, s.info.in_shape)}


def progress_line(m: dict, epochs: int) -> str:
    line = (f"[raytrain] epoch {m['epoch']}/{epochs}  train_loss {m['train_loss']:.4f}  val_loss {m['val_loss']:.4f}  "
            f"val_acc {m['val_accuracy']:.4f}  {m['samples_per_s']:.0f} samples/s  {m['epoch_s']:.1f}s  lr {m['lr']:.3g}")
    if m.get("stop_reason"):
        line += f"  stop: {m['stop_reason']}"
    return line


def _report(s: Session, epoch: int, metrics: dict, save: bool, rank: int) -> None:
    if not (save and rank == 0):
        ray.train.report(metrics)
        return
    state = {
        "model": s.raw.state_dict(), "optimizer": s.optimizer.state_dict(),
        "scheduler": s.stepper.scheduler.state_dict(), "scheduler_steps": s.stepper.taken,
        "scaler": s.scaler.state_dict() if s.scaler.is_enabled() else {}, "epoch": epoch,
        "elapsed_s": s.elapsed_s, "pruned": s.pruned, "stopper": s.stopper.state_dict() if s.stopper else {},
        "experiment": s.exp.model_dump_json(), "data": s.info.to_json(),
    }
    with tempfile.TemporaryDirectory(prefix="raytrain-ckpt-") as d:
        ckpt.save_state(d, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
