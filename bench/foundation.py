"""raytrain's data-parallel loop against plain PyTorch on the same loop and data: 1 worker (in-process) vs a plain
single process, 2 Ray Train workers vs 1, and the machine's own ceilings (plain DDP without Ray; two
independent processes with no gradient exchange). One run, side by side."""

from __future__ import annotations

import time


import numpy as np
import pyarrow.parquet as pq
import torch

from bench import ddp_ceiling
from bench.common import bench_data, experiment, rows_of, steady


def plain_pytorch_samples_per_s(exp, threads: int) -> float:
    """The same loop (raytrain.epoch.train_epoch) on the same Parquet data, no Ray, `threads` threads."""
    from raytrain.data.prepare import prepare
    from raytrain.epoch import SchedulerStepper, StepEnv, train_epoch
    from raytrain.models import build_model
    from raytrain.optim import build_optimizer
    from raytrain.storage import local_cache_root
    from raytrain.techniques.schedule import build_scheduler

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    info = prepare(exp.data, exp.seed, local_cache_root(exp.output) / "data")
    t = pq.read_table(info.train_path)
    x = torch.from_numpy(np.stack(t.column("x").to_numpy(zero_copy_only=False)).astype(np.float32)).reshape(-1, *info.in_shape)
    y = torch.from_numpy(t.column("y").to_numpy())
    model = build_model(exp.model.name, info.in_shape, info.num_classes, exp.model.width)
    opt = build_optimizer(model, exp.train.optimizer)
    steps = -(-len(y) // exp.train.batch_size)
    stepper = SchedulerStepper(build_scheduler(opt, exp.train.schedule, exp.train.epochs, steps, exp.train.optimizer.lr),
                               exp.train.epochs * steps)
    env = StepEnv(torch.device("cpu"), "fp32", False, info.scale, info.mean, info.std)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    rates = []
    for _ in range(exp.train.epochs):
        perm = torch.randperm(len(y))
        batches = ({"x": x[perm[i:i + exp.train.batch_size]], "y": y[perm[i:i + exp.train.batch_size]]}
                   for i in range(0, len(y), exp.train.batch_size))
        t0 = time.perf_counter()
        stats = train_epoch(model, batches, opt, stepper, scaler, env)
        rates.append(stats.count / (time.perf_counter() - t0))
    return steady(rates)


def run() -> dict:
    from raytrain import runtime, driver

    data = bench_data()
    epochs = 1 if data["dataset"] == "mnist" else 4  # one 60k-example epoch is steady state already
    exp1 = experiment(data=data, train__epochs=epochs, train__batch_size=128)
    plain = plain_pytorch_samples_per_s(exp1, threads=1)
    ddp1, ddp2 = ddp_ceiling.samples_per_s(exp1, 1), ddp_ceiling.samples_per_s(exp1, 2)  # no Ray: the machine's ceiling
    alone2 = ddp_ceiling.samples_per_s(exp1, 2, independent=True)  # no gradient exchange at all
    with runtime.ray_session(num_cpus=2):
        one = rows_of(driver.run(exp1))
        two = rows_of(driver.run(experiment(data=data, train__epochs=epochs, train__batch_size=128, parallel__workers=2)))
    r1, r2 = steady([r["samples_per_s"] for r in one]), steady([r["samples_per_s"] for r in two])
    return {"task": f"cnn on {data['dataset']}, fp32, global batch 128, {epochs} epoch(s), 1 CPU per worker",
            "plain_pytorch_samples_per_s": plain, "ray_1worker_samples_per_s": r1, "ray_vs_plain": r1 / plain,
            "ray_2workers_samples_per_s": r2, "scaling_2_vs_1": r2 / r1,
            "plain_ddp_1proc_samples_per_s": ddp1, "plain_ddp_2proc_samples_per_s": ddp2, "plain_ddp_2_vs_1": ddp2 / ddp1,
            "independent_2proc_samples_per_s": alone2, "independent_2_vs_1": alone2 / ddp1}


def rows(f: dict) -> list[tuple[str, str, str]]:
    if not f:
        return []
    return [
        ("raytrain 1 worker (in-process) vs plain PyTorch, samples/s",
         f"{f['ray_1worker_samples_per_s']:.0f} vs {f['plain_pytorch_samples_per_s']:.0f} = **{f['ray_vs_plain']:.2f}**", "≥0.95"),
        ("2 Ray Train workers × 1 CPU vs 1 × 1, samples/s, same global batch 128",
         f"{f['ray_2workers_samples_per_s']:.0f} vs {f['ray_1worker_samples_per_s']:.0f} = **{f['scaling_2_vs_1']:.2f}×**",
         "(2 vCPUs: see plain DDP)"),
        ("plain PyTorch DDP (gloo, no Ray, same loop and data) 2 processes vs 1, same global batch",
         f"{f['plain_ddp_2proc_samples_per_s']:.0f} vs {f['plain_ddp_1proc_samples_per_s']:.0f} = "
         f"**{f['plain_ddp_2_vs_1']:.2f}×**", "(reference)"),
        ("2 independent plain PyTorch processes (no gradient exchange) vs 1: what two busy processes get here",
         f"{f['independent_2proc_samples_per_s']:.0f} vs {f['plain_ddp_1proc_samples_per_s']:.0f} = "
         f"**{f['independent_2_vs_1']:.2f}×**", "(reference)"),
    ]
