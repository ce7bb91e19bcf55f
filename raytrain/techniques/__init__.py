"""Speed techniques, each a pure function of (model, settings); `prepare_model` applies them in order.

The order, and why:
  1. pruning        - on the plain fp32 module, first: torch-pruning traces the graph and
                      replaces parameters, torch.nn.utils.prune re-parametrises them, so
                      everything below must see the final parameters.
  2. channels_last  - re-lays out the (possibly new, smaller) 4-D weights; pruning creates
                      tensors in the default layout, so it must come after.
  3. device         - move once the layout is final (a later .to() would copy again).
  4. DDP            - registers gradient hooks on the final parameters; a pruning step later
                      in training therefore rebuilds DDP (and the optimizer's state).
  5. torch.compile  - wraps the DDP module (DDPOptimizer splits graphs at bucket boundaries);
                      recompiles after a structural change.
  6. precision      - not a model transform: autocast + GradScaler wrap every step
                      (`precision.autocast`), so master weights and optimizer state stay fp32.
  0. allocator      - before any of it, once per worker process (`allocator.keep_freed_memory`):
                      a process setting, not a model transform.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from raytrain.techniques.memory_format import apply_channels_last


def prepare_model(raw: nn.Module, device: torch.device, channels_last: bool, compile_model: bool,
                  wrap_ddp: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Steps 2-5 above on a model whose pruning (step 1) is already applied; returns the module to train."""
    if channels_last:
        raw = apply_channels_last(raw)
    raw = raw.to(device)
    model = wrap_ddp(raw)
    if compile_model:
        model = torch.compile(model)
    return model
