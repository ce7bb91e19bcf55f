"""Optimizer construction from the typed config.

On CUDA, SGD and AdamW use torch's fused kernels (`fused=True`): one kernel per step for every parameter
instead of a few per parameter group, which matters for small models whose steps are bound by kernel launches;
they also take GradScaler's inf check in-kernel, so an fp16 step need not wait for it. Adadelta has no fused
form. On a CPU the default implementation stays (a fused CPU step would change results on the CPU, where
raytrain's measurements were made).
"""

from __future__ import annotations

import torch
from torch import nn

from raytrain.config import OptimizerConfig


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if wants_fused(params) else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    return torch.optim.Adadelta(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def wants_fused(params: list[torch.Tensor]) -> bool:
    """Every parameter a floating-point tensor on a CUDA device (what the fused kernels take)."""
    return bool(params) and all(p.device.type == "cuda" and torch.is_floating_point(p) for p in params)
