"""Mixed precision: pick a dtype for the device, autocast the forward, scale fp16 losses, count skips.

`auto` is decided per worker, on the device it actually got: bf16 where the hardware runs bf16
natively (recent CPUs with AVX512-BF16/AMX, Ampere+ GPUs; emulated bf16 on V100/T4 does not count),
fp16 with a GradScaler on older GPUs, else fp32. fp16 on a CPU is refused at validation: far slower
than fp32 there (bench/README.md). Pipelines never use fp16 (GradScaler's skip decision would differ per
stage), so `auto` falls back to fp32 there. Every precision decision lives in this file.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (oneDNN then runs bf16 matmuls/convs natively)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    return torch.backends.mkldnn.is_available() and any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def cuda_has_native_bf16() -> bool:
    """bf16 in hardware (Ampere and newer): emulated bf16 on older GPUs is slower than fp16 + GradScaler."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(requested: str, device: torch.device, pipeline: bool = False) -> str:
    """The precision a worker on `device` runs with: fp32, bf16 or fp16."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        if cuda_has_native_bf16():
            return "bf16"
        return "fp32" if pipeline else "fp16"  # no GradScaler across stages
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def autocast(precision: str, device: torch.device):
    """A torch.autocast context for the forward pass and loss (a no-op context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """fp16 always gets a GradScaler (its range is too narrow for raw gradients); others a disabled one."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


class SkipWatch:
    """Whether GradScaler skipped each optimizer step, without a wait of raytrain's own per step (the old
    `get_scale()` before and after every step was two).

    A skipped step lowers the scale. The comparison stays on the device, and the host reads step t's
    answer only once step t+1's forward and backward are queued (`pending` -> `resolve`), by which time
    step t's kernels have finished, so the read does not stall the GPU. The LR scheduler steps on that
    answer before step t+1's optimizer.step, as it would have with an immediate read."""

    def __init__(self, scaler: torch.amp.GradScaler):
        self.scaler = scaler
        self.enabled = scaler.is_enabled()
        self._pending: Optional[torch.Tensor] = None
        self.skipped = 0

    def before_update(self) -> Optional[torch.Tensor]:
        if not self.enabled:
            return None
        scale = getattr(self.scaler, "_scale", None)  # the device tensor update() rewrites in place
        return scale.clone() if isinstance(scale, torch.Tensor) else torch.tensor(self.scaler.get_scale())

    def after_update(self, before: Optional[torch.Tensor]) -> None:
        if before is None:
            return
        scale = getattr(self.scaler, "_scale", None)
        now = scale if isinstance(scale, torch.Tensor) else torch.tensor(self.scaler.get_scale())
        self._pending = now < before.to(now.device)

    def resolve(self) -> bool:
        """The pending step's answer (True: skipped); False when nothing is pending."""
        if self._pending is None:
            return False
        skipped = bool(self._pending.item())
        self._pending = None
        self.skipped += int(skipped)
        return skipped
