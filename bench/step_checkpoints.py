"""Issue 32's step-checkpoint overhead on a task whose epoch is long enough to hold step checkpoints on S3.

`bench.elastic` measures it on its digits task (26 steps of ~30 ms an epoch): there, one checkpoint to the S3
API server (moto on loopback) costs ~8 steps' time, so the interval at which it is <= 5% of training is longer
than the epoch and no step checkpoint falls inside one. Here: MNIST (54,000 training images, 844 steps of 64),
the half-width cnn of experiments/mnist-fast.yaml on 2 threads, 3 epochs; the cost of one checkpoint from a run
checkpointing every PROBE steps; then, local and S3 alike, epoch time at the 5% interval K against epoch
checkpoints only (measured before and after). Needs MNIST ($RAYTRAIN_DATA/mnist). Goal: <= 5%.
"""

from __future__ import annotations

from bench import elastic

PROBE = 20
TASK = {"data": {"dataset": "mnist"}, "model": {"name": "cnn", "width": 0.5}, "train__epochs": 3,
        "parallel__cpus_per_worker": 2}


def run() -> dict:
    return {"overhead": elastic.overhead(TASK, PROBE),
            "task": f"cnn width 0.5 on MNIST (54,000 train), batch {elastic.BATCH}, 3 epochs, 1 worker x 2 threads, "
                    "no Ray; S3 = moto on loopback"}


def rows(r: dict) -> list[tuple[str, str, str]]:
    if not r:
        return []
    o = r["overhead"]
    return [("step checkpoints at the interval costing ≤5% (vs epoch checkpoints), local / S3; MNIST, 844 steps an epoch",
             " / ".join(f"every {o[k]['every_steps']} steps: {100 * o[k]['overhead']:+.1f}%" for k in ("local", "s3")),
             "≤ 5%")]
