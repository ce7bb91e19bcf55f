"""The one helper every collective goes through, on real gloo process groups (2 ranks, no Ray); the same
code runs on NCCL in tests/test_gpu.py."""

from __future__ import annotations

import torch

from raytrain import collectives
from raytrain.parallel.spawn import run_ranks


def _rank_values():
    import torch.distributed as dist

    rank = dist.get_rank()
    return {
        "device": str(collectives.group_device()),
        "sums": collectives.reduce_sums({"count": 3 + rank, "loss_sum": 0.25 * (rank + 1)}),
        "all_true": collectives.all_true(rank == 0), "all_true_both": collectives.all_true(True),
        "spread": collectives.spread(1.5 if rank == 0 else -2.0), "same": collectives.spread(7.0),
        "slots": collectives.gather_sum(rank, 2, 10.0 * (rank + 1)),
        "broadcast": collectives.broadcast(torch.tensor([rank + 5]), src=1).tolist(),
        "maximum": collectives.maximum(float(rank)),
    }


def test_collectives_on_two_gloo_ranks():
    for r in run_ranks(_rank_values, 2):
        assert r["device"] == "cpu"
        assert r["sums"] == {"count": 7.0, "loss_sum": 0.75}  # exact sums: the loops report sums, not means
        assert r["all_true"] is False and r["all_true_both"] is True
        assert r["spread"] == 3.5 and r["same"] == 0.0
        assert r["slots"] == [10.0, 20.0] and r["broadcast"] == [6] and r["maximum"] == 1.0


def test_without_a_process_group_each_is_the_identity():
    assert collectives.reduce_sums({"a": 2}) == {"a": 2.0}
    assert collectives.all_true(False) is False and collectives.spread(3.0) == 0.0
    assert collectives.group_device().type == "cpu"
