"""Techniques that act at the loop's events, as callbacks (`raytrain.callbacks`), and their registry.

A technique with a schedule (pruning at an epoch's start and its masks folded at the end; early stopping
and time to target at an epoch's end) is a pure object of its own module (`pruning.PruningSchedule`,
`early_stopping.EarlyStopper`, tested alone) plus a thin callback here. Adding one: its module, its
callback, and one line in `REGISTRY`.
"""

from __future__ import annotations

from typing import Callable, Optional

from raytrain.callbacks import Callback, LoopContext
from raytrain.techniques.early_stopping import EarlyStopper


class Pruning(Callback):
    """Prunes the mode's model when the schedule says so at an epoch's start (rebuilding the training module
    and trimming the optimizer), and folds magnitude masks into the weights at the end."""

    def __init__(self, mode):
        self.mode, self.schedule = mode, mode.pruning

    def on_epoch_start(self, ctx: LoopContext, epoch: int) -> None:
        rebuilt = self.schedule.step(epoch, self.mode.raw, ctx.state.optimizer, self.mode.wrap)
        if rebuilt is not None:
            self.mode.model = rebuilt

    def on_fit_end(self, ctx: LoopContext, record) -> None:
        self.schedule.finish(self.mode.raw)

    def state_dict(self) -> dict:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.schedule.load_state_dict(state)


class EarlyStopping(Callback):
    """`train.early_stopping`: stop on a plateau or on reaching the target; records time to target (training
    seconds and epochs, and seconds since the command started where known) on the epoch that reached it and
    every epoch after."""

    def __init__(self, cfg):
        self.stopper = EarlyStopper(cfg)

    def on_epoch_end(self, ctx: LoopContext, record) -> None:
        s = self.stopper
        value = record.metrics()[s.cfg.metric]
        reason = s.update(record.epoch - 1, float(value), record.elapsed_s)
        if s.target_epoch is not None:
            record.extra.update(time_to_target_s=s.target_seconds, time_to_target_epochs=s.target_epoch)
            if s.target_epoch == record.epoch and "since_launch_s" in record.extra:
                record.extra["time_to_target_since_launch_s"] = record.extra["since_launch_s"]
        if reason:
            ctx.stop(reason)

    def state_dict(self) -> dict:
        return self.stopper.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stopper.load_state_dict(state)


REGISTRY: list[Callable[[object, object], Optional[Callback]]] = [
    lambda exp, mode: Pruning(mode) if getattr(mode, "pruning", None) is not None else None,
    lambda exp, mode: EarlyStopping(exp.train.early_stopping) if exp.train.early_stopping else None,
]


def technique_callbacks(exp, mode) -> list[Callback]:
    """The run's technique callbacks, in registry order."""
    return [cb for make in REGISTRY if (cb := make(exp, mode)) is not None]
