"""`TrainState`: everything a checkpoint holds, for every mode (one process, DDP, pipeline stages).

Its components are checkpointable themselves (`state_dict()` / `load_state_dict()`), torchtitan-style;
the payload holds only tensors, numbers and strings, so it loads with `weights_only=True`. A pruned
model's structure (shapes, masks) is restored onto the freshly built model *before* DDP and the
optimizer are built (`pruning.restore_structure`); `load_state_dict` then fills in the values.
Techniques and other callbacks keep their own state (`callbacks`: name -> state); checkpoints written
before callbacks existed kept early stopping and pruning under "stopper" and "pruning", read as theirs.
`position` is where inside an epoch a step checkpoint was taken (None: at an epoch's end).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from raytrain.config import Experiment
from raytrain.data.prepare import DataInfo
from raytrain.epoch import SchedulerStepper

LEGACY_CALLBACK_KEYS = {"stopper": "EarlyStopping", "pruning": "Pruning"}


@dataclass
class TrainState:
    model: Any  # an nn.Module, or a pipeline rank's stages (state_dict keys are the full model's)
    optimizer: torch.optim.Optimizer
    stepper: SchedulerStepper
    scaler: torch.amp.GradScaler
    exp: Experiment
    info: DataInfo
    stage: int = 0
    stages: int = 1
    epoch: int = -1  # last finished epoch (0-based)
    elapsed_s: float = 0.0  # training seconds so far, across resumes
    position: Optional[dict] = None  # mid-epoch: {"epoch", "step", "sums"} (see raytrain.loop)
    row: Optional[dict] = None  # the metrics row of the report carrying this checkpoint: a resume logs it if
    # the run lost it (a worker killed after its checkpoint was persisted, before the row was appended)
    callbacks: Any = None  # raytrain.callbacks.Callbacks whose states are saved
    restored_callbacks: dict = field(default_factory=dict)  # their states from the checkpoint loaded

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.stepper.scheduler.state_dict(), "scheduler_steps": self.stepper.taken,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "callbacks": self.callbacks.state_dict() if self.callbacks is not None else {},
            "position": self.position or {}, "row": self.row or {}, "rng": torch.get_rng_state(),
            "epoch": self.epoch, "elapsed_s": self.elapsed_s, "stage": self.stage, "stages": self.stages,
            "experiment": self.exp.model_dump_json(), "data": self.info.to_json(),
        }

    def load_state_dict(self, d: dict) -> None:
        self.model.load_state_dict(d["model"])
        self.optimizer.load_state_dict(d["optimizer"])
        self.stepper.scheduler.load_state_dict(d["scheduler"])
        self.stepper.taken = int(d["scheduler_steps"])
        if d.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(d["scaler"])
        self.restored_callbacks = dict(d.get("callbacks") or {})
        for old, name in LEGACY_CALLBACK_KEYS.items():
            if d.get(old) and name not in self.restored_callbacks:
                self.restored_callbacks[name] = d[old]
        self.position = d.get("position") or None
        self.row = d.get("row") or None
        if isinstance(d.get("rng"), torch.Tensor):
            torch.set_rng_state(d["rng"])
        self.epoch, self.elapsed_s = int(d["epoch"]), float(d["elapsed_s"])
