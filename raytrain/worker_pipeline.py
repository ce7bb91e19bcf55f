"""The per-worker loop for pipeline (and DP x PP) training: talks to Ray Train, leaves the schedule to
`raytrain.parallel.pipeline`.

Data: every worker gets the whole (unsplit) dataset; only each pipeline group's first stage reads
it, with the same shuffle seed in every group, and group d takes batches d, d+dp, d+2dp, ... - so
each example is seen once per epoch across groups, and every group runs the same number of steps
(their gradient all-reduces must pair up). The first stage broadcasts the labels to its group.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from raytrain import checkpoint as ckpt
from raytrain.config import Experiment
from raytrain.data import DataInfo
from raytrain.loop import SchedulerStepper, StepEnv
from raytrain.models import build_model
from raytrain.optim import build_optimizer
from raytrain.parallel import pipeline as pl
from raytrain.techniques.early_stopping import EarlyStopper
from raytrain.techniques.pruning import forward_flops
from raytrain.techniques.precision import autocast, resolve_precision
from raytrain.techniques.schedule import build_scheduler
from raytrain.worker import epoch_metrics, progress_line, rank_spread, reduce_sums, stop_reason


@dataclass
class PipeSession:
    exp: Experiment
    info: DataInfo
    env: StepEnv
    pipe: pl.Pipeline
    optimizer: torch.optim.Optimizer
    stepper: SchedulerStepper
    stopper: Optional[EarlyStopper]
    start_epoch: int = 0
    elapsed_s: float = 0.0
    pruned: float = 0.0  # pruning is refused with pipelines; kept for the shared metric row
    launch_time: Optional[float] = None


def steps_per_epoch(exp: Experiment, info: DataInfo) -> int:
    """Steps every pipeline group takes per epoch: whole batches only (micro-batches must be equal)."""
    return max(1, (info.n_train // exp.per_worker_batch) // exp.parallel.dp)


def run_pipeline(exp: Experiment, info: DataInfo, checkpoint, launch_time: Optional[float]) -> None:
    s = build_session(exp, info, checkpoint)
    s.launch_time = launch_time
    try:
        run_epochs(s)
    except Exception as e:
        # PipelineStage re-raises a stage's error as a multi-line "failed to run forward"; only the message
        # crosses to the driver (not the chain), so name the original error in it.
        inner = e
        while inner.__cause__ is not None:
            inner = inner.__cause__
        if inner is e:
            raise
        raise RuntimeError(f"pipeline stage {s.pipe.mesh.pp_rank}: {type(inner).__name__}: {inner}") from e


def build_session(exp: Experiment, info: DataInfo, checkpoint) -> PipeSession:
    device = ray.train.torch.get_device()
    pp = exp.parallel.pipeline
    precision = resolve_precision(exp.train.precision, device)
    if precision == "fp16":  # auto on a pre-Ampere GPU: no GradScaler across stages, so stay fp32
        precision = "fp32"
    mesh = pl.make_mesh(pp.stages, device.type)
    model = build_model(exp.model.name, info.in_shape, info.num_classes, exp.model.width, exp.model.dropout)
    if pl.has_batchnorm(model) and dist.get_rank() == 0:
        print("[raytrain] note: BatchNorm in a pipeline normalises each micro-batch on its own: this matches "
              "gradient accumulation over the same micro-batches, not full-batch training", flush=True)
    example = torch.zeros(exp.per_worker_batch // pp.microbatches, *info.in_shape)
    pipe = pl.build_pipeline(model, mesh, pp.schedule, pp.microbatches, device, example, pp.split,
                             autocast(precision, torch.device("cpu")))
    del model  # parts of other stages are freed here: each rank keeps only its own shard
    state = _load_checkpoint(checkpoint, mesh)
    if state is not None:
        _load_parts(pipe, state["model"])
    env = StepEnv(device, precision, False, info.scale, info.mean, info.std)
    optimizer = build_optimizer(torch.nn.ModuleList(pipe.parts), exp.train.optimizer)
    steps = steps_per_epoch(exp, info)
    scheduler = build_scheduler(optimizer, exp.train.schedule, exp.train.epochs, steps, exp.train.optimizer.lr)
    stepper = SchedulerStepper(scheduler, exp.train.epochs * steps)
    stopper = EarlyStopper(exp.train.early_stopping) if exp.train.early_stopping else None
    s = PipeSession(exp, info, env, pipe, optimizer, stepper, stopper)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stepper.taken = int(state["scheduler_steps"])
        if stopper and state.get("stopper"):
            stopper.load_state_dict(state["stopper"])
        s.start_epoch, s.elapsed_s = int(state["epoch"]) + 1, float(state["elapsed_s"])
    return s


def _load_parts(pipe: pl.Pipeline, model_state: dict) -> None:
    for part in pipe.parts:
        keys = part.state_dict().keys()
        part.load_state_dict({k: model_state[k] for k in keys})


def _load_checkpoint(checkpoint, mesh: pl.Mesh) -> Optional[dict]:
    """The newest checkpoint every stage can read its shard of (agreed over all ranks, so no stage
    resumes from a different epoch than its neighbours); older ones are tried when a shard is torn."""
    if checkpoint is None:
        return None
    name = ckpt.stage_file(mesh.pp_rank)
    with checkpoint.as_directory() as d:
        latest = Path(d)
        candidates = [latest] + [c for c in ckpt.checkpoint_dirs(latest.parent) if c.name != latest.name]
        for c in candidates:
            state = ckpt.try_load(c, name)
            ok = torch.tensor([1 if state is not None else 0])
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
            if int(ok):
                if dist.get_rank() == 0:
                    print(f"[raytrain] resumed from {c} (epoch {int(state['epoch']) + 1} done)", flush=True)
                return state
    return None


def _group_batches(it, mesh: pl.Mesh, steps: int):
    """This group's batches: d, d+dp, ... of the shared order, exactly `steps` of them."""
    for i, batch in enumerate(it):
        if i >= steps * mesh.dp:
            return
        if i % mesh.dp == mesh.dp_rank:
            yield batch


def train_epoch(s: PipeSession, epoch: int) -> dict:
    mesh, env, bs = s.pipe.mesh, s.env, s.exp.per_worker_batch
    steps = steps_per_epoch(s.exp, s.info)
    batches = None
    if mesh.pp_rank == 0:
        it = ray.train.get_dataset_shard("train").iter_torch_batches(
            batch_size=bs, drop_last=True, local_shuffle_buffer_size=max(bs * 8, 1024),
            local_shuffle_seed=s.exp.seed * 1000 + epoch)  # same seed in every group: one shared order
        batches = _group_batches(it, mesh, steps)
    s.pipe.train(True)
    loss_sum = correct = count = 0.0
    step_seconds, first_step_at = 0.0, None
    for _ in range(steps):
        t0 = time.perf_counter()
        x = y = None
        if batches is not None:
            x, y = env.inputs(next(batches))
        n, labels = pl.share_batch(mesh, y, bs, env.device)
        s.optimizer.zero_grad(set_to_none=True)
        with autocast(env.precision, env.device):
            ls, c = pl.run_step(s.pipe, x, labels, n, train=True)
        if s.exp.train.max_grad_norm is not None:
            pl.clip_grad_norm(s.pipe, s.exp.train.max_grad_norm)
        s.optimizer.step()
        s.stepper.step()
        loss_sum, correct = loss_sum + ls, correct + c
        count += n if s.pipe.holds_last else 0
        step_seconds += time.perf_counter() - t0
        first_step_at = first_step_at or time.time()
    return {"loss_sum": loss_sum, "correct": correct, "count": count, "steps": steps, "skipped_steps": 0,
            "step_seconds": step_seconds, "first_step_at": first_step_at or time.time()}


def evaluate(s: PipeSession) -> dict:
    """Forward-only over the validation set; the last batch is padded to full size and masked."""
    mesh, env, bs = s.pipe.mesh, s.env, s.exp.per_worker_batch
    batches = None
    if mesh.pp_rank == 0:
        it = ray.train.get_dataset_shard("val").iter_torch_batches(batch_size=bs)
        batches = (b for i, b in enumerate(it) if i % mesh.dp == mesh.dp_rank)
    s.pipe.train(False)
    loss_sum = correct = count = 0.0
    while True:
        x = y = None
        if batches is not None:
            b = next(batches, None)
            if b is not None:
                x, y = env.inputs(b)
                if y.numel() < bs:
                    x = torch.cat([x, x.new_zeros((bs - y.numel(), *x.shape[1:]))])
        n, labels = pl.share_batch(mesh, y, bs, env.device)
        if n == 0:
            break
        with autocast(env.precision, env.device):
            ls, c = pl.run_step(s.pipe, x, labels, n, train=False)
        loss_sum, correct, count = loss_sum + ls, correct + c, count + (n if s.pipe.holds_last else 0)
    return {"loss_sum": loss_sum, "correct": correct, "count": count}


def run_epochs(s: PipeSession) -> None:
    exp, world, rank = s.exp, dist.get_world_size(), dist.get_rank()
    for epoch in range(s.start_epoch, exp.train.epochs):
        t0 = time.perf_counter()
        local = train_epoch(s, epoch)
        first_step_at = local.pop("first_step_at")
        tr = reduce_sums(local)
        train_s = time.perf_counter() - t0
        va = reduce_sums(evaluate(s))
        epoch_s = time.perf_counter() - t0
        s.elapsed_s += epoch_s
        metrics = epoch_metrics(s, epoch, tr, va, train_s, epoch_s, world)
        metrics.update(pipeline_stages=s.pipe.mesh.pp, data_parallel=s.pipe.mesh.dp)
        if s.launch_time and epoch == s.start_epoch:
            metrics["first_step_s"] = first_step_at - s.launch_time
        stop = stop_reason(s, epoch, metrics)
        final = stop is not None or epoch == exp.train.epochs - 1
        if final:
            metrics.update(stop_reason=stop or "completed", **_model_stats(s))
        if rank == 0:
            print(progress_line(metrics, exp.train.epochs), flush=True)
        _report(s, epoch, metrics, save=final or (epoch + 1) % exp.checkpoint.every_epochs == 0)
        if final:
            break


def _model_stats(s: PipeSession) -> dict:
    mesh = s.pipe.mesh
    per_stage = torch.zeros(mesh.pp, dtype=torch.float64)
    per_stage[mesh.pp_rank] = sum(p.numel() for p in s.pipe.parameters())
    dist.all_reduce(per_stage, group=mesh.pp_group)
    spread = torch.tensor([rank_spread(s.pipe.parameters(), mesh.dp_group)], dtype=torch.float64)
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    total = int(per_stage.sum())
    e, info = s.exp, s.info  # FLOPs of the unsplit model (stages are not separately traceable)
    flops = forward_flops(build_model(e.model.name, info.in_shape, info.num_classes, e.model.width, e.model.dropout),
                          info.in_shape)
    return {"rank_weight_spread": float(spread), "params_total": total, "params_nonzero": total,
            "weight_sparsity": 0.0, "stage_params": [int(v) for v in per_stage.tolist()], "flops_per_sample": flops}


def _report(s: PipeSession, epoch: int, metrics: dict, save: bool) -> None:
    """Every rank reports; the dp-rank-0 replica of each stage attaches its shard, and Ray Train merges
    the shards into one checkpoint directory."""
    mesh = s.pipe.mesh
    if not (save and mesh.dp_rank == 0):
        ray.train.report(metrics)
        return
    state = {
        "model": s.pipe.state_dict(), "optimizer": s.optimizer.state_dict(),
        "scheduler": s.stepper.scheduler.state_dict(), "scheduler_steps": s.stepper.taken, "epoch": epoch,
        "elapsed_s": s.elapsed_s, "stopper": s.stopper.state_dict() if s.stopper else {},
        "stage": mesh.pp_rank, "stages": mesh.pp, "experiment": s.exp.model_dump_json(), "data": s.info.to_json(),
    }
    with tempfile.TemporaryDirectory(prefix="raytrain-ckpt-") as d:
        ckpt.save_state(d, state, ckpt.stage_file(mesh.pp_rank))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

