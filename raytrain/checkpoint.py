"""Checkpoint files: one `state.pt` per checkpoint directory, written atomically, read weights-only.

The payload holds only tensors, numbers, strings and containers of them, so it loads with
`torch.load(weights_only=True)`: a checkpoint carrying a pickled object is refused, not executed.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional

import torch

STATE_FILE = "state.pt"


def save_state(directory: str | Path, state: dict) -> Path:
    """Write `state` to directory/state.pt via a temp file + fsync + rename (never a torn file)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / STATE_FILE
    tmp = directory / f".{STATE_FILE}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


def load_state(directory: str | Path) -> dict:
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)


def checkpoint_dirs(run_storage: str | Path) -> list[Path]:
    """Checkpoint directories under a Ray Train run's storage folder, newest (highest epoch) first."""
    dirs = [d for d in Path(run_storage).glob("checkpoint_*") if (d / STATE_FILE).is_file()]
    return sorted(dirs, key=lambda d: d.name, reverse=True)


def load_latest(candidates: list[Path]) -> tuple[Optional[dict], Optional[Path]]:
    """Load the first candidate that reads cleanly; warn about each corrupt one skipped."""
    for d in candidates:
        try:
            return load_state(d), d
        except Exception as e:  # a torn or tampered file: fall back to the previous checkpoint
            warnings.warn(f"checkpoint {d} unreadable ({type(e).__name__}: {str(e)[:120]}); trying the previous one")
    return None, None
