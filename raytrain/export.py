"""`raytrain export RUN_DIR`: the newest readable checkpoint of a run as one ordinary state_dict.

Pipeline runs store one shard per stage (keys are the full model's, see parallel/pipeline.py), so
export merges them; pruned runs are rebuilt at their pruned size and magnitude masks folded in. The
result is checked by loading it strictly into a freshly built, unsplit model before it is written.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional

import torch

from raytrain import checkpoint as ckpt
from raytrain.config import Experiment
from raytrain.data import DataInfo
from raytrain.errors import UserError
from raytrain.models import build_model
from raytrain.techniques import pruning

RAY_RUN_NAME = "train"  # same as trainer.RAY_RUN_NAME (not imported: export must not need Ray)


def load_full_model(run_dir: Path) -> tuple[torch.nn.Module, Path]:
    """The unsplit model with the newest readable checkpoint's weights, and that checkpoint's folder."""
    storage = Path(run_dir) / RAY_RUN_NAME
    if not storage.is_dir():
        raise UserError(f"{run_dir}: not a raytrain run folder (no {RAY_RUN_NAME}/ inside)")
    for d in ckpt.checkpoint_dirs(storage):
        try:
            weights, state = ckpt.merged_model_state(d)
        except Exception as e:  # a torn shard: fall back to the previous checkpoint, as resume does
            warnings.warn(f"checkpoint {d} unreadable ({type(e).__name__}); trying the previous one")
            continue
        exp = Experiment.model_validate_json(state["experiment"])
        info = DataInfo.from_json(state["data"])
        model = build_model(exp.model.name, info.in_shape, info.num_classes, exp.model.width, exp.model.dropout)
        pruning.resize_like(model, weights)
        pruning.restore_masks(model, weights)
        model.load_state_dict(weights, strict=True)
        pruning.make_pruning_permanent(model)
        return model, d
    raise UserError(f"{run_dir}: no readable checkpoint under {storage}")


def export(run_dir: Path, out: Optional[Path] = None) -> tuple[Path, Path, int]:
    """Write the full model's state_dict to `out` (default RUN_DIR/model.pt); never overwrites a file."""
    out = Path(out) if out else Path(run_dir) / "model.pt"
    if out.exists():
        raise UserError(f"--out {out}: already exists (export never overwrites; pick another path)")
    model, source = load_full_model(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, out)
    return out, source, sum(p.numel() for p in model.parameters())
