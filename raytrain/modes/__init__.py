"""How one rank trains: data parallel (`ddp.DataParallel`, any world size) or pipelined
(`pipeline.Pipelined`), both behind `Mode`, the interface the loop (`raytrain.loop`) uses."""

from __future__ import annotations

from typing import Callable, Optional, Protocol, runtime_checkable

from raytrain.callbacks import EpochClock
from raytrain.records import EvalSums, TrainSums


@runtime_checkable
class Mode(Protocol):
    exp: object  # raytrain.config.Experiment
    state: object  # raytrain.state.TrainState (the model, optimizer, schedule; epoch and clock)
    file_name: str  # this rank's file in a checkpoint folder

    @property
    def writes_checkpoint(self) -> bool:
        """Whether this rank's state goes into checkpoints (one replica of each shard)."""

    def train_epoch(self, epoch: int, on_step: Optional[Callable[[int, EpochClock], bool]] = None) -> TrainSums:
        """Every step of `epoch` through `epoch.run_steps`; `on_step` as there."""

    def evaluate(self, split: str = "val") -> EvalSums:
        """This rank's sums over `split` ("val" or "test"), leaving the model's train/eval mode as it was."""

    def labels(self) -> dict:
        """Settings each report carries (precision, channels_last, ...)."""

    def model_stats(self) -> dict:
        """The final model's statistics (parameters, sparsity, FLOPs); a collective: every rank calls it."""
