"""channels_last (NHWC) memory format: faster convolutions with oneDNN on CPU and tensor cores on GPU."""

from __future__ import annotations

import torch
from torch import nn


def has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def wants_channels_last(setting, model: nn.Module) -> bool:
    """auto: on for models with 2-D convolutions (elsewhere it only costs a layout copy)."""
    return has_conv2d(model) if setting == "auto" else bool(setting)


def apply_channels_last(model: nn.Module) -> nn.Module:
    """Convert 4-D parameters and buffers to channels_last, in place; inputs must follow (see `to_input_format`)."""
    return model.to(memory_format=torch.channels_last)


def to_input_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
