"""Checkpoint files: one `state.pt` per checkpoint directory (pipeline runs: one `stage_<k>.pt` per
stage, merged into the same directory by Ray Train), written atomically, read weights-only.

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


def stage_file(stage: int) -> str:
    return f"stage_{stage}.pt"


def save_state(directory: str | Path, state: dict, name: str = STATE_FILE) -> Path:
    """Write `state` to directory/name via a temp file + fsync + rename (never a torn file)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / name
    tmp = directory / f".{name}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


def load_state(directory: str | Path, name: str = STATE_FILE) -> dict:
    return torch.load(Path(directory) / name, map_location="cpu", weights_only=True)


def checkpoint_dirs(run_storage: str | Path) -> list[Path]:
    """Checkpoint directories under a Ray Train run's storage folder, newest (highest epoch) first."""
    dirs = [d for d in Path(run_storage).glob("checkpoint_*")
            if (d / STATE_FILE).is_file() or (d / stage_file(0)).is_file()]
    return sorted(dirs, key=lambda d: d.name, reverse=True)


def try_load(directory: Path, name: str = STATE_FILE) -> Optional[dict]:
    """The state in directory/name, or None (with a warning) when it is missing, torn or tampered with."""
    try:
        return load_state(directory, name)
    except Exception as e:  # fall back to the previous checkpoint
        warnings.warn(f"checkpoint {directory / name} unreadable ({type(e).__name__}: {str(e)[:120]}); "
                      "trying the previous one")
        return None


def load_latest(candidates: list[Path]) -> tuple[Optional[dict], Optional[Path]]:
    """Load the first candidate that reads cleanly; warn about each corrupt one skipped."""
    for d in candidates:
        state = try_load(d)
        if state is not None:
            return state, d
    return None, None


def merged_model_state(directory: Path) -> tuple[dict, dict]:
    """(full-model state_dict, one stage's or the single state) from a checkpoint directory: pipeline
    stage shards are merged back into one ordinary state_dict."""
    if (directory / STATE_FILE).is_file():
        state = load_state(directory)
        return dict(state["model"]), state
    first = load_state(directory, stage_file(0))
    model = {}
    for k in range(int(first["stages"])):
        model.update(load_state(directory, stage_file(k))["model"])
    return model, first
