"""One epoch of training and of evaluation: plain PyTorch, nothing of Ray.

Batches are dicts {"x": features, "y": labels} from any iterable; sums (not means) come back
so data-parallel ranks can be reduced exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from raytrain.techniques.memory_format import to_input_format
from raytrain.techniques.precision import autocast


@dataclass
class StepEnv:
    """What every step needs besides the model: where, how precise, which layout, how to normalise."""
    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    scale: float = 1.0
    mean: float = 0.0
    std: float = 1.0

    def inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch["x"].to(self.device, non_blocking=True).float()
        x = (x * self.scale - self.mean) / self.std
        return to_input_format(x, self.channels_last), batch["y"].to(self.device, non_blocking=True).long()


@dataclass
class SchedulerStepper:
    """Steps an LR scheduler once per optimizer step, never past its horizon (OneCycleLR raises there)."""
    scheduler: torch.optim.lr_scheduler.LRScheduler
    total_steps: int
    taken: int = 0

    def step(self) -> None:
        if self.taken < self.total_steps:
            self.scheduler.step()
            self.taken += 1


def train_epoch(model: nn.Module, batches, optimizer: torch.optim.Optimizer, stepper: SchedulerStepper,
                scaler: torch.amp.GradScaler, env: StepEnv, max_grad_norm: float | None = None) -> dict:
    """Train over `batches`; returns sums (loss_sum, correct, count, steps, skipped_steps, step_seconds)
    and the wall-clock time the first step finished."""
    model.train()
    # Sums stay on the device: a .item()/int() per step would make every GPU step wait for the kernel queue.
    loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
    correct = torch.zeros((), dtype=torch.int64, device=env.device)
    count = steps = skipped = 0
    step_seconds = 0.0
    first_step_at = None
    for batch in batches:
        t0 = time.perf_counter()
        x, y = env.inputs(batch)
        with autocast(env.precision, env.device):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if max_grad_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        scale_before = scaler.get_scale() if scaler.is_enabled() else None
        scaler.step(optimizer)
        scaler.update()
        if scale_before is not None and scaler.get_scale() < scale_before:
            skipped += 1  # inf/NaN gradients: GradScaler skipped optimizer.step and lowered the scale
        else:
            stepper.step()
        n = y.numel()
        loss_sum += loss.detach().double() * n
        correct += (logits.detach().argmax(1) == y).sum()
        count += n
        steps += 1
        step_seconds += time.perf_counter() - t0
        first_step_at = first_step_at or time.time()
    return {"loss_sum": float(loss_sum), "correct": int(correct), "count": count, "steps": steps,
            "skipped_steps": skipped, "step_seconds": step_seconds, "first_step_at": first_step_at or time.time()}


@torch.no_grad()
def evaluate(model: nn.Module, batches, env: StepEnv) -> dict:
    """Sums of loss and correct predictions over `batches`."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
    correct = torch.zeros((), dtype=torch.int64, device=env.device)
    count = 0
    for batch in batches:
        x, y = env.inputs(batch)
        with autocast(env.precision, env.device):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        count += y.numel()
    return {"loss_sum": float(loss_sum), "correct": int(correct), "count": count}
