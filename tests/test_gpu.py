"""GPU runs, on a real CUDA GPU (`make gpu-check` runs these and the GPU bench rows on a GPU host). Skipped,
with the reason, where CUDA is absent: nothing here fakes a GPU.

With one GPU, multi-rank paths run as a one-process NCCL group (world size 1), which still rejects CPU
tensors in collectives; two ranks on one GPU (and pipelines over GPUs) need a second GPU."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import free_port, make_exp, metric_rows

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check on a GPU host)")]

GPU = {"parallel__use_gpu": True, "model__name": "cnn", "model__width": 0.5, "train__epochs": 2,
       "train__optimizer": {"name": "adamw", "lr": 0.01}}


def _run(exp_dict, **patch):
    from raytrain import driver

    s = driver.run(make_exp(exp_dict, **{**GPU, **patch}))
    assert s["status"] == "completed", s
    return s


def test_one_worker_gpu_run_to_the_end(ray_local, exp_dict):
    s = _run(exp_dict, train__precision="auto", train__channels_last=True)
    from raytrain.techniques.precision import cuda_has_native_bf16

    assert s["mode"] == "in-process" and s["final"]["precision"] == ("bf16" if cuda_has_native_bf16() else "fp16")
    assert s["final"]["val_accuracy"] > 0.8


def test_worker_group_on_an_nccl_group_gets_past_epoch_one(ray_local, exp_dict):
    """The failure every GPU run had: metric sums all-reduced as CPU tensors on NCCL at the end of epoch 1."""
    s = _run(exp_dict, parallel__isolate=True, train__precision="bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert s["mode"] == "worker-group" and [r["epoch"] for r in metric_rows(s["run_dir"])] == [1, 2]


def test_fp16_with_grad_scaler(ray_local, exp_dict):
    s = _run(exp_dict, train__precision="fp16")
    assert s["final"]["precision"] == "fp16" and s["final"]["val_accuracy"] > 0.8
    assert all(r["precision"] == "fp16" for r in metric_rows(s["run_dir"]))


def test_bf16(ray_local, exp_dict):
    from raytrain.techniques.precision import cuda_has_native_bf16

    if not cuda_has_native_bf16():
        pytest.skip("this GPU has no native bf16")
    assert _run(exp_dict, train__precision="bf16")["final"]["precision"] == "bf16"


def test_channels_last_compile_and_structured_pruning(ray_local, exp_dict):
    s = _run(exp_dict, train__epochs=3, train__channels_last=True, train__compile=True,
             pruning={"method": "structured", "ratio": 0.5, "start_epoch": 1})
    assert s["final"]["pruned_ratio"] == 0.5 and s["final"]["params_total"] < 0.5 * 53_002


def test_gradual_magnitude_pruning_on_the_gpu(ray_local, exp_dict):
    s = _run(exp_dict, train__epochs=4, pruning={"method": "magnitude", "ratio": 0.8, "schedule": "gradual",
                                                 "start_epoch": 1, "end_epoch": 3})
    assert s["final"]["weight_sparsity"] == pytest.approx(0.8, abs=1e-3)


def test_gpu_checkpoint_resumes_and_exports_on_the_cpu(ray_local, exp_dict, tmp_path):
    from raytrain import driver
    from raytrain.cli import main

    first = _run(exp_dict)
    out = tmp_path / "model.pt"
    assert main(["export", first["run_dir"], "--out", str(out)]) == 0
    weights = torch.load(out, weights_only=True)
    assert all(t.device.type == "cpu" for t in weights.values())
    cpu = driver.run(make_exp(exp_dict, **{**GPU, "parallel__use_gpu": False, "train__epochs": 3}),
                      resume=first["run_dir"])
    assert cpu["status"] == "completed" and [r["epoch"] for r in metric_rows(first["run_dir"])] == [1, 2, 3]
    back = driver.run(make_exp(exp_dict, **{**GPU, "train__epochs": 4}), resume=first["run_dir"])  # and back
    assert back["status"] == "completed"


def test_device_cache_matches_ray_data_on_a_one_batch_epoch(ray_local, exp_dict):
    """Same examples either way; in a one-batch epoch the order cannot matter, so the metrics agree."""
    runs = [_run(exp_dict, train__batch_size=2048, train__precision="fp32", data__device_cache=cache, model__name="mlp")
            for cache in (True, False)]
    assert runs[0]["final"]["device_cache"] is True and runs[1]["final"]["device_cache"] is False
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert runs[0]["final"][key] == pytest.approx(runs[1]["final"][key], rel=1e-5, abs=1e-6), key


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
            "all_true": collectives.all_true(True), "spread": collectives.spread(3.0)}


def test_collectives_on_a_one_process_nccl_group():
    import torch.distributed as dist

    port = free_port()
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        r = _nccl_rank()
    finally:
        dist.destroy_process_group()
    assert r["raw"] != "accepted" and r["device"].startswith("cuda")  # NCCL refuses CPU tensors; the helper moves them
    assert r["sums"] == {"a": 2.0} and r["all_true"] is True and r["spread"] == 0.0
    print("\n[figures] " + json.dumps({"gpu": torch.cuda.get_device_name(0)}))
