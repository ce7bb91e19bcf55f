"""`TrainState`: everything a checkpoint holds, for every mode (one process, DDP, pipeline stages).

Its components are checkpointable themselves (`state_dict()` / `load_state_dict()`), torchtitan-style;
the payload holds only tensors, numbers and strings, so it loads with `weights_only=True`. A pruned
model's structure (shapes, masks) is restored onto the freshly built model *before* DDP and the
optimizer are built (`pruning.restore_structure`); `load_state_dict` then fills in the values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from raytrain.config import Experiment
from raytrain.data.prepare import DataInfo
from raytrain.epoch import SchedulerStepper
from raytrain.techniques.early_stopping import EarlyStopper
from raytrain.techniques.pruning import PruningSchedule, refresh_masked_weights


@dataclass
class TrainState:
    model: Any  # an nn.Module, or a pipeline rank's stages (state_dict keys are the full model's)
    optimizer: torch.optim.Optimizer
    stepper: SchedulerStepper
    scaler: torch.amp.GradScaler
    stopper: Optional[EarlyStopper]
    pruning: Optional[PruningSchedule]
    exp: Experiment
    info: DataInfo
    stage: int = 0
    stages: int = 1
    epoch: int = -1  # last finished epoch (0-based)
    elapsed_s: float = 0.0  # training seconds so far, across resumes

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.stepper.scheduler.state_dict(), "scheduler_steps": self.stepper.taken,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "stopper": self.stopper.state_dict() if self.stopper else {},
            "pruning": self.pruning.state_dict() if self.pruning else {},
            "epoch": self.epoch, "elapsed_s": self.elapsed_s, "stage": self.stage, "stages": self.stages,
            "experiment": self.exp.model_dump_json(), "data": self.info.to_json(),
        }

    def load_state_dict(self, d: dict) -> None:
        self.model.load_state_dict(d["model"])
        if isinstance(self.model, torch.nn.Module):
            refresh_masked_weights(self.model)
        self.optimizer.load_state_dict(d["optimizer"])
        self.stepper.scheduler.load_state_dict(d["scheduler"])
        self.stepper.taken = int(d["scheduler_steps"])
        if d.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(d["scaler"])
        if self.stopper and d.get("stopper"):
            self.stopper.load_state_dict(d["stopper"])
        if self.pruning and d.get("pruning"):
            self.pruning.load_state_dict(d["pruning"])
        self.epoch, self.elapsed_s = int(d["epoch"]), float(d["elapsed_s"])
