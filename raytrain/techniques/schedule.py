"""LR schedules from torch.optim.lr_scheduler, always stepped once per batch.

Stepping per batch (with epoch lengths converted to steps) gives one code path for every
schedule: warmup ramps smoothly, OneCycleLR is per-batch by design, and StepLR's `step_size`
epochs become `step_size * steps_per_epoch` batches, which is the same curve.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

from raytrain.config import ScheduleConfig


def build_scheduler(optimizer: Optimizer, cfg: ScheduleConfig, epochs: int, steps_per_epoch: int,
                    peak_lr: float) -> sched.LRScheduler:
    """A scheduler for `epochs * steps_per_epoch` optimizer steps."""
    total = max(1, epochs * steps_per_epoch)
    if cfg.name == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=peak_lr, total_steps=total, pct_start=cfg.pct_start,
                                anneal_strategy="cos", cycle_momentum=False)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    rest = max(1, total - warmup)
    if cfg.name == "constant":
        main = sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif cfg.name == "step":
        main = sched.StepLR(optimizer, step_size=cfg.step_size * steps_per_epoch, gamma=cfg.gamma)
    else:  # cosine
        main = sched.CosineAnnealingLR(optimizer, T_max=rest, eta_min=peak_lr * cfg.min_lr_factor)
    if warmup == 0:
        return main
    ramp = sched.LinearLR(optimizer, start_factor=cfg.warmup_start_factor, end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def current_lr(optimizer: Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
