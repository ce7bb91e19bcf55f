"""What an in-process restart needs after a failed attempt: the attempt's memory back, and a device it can
still use.

A failed attempt's model, optimizer state and device cache are held by its traceback's frames, and through
reference cycles (the loop and its callbacks' context refer to each other) until the garbage collector runs:
a restart after an out-of-memory error would otherwise run out of memory again, beside the old copy.

Some CUDA errors (an illegal memory access, a device-side assert, a launch failure) are sticky: every later
CUDA call of the process fails with them, so a restart in the same process cannot work. The device is asked
once (a tiny kernel and a synchronize); if it refuses, the run ends with that said, and how to continue.
"""

from __future__ import annotations

import gc
from typing import Optional

import torch


def release_attempt(device: torch.device) -> Optional[str]:
    """Free what a failed attempt left (call it outside the `except` block, once its traceback is gone); on a
    CUDA device, return why the device cannot be used again by this process (None: it can)."""
    gc.collect()
    if device.type != "cuda":
        return None
    try:
        torch.cuda.empty_cache()
        torch.ones(1, device=device).add_(1)
        torch.cuda.synchronize(device)
    except Exception as e:  # a sticky CUDA error: every CUDA call of this process now fails with it
        lines = str(e).strip().splitlines()
        return f"{type(e).__name__}: {lines[0] if lines else ''}"[:200]
    return None


def not_restarted(reason: str, broken: str, run_dir: str) -> str:
    """The run's error line when a CUDA error left this process's GPU unusable."""
    return (f"{reason}; not restarted in this process: its GPU no longer works after that CUDA error ({broken}). "
            f"Continue in a new process: raytrain train CONFIG --resume {run_dir} (or set parallel.isolate: true, "
            "so Ray Train restarts failed workers in new processes)")[:600]
