"""GPU runs, on a real CUDA GPU (`make gpu-check` runs this file and the GPU bench rows on a GPU host). Skipped,
with the reason, where CUDA is absent: nothing here fakes a GPU. Every run asserts it trained on the GPU.

With one GPU, multi-rank paths run as a one-process NCCL group (world size 1), which still rejects CPU
tensors in collectives; two ranks on one GPU (and pipelines over GPUs) need a second GPU. Ordered cheap and
central first: a check cut short by its time budget loses the heaviest tests (compile, Tune) first."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import free_port, make_exp, metric_rows

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check on a GPU host)")]

ROOT = Path(__file__).resolve().parents[1]
GPU = {"parallel__use_gpu": True, "model__name": "cnn", "model__width": 0.5, "train__epochs": 2,
       "train__optimizer": {"name": "adamw", "lr": 0.01}}


def _run(exp_dict, **patch):
    """A run that must complete on the GPU: an in-process run allocates in this process's CUDA allocator (its
    count of allocations grows); a worker group's collectives run on NCCL, which takes CUDA tensors only."""
    from raytrain import driver

    before = _gpu_allocations()
    s = driver.run(make_exp(exp_dict, **{**GPU, **patch}))
    assert s.status == "completed", s
    assert s.mode != "in-process" or _gpu_allocations() > before, "the in-process run allocated nothing on the GPU"
    return s


def _gpu_allocations() -> int:
    return torch.cuda.memory_stats().get("allocation.all.allocated", 0) if torch.cuda.is_initialized() else 0


def _nccl_rank():
    import os

    import torch.distributed as dist

    from raytrain import collectives

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    torch.cuda.set_device(0)
    cpu = torch.tensor([1.0])
    try:
        dist.all_reduce(cpu)  # what the old loop did
        raw = "accepted"
    except Exception as e:
        raw = type(e).__name__
    return {"raw": raw, "device": str(collectives.group_device()), "sums": collectives.reduce_sums({"a": 2}),
            "all_true": collectives.all_true(True), "spread": collectives.spread(3.0),
            "object": collectives.broadcast_object(["checkpoint_1"])}


def test_collectives_on_a_one_process_nccl_group():
    import torch.distributed as dist

    from raytrain import collectives

    port = free_port()
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        r = _nccl_rank()
        collectives.wait_for_all()  # the CPU-side wait beside an NCCL group
    finally:
        dist.destroy_process_group()
    assert r["raw"] != "accepted" and r["device"].startswith("cuda")  # NCCL refuses CPU tensors; the helper moves them
    assert r["sums"] == {"a": 2.0} and r["all_true"] is True and r["spread"] == 0.0 and r["object"] == ["checkpoint_1"]
    print("\n[figures] " + json.dumps({"gpu": torch.cuda.get_device_name(0)}))


def test_sgd_and_adamw_use_fused_kernels_on_the_gpu():
    from raytrain.config import OptimizerConfig
    from raytrain.optim import build_optimizer

    model = nn.Linear(4, 2).cuda()
    for name in ("sgd", "adamw"):
        assert build_optimizer(model, OptimizerConfig(name=name, lr=0.1)).defaults["fused"] is True, name


def test_the_device_cache_holds_model_input_and_it_is_what_a_step_computes(exp_dict):
    from raytrain.data.batches import Batches
    from raytrain.data.memory import Arrays, InMemory
    from raytrain.data.prepare import DataInfo
    from raytrain.epoch import StepEnv

    gen = torch.Generator().manual_seed(0)
    arrays = {s: Arrays(torch.randint(0, 256, (n, 1, 8, 8), generator=gen, dtype=torch.uint8).numpy(),
                        torch.randint(0, 10, (n,), generator=gen).numpy()) for s, n in (("train", 300), ("val", 100))}
    info = DataInfo("", "", (1, 8, 8), 10, 300, 100, scale=1 / 255, mean=0.13, std=0.31)
    dev = torch.device("cuda", 0)
    exp = make_exp(exp_dict, parallel__use_gpu=True)
    held = Batches(exp, info, dict(arrays), 0, 1, dev, prenormalise=True)
    assert held.cached and held.normalised and held.memory.x.dtype == torch.float32
    env = StepEnv(dev, "fp32", False, info.scale, info.mean, info.std)
    raw = InMemory(arrays["train"], dev)
    got, want = next(held.train(0)), next(raw.train(exp.per_worker_batch, exp.seed, 0))
    assert got["x"].is_cuda and torch.equal(got["x"], env.inputs(want)[0]) and torch.equal(got["y"], want["y"])
    val = next(held.val())["x"]
    assert torch.equal(val, env.inputs(next(InMemory(arrays["val"], dev).in_order(256)))[0])
    assert not Batches(exp, info, dict(arrays), 0, 1, dev).normalised  # only for a caller that takes model input


def test_one_worker_gpu_run_to_the_end(ray_local, exp_dict):
    s = _run(exp_dict, train__precision="auto", train__channels_last=True)
    from raytrain.techniques.precision import cuda_has_native_bf16

    assert s.mode == "in-process" and s.final["precision"] == ("bf16" if cuda_has_native_bf16() else "fp16")
    assert s.final["val_accuracy"] > 0.8 and s.final["device_cache"] is True


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_training_step_never_waits_for_the_gpu(ray_local, exp_dict, precision):
    """torch's own detector set to raise (`set_sync_debug_mode("error")`) from the end of step 2 to the end of
    the epoch's last step (`bench.syncs.SyncsPerStep`): a synchronising op in any step fails the run."""
    from raytrain.techniques.precision import cuda_has_native_bf16

    if precision == "bf16" and not cuda_has_native_bf16():
        pytest.skip("this GPU has no native bf16")
    try:
        s = _run(exp_dict, train__precision=precision, train__epochs=1, parallel__max_failures=0,
                 callbacks=[{"name": "bench.syncs:SyncsPerStep", "args": {"strict": True}}])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    row = metric_rows(s.run_dir)[0]
    assert row["syncs_per_step"] == 0 and row["syncs_steps_counted"] >= 10 and row["precision"] == precision, row


def test_an_in_process_restart_after_running_out_of_gpu_memory_has_the_memory_back(exp_dict):
    """Every attempt's model holds 55% of the GPU; the first then asks for 55% more and runs out. The restart
    fits only if the failed attempt's model was freed first."""
    from raytrain import driver

    share = int(0.55 * torch.cuda.get_device_properties(0).total_memory)
    ran_out: list = []

    class Hog(nn.Module):
        def __init__(self, in_shape, num_classes):
            super().__init__()
            self.fc = nn.Linear(int(torch.tensor(in_shape).prod()), num_classes)
            self.held = None

        def forward(self, x):
            if x.is_cuda and self.training and self.held is None:
                self.held = torch.empty(share, dtype=torch.uint8, device=x.device)
                if not ran_out:
                    ran_out.append(True)
                    torch.empty(share, dtype=torch.uint8, device=x.device)  # more than is left: a real OOM
            return self.fc(x.flatten(1))

    gc.collect()
    torch.cuda.empty_cache()
    try:
        s = driver.run(make_exp(exp_dict, **{**GPU, "train__epochs": 1, "parallel__max_failures": 1}),
                       factory=lambda shape, n: Hog(shape, n),
                       ray="none")
    finally:
        gc.collect()
        torch.cuda.empty_cache()
    assert ran_out and s.status == "completed", s.error


STICKY = """
import json, sys, torch
from torch import nn
from raytrain import driver
from raytrain.configio import validate_experiment

class Asserts(nn.Module):
    def __init__(self, in_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(in_shape).prod()), num_classes)

    def forward(self, x):
        if x.is_cuda:  # an index out of bounds on the device: a device-side assert, which no later call survives
            x = x + torch.zeros(2, device=x.device)[torch.full((1,), 5, device=x.device)]
        return self.fc(x.flatten(1))

s = driver.run(validate_experiment(json.loads(sys.argv[1]), "t"), factory=lambda shape, n: Asserts(shape, n), ray="none")
print(json.dumps({"status": s.status, "error": s.error}))
"""


def test_a_sticky_cuda_error_is_not_restarted_in_the_same_process(exp_dict):
    """In a process of its own: after a device-side assert no CUDA call of that process works again."""
    exp = make_exp(exp_dict, **{**GPU, "train__epochs": 1, "parallel__max_failures": 2}).model_dump(mode="json")
    proc = subprocess.run([sys.executable, "-c", STICKY, json.dumps(exp)], capture_output=True, text=True, cwd=ROOT,
                          timeout=180)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stderr[-3000:]
    r = json.loads(lines[-1])
    assert r["status"] == "failed" and "not restarted in this process" in r["error"] and "--resume" in r["error"], r


def test_fp16_with_grad_scaler(ray_local, exp_dict):
    s = _run(exp_dict, train__precision="fp16")
    assert s.final["precision"] == "fp16" and s.final["val_accuracy"] > 0.8
    assert all(r["precision"] == "fp16" for r in metric_rows(s.run_dir))


def test_bf16(ray_local, exp_dict):
    from raytrain.techniques.precision import cuda_has_native_bf16

    if not cuda_has_native_bf16():
        pytest.skip("this GPU has no native bf16")
    assert _run(exp_dict, train__precision="bf16").final["precision"] == "bf16"


def test_gradual_magnitude_pruning_on_the_gpu(ray_local, exp_dict):
    s = _run(exp_dict, train__epochs=4, pruning={"method": "magnitude", "ratio": 0.8, "schedule": "gradual",
                                                 "start_epoch": 1, "end_epoch": 3})
    assert s.final["weight_sparsity"] == pytest.approx(0.8, abs=1e-3)


def test_gpu_checkpoint_resumes_and_exports_on_the_cpu(ray_local, exp_dict, tmp_path):
    from raytrain import driver
    from raytrain.cli import main

    first = _run(exp_dict)
    out = tmp_path / "model.pt"
    assert main(["export", first.run_dir, "--out", str(out)]) == 0
    weights = torch.load(out, weights_only=True)
    assert all(t.device.type == "cpu" for t in weights.values())
    cpu = driver.run(make_exp(exp_dict, **{**GPU, "parallel__use_gpu": False, "train__epochs": 3}),
                     resume=first.run_dir)
    assert cpu.status == "completed" and [r["epoch"] for r in metric_rows(first.run_dir)] == [1, 2, 3]
    back = driver.run(make_exp(exp_dict, **{**GPU, "train__epochs": 4}), resume=first.run_dir)  # and back
    assert back.status == "completed"


def test_device_cache_matches_host_held_batches_on_a_one_batch_epoch(ray_local, exp_dict):
    """Same examples either way (the cache held on the GPU as model input; the copy held in host memory moved and
    normalised per step); in a one-batch epoch the order cannot matter, so the metrics agree."""
    runs = [_run(exp_dict, train__batch_size=2048, train__precision="fp32", data__device_cache=cache, model__name="mlp")
            for cache in (True, False)]
    assert runs[0].final["device_cache"] is True and runs[1].final["device_cache"] is False
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert runs[0].final[key] == pytest.approx(runs[1].final[key], rel=1e-5, abs=1e-6), key


def test_streaming_ingest_on_the_gpu(ray_local, exp_dict, tmp_path):
    """Ray Data's batches land on the device (pinned, two prefetched) and train like the held data."""
    from test_streaming import _data, _digits_parquet

    train, val = _digits_parquet(tmp_path / "data")
    s = _run(exp_dict, data=_data(train, val, ingest="stream"), model__name="mlp", model__width=1.0,
             train__precision="fp32", train__epochs=3)
    assert s.ingest == "stream" and s.final["device_cache"] is False and s.final["val_accuracy"] > 0.5, s.final


def test_worker_group_on_an_nccl_group_runs_and_resumes(ray_local, exp_dict):
    """The failure every GPU run had: metric sums all-reduced as CPU tensors on NCCL at the end of epoch 1. Then
    a resume in a new worker group: rank 0 lists the checkpoints, every rank reads one, all agree (the CPU-side
    waits beside NCCL), and the run goes on."""
    from raytrain import driver

    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    first = _run(exp_dict, parallel__isolate=True, train__precision=precision, train__epochs=1)
    assert first.mode == "worker-group" and [r["epoch"] for r in metric_rows(first.run_dir)] == [1]
    more = driver.run(make_exp(exp_dict, **{**GPU, "parallel__isolate": True, "train__precision": precision}),
                      resume=first.run_dir)
    assert more.status == "completed", more.error
    assert [r["epoch"] for r in metric_rows(first.run_dir)] == [1, 2]


def test_channels_last_compile_and_structured_pruning(ray_local, exp_dict):
    s = _run(exp_dict, train__epochs=3, train__channels_last=True, train__compile=True,
             pruning={"method": "structured", "ratio": 0.5, "start_epoch": 1})
    assert s.final["pruned_ratio"] == 0.5 and s.final["params_total"] < 0.5 * 53_002


def test_two_half_gpu_trials_run_at_once(ray_local, tmp_path):
    import yaml

    from raytrain.tuner import driver
    from raytrain.tuner.spec import load_spec

    spec = {"name": "g", "data": {"dataset": "digits", "upscale": 4}, "model": {"name": "cnn"}, "output": str(tmp_path),
            "train": {"batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05}},
            "search": {"samples": 2, "space": {"train.optimizer.lr": {"loguniform": [0.01, 0.1]}},
                       "asha": {"max_t": 6, "grace_period": 6},
                       "trial": {"workers": 1, "cpus_per_worker": 1, "use_gpu": True, "gpus_per_worker": 0.5}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    summary = driver.run(load_spec(tmp_path / "s.yaml"))
    spans = [(r["history"][0]["trial_started_mono"], max(h["reported_mono"] for h in r["history"])) for r in summary["trials"]]
    assert len(spans) == 2 and spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans  # they overlapped
