"""One epoch of training and of evaluation: plain PyTorch, nothing of Ray.

Batches are dicts {"x": features, "y": labels} from any iterable; sums (not means) come back
so data-parallel ranks can be reduced exactly. `run_steps` is the one step loop: data parallelism and
pipelines differ only in the step they hand it. raytrain adds no wait for the GPU per step: sums stay on the
device, a GradScaler skip is read one step late (`SkipWatch`), and time is measured at the epoch's edges (with
a synchronize) plus the time spent waiting for the next batch. (GradScaler.step itself still reads its
found-inf flag every step, except with optimizers that take the flag in-kernel.)
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from raytrain.callbacks import EpochClock
from raytrain.records import EvalSums, TrainSums
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
        x = batch["x"].to(self.device, non_blocking=True)
        x = x if x.dtype == torch.float32 else x.float()
        if self.scale != 1.0:  # each op skipped is a kernel launch saved per step (a normalised device cache)
            x = x * self.scale
        if train and self.augment is not None:
            x = self.augment(x)
        if self.mean != 0.0 or self.std != 1.0:
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


class DataParallelStep:
    """One optimizer step of a (possibly DDP-wrapped) model: forward under autocast, scaled backward, optional
    clipping, the optimizer and the LR schedule. Returns the step's loss sum, correct count and batch size,
    left on the device (no wait for the GPU).

    `micro_batch`: a batch larger than this is cut into the fewest near-equal micro-batches of at most that many
    examples, each backward weighted by its share of the batch, gradients accumulated (DDP all-reduces once, on
    the last): one optimizer step on the gradient of the whole batch's mean loss, the same as one pass up to
    float rounding (BatchNorm aside: it normalises each micro-batch on its own). An elastic group running below
    its maximum size gives each rank a larger share of the same global batch this way, in the same memory."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, stepper: SchedulerStepper,
                 scaler: torch.amp.GradScaler, env: StepEnv, max_grad_norm: float | None = None,
                 micro_batch: Optional[int] = None):
        self.model, self.optimizer, self.stepper, self.scaler, self.env = model, optimizer, stepper, scaler, env
        self.max_grad_norm, self.watch, self.taken = max_grad_norm, SkipWatch(scaler), 0
        self.micro_batch = micro_batch

    def _settle_previous(self) -> None:  # the LR schedule follows only the steps GradScaler did not skip
        if not self.watch.resolve():
            self.stepper.step()

    def __call__(self, batch: dict):
        x, y = self.env.inputs(batch, train=True)
        n = y.numel()
        parts = -(-n // self.micro_batch) if self.micro_batch and n > self.micro_batch else 1
        if parts == 1:
            with autocast(self.env.precision, self.env.device):
                logits = self.model(x)
                loss = F.cross_entropy(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            loss_sum, correct = loss.detach().double() * n, (logits.detach().argmax(1) == y).sum()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum, correct = self._accumulate(x, y, parts)
        self._update()
        return loss_sum, correct, n

    def _accumulate(self, x: torch.Tensor, y: torch.Tensor, parts: int):
        """Backward over `parts` micro-batches; DDP's all-reduce held back (`no_sync`) until the last."""
        n, loss_sum, correct = y.numel(), 0.0, 0
        no_sync = getattr(self.model, "no_sync", None)
        for i, (xs, ys) in enumerate(zip(x.tensor_split(parts), y.tensor_split(parts))):
            with no_sync() if no_sync is not None and i < parts - 1 else contextlib.nullcontext():
                with autocast(self.env.precision, self.env.device):
                    logits = self.model(xs)
                    loss = F.cross_entropy(logits.float(), ys)
                self.scaler.scale(loss * (ys.numel() / n)).backward()
            loss_sum = loss_sum + loss.detach().double() * ys.numel()
            correct = correct + (logits.detach().argmax(1) == ys).sum()
        return loss_sum, correct

    def _update(self) -> None:
        """Clip, step the optimizer (GradScaler may skip it) and the LR schedule."""
        if self.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        if self.watch.enabled and self.taken:
            self._settle_previous()  # step t-1's answer, read while step t is queued
        before = self.watch.before_update()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.watch.after_update(before)
        if not self.watch.enabled:
            self.stepper.step()
        self.taken += 1

    def finish(self) -> int:
        """Settle the last step's skip; returns how many steps GradScaler skipped."""
        if self.watch.enabled and self.taken:
            self._settle_previous()
        return self.watch.skipped


def run_steps(batches, step: Callable, env: StepEnv, on_step: Optional[Callable] = None,
              first_step: int = 1) -> TrainSums:
    """The one step loop of every mode: `step(batch)` -> (loss sum, correct, n) for each batch, timed.
    `on_step(step, clock, running)` runs after each (steps numbered from `first_step`, so a resumed epoch goes
    on counting; `running()` is the sums so far, read only when asked: it waits for the device); it returns
    True to end the epoch there. Sums stay on the device until the epoch ends."""
    clock = EpochClock(env.synchronize)
    loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
    correct = torch.zeros((), dtype=torch.int64, device=env.device)
    count = steps = 0
    wait = [0.0]
    for batch in timed(batches, wait):
        ls, c, n = step(batch)
        loss_sum += ls
        correct += c
        count += n
        steps += 1
        if on_step is not None and on_step(first_step + steps - 1, clock, lambda: TrainSums(
                float(loss_sum), int(correct), count, steps, 0, wait[0], clock.paused_s)):
            break
    env.synchronize()
    return TrainSums(float(loss_sum), int(correct), count, steps, 0, wait[0], clock.paused_s)


def train_epoch(model: nn.Module, batches, optimizer: torch.optim.Optimizer, stepper: SchedulerStepper,
                scaler: torch.amp.GradScaler, env: StepEnv, max_grad_norm: float | None = None,
                on_step: Optional[Callable] = None, first_step: int = 1, micro_batch: Optional[int] = None) -> TrainSums:
    """Train `model` over `batches` (see `run_steps`; `micro_batch`: see `DataParallelStep`); the sums include
    the steps GradScaler skipped."""
    model.train()
    step = DataParallelStep(model, optimizer, stepper, scaler, env, max_grad_norm, micro_batch)
    sums = run_steps(batches, step, env, on_step, first_step)
    sums.skipped_steps = step.finish()
    return sums


@torch.no_grad()
def evaluate(model: nn.Module, batches, env: StepEnv) -> EvalSums:
    """Sums of loss and correct predictions over `batches`; the model's train/eval mode is put back."""
    was_training = model.training
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
    model.train(was_training)
    return EvalSums(float(loss_sum), int(correct), count)
