"""`raytrain export RUN_DIR`: the newest readable checkpoint of a run as one ordinary state_dict.

Pipeline runs store one shard per stage (keys are the full model's, see parallel/pipeline.py), so
export merges them; pruned runs are rebuilt at their pruned size and magnitude masks folded in. The
result is checked by loading it strictly into a freshly built, unsplit model before it is written.
Works on any storage (local, s3://, gs://), and needs no Ray; tensors land on the CPU wherever they
were trained.
"""

from __future__ import annotations

import io
import warnings
from typing import Optional

import torch

from raytrain import checkpoint as ckpt
from raytrain import storage
from raytrain.config import Experiment
from raytrain.data import DataInfo
from raytrain.errors import UserError
from raytrain.models import model_from
from raytrain.techniques import pruning


def load_full_model(run_dir: str, factory=None) -> tuple[torch.nn.Module, storage.Location]:
    """The unsplit model with the newest readable checkpoint's weights, and that checkpoint's folder."""
    run = storage.resolve(run_dir, "RUN_DIR")
    storage.check_reachable(run, "RUN_DIR")
    store = run / ckpt.RUN_STORAGE
    if not store.is_dir():
        raise UserError(f"{run_dir}: not a raytrain run folder (no {ckpt.RUN_STORAGE}/ inside)")
    for d in ckpt.checkpoint_dirs(store):
        try:
            weights, state = ckpt.merged_model_state(d)
        except ckpt.CheckpointError as e:  # a torn shard: fall back to the previous checkpoint, as resume does
            warnings.warn(f"checkpoint {e}; trying the previous one")
            continue
        exp = Experiment.model_validate_json(state["experiment"])
        info = DataInfo.from_json(state["data"])
        model = model_from(exp.model, info.in_shape, info.num_classes, factory)
        pruning.restore_structure(model, weights)
        model.load_state_dict(weights, strict=True)
        pruning.make_pruning_permanent(model)
        return model, d
    raise UserError(f"{run_dir}: no readable checkpoint under {store.uri}")


def export(run_dir: str, out: Optional[str] = None) -> tuple[str, str, int]:
    """Write the full model's state_dict to `out` (default RUN_DIR/model.pt, any storage); never overwrites.
    Returns (where, from which checkpoint, parameter count)."""
    target = storage.resolve(out, "--out") if out else storage.resolve(run_dir, "RUN_DIR") / ckpt.EXPORT
    if target.exists():
        raise UserError(f"--out {target.uri}: already exists (export never overwrites; pick another path)")
    model, source = load_full_model(run_dir)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    target.parent.makedirs()
    target.write_bytes(buf.getvalue())
    return target.uri, source.uri, sum(p.numel() for p in model.parameters())
