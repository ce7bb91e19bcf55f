"""One epoch of training and of evaluation: plain PyTorch, nothing of Ray.

Batches are dicts {"x": features, "y": labels} from any iterable; sums (not means) come back
so data-parallel ranks can be reduced exactly. raytrain adds no wait for the GPU per step: sums stay on the
device, a GradScaler skip is read one step late (`SkipWatch`), and time is measured at the epoch's edges (with
a synchronize) plus the time spent waiting for the next batch. (GradScaler.step itself still reads its
found-inf flag every step, except with optimizers that take the flag in-kernel.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from raytrain.techniques.memory_format import to_input_format
from raytrain.techniques.precision import SkipWatch, autocast


@dataclass
class StepEnv:
    """What every step needs besides the model: where, how precise, which layout, how to normalise."""
    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    scale: float = 1.0
    mean: float = 0.0
    std: float = 1.0
    augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # training batches only, before normalising

    def inputs(self, batch: dict, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch["x"].to(self.device, non_blocking=True).float() * self.scale
        if train and self.augment is not None:
            x = self.augment(x)
        x = (x - self.mean) / self.std
        return to_input_format(x, self.channels_last), batch["y"].to(self.device, non_blocking=True).long()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


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


def timed(batches, clock: list):
    """Yield from `batches`, adding the seconds spent waiting for each batch to clock[0]."""
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        clock[0] += time.perf_counter() - t0
        yield batch


def train_epoch(model: nn.Module, batches, optimizer: torch.optim.Optimizer, stepper: SchedulerStepper,
                scaler: torch.amp.GradScaler, env: StepEnv, max_grad_norm: float | None = None,
                on_step: Callable[[int, Callable], float] | None = None) -> dict:
    """Train over `batches`; returns sums (loss_sum, correct, count, steps, skipped_steps), the seconds
    spent waiting for input, and the wall-clock time the first step had finished. `on_step(steps, clock)`,
    if given, runs after every step; `clock(sync)` is the epoch's training seconds so far (with sync=True,
    once the device has finished the queued steps); it returns the seconds it spent that are not training
    (e.g. an evaluation mid-epoch: `probe_seconds`)."""
    model.train()
    started, paused = time.perf_counter(), 0.0

    def clock(sync: bool = False) -> float:
        if sync:
            env.synchronize()
        return time.perf_counter() - started - paused
    loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
    correct = torch.zeros((), dtype=torch.int64, device=env.device)
    watch = SkipWatch(scaler)
    count = steps = 0
    wait = [0.0]
    first_step_at = None

    def settle_previous() -> None:  # the LR schedule follows only the steps GradScaler did not skip
        if not watch.resolve():
            stepper.step()

    for batch in timed(batches, wait):
        x, y = env.inputs(batch, train=True)
        with autocast(env.precision, env.device):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if max_grad_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        if watch.enabled and steps:
            settle_previous()  # step t-1's answer, read while step t is queued
        before = watch.before_update()
        scaler.step(optimizer)
        scaler.update()
        watch.after_update(before)
        if not watch.enabled:
            stepper.step()
        n = y.numel()
        loss_sum += loss.detach().double() * n
        correct += (logits.detach().argmax(1) == y).sum()
        count += n
        steps += 1
        if first_step_at is None:
            env.synchronize()  # once: the first step's time is when it really finished
            first_step_at = time.time()
        if on_step is not None:
            spent = on_step(steps, clock)
            if spent:
                paused += spent
                model.train()  # the probe evaluated in eval mode
    if watch.enabled and steps:
        settle_previous()
    env.synchronize()
    return {"loss_sum": float(loss_sum), "correct": int(correct), "count": count, "steps": steps,
            "skipped_steps": watch.skipped, "wait_seconds": wait[0], "first_step_at": first_step_at or time.time(),
            "probe_seconds": paused}


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
