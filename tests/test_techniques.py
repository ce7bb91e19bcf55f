"""Each speed technique against a reference oracle (pure PyTorch, no Ray)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from raytrain import checkpoint as ckpt
from raytrain.config import EarlyStoppingConfig, ScheduleConfig
from raytrain.epoch import SchedulerStepper, StepEnv, train_epoch
from raytrain.models import build_model
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
    assert stats.skipped_steps == 1 and sched.taken == 0
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
    assert stats.skipped_steps == 1 and stepper.taken == 2
    assert seen == [0.1, 0.05]  # step 1 at lr 0.1; step 2 skipped (no optimizer.step); step 3 at the next lr


def test_channels_last_auto_only_for_conv_nets():
    cnn, mlp = build_model("cnn", (1, 8, 8), 10), build_model("mlp", (1, 8, 8), 10)
    assert wants_channels_last("auto", cnn) and not wants_channels_last("auto", mlp)
    apply_channels_last(cnn)
    assert cnn[0].weight.is_contiguous(memory_format=torch.channels_last)


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
