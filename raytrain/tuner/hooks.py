"""What a search adds to a trial's loop, as callbacks (`raytrain.callbacks`): its rungs on training seconds,
the process warm-up before the trial's clock starts, and the annotations every report carries. The loop
knows none of them; `trial.run_trial` registers them."""

from __future__ import annotations

import gc
import itertools
import time
from typing import Optional

import torch

from raytrain.callbacks import Callback, EpochClock, LoopContext
from raytrain.tuner.spec import RungClock


def span(started: float) -> dict:
    return {"trial_started_mono": started, "reported_mono": time.monotonic()}


class TrialReport(Callback):
    """Adds to each of a trial's reports: its monotonic start and report times (overlap checks), the warm-up
    taken before its clock (`warm_up_s`) and, for a time objective, ASHA's signal (`RungClock`: seconds to the
    rung accuracy, or the best val accuracy so far). The clock's state is checkpointed with the trial, so a
    restored trial's rungs go on."""

    def __init__(self, clock: RungClock, started: float):
        self.clock, self.started, self.warm_up_s = clock, started, 0.0

    @property
    def name(self) -> str:
        return "RungClock"

    def annotate(self, metrics: dict) -> dict:
        return self.clock.add({**metrics, **span(self.started), "warm_up_s": self.warm_up_s})

    def on_epoch_end(self, ctx: LoopContext, record) -> None:
        row = record.metrics()
        record.extra.update({k: v for k, v in self.annotate(row).items() if k not in row})

    def state_dict(self) -> dict:
        return self.clock.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.clock.load_state_dict(state)


class WarmUp(Callback):
    """A few throwaway training steps of the trial's model before its clock starts. A process's first steps
    pay for its thread pool, its first kernels and its first iterator, whatever the config; a trial that paid
    them would be ranked behind for it (docs/search.md has the measurements). Nothing of the run is touched: a
    second model, optimizer and iterator are built for these steps and dropped. Materialised data, data
    parallel only (a streamed split's epoch must be read to its end); every trial warms up, reused process or
    not, so that trials are timed alike."""

    def __init__(self, report: TrialReport, steps: int = 3):
        self.report, self.steps = report, steps

    def on_fit_start(self, ctx: LoopContext) -> None:
        exp, info = ctx.exp, ctx.plan.info()
        if exp.parallel.pipeline.stages > 1 or info.ingest == "stream" or ctx.state.epoch >= 0:
            return
        from raytrain.modes.ddp import DataParallel

        t0 = time.perf_counter()
        rng = torch.get_rng_state()
        mode = DataParallel(exp, info, ctx.plan, ctx.mode.host, None, lambda name: None)
        mode.train_epoch(0, limit=self.steps)
        del mode
        gc.collect()  # its model and (on a GPU) its device cache go before training goes on
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # back to the device: the run's device-cache decision reads free memory
        torch.set_rng_state(rng)  # the run's draws are those of an unwarmed run with the same seed
        self.report.warm_up_s = time.perf_counter() - t0


class RungProbe(Callback):
    """A search's rungs on training seconds: when the run's training clock (the one time_to_target_s reads)
    passes the next rung mid-epoch, evaluate and report val accuracy at that clock; the evaluation's seconds
    are not training. A rung passed on an epoch's last step or during its evaluation is left to the epoch's own
    report. One worker only (the spec refuses more): ranks timing themselves could disagree on the step and
    leave each other waiting in the evaluation."""

    def __init__(self, rungs_s: list[float], report: Optional[TrialReport] = None):
        self.pending, self.report = sorted(rungs_s), report  # no report: annotated by the driver (nested trials)

    def _passed(self, elapsed_s: float) -> None:
        self.pending = list(itertools.dropwhile(lambda r: r <= elapsed_s, self.pending))

    def on_fit_start(self, ctx: LoopContext) -> None:
        if ctx.world != 1:
            raise ValueError("rungs on seconds need a one-worker run")
        self._passed(ctx.state.elapsed_s)  # a resumed trial's are behind it

    def on_step_end(self, ctx: LoopContext, epoch: int, step: int, clock: EpochClock) -> None:
        if not self.pending or step >= ctx.steps_per_epoch or ctx.state.elapsed_s + clock() < self.pending[0]:
            return
        now = ctx.state.elapsed_s + clock(sync=True)  # on a GPU: once the queued steps are done
        if now < self.pending[0]:
            return
        self._passed(now)
        with clock.paused():
            va = ctx.evaluate("val")
            row = {"val_loss": va.loss, "val_accuracy": va.accuracy, "elapsed_s": now,
                   "trained_epochs": epoch + step / ctx.steps_per_epoch, "probe": True}
            ctx.report(self.report.annotate(row) if self.report else row)

    def on_epoch_end(self, ctx: LoopContext, record) -> None:
        self._passed(record.elapsed_s)  # a rung passed during evaluation: the epoch's report stands for it
