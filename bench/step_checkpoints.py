"""Issue 32's step-checkpoint overhead on a task whose epoch is long enough to hold step checkpoints on S3.

`bench.elastic` measures it on its digits task (26 steps of ~30 ms an epoch): there, one checkpoint to the S3
API server (moto on loopback) costs ~8 steps' time, so the interval at which it is <= 5% of training is longer
than the epoch and no step checkpoint falls inside one. Here: MNIST (54,000 training images, 844 steps of 64),
the half-width cnn of bench/recipes/mnist-fast-cnn.yaml on 2 threads, 3 epochs. The seconds one step checkpoint takes
come from a run checkpointing every PROBE steps, as the loop measures them (`step_checkpoint_s` in each epoch's
row); K is the interval at which they are SHARE of the steps between two. A run at K then gives (a) the share of
its epoch time spent in step checkpoints, from its own clock, and (b) its epoch time against runs with epoch
checkpoints only, before and after it (the median of both). Needs MNIST ($RAYTRAIN_DATA/mnist). Goal: <= 5%.

History (2026-12-03): K from the difference of two runs' epoch times, aimed at 5%, measured +5.7% side by side
(local); the next run's local probe came out below zero, because the VM's drift between runs (up to 20%) is
larger than the probe's extra seconds, which made K one step (+50%). So the cost now comes from inside the run,
and K aims at 4%: the side-by-side figure also carries what the loop's clock does not (cache and allocator
effects, and that drift).
"""

from __future__ import annotations

from bench import elastic

PROBE = {"local": 4, "s3": 20}  # the probe run's interval: dozens of checkpoints an epoch on either storage
SHARE = 0.04  # the share of training time K is chosen for (see above)
TASK = {"data": {"dataset": "mnist"}, "model": {"name": "cnn", "width": 0.5}, "train__epochs": 3,
        "parallel__cpus_per_worker": 2}


def run() -> dict:
    return {"overhead": elastic.overhead(TASK, PROBE, SHARE),
            "task": f"cnn width 0.5 on MNIST (54,000 train), batch {elastic.BATCH}, 3 epochs, 1 worker x 2 threads, "
                    "no Ray; S3 = moto on loopback"}


def rows(r: dict) -> list[tuple[str, str, str]]:
    if not r:
        return []
    return [("step checkpoints at the interval aimed at 4%: share of epoch time in them / epoch time vs epoch "
             "checkpoints; local, S3; MNIST, 844 steps an epoch", elastic.overhead_cell(r["overhead"]), "≤ 5%")]
