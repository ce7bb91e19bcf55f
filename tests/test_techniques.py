"""Each speed technique against a reference oracle (pure PyTorch, no Ray)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from raytrain import checkpoint as ckpt
from raytrain.config import EarlyStoppingConfig, PruningConfig, ScheduleConfig
from raytrain.loop import SchedulerStepper, StepEnv, train_epoch
from raytrain.models import build_model
from raytrain.techniques import pruning
from raytrain.techniques.early_stopping import EarlyStopper
from raytrain.techniques.memory_format import apply_channels_last, wants_channels_last
from raytrain.techniques.precision import autocast, make_grad_scaler, resolve_precision
from raytrain.techniques.schedule import build_scheduler

CPU = torch.device("cpu")


def _lrs(cfg: ScheduleConfig, epochs=4, steps=5, lr=0.1):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_scheduler(opt, cfg, epochs, steps, lr)
    out = []
    for _ in range(epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_with_warmup_matches_closed_form():
    lr, steps, epochs, warm = 0.1, 5, 4, 5  # one warmup epoch of 5 steps
    got = _lrs(ScheduleConfig(name="cosine", warmup_epochs=1, warmup_start_factor=0.1), epochs, steps, lr)
    t_max = epochs * steps - warm
    want = [lr * (0.1 + 0.9 * i / warm) for i in range(warm)]
    want += [0.5 * lr * (1 + math.cos(math.pi * j / t_max)) for j in range(epochs * steps - warm)]
    assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-6, atol=1e-9)


def test_step_schedule_decays_per_epoch():
    got = _lrs(ScheduleConfig(name="step", step_size=1, gamma=0.7), epochs=3, steps=4)
    want = [0.1 * 0.7 ** (i // 4) for i in range(12)]
    assert_close(torch.tensor(got), torch.tensor(want))


def test_onecycle_peaks_at_pct_start_and_constant_stays():
    got = _lrs(ScheduleConfig(name="onecycle", pct_start=0.25), epochs=4, steps=5)
    assert max(got) == pytest.approx(0.1) and got.index(max(got)) == round(0.25 * 20) - 1
    assert got[0] == pytest.approx(0.1 / 25) and got[-1] < 1e-3
    assert _lrs(ScheduleConfig(name="constant")) == [0.1] * 20


def test_schedule_resumes_from_checkpoint(tmp_path):
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1)

    def make():
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
        return opt, build_scheduler(opt, cfg, 4, 5, 0.1)

    opt, sched = make()
    full = []
    for i in range(20):
        if i == 7:
            ckpt.save_local(tmp_path, {"opt": opt.state_dict(), "sched": sched.state_dict()})
        full.append(opt.param_groups[0]["lr"])
        opt.step(); sched.step()
    opt2, sched2 = make()
    state = ckpt.load_local(tmp_path)
    opt2.load_state_dict(state["opt"]); sched2.load_state_dict(state["sched"])
    resumed = []
    for _ in range(13):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step(); sched2.step()
    assert_close(torch.tensor(resumed), torch.tensor(full[7:]))


def test_autocast_dtype_seen_inside_model():
    model = nn.Sequential(nn.Linear(4, 4))
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        with autocast(precision, CPU):
            model(torch.randn(2, 4))
        assert seen[-1] == dtype


@pytest.mark.parametrize("device,native_bf16,pipeline,expected", [
    ("cpu", True, False, "bf16"), ("cpu", False, False, "fp32"),
    ("cuda", True, False, "bf16"), ("cuda", False, False, "fp16"),  # V100/T4: fp16 + GradScaler, not emulated bf16
    ("cuda", False, True, "fp32"),  # pipelines never take fp16 (no GradScaler across stages)
])
def test_auto_precision_follows_the_device(device, native_bf16, pipeline, expected, monkeypatch):
    from raytrain.techniques import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native_bf16)
    monkeypatch.setattr(precision, "cuda_has_native_bf16", lambda: native_bf16)
    assert resolve_precision("auto", torch.device(device), pipeline=pipeline) == expected
    assert resolve_precision("fp32", torch.device(device)) == "fp32"


def test_cuda_bf16_probe_excludes_emulation(monkeypatch):
    from raytrain.techniques import precision

    seen = {}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: seen.setdefault("arg", including_emulation))
    precision.cuda_has_native_bf16()
    assert seen["arg"] is False


def test_grad_scaler_skips_step_with_inf_gradient():
    model = nn.Linear(4, 2)
    before = copy.deepcopy(model.state_dict())
    model.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = make_grad_scaler("fp16", CPU)
    assert scaler.is_enabled()
    sched = SchedulerStepper(torch.optim.lr_scheduler.ConstantLR(opt, 1.0, 0), 10)
    batch = [{"x": torch.randn(8, 4), "y": torch.randint(0, 2, (8,))}]
    stats = train_epoch(model, batch, opt, sched, scaler, StepEnv(CPU, "fp32"))
    assert stats["skipped_steps"] == 1 and sched.taken == 0
    assert_close(model.state_dict(), before)


def test_grad_scaler_skip_read_a_step_late_keeps_the_lr_schedule_exact():
    """Steps 1 and 3 fine, step 2 with inf gradients: the schedule advances for steps 1 and 3 only, each
    before the next optimizer step, as an immediate read would (the skip is read while step 3 is queued)."""
    model = nn.Linear(4, 2)
    calls = {"n": 0}

    def poison(g):
        calls["n"] += 1
        return torch.full_like(g, float("inf")) if calls["n"] == 2 else g

    model.weight.register_hook(poison)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    stepper = SchedulerStepper(sched, 10)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))
    batches = [{"x": torch.randn(8, 4), "y": torch.randint(0, 2, (8,))} for _ in range(3)]
    stats = train_epoch(model, batches, opt, stepper, make_grad_scaler("fp16", CPU), StepEnv(CPU, "fp32"))
    assert stats["skipped_steps"] == 1 and stepper.taken == 2
    assert seen == [0.1, 0.05]  # step 1 at lr 0.1; step 2 skipped (no optimizer.step); step 3 at the next lr


def test_channels_last_auto_only_for_conv_nets():
    cnn, mlp = build_model("cnn", (1, 8, 8), 10), build_model("mlp", (1, 8, 8), 10)
    assert wants_channels_last("auto", cnn) and not wants_channels_last("auto", mlp)
    apply_channels_last(cnn)
    assert cnn[0].weight.is_contiguous(memory_format=torch.channels_last)


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


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_structured_pruning_through_residual_and_depthwise(name):
    """The oracle of the mlp/cnn test, through residual adds, BatchNorm and depthwise convolutions: the pruned
    model equals the dense one with every removed channel silenced where it is consumed (the input slices of
    each following convolution or linear layer zeroed)."""
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


def test_early_stopping_patience_on_scripted_sequence():
    stopper = EarlyStopper(EarlyStoppingConfig(metric="val_accuracy", mode="max", patience=2, min_delta=0.01))
    seq = [0.50, 0.60, 0.605, 0.609, 0.70, 0.70, 0.69]
    stops = [stopper.update(e, v, float(e)) for e, v in enumerate(seq)]
    assert stops[:3] == [None, None, None] and stops[3] is not None and "for 2 epochs" in stops[3]


def test_early_stopping_target_records_time_to_target():
    stopper = EarlyStopper(EarlyStoppingConfig(metric="val_loss", mode="min", patience=5, target=0.2))
    assert stopper.update(0, 0.5, 1.0) is None
    assert "reached at epoch 2" in stopper.update(1, 0.19, 2.5)
    assert (stopper.target_epoch, stopper.target_seconds) == (2, 2.5)
    again = EarlyStopper(stopper.cfg)
    again.load_state_dict(stopper.state_dict())
    assert again.target_epoch == 2 and again.best == 0.19
