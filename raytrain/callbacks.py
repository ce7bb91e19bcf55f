"""The loop's one hook point: `Callback`, the events it is called at, and what it is handed.

Techniques (pruning, early stopping and time to target), the start-up marks, in-epoch progress, a search's
rungs and its warm-up, and user code (TensorBoard, MLflow, your own) are all callbacks; the loop
(`raytrain.loop`) knows only the events. The order of a step: the mode trains it, then `on_step_end` runs.
The order of an epoch:

    on_epoch_start -> steps (on_step_end after each) -> evaluation -> on_epoch_end (may stop, may add
    metrics) -> checkpoint encoded -> [final: on_fit_end] -> report written -> on_report (with the
    checkpoint's URI where the host knows it); on any error ending the loop: on_exception

In a search trial Tune may end the trial inside a report (ASHA stopping it, or its last epoch): no
on_report follows that one, only on_exception with SystemExit.

A callback's `state_dict()` is saved in every checkpoint under its `name` and handed back to
`load_state_dict` on resume, so a callback with memory (early stopping's best, a search's rung clock)
continues where the run left off. A callback that raises fails the run with its name in one line; the
checkpoints already written are untouched (nothing is written after the failing event).
"""

from __future__ import annotations

import importlib
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from raytrain.errors import UserError

log = logging.getLogger("raytrain")


class EpochClock:
    """Training seconds of the current epoch: `clock()` (on a GPU, `clock(sync=True)` once the queued steps
    are done). Time a callback spends inside `with clock.paused():` (an evaluation mid-epoch) is not training."""

    def __init__(self, synchronize: Callable[[], None] = lambda: None, offset: float = 0.0):
        self.started, self.paused_s, self.offset, self._sync = time.perf_counter(), 0.0, offset, synchronize

    def __call__(self, sync: bool = False) -> float:
        if sync:
            self._sync()
        return self.offset + time.perf_counter() - self.started - self.paused_s

    @contextmanager
    def paused(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - t0


@dataclass
class LoopContext:
    """What the loop hands every callback. `evaluate(split)` returns `records.EvalSums` (every rank must call
    it together); `report(metrics)` writes a row with no checkpoint (a search's mid-epoch rung)."""
    exp: Any  # raytrain.config.Experiment
    plan: Any  # raytrain.plan.RunPlan
    rank: int
    world: int
    state: Any  # raytrain.state.TrainState: epoch, elapsed_s, model, optimizer
    mode: Any  # the mode (raytrain.modes.Mode)
    evaluate: Callable[[str], Any]
    report: Callable[[dict], None]
    steps_per_epoch: int = 0
    stop_reason: Optional[str] = None
    stop_now: bool = False  # set by `stop(..., now=True)`: end after the current step (checkpoint on notice)
    info: dict = field(default_factory=dict)

    @property
    def run_dir(self) -> Optional[str]:
        return self.plan.run_dir

    def stop(self, reason: str, now: bool = False) -> None:
        """End the run after this epoch (or, with `now`, after the current step) with `reason`; the first reason
        given wins."""
        self.stop_reason = self.stop_reason or reason
        self.stop_now = self.stop_now or now


class Callback:
    """Override the events you need; each is called on every rank (check `ctx.rank` for rank-0-only work)."""

    @property
    def name(self) -> str:
        return type(self).__name__

    def on_fit_start(self, ctx: LoopContext) -> None:
        """After the model is built and any checkpoint restored, before the first epoch."""

    def on_epoch_start(self, ctx: LoopContext, epoch: int) -> None:
        """Before epoch `epoch` (0-based)'s first step."""

    def on_step_end(self, ctx: LoopContext, epoch: int, step: int, clock: EpochClock) -> None:
        """After step `step` (1-based) of `epoch`. Runs every step: keep it cheap."""

    def on_epoch_end(self, ctx: LoopContext, record) -> None:
        """The epoch's `records.EpochRecord`, before it is reported: add to `record.extra`, or `ctx.stop(reason)`."""

    def on_fit_end(self, ctx: LoopContext, record) -> None:
        """The final epoch, after its checkpoint is encoded and before its report (the model's final form)."""

    def on_report(self, ctx: LoopContext, record, checkpoint: Optional[str]) -> None:
        """After the epoch's row (and its checkpoint, `checkpoint` being its URI where known) is written."""

    def on_exception(self, ctx: LoopContext, error: BaseException) -> None:
        """The loop is ending with `error` (a crash, an interrupt, or Tune ending a trial with SystemExit):
        close what you opened. An error raised here is logged, never hides `error`."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class CallbackError(RuntimeError):
    """A callback raised: the message names it and the event, in one line."""


class Callbacks:
    """Calls each callback's event in order; an exception becomes one `CallbackError` naming the callback."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.items = list(callbacks)
        names = [c.name for c in self.items]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise UserError(f"callbacks: {sorted(dup)} given twice (each callback's state is saved under its name)")

    def call(self, event: str, *args) -> None:
        for cb in self.items:
            try:
                getattr(cb, event)(*args)
            except (UserError, CallbackError, KeyboardInterrupt):
                raise
            except Exception as e:
                text = str(e).strip().splitlines()[-1] if str(e).strip() else ""
                raise CallbackError(f"callback {cb.name}.{event} failed: {type(e).__name__}: {text}"[:400]) from e

    def on_exception(self, ctx: LoopContext, error: BaseException) -> None:
        for cb in self.items:
            try:
                cb.on_exception(ctx, error)
            except Exception as e:
                log.warning(f"callback {cb.name}.on_exception failed: {type(e).__name__}: {e}")

    def state_dict(self) -> dict:
        return {cb.name: cb.state_dict() for cb in self.items}

    def load_state_dict(self, states: dict) -> None:
        for cb in self.items:
            if states.get(cb.name):
                cb.load_state_dict(states[cb.name])


def from_names(specs: Iterable[Any]) -> list[Callback]:
    """Instances of the YAML's `callbacks:` entries: "module:Name" or {name: "module:Name", args: {...}}."""
    out = []
    for i, spec in enumerate(specs):
        name, args = (spec, {}) if isinstance(spec, str) else (spec.name, dict(spec.args))
        mod, _, attr = name.partition(":")
        if not mod or not attr:
            raise UserError(f"callbacks[{i}]: {name!r} is not 'module:Name' (e.g. raytrain.integrations:MLflow)")
        try:
            cls = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"callbacks[{i}]: cannot import {name!r} ({e}); install it or put it on PYTHONPATH") from None
        try:
            cb = cls(**args)
        except TypeError as e:
            raise UserError(f"callbacks[{i}]: {name}({', '.join(args)}): {e}") from None
        if not isinstance(cb, Callback):
            raise UserError(f"callbacks[{i}]: {name} is not a raytrain.Callback subclass")
        out.append(cb)
    return out
