"""The one training loop, for every mode: resume, epochs, metrics, stopping, reports and checkpoints.

A mode (`raytrain.modes.Mode`: data parallel or pipelined) supplies its steps, its evaluation, its model
statistics and its checkpoint's file name; a host (`raytrain.hosts`) supplies rank, device, datasets, what
to resume from and where reports go; everything else (techniques with a schedule, time to target, start-up
marks, progress, a search's rungs, user code) is a callback (`raytrain.callbacks`). This is torchtitan's
shape: one loop, with the pipeline differing only inside its step.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from raytrain import checkpoint as ckpt
from raytrain import collectives
from raytrain.callbacks import Callback, Callbacks, EpochClock, LoopContext, from_names
from raytrain.errors import Interrupted
from raytrain.hosts import Host
from raytrain.notice import Drain, StepTimes
from raytrain.plan import RunPlan
from raytrain.records import EpochRecord, EvalSums, TrainSums
from raytrain.techniques.allocator import keep_freed_memory
from raytrain.techniques.schedule import current_lr

log = logging.getLogger("raytrain")


def build_mode(exp, info, plan: RunPlan, host: Host, factory: Optional[Callable] = None):
    """The mode for `exp`, restored from the newest readable checkpoint (if any)."""
    if exp.parallel.pipeline.stages > 1:
        from raytrain.modes.pipeline import Pipelined as Mode  # torch.distributed.pipelining: pipelines only
    else:
        from raytrain.modes.ddp import DataParallel as Mode
    return Mode(exp, info, plan, host, factory, lambda name: restore(host, name))


def run(host: Host, plan: RunPlan, factory: Optional[Callable] = None, entered: Optional[float] = None,
        callbacks: Iterable[Callback] = ()) -> None:
    """Train one worker's share of the run described by `plan`, reporting through `host`. `callbacks` come
    after the run's own (techniques, start-up marks, progress) and the YAML's `callbacks:`."""
    from raytrain.progress import Progress, StartupMarks
    from raytrain.techniques.hooks import technique_callbacks

    entered = entered or time.time()
    exp, info = plan.exp(), plan.info()
    with process_settings(exp, plan):
        seed_all(exp.seed)
        user = from_names(exp.callbacks)  # importable before the model is built: a typo fails fast
        mode = build_mode(exp, info, plan, host, factory)
        own = [StartupMarks(plan.launch_time, entered), *technique_callbacks(exp, mode)]
        if host.rank == 0 and plan.console_lines:
            own.append(Progress(plan.steps_per_epoch, exp.train.epochs, exp.train.batch_size))
        Loop(mode, host, plan, Callbacks([*own, *user, *callbacks])).run()


@contextmanager
def process_settings(exp, plan: RunPlan):
    """Threads, allocator and compile cache for this process, put back afterwards (an in-process run
    must leave the caller's process as it found it; the allocator setting is the exception: glibc
    has no way back, and `train.keep_freed_memory: false` skips it)."""
    threads, env_before = torch.get_num_threads(), os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    benchmark = torch.backends.cudnn.benchmark
    if exp.parallel.use_gpu:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: cuDNN picks its fastest kernels once
    torch.set_num_threads(exp.parallel.torch_threads)  # Ray sets OMP_NUM_THREADS=1; use the CPUs reserved
    if exp.train.keep_freed_memory:
        keep_freed_memory()
    if exp.train.compile and plan.compile_cache and env_before is None:  # one Inductor cache per output root
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = plan.compile_cache
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark
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
        pos = state.get("position") or {}  # a step checkpoint's: where inside its epoch
        done = f"epoch {pos['epoch'] + 1} step {pos['step']}" if pos else f"epoch {int(state['epoch']) + 1}"
        log.info(f"resumed from {used.uri} ({done} done)")
        relog(host, state.get("row"), used)
    return state


def relog(host: Host, row: Optional[dict], used) -> None:
    """The resumed checkpoint's row, appended if the run's metrics.jsonl lacks it: its worker was killed after
    the checkpoint was persisted (Ray registers a report's checkpoint before rank 0 appends the row)."""
    log_ = host.metrics_log()
    if not row or log_ is None:
        return
    key = (row["epoch"], row.get("step"))
    if any((r.get("epoch"), r.get("step")) == key for r in log_.rows()):
        return
    log_.append({**row, "checkpoint": used.uri, "relogged": True})
    what = f"epoch {row['epoch']}" + (f" step {row['step']}" if row.get("step") else "")
    log.warning(f"{log_.loc.uri} had no row for {what}, whose checkpoint this run resumed from: logged it from "
                "the checkpoint (its process was killed between the two)")


class Loop:
    def __init__(self, mode, host: Host, plan: RunPlan, callbacks: Callbacks):
        self.mode, self.host, self.plan, self.cbs = mode, host, plan, callbacks
        self.exp, self.state = mode.exp, mode.state
        self.ctx = LoopContext(self.exp, plan, host.rank, host.world, mode.state, mode, self.evaluate,
                               lambda metrics: host.report(metrics, None), plan.steps_per_epoch)
        self.state.callbacks = callbacks
        callbacks.load_state_dict(self.state.restored_callbacks)
        self.noticed = None  # the host's notice, once one came
        self.drain: Optional[Drain] = None  # a drained node's group training on until its deadline
        self.times, self.eval_s = StepTimes(), None  # recent step seconds, the last evaluation's
        self.step_checkpoint_s = 0.0  # this epoch's seconds in step checkpoints (reported: what they cost)

    def evaluate(self, split: str = "val") -> EvalSums:
        """`split`'s sums over every rank (each rank must call it)."""
        return EvalSums(**collectives.reduce_sums(self.mode.evaluate(split).as_dict()))

    def run(self) -> None:
        try:
            self.cbs.call("on_fit_start", self.ctx)
            for epoch in range(self.state.epoch + 1, self.exp.train.epochs):
                if self.drain is not None:  # the last epoch's checkpoint may be the last before the deadline
                    self.drain.at_boundary(None)
                record = self.epoch(epoch)
                if record is None or record.final:
                    return
        except BaseException as e:
            self.cbs.on_exception(self.ctx, e)
            raise

    def on_step(self, epoch: int, carried: TrainSums, carried_s: float) -> Callable:
        every = self.exp.checkpoint.every_steps if self.plan.step_checkpoints else None
        last = self.plan.steps_per_epoch
        self.times.epoch_start()

        def hook(step: int, clock: EpochClock, running: Callable[[], TrainSums]) -> bool:
            self.cbs.call("on_step_end", self.ctx, epoch, step, clock)
            self.times.step_ended()
            try:
                return boundary(step, lambda note="": self.step_checkpoint(
                    epoch, step, carried.add(running()), carried_s + clock(sync=True), note))
            finally:
                self.times.going_on()

        def boundary(step: int, write: Callable) -> bool:
            notice = self.host.notice(step) if not self.noticed or self.drain is not None else None
            if notice is not None and self.drain is not None:  # asked on: another node drained too
                self.drain.update(notice)
            elif notice is not None:
                self.noticed = notice
                if self.host.notice_stops:
                    self.ctx.stop(f"interrupted: {notice}", now=True)
                else:  # a drained node (`raytrain.notice`): checkpoint now, train on while a step still fits
                    self.drain = Drain(notice, self.host.rank, self.times)
                    self.drain.checkpoint(write, self.drain.first_note())
            if self.drain is not None:  # at the epoch's end, its evaluation and checkpoint must fit too
                end = 0.0 if step < last else math.inf if self.eval_s is None else self.eval_s + self.drain.checkpoint_s
                self.drain.at_boundary(write, end)
            if self.ctx.stop_now:
                if step < last:  # the epoch's own checkpoint covers its last step
                    write()
                return True
            if every and step % every == 0 and step < last and self.drain is None:
                write()
            return False
        return hook

    def step_checkpoint(self, epoch: int, step: int, local: TrainSums, train_s: float, note: str = "") -> None:
        """A checkpoint inside epoch `epoch`, after `step` steps: the state plus where in the epoch it was (the
        step, the epoch's sums and training seconds so far), so a resume goes on at the next step. The epoch's
        order is not stored: it is a function of (seed, epoch) (`data.memory.epoch_order`)."""
        t0 = time.perf_counter()
        sums = TrainSums(**collectives.reduce_sums(local.as_dict()))
        state = self.state
        row = {"epoch": epoch + 1, "step": step, "step_checkpoint": True, "elapsed_s": state.elapsed_s + train_s,
               **({"stop_reason": self.ctx.stop_reason} if self.ctx.stop_now else {})}
        state.position = {"epoch": epoch, "step": step, "sums": sums.as_dict(), "train_s": train_s}
        files = self.encode(row) if self.mode.writes_checkpoint else None
        state.position = None
        self.host.report(row, files)
        self.step_checkpoint_s += time.perf_counter() - t0
        if self.host.rank == 0:
            line = f"checkpoint at epoch {epoch + 1} step {step}/{self.plan.steps_per_epoch}"
            line += f" ({note})" if note else ""
            log.info(f"{line} ({self.ctx.stop_reason}): `--resume` continues at the next step"
                     if self.ctx.stop_now else line)

    def epoch(self, epoch: int) -> Optional[EpochRecord]:
        mode, state, ctx, exp = self.mode, self.state, self.ctx, self.exp
        pos = state.position if state.position and state.position["epoch"] == epoch else None
        state.position = None
        start = pos["step"] if pos else 0
        carried = TrainSums(**pos["sums"]) if pos and self.host.rank == 0 else TrainSums()  # summed once, on rank 0
        carried_s = pos["train_s"] if pos else 0.0
        self.cbs.call("on_epoch_start", ctx, epoch)
        self.step_checkpoint_s = 0.0
        t0 = time.perf_counter()
        new = mode.train_epoch(epoch, self.on_step(epoch, carried, carried_s), start_step=start)
        if ctx.stop_now:  # a notice: checkpointed at the step (or at the epoch's last one), and stopped
            if new.steps + start >= self.plan.steps_per_epoch:
                self.step_checkpoint(epoch, self.plan.steps_per_epoch, carried.add(new), carried_s + new_seconds(t0, new))
            raise Interrupted(f"{ctx.stop_reason} at epoch {epoch + 1}, step {start + new.steps}: checkpoint written")
        tr = TrainSums(**collectives.reduce_sums(carried.add(new).as_dict()))
        train_s = carried_s + time.perf_counter() - t0 - new.paused_seconds
        va = self.evaluate("val")
        epoch_s = carried_s + time.perf_counter() - t0 - new.paused_seconds
        self.eval_s = epoch_s - train_s
        state.elapsed_s += epoch_s
        state.epoch = epoch
        record = epoch_record(epoch, tr, va, train_s, epoch_s, self.host.world, state, mode.labels())
        record.step_checkpoint_s = self.step_checkpoint_s
        if not (math.isfinite(record.train_loss) and math.isfinite(record.val_loss)):
            ctx.stop("diverged")
        self.cbs.call("on_epoch_end", ctx, record)
        record.final = ctx.stop_reason is not None or epoch == exp.train.epochs - 1
        every = exp.checkpoint.every_epochs
        save = record.final or (every is not None and (epoch + 1) % every == 0) or self.drain is not None
        if record.final:
            record.stop_reason = ctx.stop_reason or "completed"
            if "test" in self.plan.shards:  # the test split: read once, at the end
                collectives.wait_for_all()  # loading it can take a rank a while: not inside an NCCL reduce
                te = self.evaluate("test")
                record.test_loss, record.test_accuracy = te.loss, te.accuracy
        # Encoded before on_fit_end (pruning folds magnitude masks into the weights): a resume with more
        # epochs keeps them.
        files = self.encode(record.metrics()) if save and mode.writes_checkpoint else None
        if record.final:
            self.cbs.call("on_fit_end", ctx, record)
            record.stats = mode.model_stats()
        if self.host.rank == 0:
            log.info(progress_line(record, exp.train.epochs))
        where = self.host.report(record.metrics(), files)
        self.cbs.call("on_report", ctx, record, where)
        return record

    def encode(self, row: dict) -> dict[str, bytes]:
        """The checkpoint's files, holding the row its report logs (`restore` logs it again if it was lost)."""
        self.state.row = row
        try:
            return ckpt.encode(self.state.state_dict(), self.mode.file_name)
        finally:
            self.state.row = None


def new_seconds(t0: float, new: TrainSums) -> float:
    return time.perf_counter() - t0 - new.paused_seconds


def epoch_record(epoch: int, tr: TrainSums, va: EvalSums, train_s: float, epoch_s: float, world: int, state,
                 labels: dict) -> EpochRecord:
    steps = max(tr.steps / world, 1.0)
    wait = tr.wait_seconds / world  # mean over ranks: time blocked waiting for the next batch
    return EpochRecord(
        epoch=epoch + 1, train_loss=tr.loss_sum / max(tr.count, 1), train_accuracy=tr.correct / max(tr.count, 1),
        val_loss=va.loss, val_accuracy=va.accuracy, samples_per_s=tr.count / max(train_s, 1e-9), epoch_s=epoch_s,
        elapsed_s=state.elapsed_s, trained_epochs=epoch + 1, step_ms=1000 * max(train_s - wait, 0.0) / steps,
        input_wait_s=wait, lr=current_lr(state.optimizer), skipped_steps=int(tr.skipped_steps), labels=labels)


def progress_line(r: EpochRecord, epochs: int) -> str:
    line = (f"epoch {r.epoch}/{epochs}  train_loss {r.train_loss:.4f}  val_loss {r.val_loss:.4f}  "
            f"val_acc {r.val_accuracy:.4f}  {r.samples_per_s:.0f} samples/s  {r.epoch_s:.1f}s  lr {r.lr:.3g}")
    if r.test_accuracy is not None:
        line += f"  test_acc {r.test_accuracy:.4f}"
    if r.final and r.stop_reason:
        line += f"  stop: {r.stop_reason}"
    return line
