"""A trained model out of a run: `load_model`, `raytrain export`, and the check that a checkpoint fits a model.

`export` writes two files, never over an existing one:
  * OUT (default RUN_DIR/model.pt): the full model's state_dict, as `torch.save` wrote it (pipeline shards
    merged, the pruned shapes as trained, magnitude masks folded in);
  * OUT with `.pt2` for its suffix: a `torch.export` program of the model *with its input normalisation*,
    batch size dynamic, in eval mode. `torch.export.load(path).module()(x)` gives logits for features as the
    dataset stores them (float32 (N, *in_shape); pixels 0-255 for images): nothing of raytrain, nor the
    model's own code, is needed to load it. The facts about it (input shape, class names, normalisation,
    model config, source checkpoint) ride inside as the extra file `raytrain.json`.
TorchScript is not used: torch.jit is deprecated in this torch. A model torch.export cannot trace still gets
its state_dict, with a warning. Everything is read and written through raytrain.storage (any storage), needs
no Ray, and puts tensors on the CPU wherever they were trained.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from typing import Callable, Optional

import torch
from torch import nn

from raytrain import checkpoint as ckpt
from raytrain import storage
from raytrain.config import Experiment, ModelConfig
from raytrain.data.prepare import DataInfo
from raytrain.errors import UserError
from raytrain.models import model_from
from raytrain.techniques import pruning

META = "raytrain.json"  # the extra file inside an exported program


class Classifier(nn.Module):
    """A trained network with the input normalisation it was trained with: features as stored in, logits out.
    `net` is the network itself (the architecture as trained, pruned shapes included)."""

    def __init__(self, net: nn.Module, info: DataInfo, meta: Optional[dict] = None):
        super().__init__()
        self.net = net
        self.scale, self.mean, self.std = float(info.scale), float(info.mean), float(info.std)
        self.in_shape, self.num_classes = tuple(info.in_shape), int(info.num_classes)
        self.classes = list(getattr(info, "classes", None) or []) or None
        self.meta = meta or {}

    def forward(self, x):
        return self.net((x.float() * self.scale - self.mean) / self.std)


def _short(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:160] if lines else type(e).__name__


def _base(key: str) -> str:
    """'0.conv.weight_orig' -> '0.conv.weight': magnitude-pruned checkpoints keep weight_orig + weight_mask."""
    return key[: -len("_orig")] if key.endswith("_orig") else key


def fit_weights(model: nn.Module, weights: dict, where: str, model_name: str) -> nn.Module:
    """Give `model` the checkpoint's pruned structure and load its weights strictly; a checkpoint of another
    model is one line naming `where` (the run or file) and the first layer that differs."""
    def refuse(detail: str):
        raise UserError(f"{where}: its checkpoint does not match the model {model_name} ({detail}); load it with the "
                        "model it was trained with (the run's model.name, or model= from Python)")

    ours = {k for k in model.state_dict()}
    theirs = {_base(k) for k in weights if not k.endswith("_mask")}
    if theirs - ours:
        refuse(f"layer {sorted(theirs - ours)[0]} is in the checkpoint, not in the model")
    if ours - theirs:
        refuse(f"layer {sorted(ours - theirs)[0]} of the model is not in the checkpoint")
    def first_difference(grown_only: bool = False):
        mine = model.state_dict()
        for k, v in weights.items():
            ours = mine.get(_base(k))
            if ours is None or k.endswith("_mask") or tuple(ours.shape) == tuple(v.shape):
                continue
            if not grown_only or len(v.shape) != len(ours.shape) or any(a > b for a, b in zip(v.shape, ours.shape)):
                return f"layer {_base(k)}: {list(v.shape)} in the checkpoint, {list(ours.shape)} in the model"
        return None

    if first_difference(grown_only=True):  # pruning only ever removes channels: a larger layer is another model
        refuse(first_difference(grown_only=True))
    try:
        pruning.restore_structure(model, weights)  # pruned Conv/Linear/BatchNorm shapes: legitimately smaller
    except UserError as e:  # another layer differs in shape: not a pruned copy of this model
        refuse(first_difference() or str(e).removeprefix("checkpoint: "))
    if first_difference():
        refuse(first_difference())
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        refuse(_short(e))
    pruning.refresh_masked_weights(model)
    return model


def newest(run_dir: str) -> tuple[dict, dict, storage.Location]:
    """(full-model weights, the checkpoint's state, its folder) of a run's newest readable checkpoint."""
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
        return weights, state, d
    raise UserError(f"{run_dir}: no readable checkpoint under {store.uri}")


def load_full_model(run_dir: str, factory: Optional[Callable] = None) -> tuple[nn.Module, storage.Location]:
    """The unsplit network with the newest readable checkpoint's weights (masks folded in), and that folder."""
    model, _, source = _load_run(run_dir, factory)
    return model, source


def _load_run(run_dir: str, factory: Optional[Callable]) -> tuple[nn.Module, dict, storage.Location]:
    weights, state, source = newest(run_dir)
    exp = Experiment.model_validate_json(state["experiment"])
    info = DataInfo.from_json(state["data"])
    name = "model=" if factory is not None else exp.model.name
    model = fit_weights(model_from(exp.model, info.in_shape, info.num_classes, factory), weights, run_dir, name)
    pruning.make_pruning_permanent(model)
    return model.eval(), state, source


def load_model(path: str, factory: Optional[Callable] = None) -> Classifier | nn.Module:
    """A run folder (its newest readable checkpoint) or a file `export` wrote -> the trained model, eval mode."""
    loc = storage.resolve(str(path), "PATH")
    storage.check_reachable(loc, "PATH")
    if loc.is_dir() or not loc.exists():  # a missing path is named as a missing run folder
        model, state, source = _load_run(str(path), factory)
        info = DataInfo.from_json(state["data"])
        exp = Experiment.model_validate_json(state["experiment"])
        return Classifier(model, info, _meta(exp, info, source)).eval()
    if loc.path.endswith(".pt2"):
        return _load_program(loc)
    program = loc.parent / (loc.name.rsplit(".", 1)[0] + ".pt2")
    if not program.exists():
        raise UserError(f"{path}: a state_dict holds no architecture and no {program.name} is beside it; load the "
                        "run folder, or the .pt2 `raytrain export` wrote")
    meta = read_meta(program)
    info = DataInfo.from_json(json.dumps(meta["data"]))
    cfg = ModelConfig.model_validate(meta["model"])
    try:
        weights = torch.load(io.BytesIO(loc.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: not a readable state_dict ({_short(e)})") from None
    net = model_from(cfg, info.in_shape, info.num_classes, factory)
    fit_weights(net, weights, str(path), "model=" if factory is not None else cfg.name)
    return Classifier(net, info, meta).eval()


def _meta(exp: Experiment, info: DataInfo, source: storage.Location) -> dict:
    return {"format": 1, "model": exp.model.model_dump(mode="json"), "data": json.loads(info.to_json()),
            "experiment": exp.model_dump_json(),
            "classes": list(getattr(info, "classes", None) or []) or None, "in_shape": list(info.in_shape),
            "input": "float32 (N, *in_shape): features as the dataset stores them; normalisation is inside",
            "checkpoint": source.uri}


def read_meta(program: storage.Location) -> dict:
    extra = {META: ""}
    try:
        torch.export.load(io.BytesIO(program.read_bytes()), extra_files=extra)
        return json.loads(extra[META])
    except Exception as e:
        raise UserError(f"{program.uri}: not a program `raytrain export` wrote ({_short(e)})") from None


def _load_program(loc: storage.Location) -> nn.Module:
    extra = {META: ""}
    try:
        module = torch.export.load(io.BytesIO(loc.read_bytes()), extra_files=extra).module()
        meta = json.loads(extra[META]) if extra[META] else {}
    except Exception as e:
        raise UserError(f"{loc.uri}: not a readable torch.export program ({_short(e)})") from None
    module.classes, module.meta = meta.get("classes"), meta
    return module


def program_bytes(model: Classifier) -> bytes:
    """The torch.export program of `model` (batch size dynamic) with its facts as META."""
    example = torch.zeros(2, *model.in_shape)
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={META: json.dumps(model.meta)})
    return buf.getvalue()


def write_new(loc: storage.Location, data: bytes, key: str) -> None:
    """Write a file that must not exist yet: locally an exclusive link of a complete temp file (no overwrite
    even in a race); object stores have no exclusive create, so there it is checked first."""
    if loc.exists():
        raise UserError(f"{key} {loc.uri}: already exists (never overwritten; pick another path)")
    loc.parent.makedirs()
    if loc.remote:
        loc.write_bytes(data)
        return
    tmp = f"{loc.path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, loc.path)
    except FileExistsError:
        raise UserError(f"{key} {loc.uri}: already exists (never overwritten; pick another path)") from None
    finally:
        os.unlink(tmp)


def export_targets(run_dir: str, out: Optional[str]) -> tuple[storage.Location, storage.Location]:
    """(state_dict file, program file): OUT (default RUN_DIR/model.pt) and OUT with the suffix .pt2."""
    target = storage.resolve(out, "OUT") if out else storage.resolve(run_dir, "RUN_DIR") / ckpt.EXPORT
    stem = target.name.rsplit(".", 1)[0] if "." in target.name else target.name
    program = target.parent / f"{stem}.pt2"
    if target.name.endswith(".pt2"):
        target = target.parent / f"{stem}.pt"
    return target, program


def export(run_dir: str, out: Optional[str] = None) -> tuple[str, Optional[str], str, int]:
    """Write the state_dict and the torch.export program (see the module docstring); never overwrites.
    Returns (state_dict where, program where or None, from which checkpoint, parameter count)."""
    target, program = export_targets(run_dir, out)
    for loc in (target, program):
        if loc.exists():
            raise UserError(f"OUT {loc.uri}: already exists (export never overwrites; pick another path)")
    model = load_model(run_dir)
    buf = io.BytesIO()
    torch.save(model.net.state_dict(), buf)
    try:
        exported = program_bytes(model)
    except Exception as e:  # a model torch.export cannot trace: its state_dict is still worth having
        warnings.warn(f"export: torch.export cannot trace this model ({type(e).__name__}: {_short(e)}); wrote the "
                      "state_dict only (load it with raytrain.load_model(RUN_DIR) or your model's code)")
        exported = None
    write_new(target, buf.getvalue(), "OUT")
    if exported is not None:
        write_new(program, exported, "OUT")
    n = sum(p.numel() for p in model.net.parameters())
    return target.uri, program.uri if exported is not None else None, model.meta["checkpoint"], n


def resumed(exp: Experiment, resume: str, factory: Optional[Callable] = None) -> Experiment:
    """`exp` with the model block of the run it resumes: the model the newest readable checkpoint was trained
    with (else the run's config.yaml), never the one `exp` names; with `factory` (Python), that factory. One
    line when that model cannot be built here or the checkpoint does not fit it, before anything starts."""
    import logging

    from raytrain.models import resolve_builder

    try:
        weights, state, _ = newest(str(resume))
        recorded, info = Experiment.model_validate_json(state["experiment"]).model, DataInfo.from_json(state["data"])
    except UserError:  # not a run folder or no readable checkpoint: the trainer says so, or starts afresh
        weights = info = None
        config = storage.resolve(str(resume), "--resume") / ckpt.CONFIG
        if not config.exists():
            return exp
        import yaml

        recorded = ModelConfig.model_validate((yaml.safe_load(config.read_text()) or {}).get("model") or {})
    model_cfg = recorded if factory is None else recorded.model_copy(update={"name": exp.model.name})
    if factory is None:
        try:
            resolve_builder(model_cfg.name, model_cfg.kwargs)
        except UserError as e:
            raise UserError(f"--resume {resume}: the run was trained with model {model_cfg.name!r}, which cannot be "
                            f"built here ({str(e).removeprefix(f'model.name {model_cfg.name!r}: ')}); make it importable, "
                            "or resume from Python: raytrain.train(exp, model=<that factory>, resume=...)") from None
    if weights is not None:
        net = model_from(model_cfg, info.in_shape, info.num_classes, factory)
        fit_weights(net, weights, f"--resume {resume}", "model=" if factory is not None else model_cfg.name)
    if model_cfg != exp.model:
        logging.getLogger("raytrain").warning(f"--resume: continuing with the run's own model ({_brief(model_cfg)}), "
                                              f"not the experiment's ({_brief(exp.model)})")
    return exp.model_copy(update={"model": model_cfg})


def _brief(cfg: ModelConfig) -> str:
    extra = {k: v for k, v in cfg.model_dump(mode="json", exclude_defaults=True).items() if k != "name"}
    return " ".join([cfg.name, *(f"{k}={v}" for k, v in extra.items())])
