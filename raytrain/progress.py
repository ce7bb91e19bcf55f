"""Progress inside an epoch, so a long epoch is never silence: a live bar (steps, samples/s, ETA) when the
output is a terminal, else a plain line every `RAYTRAIN_PROGRESS_S` seconds (10 by default: CI logs,
`ray job submit`, a Ray worker's output). Short epochs print nothing extra; nothing is printed per step.

It runs after every step (a callback's `on_step_end`), so it only reads a clock and compares. Beside it,
`StartupMarks`: when the worker entered, when its model was ready and when its first step finished, as
seconds since the user's command started, on the first epoch's record (the driver's start-up breakdown).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable, Optional, TextIO

from raytrain.callbacks import Callback, EpochClock, LoopContext

log = logging.getLogger("raytrain")

BAR_AFTER_S = 2.0  # a terminal bar appears once an epoch has run this long
BAR_EVERY_S = 0.5
BAR_WIDTH = 24


def interval_s() -> float:
    try:
        return max(0.1, float(os.environ.get("RAYTRAIN_PROGRESS_S", "10")))
    except ValueError:
        return 10.0


class EpochProgress:
    """One per run (rank 0); `at(epoch)` gives that epoch's step hook, `end()` clears a bar."""

    def __init__(self, steps_per_epoch: int, epochs: int, samples_per_step: int,
                 stream: Optional[TextIO] = None, tty: Optional[bool] = None):
        self.steps, self.epochs, self.samples = steps_per_epoch, epochs, samples_per_step
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = BAR_EVERY_S if self.tty else interval_s()
        self.first = BAR_AFTER_S if self.tty else self.every
        self.shown = False

    def at(self, epoch: int) -> Callable[[int, Callable], float]:
        next_at = [self.first]

        def hook(step: int, clock: Callable) -> float:
            now = clock()
            if now >= next_at[0] and step < self.steps:
                next_at[0] = now + self.every
                self._show(epoch, step, now)
            return 0.0
        return hook

    def _show(self, epoch: int, step: int, seconds: float) -> None:
        rate = step * self.samples / max(seconds, 1e-9)
        eta = (self.steps - step) * seconds / max(step, 1)
        head = f"epoch {epoch + 1}/{self.epochs}"
        if self.tty:
            done = int(BAR_WIDTH * step / max(self.steps, 1))
            bar = "#" * done + "." * (BAR_WIDTH - done)
            self.stream.write(f"\r[raytrain] {head}  [{bar}] {step}/{self.steps}  {rate:,.0f} samples/s  "
                              f"ETA {eta:.0f} s\033[K")
            self.stream.flush()
            self.shown = True
        else:
            log.info(f"{head}  step {step}/{self.steps} ({100 * step / max(self.steps, 1):.0f}%)  "
                     f"{rate:,.0f} samples/s  {seconds:.0f} s in, ETA {eta:.0f} s")

    def end(self) -> None:
        """Before the epoch's own line: the bar's line is cleared for it."""
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


class Progress(Callback):
    """`EpochProgress` at the loop's events (rank 0, where the plan asks for console lines)."""

    def __init__(self, steps_per_epoch: int, epochs: int, samples_per_step: int, **kw):
        self.bar = EpochProgress(steps_per_epoch, epochs, samples_per_step, **kw)
        self.hook: Optional[Callable] = None

    def on_epoch_start(self, ctx: LoopContext, epoch: int) -> None:
        self.hook = self.bar.at(epoch)

    def on_step_end(self, ctx: LoopContext, epoch: int, step: int, clock: EpochClock) -> None:
        if self.hook is not None:
            self.hook(step, clock)

    def on_epoch_end(self, ctx: LoopContext, record) -> None:
        self.bar.end()


class StartupMarks(Callback):
    """Seconds since the command started (`launch`, when known) at: the worker entering, its model ready, its
    first step finished (after a synchronize: when it really finished); on the first epoch this process runs.
    Every epoch also gets `since_launch_s`, the user's wait so far."""

    def __init__(self, launch: Optional[float], entered: float):
        self.launch, self.entered = launch, entered
        self.model_ready: Optional[float] = None
        self.first_step: Optional[float] = None
        self.reported = False

    def on_fit_start(self, ctx: LoopContext) -> None:
        self.model_ready = time.time()

    def on_step_end(self, ctx: LoopContext, epoch: int, step: int, clock: EpochClock) -> None:
        if self.first_step is None:
            clock(sync=True)
            self.first_step = time.time()

    def on_epoch_end(self, ctx: LoopContext, record) -> None:
        if self.launch is None:
            return
        record.extra["since_launch_s"] = time.time() - self.launch
        if not self.reported:
            self.reported = True
            first = self.first_step or time.time()
            record.extra.update(first_step_s=first - self.launch,
                                startup_worker_entered_s=self.entered - self.launch,
                                startup_model_ready_s=(self.model_ready or first) - self.launch)

    def state_dict(self) -> dict:
        return {}  # per process: a resumed run's start-up is its own
