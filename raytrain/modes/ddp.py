"""Data-parallel training of one rank (a single worker is world 1): model, techniques, optimizer, data."""

from __future__ import annotations

import itertools
from typing import Callable, Optional

from torch import nn

from raytrain import collectives
from raytrain.checkpoint import STATE_FILE
from raytrain.data.batches import Batches
from raytrain.epoch import SchedulerStepper, StepEnv, evaluate, train_epoch
from raytrain.models import model_from
from raytrain.optim import build_optimizer
from raytrain.state import TrainState
from raytrain.techniques import augment, prepare_model
from raytrain.techniques import pruning as prune_mod
from raytrain.techniques.early_stopping import EarlyStopper
from raytrain.techniques.memory_format import wants_channels_last
from raytrain.techniques.precision import make_grad_scaler, resolve_precision
from raytrain.techniques.schedule import build_scheduler


class DataParallel:
    file_name = STATE_FILE

    def __init__(self, exp, info, plan, host, factory: Optional[Callable], restore: Callable[[str], Optional[dict]]):
        self.exp, self.info, self.host = exp, info, host
        device = host.device
        precision = resolve_precision(exp.train.precision, device)
        raw = model_from(exp.model, info.in_shape, info.num_classes, factory)
        channels_last = wants_channels_last(exp.train.channels_last, raw)
        schedule = None
        if exp.pruning.method != "none":
            schedule = prune_mod.PruningSchedule(exp.pruning, exp.pruning_end_epoch, info.in_shape)
        payload = restore(self.file_name)
        if payload is not None:  # the pruned structure first: DDP and the optimizer see the final parameters
            prune_mod.restore_structure(raw, payload["model"])
        self.env = StepEnv(device, precision, channels_last, info.scale, info.mean, info.std,
                           augment.build(exp.data.augment, exp.seed, info.in_shape, device))
        self.raw = raw
        self.model = self._wrap(raw)
        optimizer = build_optimizer(raw, exp.train.optimizer)
        steps = plan.steps_per_epoch
        scheduler = build_scheduler(optimizer, exp.train.schedule, exp.train.epochs, steps, exp.train.optimizer.lr)
        stopper = EarlyStopper(exp.train.early_stopping) if exp.train.early_stopping else None
        self.state = TrainState(raw, optimizer, SchedulerStepper(scheduler, exp.train.epochs * steps),
                                make_grad_scaler(precision, device), stopper, schedule, exp, info)
        if payload is not None:
            self.state.load_state_dict(payload)
        shards = {s: host.shard(plan.shard(s, host.rank)) for s in ("train", "val")}
        self.data = Batches(exp, info, shards, host.rank, host.world, device)

    @property
    def writes_checkpoint(self) -> bool:
        return self.host.rank == 0

    def _wrap(self, raw: nn.Module) -> nn.Module:
        """channels_last -> device -> DDP -> compile (raytrain.techniques gives the order and why)."""
        return prepare_model(raw, self.env.device, self.env.channels_last, self.exp.train.compile, self._ddp)

    def _ddp(self, module: nn.Module) -> nn.Module:
        if self.host.world == 1:
            return module
        dev = self.env.device
        return nn.parallel.DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None)

    def before_epoch(self, epoch: int) -> None:
        if self.state.pruning is not None:
            rebuilt = self.state.pruning.step(epoch, self.raw, self.state.optimizer, self._wrap)
            if rebuilt is not None:
                self.model = rebuilt

    def train_epoch(self, epoch: int, on_step=None, limit: Optional[int] = None) -> dict:
        s = self.state
        if self.env.augment is not None:
            self.env.augment.reseed(epoch, self.host.rank)
        batches = self.data.train(epoch)
        if limit is not None:  # `epochs.warm_up`: the first steps only
            batches = itertools.islice(batches, limit)
        return train_epoch(self.model, batches, s.optimizer, s.stepper, s.scaler, self.env,
                           self.exp.train.max_grad_norm, on_step)

    def evaluate(self) -> dict:
        return evaluate(self.model, self.data.val(), self.env)

    def finish(self) -> None:
        if self.state.pruning is not None:
            self.state.pruning.finish(self.raw)

    def labels(self) -> dict:
        return {"precision": self.env.precision, "channels_last": self.env.channels_last,
                "pruned_ratio": self.state.pruning.pruned if self.state.pruning else 0.0,
                "device_cache": self.data.cached}

    def model_stats(self) -> dict:
        total, nonzero = prune_mod.param_counts(self.raw)
        wt, wnz = prune_mod.weight_sparsity_counts(self.raw)
        return {"rank_weight_spread": collectives.spread(collectives.weight_checksum(self.raw.parameters())),
                "params_total": total, "params_nonzero": nonzero, "weight_sparsity": 1 - wnz / max(wt, 1),
                "flops_per_sample": prune_mod.forward_flops(self.raw, self.info.in_shape)}
