"""Every collective raytrain issues goes through here: tensors are placed on the process group's device
(CUDA for nccl, which rejects CPU tensors; CPU for gloo) and results come back as Python values or on
the caller's device. Without an initialised process group (one worker) each is the identity.

Two kinds of wait. The process group's own timeout is sized for a training step: a rank that dies
mid-step fails the group within it instead of hanging it (NCCL aborts the whole group past it). Where ranks
may arrive far apart for a good reason (one rank still uploading a checkpoint or reading one, or loading
its data onto the device) they wait on the CPU instead, in a gloo group of every rank with a timeout sized
for I/O (`PATIENT_TIMEOUT_S`): `wait_for_all`, `broadcast_object` and `all_true` go there.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

PATIENT_TIMEOUT_S = 30 * 60  # one rank's I/O between two steps: a checkpoint upload or download, a data load
_patient: list = []  # [(the default group it was made for, the gloo group)]


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def patient_group() -> Optional[dist.ProcessGroup]:
    """The gloo group of every rank with PATIENT_TIMEOUT_S, made on first use (every rank calls the helpers
    below at the same points, so they make it together); None without a process group."""
    if not active():
        return None
    world = dist.group.WORLD
    if not _patient or _patient[0][0] is not world:  # a new default group (the old one's groups died with it)
        group = dist.new_group(backend="gloo", timeout=timedelta(seconds=PATIENT_TIMEOUT_S))
        _patient[:] = [(world, group)]
    return _patient[0][1]


def wait_for_all() -> None:
    """Every rank here before any goes on: call it after work whose length differs by rank (loading data,
    writing a checkpoint) and before the next step's collectives. Names the ranks that never came."""
    if active() and dist.get_world_size() > 1:
        dist.monitored_barrier(group=patient_group(), timeout=timedelta(seconds=PATIENT_TIMEOUT_S),
                               wait_all_ranks=True)


def group_device(group: Optional[dist.ProcessGroup] = None) -> torch.device:
    """Where this group's collectives must run: the current CUDA device for nccl, else the CPU."""
    if active() and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM, group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """`t` reduced over `group`, returned on `t`'s device (a new tensor when it had to move)."""
    if not active():
        return t
    dev = group_device(group)
    moved = t.to(dev)
    dist.all_reduce(moved, op=op, group=group)
    return moved.to(t.device) if moved.device != t.device else moved


def broadcast(t: torch.Tensor, src: int, group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """`t` from global rank `src` to every rank of `group`, returned on `t`'s device."""
    if not active():
        return t
    moved = t.to(group_device(group))
    dist.broadcast(moved, src=src, group=group)
    return moved.to(t.device) if moved.device != t.device else moved


def broadcast_object(obj, src: int = 0):
    """A picklable object from global rank `src` to every rank (small things: a list of names), on the
    patient group: ranks may come from reading storage at different speeds."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=patient_group())
    return box[0]


def reduce_sums(values: dict, group: Optional[dist.ProcessGroup] = None) -> dict:
    """Each value summed across ranks, exactly (the loops return sums, not means), in one collective."""
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    return dict(zip(keys, all_reduce(t, group=group).tolist()))


def all_true(flag: bool, group: Optional[dist.ProcessGroup] = None) -> bool:
    """True only if every rank of `group` (default: all, on the patient group: an agreement after each rank
    read something, e.g. a checkpoint to resume from) passes True."""
    if not active():
        return bool(flag)
    return bool(all_reduce(torch.tensor([1 if flag else 0]), op=dist.ReduceOp.MIN,
                           group=group if group is not None else patient_group()).item())


def maximum(value: float, group: Optional[dist.ProcessGroup] = None) -> float:
    return float(all_reduce(torch.tensor([value], dtype=torch.float64), op=dist.ReduceOp.MAX, group=group).item())


def spread(value: float, group: Optional[dist.ProcessGroup] = None) -> float:
    """max - min of `value` across the ranks of `group` (0.0 iff they agree)."""
    return maximum(value, group) + maximum(-value, group)


def gather_sum(index: int, size: int, value: float, group: Optional[dist.ProcessGroup] = None) -> list[float]:
    """A list of `size` slots where each rank fills slot `index` with `value`, summed over `group`."""
    t = torch.zeros(size, dtype=torch.float64)
    t[index] = value
    return all_reduce(t, group=group).tolist()


def weight_checksum(params) -> float:
    """A position-weighted checksum of parameters: equal on replicas with identical weights."""
    with torch.no_grad():
        flat = torch.cat([p.detach().double().flatten().cpu() for p in params])
        return float((flat * (1 + torch.arange(flat.numel(), dtype=torch.float64) % 7)).sum())
