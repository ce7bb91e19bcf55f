"""Pruning against reference oracles (pure PyTorch, no Ray): exact sparsity kept through training, the cubic
ramp, pruned = dense with the removed channels silenced (also through residual adds, BatchNorm and depthwise
convolutions), pruned checkpoints restored into fresh models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from raytrain import checkpoint as ckpt
from raytrain.config import PruningConfig
from raytrain.models import build_model
from raytrain.techniques import pruning


def _sgd_steps(model, n=10):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(n):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(16, 1, 8, 8)), torch.randint(0, 10, (16,))).backward()
        opt.step()


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_magnitude_sparsity_exact_and_kept_through_training(ratio):
    torch.manual_seed(0)
    model = build_model("cnn", (1, 8, 8), 10)
    pruning.apply_magnitude_pruning(model, ratio)
    total, nonzero = pruning.weight_sparsity_counts(model)
    assert abs((1 - nonzero / total) - ratio) < 1.0 / total + 1e-9
    _sgd_steps(model)
    assert pruning.weight_sparsity_counts(model) == (total, nonzero)
    pruning.make_pruning_permanent(model)
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())
    assert pruning.weight_sparsity_counts(model) == (total, nonzero)


def test_gradual_magnitude_reaches_target_monotonically():
    cfg = PruningConfig(method="magnitude", ratio=0.8, schedule="gradual", start_epoch=1, end_epoch=3)
    ratios = [pruning.target_ratio(cfg, e, 3) for e in range(6)]
    assert ratios[0] == 0 and ratios[3:] == [0.8] * 3 and ratios[1] < ratios[2] < ratios[3]
    assert ratios[1] == pytest.approx(0.8 * (1 - (1 - 1 / 3) ** 3))  # Zhu & Gupta cubic
    model = build_model("mlp", (1, 8, 8), 10)
    for r in ratios:
        pruning.apply_magnitude_pruning(model, r)
    total, nonzero = pruning.weight_sparsity_counts(model)
    assert abs((1 - nonzero / total) - 0.8) < 1e-3


def _kept_rows(dense_w: torch.Tensor, pruned_w: torch.Tensor, kept_in: torch.Tensor) -> torch.Tensor:
    """Which dense output channels survived: match pruned rows against dense rows on the kept inputs."""
    rows = dense_w[:, kept_in].flatten(1)
    return torch.tensor([int((rows == r).all(1).nonzero()[0]) for r in pruned_w.flatten(1)])


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_structured_pruning_equals_dense_with_channels_masked(name):
    torch.manual_seed(0)
    in_shape = (1, 12, 12)
    dense = build_model(name, in_shape, 10).eval()
    pruned = copy.deepcopy(dense)
    pruning.apply_structured_pruning(pruned, 0.5, torch.zeros(1, *in_shape))
    masked = copy.deepcopy(dense)
    kinds = (nn.Linear, nn.Conv2d)
    layers_d, layers_p, layers_m = ([m for m in net.modules() if isinstance(m, kinds)] for net in (dense, pruned, masked))
    kept_in = torch.arange(layers_d[0].weight.shape[1])
    for i in range(len(layers_d) - 1):  # every layer but the classifier lost output channels
        keep = _kept_rows(layers_d[i].weight.detach(), layers_p[i].weight.detach(), kept_in)
        n_out = layers_d[i].weight.shape[0]
        assert len(keep) < n_out
        spatial = layers_d[i + 1].weight.shape[1] // n_out  # conv -> flatten -> linear: a block per channel
        drop = torch.ones(n_out, dtype=torch.bool)
        drop[keep] = False
        with torch.no_grad():  # the oracle: silence the removed channels where they are consumed
            layers_m[i + 1].weight[:, drop.repeat_interleave(spatial)] = 0
        kept_in = (keep[:, None] * spatial + torch.arange(spatial)).flatten()
    x = torch.randn(5, *in_shape)
    assert_close(pruned(x), masked(x), rtol=1e-5, atol=1e-5)
    ratio = sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in dense.parameters())
    assert ratio < 0.35, ratio


def _kept(dense_w: torch.Tensor, pruned_w: torch.Tensor) -> tuple[list[int], list[int]]:
    """(kept output channels, kept input channels) of a pruned layer, found by looking each pruned kernel slice
    up among the dense layer's (random weights: every slice is unique; pruning keeps the channel order)."""
    d = dense_w.detach().reshape(dense_w.shape[0], dense_w.shape[1], -1)
    p = pruned_w.detach().reshape(pruned_w.shape[0], pruned_w.shape[1], -1)
    where = {d[j, i].numpy().tobytes(): (j, i) for j in range(d.shape[0]) for i in range(d.shape[1])}
    return ([where[p[r, 0].numpy().tobytes()][0] for r in range(p.shape[0])],
            [where[p[0, k].numpy().tobytes()][1] for k in range(p.shape[1])])


@pytest.mark.parametrize("name", ["cnn_bn", "resnet", "mobilenet", "efficientnet"])
def test_structured_pruning_through_residual_and_depthwise(name):
    """The oracle of the mlp/cnn test, through BatchNorm (cnn_bn), residual adds, depthwise convolutions and
    (efficientnet) squeeze-excitation gates: the pruned model equals the dense one with every removed channel
    silenced where it is consumed (the input slices of each following convolution or linear layer zeroed)."""
    torch.manual_seed(0)
    dense = build_model(name, (1, 16, 16), 10).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a channel mix-up cannot hide
        for m in dense.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    pruned = copy.deepcopy(dense)
    pruning.apply_structured_pruning(pruned, 0.5, torch.zeros(1, 1, 16, 16))
    masked = copy.deepcopy(dense)
    kinds = (nn.Conv2d, nn.Linear)
    pairs = [(d, p, m) for d, p, m in zip(dense.modules(), pruned.modules(), masked.modules()) if isinstance(d, kinds)]
    for d, p, m in pairs:
        if isinstance(d, nn.Conv2d) and d.groups > 1:
            continue  # depthwise: channel by channel, nothing mixes in
        _, kept_in = _kept(d.weight, p.weight)
        removed = sorted(set(range(d.weight.shape[1])) - set(kept_in))
        with torch.no_grad():
            m.weight[:, removed] = 0
    x = torch.randn(4, 1, 16, 16)
    assert_close(pruned.eval()(x), masked.eval()(x), rtol=1e-4, atol=1e-4)
    assert sum(p.numel() for p in pruned.parameters()) < 0.4 * sum(p.numel() for p in dense.parameters())
    assert pruning.forward_flops(pruned, (1, 16, 16)) < 0.4 * pruning.forward_flops(dense, (1, 16, 16))


def test_pruned_checkpoint_restores_into_fresh_model(tmp_path):
    model = build_model("mobilenet", (1, 8, 8), 10)
    pruning.apply_structured_pruning(model, 0.5, torch.zeros(1, 1, 8, 8))
    mag = build_model("cnn", (1, 8, 8), 10)
    pruning.apply_magnitude_pruning(mag, 0.7)
    for m, name in ((model, "mobilenet"), (mag, "cnn")):
        ckpt.save_local(tmp_path, {"model": m.state_dict()})
        state = ckpt.load_local(tmp_path)
        fresh = build_model(name, (1, 8, 8), 10)
        pruning.resize_like(fresh, state["model"])
        pruning.restore_masks(fresh, state["model"])
        fresh.load_state_dict(state["model"])
        x = torch.randn(3, 1, 8, 8)
        assert_close(fresh.eval()(x), m.eval()(x))


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    import hashlib
    import io

    buf = io.BytesIO()
    torch.save({"model": {}, "evil": object()}, buf)  # a valid checksum: only weights_only stands in the way
    (tmp_path / ckpt.STATE_FILE).write_bytes(buf.getvalue())
    (tmp_path / f"{ckpt.STATE_FILE}.sha256").write_text(hashlib.sha256(buf.getvalue()).hexdigest())
    with pytest.raises(ckpt.CheckpointError, match="Weights only load failed"):
        ckpt.load_local(tmp_path)


def test_pruning_a_model_without_prunable_layers_is_refused():
    from raytrain.errors import UserError

    with pytest.raises(UserError, match="no prunable layer besides its classifier"):
        pruning.check_supported(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), "structured", torch.zeros(1, 1, 8, 8))
    with pytest.raises(UserError, match="no Conv/Linear weights"):
        pruning.check_supported(nn.Sequential(nn.Flatten()), "magnitude", torch.zeros(1, 1, 8, 8))
