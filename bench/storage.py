"""Checkpoint upload cost: the same run with output on an S3 API (moto's server on loopback, started here, a
stand-in for a real bucket: no network latency, a Python server's throughput) vs a local folder. Per-epoch
wall time is the gap between consecutive epoch reports, so it includes writing each epoch's checkpoint."""

from __future__ import annotations


from bench.common import moto_s3, OUT, experiment, median, rows_of, steady

EXP = {"model__name": "resnet", "model__width": 2.0, "train__epochs": 5, "train__batch_size": 128,
       "train__optimizer": {"name": "adamw", "lr": 0.005}, "parallel__cpus_per_worker": 2}


def _run(output: str) -> dict:
    from raytrain import checkpoint as ckpt
    from raytrain import storage, driver

    s = driver.run(experiment(output=output, **EXP))
    rows = rows_of(s)
    gaps = [b["since_launch_s"] - a["since_launch_s"] for a, b in zip(rows, rows[1:])]
    newest = ckpt.checkpoint_dirs(storage.resolve(s.run_dir) / ckpt.RUN_STORAGE)[0]
    size = sum(c.info().size for c in newest.children())
    return {"epoch_wall_s": median(gaps), "epoch_s": steady([r["epoch_s"] for r in rows]), "checkpoint_mb": size / 1e6,
            "run_dir": s.run_dir}


def run() -> dict:
    from raytrain import runtime

    server, _ = moto_s3("raytrain-bench")
    try:
        with runtime.ray_session(num_cpus=2):
            local, s3 = [], []
            for _ in range(2):  # alternating, this VM drifts
                local.append(_run(str(OUT)))
                s3.append(_run("s3://raytrain-bench/runs"))
    finally:
        server.stop()
    pick = lambda runs: {**runs[0], "epoch_wall_s": median([r["epoch_wall_s"] for r in runs])}  # noqa: E731
    return {"local": pick(local), "s3": pick(s3), "task": "resnet width 2 on digits 32x32, 1 worker x 2 CPUs, a "
            "checkpoint every epoch, in-process; S3 = moto's server on loopback"}


def rows(r: dict) -> list[tuple[str, str, str]]:
    if not r:
        return []
    lo, s3 = r["local"], r["s3"]
    return [("time per epoch with output on S3 (a local S3 API server) vs a local folder, checkpoint every epoch",
             f"{s3['epoch_wall_s']:.2f} s vs {lo['epoch_wall_s']:.2f} s = **{s3['epoch_wall_s'] / lo['epoch_wall_s']:.2f}×** "
             f"(checkpoint {s3['checkpoint_mb']:.1f} MB; training alone {lo['epoch_s']:.2f} s)", "report")]
