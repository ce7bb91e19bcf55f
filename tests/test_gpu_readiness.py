"""What makes GPU runs safe, shown where a CPU can show it (no GPU is faked; tests/test_gpu.py runs the
same paths on a GPU): ranks that arrive far apart wait on the CPU, not inside a collective sized for a step;
DDP leaves pruning masks out of its per-forward buffer sync and every rank trains with rank 0's; a failed
in-process attempt is freed before the restart; in-process training needs the one GPU Ray has to be the one
this process sees; CPU optimizers keep torch's default kernels."""

from __future__ import annotations

import multiprocessing as mp
import time
import weakref
from datetime import timedelta

import pytest
import torch
from torch import nn

from helpers import make_exp

STEP_TIMEOUT_S = 1  # the process group's timeout here: half the skew
SKEW_S = 2


def _rank(rank: int, store: str, q, start) -> None:
    """Two gloo ranks (no Ray) whose process group times out after STEP_TIMEOUT_S: skewed arrivals at the
    patient waits, then DDP with pruning masks."""
    import torch.distributed as dist

    from raytrain import collectives  # everything imported first: a rank still importing is a skew of its own
    from raytrain.modes import ddp  # noqa: F401
    from raytrain.techniques import pruning  # noqa: F401

    torch.set_num_threads(1)
    start.wait(timeout=120)  # both ranks imported: the group's rendezvous is no skew of its own either
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=STEP_TIMEOUT_S))
    try:
        skew = _skewed(rank)
        collectives.wait_for_all()
        q.put((rank, {"skew": skew, "ddp": _ddp_masks(rank)}, None))
    except Exception as e:
        q.put((rank, None, f"{type(e).__name__}: {str(e)[:300]}"))
    finally:
        dist.destroy_process_group()


def _skewed(rank: int):
    from raytrain import collectives

    if rank == 1:
        time.sleep(SKEW_S)  # e.g. loading a larger shard onto its device
    collectives.wait_for_all()
    sums = collectives.reduce_sums({"n": rank + 1})  # a step's collective: both ranks are here together now
    if rank == 0:
        time.sleep(SKEW_S)  # e.g. rank 0 listing checkpoints in slow storage
    names = collectives.broadcast_object(["checkpoint_1"] if rank == 0 else None)
    if rank == 1:
        time.sleep(SKEW_S)  # e.g. rank 1 reading the checkpoint from slow storage
    agreed = collectives.all_true(True)  # the resume agreement
    return sums, names, agreed


def _ddp_masks(rank: int) -> dict:
    from raytrain.modes.ddp import wrap_ddp
    from raytrain.techniques.pruning import apply_magnitude_pruning

    torch.manual_seed(rank)  # different weights, so different masks before the wrap
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    apply_magnitude_pruning(model, 0.5)
    ddp = wrap_ddp(model, torch.device("cpu"))
    masks = [b.tolist() for n, b in model.named_buffers() if n.endswith("_mask")]  # lists: tensors on a queue die with the rank
    ddp(torch.randn(3, 8)).sum().backward()  # a step works with the masks left out of DDP's sync
    return {"syncs_buffers": ddp.will_sync_module_buffers(), "masks": masks,
            "grads": all(p.grad is not None for p in model.parameters())}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    ctx = mp.get_context("spawn")
    q, start = ctx.Queue(), ctx.Barrier(2)
    store = str(tmp_path_factory.mktemp("store") / "store")
    procs = [ctx.Process(target=_rank, args=(r, store, q, start), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    try:
        got = {rank: (value, err) for rank, value, err in (q.get(timeout=180) for _ in procs)}
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    assert all(err is None for _, err in got.values()), got
    return [got[r][0] for r in range(2)]


def test_ranks_far_apart_wait_on_the_cpu_not_in_a_step_collective(two_ranks):
    for r in two_ranks:
        assert r["skew"] == ({"n": 3.0}, ["checkpoint_1"], True)


def test_ddp_leaves_pruning_masks_out_of_its_per_forward_sync_and_trains_with_rank_0s(two_ranks):
    a, b = (r["ddp"] for r in two_ranks)
    assert not a["syncs_buffers"] and not b["syncs_buffers"]  # no weight-sized broadcast before every forward
    assert len(a["masks"]) == 2 and a["masks"] == b["masks"]
    assert a["grads"] and b["grads"]


def test_a_failed_in_process_attempt_is_freed_before_the_restart(exp_dict):
    from raytrain import driver

    failed: list = []  # a weak reference to the model whose training step failed
    alive_at_restart: list = []

    class FailsOnce(nn.Module):
        def __init__(self, in_shape, num_classes):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(in_shape).prod()), num_classes))

        def forward(self, x):
            if self.training and not failed:
                failed.append(weakref.ref(self))
                raise RuntimeError("out of memory (planted in a training step)")
            return self.net(x)

    def factory(in_shape, num_classes):
        if failed:
            alive_at_restart.append(failed[0]() is not None)
        return FailsOnce(in_shape, num_classes)

    s = driver.run(make_exp(exp_dict, train__epochs=1, parallel__max_failures=1), factory=factory, ray="none")
    assert s.status == "completed", s.error
    assert alive_at_restart == [False]  # the failed attempt's model was gone when the restart built its own


def test_in_process_needs_the_one_gpu_ray_has_to_be_the_one_seen_here():
    from raytrain.runtime import same_single_gpu

    assert same_single_gpu(1, 1.0)
    assert not same_single_gpu(1, 2.0)  # Ray may reserve the other one
    assert not same_single_gpu(2, 2.0) and not same_single_gpu(0, 1.0) and not same_single_gpu(1, 0.0)


def test_cpu_optimizers_keep_torchs_default_kernels():
    from raytrain.config import OptimizerConfig
    from raytrain.optim import build_optimizer, wants_fused

    model = nn.Linear(4, 2)
    for name in ("sgd", "adamw", "adadelta"):
        opt = build_optimizer(model, OptimizerConfig(name=name, lr=0.1))
        assert not opt.defaults.get("fused"), name
    assert not wants_fused(list(model.parameters())) and not wants_fused([])



def test_the_normalised_device_cache_holds_exactly_what_a_step_computes():
    from raytrain.data.batches import normalise
    from raytrain.epoch import StepEnv

    x = torch.randint(0, 256, (1000, 1, 8, 8), dtype=torch.uint8)
    y = torch.zeros(1000, dtype=torch.long)
    norm = (1 / 255, 0.1307, 0.3081)
    want, _ = StepEnv(torch.device("cpu"), "fp32", False, *norm).inputs({"x": x, "y": y}, train=True)
    held = normalise(x, *norm, chunk=300)  # chunks that do not divide the split
    assert held.dtype == torch.float32 and torch.equal(held, want)
    # what the mode's StepEnv then does to a held batch (scale 1, mean 0, std 1) changes nothing
    again, _ = StepEnv(torch.device("cpu"), "fp32", False, 1.0, 0.0, 1.0).inputs({"x": held, "y": y}, train=True)
    assert torch.equal(again, want)
