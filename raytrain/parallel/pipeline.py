"""Pipeline parallelism, pure PyTorch: split a Sequential into stages, lay ranks on a (dp, pp) mesh,
and run GPipe / 1F1B / interleaved 1F1B with `torch.distributed.pipelining`. Nothing of Ray here:
the pipeline mode of the one loop (`raytrain.modes.pipeline`) calls it inside a Ray Train worker, the tests call
it from plain `torch.multiprocessing` processes.

Layout: rank = dp_rank * pp + pp_rank, so one pipeline group is `pp` consecutive ranks and each
stage's replicas (same pp_rank, different dp_rank) form a "dp" group that all-reduces gradients
(DDP on the stage module; PipelineStage defers its sync to the last micro-batch).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

from raytrain import collectives
from raytrain.errors import UserError

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B, "interleaved_1f1b": ScheduleInterleaved1F1B}


def stages_per_rank(schedule: str) -> int:
    """Interleaved 1F1B puts two (virtual) stages on every rank: rank r holds stages r and r + pp."""
    return 2 if schedule == "interleaved_1f1b" else 1


def sequential_of(model: nn.Module) -> nn.Sequential:
    """The block sequence to cut: the model itself, or the `nn.Sequential` it exposes as `model.pipeline`."""
    if isinstance(model, nn.Sequential):
        return model
    seq = getattr(model, "pipeline", None)
    if isinstance(seq, nn.Sequential):
        return seq
    raise UserError(f"parallel.pipeline: model {type(model).__name__} is neither an nn.Sequential nor exposes "
                    "one as `.pipeline`; only a sequence of blocks can be cut into stages")


def balance(costs: list[float], parts: int) -> list[int]:
    """Start index of each part for a contiguous split of `costs` minimising the largest part (exact DP)."""
    n = len(costs)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(parts + 1)]  # best[k][i]: first i blocks in k parts
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                v = max(best[k - 1][j], prefix[i] - prefix[j])
                if v < best[k][i]:
                    best[k][i], cut[k][i] = v, j
    starts, i = [], n
    for k in range(parts, 0, -1):
        i = cut[k][i]
        starts.append(i)
    return starts[::-1]


def split_points(seq: nn.Sequential, parts: int, split: Union[str, list[str]]) -> list[list[str]]:
    """Names of the top-level blocks of each part. `auto` balances parameter counts (a block with
    no parameters counts a little, so activations-only blocks still spread); a list names the blocks
    where parts 2..K begin."""
    names = [n for n, _ in seq.named_children()]
    if parts > len(names):
        raise UserError(f"parallel.pipeline.stages: {parts} stage(s) but the model has only {len(names)} "
                        f"top-level blocks ({', '.join(names)})")
    if split == "auto":
        costs = [sum(p.numel() for p in seq[i].parameters()) + 1.0 for i in range(len(names))]
        starts = balance(costs, parts)
    else:
        if len(split) != parts - 1:
            raise UserError(f"parallel.pipeline.split: {len(split)} split point(s) given, {parts - 1} needed "
                            f"for {parts} stages (blocks: {', '.join(names)})")
        unknown = [s for s in split if s not in names]
        if unknown:
            raise UserError(f"parallel.pipeline.split: no top-level block named {unknown[0]!r} "
                            f"(blocks: {', '.join(names)})")
        starts = [0] + [names.index(s) for s in split]
        if any(b <= a for a, b in zip(starts, starts[1:])):
            raise UserError("parallel.pipeline.split: split points must be in model order, after the first block")
    bounds = starts + [len(names)]
    return [names[a:b] for a, b in zip(bounds, bounds[1:])]


def split_model(model: nn.Module, parts: int, split: Union[str, list[str]] = "auto") -> list[nn.Sequential]:
    """Cut into `parts` Sequentials that share the model's modules and keep its names, so each part's
    state_dict keys are the full model's keys (shards merge back into one ordinary state_dict)."""
    seq = sequential_of(model)
    return [nn.Sequential(OrderedDict((n, seq._modules[n]) for n in group))
            for group in split_points(seq, parts, split)]


@dataclass
class Mesh:
    """Where this rank sits: dp x pp ranks, its coordinates and the two process groups."""
    dp: int
    pp: int
    dp_rank: int
    pp_rank: int
    dp_group: dist.ProcessGroup
    pp_group: dist.ProcessGroup

    @property
    def first_rank(self) -> int:
        """Global rank of this pipeline group's first stage (it reads the data)."""
        return dist.get_global_rank(self.pp_group, 0)


def make_mesh(stages: int, device_type: str) -> Mesh:
    world = dist.get_world_size()
    if world % stages:
        raise UserError(f"parallel.workers {world} must be divisible by parallel.pipeline.stages {stages}")
    mesh = init_device_mesh(device_type, (world // stages, stages), mesh_dim_names=("dp", "pp"))
    return Mesh(world // stages, stages, mesh.get_local_rank("dp"), mesh.get_local_rank("pp"),
                mesh.get_group("dp"), mesh.get_group("pp"))


def stage_indices(mesh: Mesh, schedule: str) -> list[int]:
    return [mesh.pp_rank + k * mesh.pp for k in range(stages_per_rank(schedule))]


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Mean per micro-batch; the schedule divides gradients by the micro-batch count (scale_grads=True),
    # so with equal micro-batches the gradient is the full batch's mean-loss gradient.
    return F.cross_entropy(logits.float(), target)


@dataclass
class Pipeline:
    """This rank's share of the model and the schedule that drives it."""
    mesh: Mesh
    parts: list[nn.Module]  # the raw stage modules this rank holds (state_dict keys = full-model keys)
    schedule: object
    holds_first: bool
    holds_last: bool

    def parameters(self) -> list[nn.Parameter]:
        return [p for part in self.parts for p in part.parameters()]

    def state_dict(self) -> dict:
        merged: dict = {}
        for part in self.parts:
            merged.update(part.state_dict())
        return merged

    def load_state_dict(self, state: dict) -> None:
        for part in self.parts:
            part.load_state_dict({k: state[k] for k in part.state_dict()})

    def train(self, mode: bool = True) -> None:
        for part in self.parts:
            part.train(mode)


def stage_io(parts: list[nn.Module], example: torch.Tensor, autocast_ctx=None,
             device: torch.device = torch.device("cpu")) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) example of every part for one micro-batch, from an eval-mode pass on the unsplit
    model (on the training device under the run's autocast, so dtypes match what the stages will send:
    CPU and CUDA autocast keep different ops in fp32; with autograd on, so activations are marked as
    needing gradients and the backward sends are set up). Handing these to PipelineStage makes its
    shapes static: otherwise it infers them with a real training-mode forward on the first step, which
    moves BatchNorm running statistics one extra time. One part at a time visits the device."""
    modes = [m.training for m in parts]
    io, h = [], example.to(device)
    with autocast_ctx or contextlib.nullcontext():
        for part in parts:
            was = next(part.parameters(), torch.zeros(())).device
            out = part.to(device).eval()(h).contiguous()
            part.to(was)
            io.append((h.detach().requires_grad_(h.requires_grad), out.detach().requires_grad_(out.requires_grad)))
            h = out
    for part, mode in zip(parts, modes):
        part.train(mode)
    return io


def build_pipeline(model: nn.Module, mesh: Mesh, schedule: str, microbatches: int, device: torch.device,
                   example: torch.Tensor, split: Union[str, list[str]] = "auto", autocast_ctx=None,
                   loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = loss_fn) -> Pipeline:
    """This rank's stages of `model` and their schedule. `example` is one micro-batch of inputs (any values)."""
    n_stages = mesh.pp * stages_per_rank(schedule)
    all_parts = split_model(model, n_stages, split)
    io = stage_io(all_parts, example, autocast_ctx, device)
    idx = stage_indices(mesh, schedule)
    parts = [all_parts[i].to(device) for i in idx]
    stages = []
    for i, part in zip(idx, parts):
        part.register_forward_hook(_contiguous_output)  # p2p sends need dense tensors (views, channels_last)
        sub = part
        if mesh.dp > 1:  # replicas of this stage average their gradients over the dp group
            sub = nn.parallel.DistributedDataParallel(part, process_group=mesh.dp_group,
                                                      device_ids=[device.index] if device.type == "cuda" else None)
        stages.append(PipelineStage(sub, i, n_stages, device, input_args=io[i][0].to(device),
                                    output_args=io[i][1].to(device), group=mesh.pp_group))
    cls = SCHEDULES[schedule]
    sched = cls(stages if schedule == "interleaved_1f1b" else stages[0], microbatches, loss_fn=loss)
    return Pipeline(mesh, parts, sched, holds_first=0 in idx, holds_last=n_stages - 1 in idx)


def _contiguous_output(module: nn.Module, args, output):
    return output.contiguous() if isinstance(output, torch.Tensor) else output


def share_batch(mesh: Mesh, y: Optional[torch.Tensor], batch: int, device: torch.device) -> tuple[int, Optional[torch.Tensor]]:
    """The first stage tells its pipeline group whether a batch follows, how many rows are real,
    and the labels (the last stage scores them). Returns (n_valid, labels); n_valid 0 = no more batches."""
    head = torch.zeros(2, dtype=torch.int64, device=device)
    if mesh.pp_rank == 0 and y is not None:
        head[0], head[1] = 1, y.numel()
    head = collectives.broadcast(head, mesh.first_rank, mesh.pp_group)
    if int(head[0]) == 0:
        return 0, None
    labels = torch.zeros(batch, dtype=torch.int64, device=device)
    if mesh.pp_rank == 0:
        labels[: y.numel()] = y
    return int(head[1]), collectives.broadcast(labels, mesh.first_rank, mesh.pp_group)


def run_step(pipe: Pipeline, x: Optional[torch.Tensor], labels: torch.Tensor, n_valid: int,
             train: bool) -> tuple[float, int]:
    """One schedule step (train) or forward-only pass (eval) on a full batch; on the last stage
    returns (loss sum, correct) over the first `n_valid` rows, elsewhere (0.0, 0)."""
    args = (x,) if pipe.holds_first else ()
    target = labels if pipe.holds_last else None
    losses: list = []
    if train:
        out = pipe.schedule.step(*args, target=target, losses=losses)
    else:
        with torch.no_grad():
            out = pipe.schedule.eval(*args, target=target, losses=losses)
    if not pipe.holds_last:
        return 0.0, 0
    out, y = out[:n_valid].float(), labels[:n_valid]
    loss_sum = F.cross_entropy(out.detach(), y, reduction="sum").item()
    return loss_sum, int((out.argmax(1) == y).sum())


def clip_grad_norm(pipe: Pipeline, max_norm: float) -> float:
    """Clip by the global norm over all stages (each stage holds a slice of the gradient vector)."""
    grads = [p.grad for p in pipe.parameters() if p.grad is not None]
    sq = torch.zeros((), dtype=torch.float64, device=grads[0].device if grads else torch.device("cpu"))
    for g in grads:
        sq += g.detach().double().pow(2).sum()
    norm = float(collectives.all_reduce(sq, group=pipe.mesh.pp_group).sqrt())
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return norm


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
