"""Pruning: global unstructured magnitude (torch.nn.utils.prune) and structured channel removal
(torch-pruning's dependency graph), one-shot or gradual, plus the counters every run reports.

Unstructured masks stay attached through training (weight = weight_orig * mask in a forward
pre-hook) because momentum SGD refills zeroed weights within a few steps otherwise; they are made
permanent only at the end. Structured pruning physically shrinks Conv/Linear/BN layers, so it is
the variant that actually trains faster on dense kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

from raytrain.config import PruningConfig
from raytrain.errors import UserError

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
ROUND_TO = 8  # keep pruned layers at multiples of 8 channels: odd widths hit slow bf16/channels_last kernels


def target_ratio(cfg: PruningConfig, epoch: int, end_epoch: int) -> float:
    """Fraction of weights/channels that should be gone at the start of `epoch` (0-based).

    magnitude gradual follows Zhu & Gupta's cubic ramp; structured gradual steps linearly.
    """
    if cfg.method == "none" or epoch < cfg.start_epoch:
        return 0.0
    if cfg.schedule == "oneshot" or epoch >= end_epoch:
        return cfg.ratio
    progress = (epoch - cfg.start_epoch + 1) / (end_epoch - cfg.start_epoch + 1)
    if cfg.method == "magnitude":
        return cfg.ratio * (1.0 - (1.0 - progress) ** 3)
    return cfg.ratio * progress


@dataclass
class PruningSchedule:
    """The run's pruning, like `EarlyStopper`: knows when it is due, prunes in place on the model's own
    device, and owns what a structural change forces on the rest of training: the training module
    (channels_last, DDP, compile) is rebuilt by `wrap`, and the optimizer keeps state only for the
    parameters that survived. Checkpointed through `state_dict()`."""
    cfg: PruningConfig
    end_epoch: int
    in_shape: tuple
    pruned: float = 0.0

    def step(self, epoch: int, raw: nn.Module, optimizer: torch.optim.Optimizer,
             wrap: Callable[[nn.Module], nn.Module]) -> Optional[nn.Module]:
        """Prune `raw` if due at the start of `epoch`; returns the rebuilt training module, or None."""
        target = target_ratio(self.cfg, epoch, self.end_epoch)
        if target <= self.pruned + 1e-9:
            return None
        device = next(raw.parameters()).device
        raw.to(memory_format=torch.contiguous_format)  # pruning flattens weights with .view()
        if self.cfg.method == "magnitude":
            refresh_masked_weights(raw)  # after a resume, `weight` still holds the init until a forward
            apply_magnitude_pruning(raw, target)
        else:
            apply_structured_pruning(raw, ratio_increment(self.pruned, target), torch.zeros(1, *self.in_shape, device=device))
        self.pruned = target
        model = wrap(raw)
        params = [p for p in raw.parameters() if p.requires_grad]
        alive = set(map(id, params))
        optimizer.param_groups[0]["params"] = params
        for p in [p for p in optimizer.state if id(p) not in alive]:
            del optimizer.state[p]
        return model

    def finish(self, raw: nn.Module) -> None:
        """At the end of training: fold magnitude masks into the weights."""
        if self.cfg.method == "magnitude":
            make_pruning_permanent(raw)

    def state_dict(self) -> dict:
        return {"pruned": self.pruned}

    def load_state_dict(self, d: dict) -> None:
        self.pruned = float(d.get("pruned", 0.0))


def restore_structure(model: nn.Module, state_dict: dict) -> nn.Module:
    """Give a freshly built model the pruned shapes and masks recorded in `state_dict` (load it after)."""
    resize_like(model, state_dict)
    return restore_masks(model, state_dict)


def refresh_masked_weights(model: nn.Module) -> None:
    """Recompute `weight = weight_orig * weight_mask` now (torch.nn.utils.prune does it in a forward
    pre-hook, so after load_state_dict the attribute is stale until the next forward)."""
    for m in model.modules():
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                setattr(m, hook._tensor_name, hook.apply_mask(m))


def _prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def apply_magnitude_pruning(model: nn.Module, ratio: float) -> nn.Module:
    """Global L1 unstructured pruning to an overall sparsity of `ratio` over Conv/Linear weights.

    Repeated calls raise sparsity to the new `ratio` (global_unstructured prunes a fraction of the
    weights still alive, so the increment is rescaled).
    """
    params = _prunable(model)
    total, nonzero = weight_sparsity_counts(model)
    current = 1.0 - nonzero / total if total else 0.0
    if ratio <= current + 1e-12:
        return model
    amount = (ratio - current) / (1.0 - current)
    alive = int(round(nonzero * amount))
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=alive)
    return model


def make_pruning_permanent(model: nn.Module) -> nn.Module:
    """Fold masks into the weights and drop the reparametrisation (weight_orig, weight_mask)."""
    for m, name in _prunable(model):
        if prune.is_pruned(m) and hasattr(m, f"{name}_mask"):
            prune.remove(m, name)
    return model


def weight_sparsity_counts(model: nn.Module) -> tuple[int, int]:
    """(total, non-zero) over prunable weights, with masks applied."""
    total = nonzero = 0
    for m, name in _prunable(model):
        w = getattr(m, name)
        total += w.numel()
        nonzero += int(torch.count_nonzero(w.detach()))
    return total, nonzero


def _classifier(model: nn.Module) -> list[nn.Module]:
    """The output layer must keep its width (one unit per class)."""
    linears = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return linears[-1:]


def apply_structured_pruning(model: nn.Module, ratio: float, example_inputs: torch.Tensor) -> nn.Module:
    """Remove `ratio` of the channels of every prunable layer (but the classifier), in place, by L2 norm.

    torch-pruning follows the dependency graph, so residual adds, depthwise convs, BN and the
    conv->flatten->linear junction shrink consistently. Deterministic for identical weights, so
    every data-parallel rank prunes identically.
    """
    if ratio <= 0:
        return model
    try:
        pruner = tp.pruner.MetaPruner(model, example_inputs, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=_classifier(model), global_pruning=False,
                                      round_to=ROUND_TO)
        pruner.step()
    except Exception as e:  # the tracer rejects models it cannot follow; that is a config problem
        raise UserError(f"pruning.method structured: this model cannot be pruned structurally "
                        f"({type(e).__name__}: {str(e)[:160]}); use magnitude") from None
    return model


def check_supported(model: nn.Module, method: str, example_inputs: torch.Tensor) -> None:
    """Raise UserError before training if `method` cannot prune `model` (structured: probed on a copy)."""
    import copy

    layers = len(_prunable(model))
    if method == "magnitude" and layers == 0:
        raise UserError("pruning.method magnitude: the model has no Conv/Linear weights to prune")
    if method == "structured":
        if layers < 2:
            raise UserError("pruning.method structured: the model has no prunable layer besides its classifier")
        probe = copy.deepcopy(model)
        apply_structured_pruning(probe, 0.25, example_inputs)
        try:
            with torch.no_grad():
                probe.eval()(example_inputs)
        except Exception as e:
            raise UserError(f"pruning.method structured: the pruned model no longer runs ({type(e).__name__}: "
                            f"{str(e)[:120]}); use magnitude") from None


def resize_like(model: nn.Module, state_dict: dict) -> nn.Module:
    """Shrink a freshly built model's layers to the shapes in a structurally pruned state_dict.

    Lets a checkpoint of a pruned model load with weights_only=True (no pickled modules).
    """
    for name, m in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        shape = state_dict.get(key, state_dict.get(f"{key}_orig"))
        shape = None if shape is None else tuple(shape.shape)
        if shape is None or shape == tuple(m.weight.shape if getattr(m, "weight", None) is not None else ()):
            continue
        if isinstance(m, nn.Conv2d):
            depthwise = m.groups == m.in_channels and m.groups > 1
            m.out_channels = shape[0]
            m.groups = shape[0] if depthwise else m.groups
            m.in_channels = shape[1] * m.groups
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = shape
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.num_features = shape[0]
            for buf in ("running_mean", "running_var"):
                setattr(m, buf, torch.zeros(shape[0]))
        else:
            raise UserError(f"checkpoint: cannot restore pruned layer {name} ({type(m).__name__})")
        m.weight = nn.Parameter(torch.empty(shape))
        if getattr(m, "bias", None) is not None:
            m.bias = nn.Parameter(torch.empty(shape[0]))
    return model


def restore_masks(model: nn.Module, state_dict: dict) -> nn.Module:
    """Re-attach unstructured pruning masks recorded in a state_dict (keys ending in `_mask`)."""
    modules = dict(model.named_modules())
    for key in state_dict:
        if key.endswith("_mask"):
            path, _, pname = key[: -len("_mask")].rpartition(".")
            prune.identity(modules[path], pname)
    return model


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(total, non-zero) parameters, masks applied."""
    total = nonzero = 0
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            w = getattr(m, name[: -len("_orig")]) if name.endswith("_orig") else p
            total += w.numel()
            nonzero += int(torch.count_nonzero(w.detach()))
    return total, nonzero


def forward_flops(model: nn.Module, in_shape) -> int:
    """Forward FLOPs for one example (torch's counter; backward is not counted because it overcounts
    grouped convolutions)."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *in_shape, device=next(model.parameters()).device))
    model.train(was_training)
    return int(counter.get_total_flops())


def ratio_increment(current: float, target: float) -> float:
    """Fraction of the *current* channels to remove to go from `current` to `target` of the original."""
    return 0.0 if target <= current else (target - current) / (1.0 - current)

