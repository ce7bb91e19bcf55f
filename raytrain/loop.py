"""The one epoch loop, for every mode: resume, epochs, metrics, stopping, reports and checkpoints.

A mode (`modes.ddp.DataParallel`, `modes.pipeline.Pipelined`) supplies its batches, its train and eval
epoch, its model statistics and its checkpoint's file name; a host (`raytrain.hosts`) supplies rank,
device, datasets, what to resume from and where reports go. This is torchtitan's shape: one loop, with
the pipeline differing only inside its epoch.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import random
import time
from contextlib import contextmanager
from typing import Callable, Optional

import numpy as np
import torch

from raytrain import checkpoint as ckpt
from raytrain import collectives
from raytrain.hosts import Host
from raytrain.plan import RunPlan
from raytrain.progress import EpochProgress
from raytrain.techniques.allocator import keep_freed_memory
from raytrain.techniques.schedule import current_lr

log = logging.getLogger("raytrain")


def run(host: Host, plan: RunPlan, factory: Optional[Callable] = None, entered: Optional[float] = None) -> None:
    """Train one worker's share of the run described by `plan`, reporting through `host`."""
    entered = entered or time.time()
    exp, info = plan.exp(), plan.info()
    with process_settings(exp, plan):
        seed_all(exp.seed)
        if exp.parallel.pipeline.stages > 1:
            from raytrain.modes.pipeline import Pipelined as Mode  # torch.distributed.pipelining: pipelines only
        else:
            from raytrain.modes.ddp import DataParallel as Mode
        mode = Mode(exp, info, plan, host, factory, lambda name: restore(host, name))
        marks = {"worker_entered": entered, "model_ready": time.time()}
        epochs(mode, host, plan, marks)


def warm_up(host: Host, plan: RunPlan, steps: int = 3) -> float:
    """A few throwaway training steps of the run's model, before any training clock starts; returns their
    seconds. A process's first steps pay for its thread pool, its first kernels and Ray Data's first iterator:
    in a fresh Tune trial process on the 2-CPU VM its first two steps took 1.1 s and the next ~0.04 s, whatever
    the config. In a reused trial process only the first trial paid that: ranked ~1 s behind, with early rungs
    low enough to let the next trials through. A search warms each trial process once so that its trials are
    timed alike (measured: one warm step left the next two at 0.24 s each; three leave ~0.07 s). Nothing of the
    run is touched: the model, optimizer and iterator are built for these steps and dropped, and `run` seeds
    again. Materialised data only: a streamed split's epoch must be read to its end."""
    exp, info = plan.exp(), plan.info()
    if exp.parallel.pipeline.stages > 1 or info.ingest == "stream":
        return 0.0
    from raytrain.modes.ddp import DataParallel

    t0 = time.perf_counter()
    with process_settings(exp, plan):
        mode = DataParallel(exp, info, plan, host, None, lambda name: None)
        mode.train_epoch(0, limit=steps)
    del mode
    gc.collect()  # its model and (on a GPU) its device cache go before the run builds its own
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # back to the device: the run's device-cache decision reads free memory
    return time.perf_counter() - t0


@contextmanager
def process_settings(exp, plan: RunPlan):
    """Threads, allocator and compile cache for this process, put back afterwards (an in-process run
    must leave the caller's process as it found it; the allocator setting is the exception: glibc
    has no way back, and `train.keep_freed_memory: false` skips it)."""
    threads, env_before = torch.get_num_threads(), os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    torch.set_num_threads(exp.parallel.torch_threads)  # Ray sets OMP_NUM_THREADS=1; use the CPUs reserved
    if exp.train.keep_freed_memory:
        keep_freed_memory()
    if exp.train.compile and plan.compile_cache and env_before is None:  # one Inductor cache per output root
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = plan.compile_cache
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if env_before is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def restore(host: Host, name: str) -> Optional[dict]:
    """The newest checkpoint every rank can read its `name` in: the registered one, then older ones listed
    in storage (torn or tampered ones are skipped with a warning). Rank 0 lists and every rank walks its
    list, so the agreement collectives pair up even where listings lag (object stores)."""
    cands = collectives.broadcast_object(ckpt.candidates(host.registered(), host.checkpoints()) if host.rank == 0 else None)
    state, used = ckpt.load_first(cands, name, agree=collectives.all_true)
    if state is not None and host.rank == 0:
        log.info(f"resumed from {used.uri} (epoch {int(state['epoch']) + 1} done)")
    return state


def epochs(mode, host: Host, plan: RunPlan, marks: dict) -> None:
    exp, state = mode.exp, mode.state
    start = state.epoch + 1
    probe = RungProbe(mode, host, plan) if plan.probe_at_s else None
    progress = None
    if host.rank == 0 and plan.mode != "trial":  # a search's trials report through its own lines
        progress = EpochProgress(plan.steps_per_epoch, exp.train.epochs, exp.train.batch_size)
    for epoch in range(start, exp.train.epochs):
        mode.before_epoch(epoch)
        t0 = time.perf_counter()
        local = mode.train_epoch(epoch, on_step(probe.at(epoch) if probe else None,
                                                progress.at(epoch) if progress else None))
        if progress:
            progress.end()
        first_step_at = local.pop("first_step_at")
        paused = local.pop("probe_seconds", 0.0)
        tr = collectives.reduce_sums(local)
        train_s = time.perf_counter() - t0 - paused
        va = collectives.reduce_sums(mode.evaluate())
        epoch_s = time.perf_counter() - t0 - paused
        state.elapsed_s += epoch_s
        state.epoch = epoch
        if probe:
            probe.passed(state.elapsed_s)  # a rung passed during evaluation: the epoch's report stands for it
        metrics = {**epoch_metrics(epoch, tr, va, train_s, epoch_s, host.world, state), **mode.labels()}
        if plan.launch_time:  # the user's wait: seconds since the command (or API call) started
            metrics["since_launch_s"] = time.time() - plan.launch_time
            if epoch == start:
                metrics["first_step_s"] = first_step_at - plan.launch_time
                metrics.update({f"startup_{k}_s": t - plan.launch_time for k, t in marks.items()})
        stop = stop_reason(state, epoch, metrics)
        final = stop is not None or epoch == exp.train.epochs - 1
        save = final or (epoch + 1) % exp.checkpoint.every_epochs == 0
        # Encoded before `finish` folds magnitude masks into the weights: a resume with more epochs keeps them.
        files = ckpt.encode(state.state_dict(), mode.file_name) if save and mode.writes_checkpoint else None
        if final:
            mode.finish()
            metrics.update(stop_reason=stop or "completed", **mode.model_stats())
        if host.rank == 0:
            log.info(progress_line(metrics, exp.train.epochs))
        host.report(metrics, files)
        if final:
            break


def on_step(*hooks: Optional[Callable]) -> Optional[Callable]:
    """One step hook calling each given one; the seconds they spent outside training add up."""
    hooks = [h for h in hooks if h is not None]
    if not hooks:
        return None
    if len(hooks) == 1:
        return hooks[0]
    return lambda steps, clock: sum(h(steps, clock) for h in hooks)


class RungProbe:
    """A search's rungs on training seconds (`plan.probe_at_s`): when the run's training clock, the one
    time_to_target_s reads, passes the next rung mid-epoch, evaluate and report val accuracy at that clock.
    Its seconds are handed back and not counted as training. A rung passed on an epoch's last step or during
    its evaluation is left to the epoch's own report. One worker only (the spec refuses more): ranks timing
    themselves could disagree on the step and leave each other waiting in the evaluation."""

    def __init__(self, mode, host: Host, plan: RunPlan):
        if host.world != 1:
            raise ValueError("rungs on seconds need a one-worker run")
        self.mode, self.host, self.steps = mode, host, plan.steps_per_epoch
        self.pending = sorted(plan.probe_at_s)
        self.passed(mode.state.elapsed_s)  # a resumed trial's are behind it

    def passed(self, elapsed_s: float) -> None:
        while self.pending and self.pending[0] <= elapsed_s:
            self.pending.pop(0)

    def at(self, epoch: int):
        return lambda steps, clock: self.check(epoch, steps, clock)

    def check(self, epoch: int, steps: int, clock) -> float:
        if not self.pending or steps >= self.steps or self.mode.state.elapsed_s + clock() < self.pending[0]:
            return 0.0
        now = self.mode.state.elapsed_s + clock(sync=True)  # on a GPU: once the queued steps are done
        if now < self.pending[0]:
            return 0.0
        t0 = time.perf_counter()
        self.passed(now)
        self.host.report({**val_metrics(self.mode.evaluate()), "elapsed_s": now,
                          "trained_epochs": epoch + steps / self.steps, "probe": True}, None)
        return time.perf_counter() - t0


def val_metrics(va: dict) -> dict:
    """Validation loss and accuracy from evaluation sums."""
    return {"val_loss": va["loss_sum"] / max(va["count"], 1), "val_accuracy": va["correct"] / max(va["count"], 1)}


def epoch_metrics(epoch: int, tr: dict, va: dict, train_s: float, epoch_s: float, world: int, state) -> dict:
    steps = max(tr["steps"] / world, 1.0)
    wait = tr["wait_seconds"] / world  # mean over ranks: time blocked waiting for the next batch
    return {
        "epoch": epoch + 1, "train_loss": tr["loss_sum"] / max(tr["count"], 1),
        "train_accuracy": tr["correct"] / max(tr["count"], 1), **val_metrics(va),
        "samples_per_s": tr["count"] / max(train_s, 1e-9),
        "epoch_s": epoch_s, "elapsed_s": state.elapsed_s, "trained_epochs": epoch + 1,
        "step_ms": 1000 * max(train_s - wait, 0.0) / steps,
        "input_wait_s": wait, "lr": current_lr(state.optimizer), "skipped_steps": int(tr["skipped_steps"]),
    }


def stop_reason(state, epoch: int, metrics: dict) -> Optional[str]:
    if not math.isfinite(metrics["train_loss"]) or not math.isfinite(metrics["val_loss"]):
        return "diverged"
    stopper = state.stopper
    if stopper is None:
        return None
    reason = stopper.update(epoch, float(metrics[stopper.cfg.metric]), state.elapsed_s)
    if stopper.target_epoch is not None:
        metrics.update(time_to_target_s=stopper.target_seconds, time_to_target_epochs=stopper.target_epoch)
        if stopper.target_epoch == epoch + 1 and "since_launch_s" in metrics:
            metrics["time_to_target_since_launch_s"] = metrics["since_launch_s"]
    return reason


def progress_line(m: dict, epochs: int) -> str:
    line = (f"epoch {m['epoch']}/{epochs}  train_loss {m['train_loss']:.4f}  val_loss {m['val_loss']:.4f}  "
            f"val_acc {m['val_accuracy']:.4f}  {m['samples_per_s']:.0f} samples/s  {m['epoch_s']:.1f}s  lr {m['lr']:.3g}")
    if m.get("stop_reason"):
        line += f"  stop: {m['stop_reason']}"
    return line
