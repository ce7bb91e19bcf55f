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
from raytrain.records import EvalSums, TrainSums
from raytrain.state import TrainState
from raytrain.techniques import augment, prepare_model
from raytrain.techniques import pruning as prune_mod
from raytrain.techniques.memory_format import wants_channels_last
from raytrain.techniques.precision import make_grad_scaler, resolve_precision
from raytrain.techniques.schedule import build_scheduler


class DataParallel:
    file_name = STATE_FILE

    def __init__(self, exp, info, plan, host, factory: Optional[Callable], restore: Callable[[str], Optional[dict]]):
        self.exp, self.info, self.host = exp, info, host
        device = host.device
        # This rank's data first, then one wait for every rank on the CPU (`collectives.wait_for_all`), before
        # any collective of the process group: loading (a device cache, a large shard) takes each rank its own
        # time, which must not be spent inside an NCCL collective sized for a step (DDP's first broadcast).
        shards = {s: host.shard(plan.shard(s, host.rank)) for s in plan.shards}  # train, val (, test)
        self.data = Batches(exp, info, shards, host.rank, host.world, device, prenormalise=True)
        collectives.wait_for_all()
        precision = resolve_precision(exp.train.precision, device)
        raw = model_from(exp.model, info.in_shape, info.num_classes, factory)
        channels_last = wants_channels_last(exp.train.channels_last, raw)
        self.pruning = None  # its callback (techniques.hooks.Pruning) prunes at epoch starts
        if exp.pruning.method != "none":
            self.pruning = prune_mod.PruningSchedule(exp.pruning, exp.pruning_end_epoch, info.in_shape)
        payload = restore(self.file_name)
        if payload is not None:  # the pruned structure first: DDP and the optimizer see the final parameters
            prune_mod.restore_structure(raw, payload["model"])
        norm = (1.0, 0.0, 1.0) if self.data.normalised else (info.scale, info.mean, info.std)  # held as model input
        self.env = StepEnv(device, precision, channels_last, *norm,
                           augment.build(exp.data.augment, exp.seed, info.in_shape, device))
        self.raw = raw
        self.model = self.wrap(raw)
        optimizer = build_optimizer(raw, exp.train.optimizer)
        steps = plan.steps_per_epoch
        scheduler = build_scheduler(optimizer, exp.train.schedule, exp.train.epochs, steps, exp.train.optimizer.lr)
        self.state = TrainState(raw, optimizer, SchedulerStepper(scheduler, exp.train.epochs * steps),
                                make_grad_scaler(precision, device), exp, info)
        if payload is not None:
            self.state.load_state_dict(payload)
            prune_mod.refresh_masked_weights(raw)

    @property
    def writes_checkpoint(self) -> bool:
        return self.host.rank == 0

    def wrap(self, raw: nn.Module) -> nn.Module:
        """channels_last -> device -> DDP -> compile (raytrain.techniques gives the order and why)."""
        return prepare_model(raw, self.env.device, self.env.channels_last, self.exp.train.compile, self._ddp)

    def _ddp(self, module: nn.Module) -> nn.Module:
        return module if self.host.world == 1 else wrap_ddp(module, self.env.device)

    def train_epoch(self, epoch: int, on_step=None, limit: Optional[int] = None, start_step: int = 0) -> TrainSums:
        s = self.state
        if self.env.augment is not None:
            self.env.augment.reseed(epoch, self.host.rank, start_step)
        batches = self.data.train(epoch, start_step)
        if limit is not None:  # a search's warm-up: the first steps only
            batches = itertools.islice(batches, limit)
        return train_epoch(self.model, batches, s.optimizer, s.stepper, s.scaler, self.env,
                           self.exp.train.max_grad_norm, on_step, first_step=start_step + 1,
                           micro_batch=self.data.micro)

    def evaluate(self, split: str = "val") -> EvalSums:
        return evaluate(self.model, self.data.val() if split == "val" else self.data.eval(split), self.env)

    def labels(self) -> dict:
        return {"precision": self.env.precision, "channels_last": self.env.channels_last,
                "pruned_ratio": self.pruning.pruned if self.pruning else 0.0,
                "device_cache": self.data.cached}

    def model_stats(self) -> dict:
        total, nonzero = prune_mod.param_counts(self.raw)
        wt, wnz = prune_mod.weight_sparsity_counts(self.raw)
        return {"rank_weight_spread": collectives.spread(collectives.weight_checksum(self.raw.parameters())),
                "params_total": total, "params_nonzero": nonzero, "weight_sparsity": 1 - wnz / max(wt, 1),
                "flops_per_sample": prune_mod.forward_flops(self.raw, self.info.in_shape)}


def wrap_ddp(module: nn.Module, device) -> nn.parallel.DistributedDataParallel:
    """DDP around `module`, its pruning masks (torch.nn.utils.prune's `*_mask` buffers) left out of DDP's buffer
    sync, which would broadcast every mask, each the size of its weight, from rank 0 before every forward.
    Masks change only when pruning prunes, and the model is wrapped again then (or restored from a checkpoint,
    then wrapped): so they are broadcast from rank 0 here, once per change, and every rank trains with rank 0's."""
    masks = [name for name, _ in module.named_buffers() if name.endswith("_mask")]
    for name in masks:
        buf = module.get_buffer(name)
        buf.copy_(collectives.broadcast(buf, src=0))
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, masks)
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
