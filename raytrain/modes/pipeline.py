"""Pipeline (and DP x PP) training of one rank; the schedule itself is `raytrain.parallel.pipeline`.

Data: every worker gets the whole (unsplit) dataset; only each pipeline group's first stage reads it,
in the same order in every group (materialised: a fresh permutation of the whole split each epoch), and group d takes batches d, d+dp, d+2dp, ... - so each
example is seen once per epoch across groups, and every group runs the same number of steps (their
gradient all-reduces must pair up). The first stage broadcasts the labels to its group. Batches are
filtered on the host and only this group's are moved to the device.
"""

from __future__ import annotations

import itertools
import logging
from typing import Callable, Optional

import torch

from raytrain import collectives
from raytrain.checkpoint import stage_file
from raytrain.data.memory import InMemory, load
from raytrain.epoch import SchedulerStepper, StepEnv, run_steps
from raytrain.records import EvalSums, TrainSums
from raytrain.models import model_from
from raytrain.optim import build_optimizer
from raytrain.parallel import pipeline as pl
from raytrain.state import TrainState
from raytrain.techniques.precision import autocast, resolve_precision
from raytrain.techniques import augment
from raytrain.techniques.pruning import forward_flops
from raytrain.techniques.schedule import build_scheduler

log = logging.getLogger("raytrain")


class Pipelined:
    def __init__(self, exp, info, plan, host, factory: Optional[Callable], restore: Callable[[str], Optional[dict]]):
        self.exp, self.info, self.plan, self.host, self.factory = exp, info, plan, host, factory
        device, pp = host.device, exp.parallel.pipeline
        precision = resolve_precision(exp.train.precision, device, pipeline=True)
        mesh = pl.make_mesh(pp.stages, device.type)
        # Each pipeline's share of the global batch at this group's data-parallel degree (an elastic group's
        # varies from one start to the next; the global batch, and so every step's examples, does not).
        self.batch = exp.train.batch_size // mesh.dp
        model = model_from(exp.model, info.in_shape, info.num_classes, factory)
        if pl.has_batchnorm(model) and host.rank == 0:
            log.info("note: BatchNorm in a pipeline normalises each micro-batch on its own: this matches "
                     "gradient accumulation over the same micro-batches, not full-batch training")
        example = torch.zeros(self.batch // pp.microbatches, *info.in_shape)
        self.pipe = pl.build_pipeline(model, mesh, pp.schedule, pp.microbatches, device, example, pp.split,
                                      autocast(precision, device))
        del model  # parts of other stages are freed here: each rank keeps only its own shard
        self.file_name = stage_file(mesh.pp_rank)
        payload = restore(self.file_name)
        self.env = StepEnv(device, precision, False, info.scale, info.mean, info.std,
                           augment.build(exp.data.augment, exp.seed, info.in_shape, device))
        optimizer = build_optimizer(torch.nn.ModuleList(self.pipe.parts), exp.train.optimizer)
        steps = plan.steps_per_epoch
        scheduler = build_scheduler(optimizer, exp.train.schedule, exp.train.epochs, steps, exp.train.optimizer.lr)
        self.state = TrainState(self.pipe, optimizer, SchedulerStepper(scheduler, exp.train.epochs * steps),
                                torch.amp.GradScaler(device.type, enabled=False), exp, info,
                                stage=mesh.pp_rank, stages=mesh.pp)
        if payload is not None:
            self.state.load_state_dict(payload)
        self.shards = {s: host.shard(plan.shard(s, host.rank)) for s in plan.shards}  # train, val (, test)
        self.memory: dict[str, InMemory] = {}

    @property
    def writes_checkpoint(self) -> bool:
        """The dp-rank-0 replica of each stage writes its shard; Ray Train merges them into one folder."""
        return self.pipe.mesh.dp_rank == 0

    def _batches(self, split: str, epoch: int = 0):
        """Group d's batches: d, d+dp, ... of one order shared by all groups (the same seed everywhere)."""
        mesh, bs, seed = self.pipe.mesh, self.batch, self.exp.seed
        if mesh.pp_rank != 0:
            return None
        train = split == "train"
        if self.info.ingest == "materialize":  # the whole split, permuted afresh each epoch (data.memory)
            if split not in self.memory:
                self.memory[split] = InMemory(load(self.shards[split]), torch.device("cpu"))
            mem = self.memory[split]
            it = mem.train(bs, seed, epoch, drop_last=True) if train else mem.in_order(bs)
        else:
            kw = {"drop_last": True, "local_shuffle_buffer_size": max(bs * 8, 1024),
                  "local_shuffle_seed": seed * 1000 + epoch} if train else {}
            it = self.shards[split].iter_torch_batches(device="cpu", batch_size=bs, **kw)  # moved by StepEnv
        return (b for i, b in enumerate(it) if i % mesh.dp == mesh.dp_rank)

    def train_epoch(self, epoch: int, on_step=None, start_step: int = 0) -> TrainSums:
        """This rank's part of every step of the epoch, through the one step loop (`epoch.run_steps`): the
        first stage iterates its group's batches, the other stages take part in as many steps with none."""
        env, steps = self.env, self.plan.steps_per_epoch
        if env.augment is not None:  # one order and one draw per epoch, shared by every group's first stage
            env.augment.reseed(epoch, 0, start_step)
        batches = self._batches("train", epoch)  # resumed mid-epoch: the rest of the same order
        left = steps - start_step
        batches = (itertools.islice(batches, start_step, steps) if batches is not None
                   else itertools.repeat(None, left))
        self.pipe.train(True)
        return run_steps(batches, self._train_step, env, on_step, first_step=start_step + 1)

    def _train_step(self, batch):
        s, env = self.state, self.env
        x = y = None
        if batch is not None:
            x, y = env.inputs(batch, train=True)
        n, labels = pl.share_batch(self.pipe.mesh, y, self.batch, env.device)
        s.optimizer.zero_grad(set_to_none=True)
        with autocast(env.precision, env.device):
            ls, c = self._step(x, labels, n, train=True)
        if self.exp.train.max_grad_norm is not None:
            pl.clip_grad_norm(self.pipe, self.exp.train.max_grad_norm)
        s.optimizer.step()
        s.stepper.step()
        return ls, c, (n if self.pipe.holds_last else 0)

    def evaluate(self, split: str = "val") -> EvalSums:
        """Forward-only over `split`; the last batch is padded to full size and masked."""
        env, bs = self.env, self.batch
        batches = self._batches(split)
        self.pipe.train(False)
        loss_sum = correct = count = 0.0
        while True:
            x = y = None
            if batches is not None:
                b = next(batches, None)
                if b is not None:
                    x, y = env.inputs(b)
                    if y.numel() < bs:
                        x = torch.cat([x, x.new_zeros((bs - y.numel(), *x.shape[1:]))])
            n, labels = pl.share_batch(self.pipe.mesh, y, bs, env.device)
            if n == 0:
                break
            with autocast(env.precision, env.device):
                ls, c = self._step(x, labels, n, train=False)
            loss_sum, correct, count = loss_sum + ls, correct + c, count + (n if self.pipe.holds_last else 0)
        return EvalSums(float(loss_sum), float(correct), float(count))

    def _step(self, x, labels, n: int, train: bool):
        try:
            return pl.run_step(self.pipe, x, labels, n, train=train)
        except Exception as e:
            # PipelineStage re-raises a stage's error as a multi-line "failed to run forward"; only the
            # message crosses to the driver (not the chain), so name the original error in it.
            inner = e
            while inner.__cause__ is not None:
                inner = inner.__cause__
            if inner is e:
                raise
            raise RuntimeError(f"pipeline stage {self.pipe.mesh.pp_rank}: {type(inner).__name__}: {inner}") from e

    def labels(self) -> dict:
        return {"precision": self.env.precision, "channels_last": False, "pruned_ratio": 0.0,
                "pipeline_stages": self.pipe.mesh.pp, "data_parallel": self.pipe.mesh.dp}

    def model_stats(self) -> dict:
        mesh = self.pipe.mesh
        per_stage = collectives.gather_sum(mesh.pp_rank, mesh.pp, sum(p.numel() for p in self.pipe.parameters()),
                                           group=mesh.pp_group)
        spread = collectives.maximum(collectives.spread(collectives.weight_checksum(self.pipe.parameters()),
                                                        mesh.dp_group))
        total = int(sum(per_stage))
        e, info = self.exp, self.info  # FLOPs of the unsplit model (stages are not separately traceable)
        flops = forward_flops(model_from(e.model, info.in_shape, info.num_classes, self.factory), info.in_shape)
        return {"rank_weight_spread": spread, "params_total": total, "params_nonzero": total, "weight_sparsity": 0.0,
                "stage_params": [int(v) for v in per_stage], "flops_per_sample": flops}
