"""Early stopping on a plateau or on reaching a target, and time-to-target bookkeeping."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

from raytrain.config import EarlyStoppingConfig


@dataclass
class EarlyStopper:
    cfg: EarlyStoppingConfig
    best: Optional[float] = None
    bad_epochs: int = 0
    target_epoch: Optional[int] = None
    target_seconds: Optional[float] = None

    def update(self, epoch: int, value: float, elapsed_s: float) -> Optional[str]:
        """Record epoch `epoch`'s metric; return why training should stop now, or None."""
        sign = 1.0 if self.cfg.mode == "max" else -1.0
        if self.cfg.target is not None and self.target_epoch is None and sign * (value - self.cfg.target) >= 0:
            self.target_epoch, self.target_seconds = epoch + 1, elapsed_s
        if self.best is None or sign * (value - self.best) > self.cfg.min_delta:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.target_epoch is not None:
            return f"target {self.cfg.metric}={self.cfg.target} reached at epoch {self.target_epoch}"
        if self.bad_epochs >= self.cfg.patience:
            return f"no {self.cfg.metric} improvement > {self.cfg.min_delta} for {self.cfg.patience} epochs"
        return None

    def state_dict(self) -> dict:
        d = asdict(self)
        d.pop("cfg")
        return {k: (math.nan if v is None else v) for k, v in d.items()}

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, None if isinstance(v, float) and math.isnan(v) else v)
