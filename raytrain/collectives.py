"""Every collective raytrain issues goes through here: tensors are placed on the process group's device
(CUDA for nccl, which rejects CPU tensors; CPU for gloo) and results come back as Python values or on
the caller's device. Without an initialised process group (one worker) each is the identity.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


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
    """A picklable object from global rank `src` to every rank (small things: a list of names)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=group_device())
    return box[0]


def reduce_sums(values: dict, group: Optional[dist.ProcessGroup] = None) -> dict:
    """Each value summed across ranks, exactly (the loops return sums, not means), in one collective."""
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    return dict(zip(keys, all_reduce(t, group=group).tolist()))


def all_true(flag: bool, group: Optional[dist.ProcessGroup] = None) -> bool:
    """True only if every rank of `group` passes True."""
    return bool(all_reduce(torch.tensor([1 if flag else 0]), op=dist.ReduceOp.MIN, group=group).item())


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
