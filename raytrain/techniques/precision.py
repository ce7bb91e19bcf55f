"""Mixed precision: pick a dtype for the device, autocast the forward, scale fp16 losses.

`auto` is decided per worker, on the device it actually got: bf16 where the hardware has native
bf16 (recent CPUs with AVX512-BF16/AMX, Ampere+ GPUs), fp16 with a GradScaler on older GPUs,
else fp32. fp16 on a CPU is refused at validation: measured 2-24x slower than fp32 here.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (oneDNN then runs bf16 matmuls/convs natively)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    return torch.backends.mkldnn.is_available() and any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision a worker on `device` runs with: fp32, bf16 or fp16."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
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
