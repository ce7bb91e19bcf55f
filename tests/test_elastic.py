"""Elastic groups without Ray (issue 32, item 3): `parallel.workers: [min, max]` keeps the global batch whatever the
world size. A step accumulated over micro-batches equals one pass over the whole batch; every world size of a
range trains global step g on the same examples (so a checkpoint's position means the same after a resize) and
the same number of steps; validation is cut at run time and read once over the ranks; a range some size of
which cannot split the batch is refused in one line. (Real nodes lost, drained and back: tests/test_multinode.py.)"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import make_exp
from raytrain.data.memory import Arrays, InMemory, epoch_order, usable
from raytrain.epoch import DataParallelStep, SchedulerStepper, StepEnv
from raytrain.errors import UserError


def _steps(model: nn.Module, batches: list[dict], micro: int | None, ddp: list | None = None) -> tuple[nn.Module, float]:
    """`model` (a copy) after one optimizer step per batch; the loss sum of the last. `ddp`: wrapped in DDP, one
    entry appended to that list per gradient all-reduce."""
    model = copy.deepcopy(model)
    net = model
    if ddp is not None:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        net = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=1000)  # one bucket: one all-reduce a step

        def counted(state, bucket):
            ddp.append(bucket.index())
            return allreduce_hook(state, bucket)

        net.register_comm_hook(None, counted)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    step = DataParallelStep(net, opt, SchedulerStepper(sched, 100), torch.amp.GradScaler("cpu", enabled=False),
                            StepEnv(torch.device("cpu")), max_grad_norm=1.0, micro_batch=micro)
    for b in batches:
        loss_sum, correct, n = step(b)
    assert n == len(batches[-1]["y"]) and 0 <= int(correct) <= n
    return model, float(loss_sum)


def _data(n_batches: int = 3, size: int = 64) -> tuple[nn.Module, list[dict]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    gen = torch.Generator().manual_seed(1)
    return model, [{"x": torch.rand(size, 1, 8, 8, generator=gen), "y": torch.randint(0, 10, (size,), generator=gen)}
                   for _ in range(n_batches)]


@pytest.mark.parametrize("micro", [32, 24, 7])  # 2 equal micro-batches; 3 of 22/21/21; 10 of 6-7
def test_a_step_accumulated_over_micro_batches_equals_one_pass_over_the_batch(micro):
    """What a rank of a group below its maximum size does with its larger share: the same weights (clipping and
    momentum included) and the same loss as one pass over the whole batch, within float rounding."""
    model, batches = _data()
    whole, loss = _steps(model, batches, micro=None)
    accumulated, acc_loss = _steps(model, batches, micro=micro)
    assert acc_loss == pytest.approx(loss, rel=1e-6)
    for a, b in zip(whole.parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(next(whole.parameters()), next(model.parameters()))  # it trained


def test_accumulation_under_ddp_holds_the_all_reduce_to_the_last_micro_batch(tmp_path):
    """A DDP-wrapped model (a one-process gloo group): `no_sync` on every micro-batch but the last, and the
    same weights as one pass."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model, batches = _data(n_batches=2)
        once, held = [], []
        whole, _ = _steps(model, batches, micro=None, ddp=once)
        accumulated, _ = _steps(model, batches, micro=16, ddp=held)  # 4 micro-batches a step
    finally:
        dist.destroy_process_group()
    assert len(once) == len(held) == 2  # one all-reduce per optimizer step, not per micro-batch
    for a, b in zip(whole.parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_every_world_size_trains_a_global_step_on_the_same_examples():
    """The oracle of the partition: global step g is the epoch order's g-th global batch (B examples), rank r of w
    taking its r-th equal part; the epoch uses the examples every size of the range splits equally, so every
    size takes the same steps. A resume at step k by a group of another size goes on with exactly the rest."""
    n, global_batch, worlds, seed, epoch = 103, 12, (1, 2, 3, 4), 7, 2
    mem = InMemory(Arrays(np.arange(n)[:, None], np.arange(n) % 10), torch.device("cpu"))
    used = usable(n, worlds)
    assert used == 96  # 103 - 103 % lcm(1, 2, 3, 4)
    order = epoch_order(n, seed, epoch, torch.device("cpu"))
    want = [order[g * global_batch:min((g + 1) * global_batch, used)] for g in range(-(-used // global_batch))]
    for w in worlds:
        ranks = [[b["x"][:, 0] for b in mem.train(global_batch // w, seed, epoch, r, w, used=used)] for r in range(w)]
        assert {len(steps) for steps in ranks} == {len(want)}, w  # equal step counts on every rank
        for g, expected in enumerate(want):
            got = torch.cat([ranks[r][g] for r in range(w)])  # rank order = the global batch's order
            assert torch.equal(got, expected), (w, g)
    # resumed at step 3 by a group of 3 after a group of 2 checkpointed there: the rest of the same epoch
    rest = [torch.cat(parts) for parts in zip(*[list(b["x"][:, 0] for b in mem.train(4, seed, epoch, r, 3, start_step=3,
                                                                                   used=used)) for r in range(3)])]
    assert [t.tolist() for t in rest] == [t.tolist() for t in want[3:]]


def test_steps_per_epoch_and_validation_do_not_depend_on_the_world_size(exp_dict):
    from raytrain.data.batches import Batches
    from raytrain.data.ingest import steps_per_epoch
    from raytrain.data.prepare import DataInfo

    info = DataInfo("", "", (1, 8, 8), 10, 968, 101)
    fixed, elastic = make_exp(exp_dict, parallel__workers=3, train__batch_size=60), \
        make_exp(exp_dict, parallel__workers=[2, 4], train__batch_size=60)
    assert steps_per_epoch(fixed, info) == 17 == -(-(968 // 3) // 20)  # as before: each rank's n // w in batches of B / w
    assert steps_per_epoch(elastic, info) == 16  # 960 = 968 - 968 % lcm(2, 3, 4) examples: 16 global batches

    def arrays(n: int) -> Arrays:
        return Arrays(np.arange(n, dtype=np.float32).repeat(64).reshape(n, 1, 8, 8), np.arange(n) % 10)

    for world in (2, 3, 4):
        seen = []
        for rank in range(world):
            b = Batches(elastic, info, {"train": arrays(968), "val": arrays(101)}, rank, world, torch.device("cpu"))
            assert (b.batch, b.micro) == (60 // world, 15)  # its share of the global batch; micro-batches of B / max
            seen += [int(v) for batch in b.val() for v in batch["x"][:, 0, 0, 0]]
        assert seen == list(range(101)), world  # every validation example once, whatever the world size


def test_a_range_that_cannot_split_the_global_batch_is_refused_in_one_line(exp_dict):
    with pytest.raises(UserError, match=r"^[^\n]*train\.batch_size 64 with parallel\.workers \[2, 4\]: a group of 3 "
                                        r"worker\(s\) cannot split it into equal shares; use a multiple of 12[^\n]*$"):
        make_exp(exp_dict, parallel__workers=[2, 4], train__batch_size=64)
    with pytest.raises(UserError, match=r"parallel\.workers: \[min, max\] needs min <= max"):
        make_exp(exp_dict, parallel__workers=[3, 2])
    exp = make_exp(exp_dict, parallel__workers=[2, 2])  # a range of one size is that fixed size
    assert exp.parallel.workers == 2 and not exp.parallel.elastic


def test_an_elastic_pipeline_ranges_over_whole_pipelines_and_every_degree_splits_the_batch(exp_dict):
    """Pipelines are elastic in their data-parallel degree only: [min, max] in whole pipelines, and every degree
    of the range cuts the global batch into equal micro-batches (refused in one line otherwise)."""
    pipe = {"stages": 2, "microbatches": 4, "schedule": "1f1b"}
    exp = make_exp(exp_dict, parallel__workers=[2, 6], parallel__pipeline=pipe, train__batch_size=96)
    assert list(exp.parallel.world_sizes) == [2, 4, 6]  # one, two or three pipelines; never 3 or 5 workers
    with pytest.raises(UserError, match=r"^[^\n]*parallel\.workers \[3, 6\] with parallel\.pipeline\.stages 2: an "
                                        r"elastic pipeline grows and shrinks by whole pipelines; make min and max "
                                        r"multiples of 2 \(e\.g\. \[2, 6\]\)$"):
        make_exp(exp_dict, parallel__workers=[3, 6], parallel__pipeline=pipe, train__batch_size=96)
    # 64 splits into 4 micro-batches for one pipeline and for two (8 x 8), not for three
    make_exp(exp_dict, parallel__workers=[2, 4], parallel__pipeline=pipe, train__batch_size=64)
    with pytest.raises(UserError, match=r"^[^\n]*train\.batch_size 64 must be divisible by data-parallel degree 3 x "
                                        r"parallel\.pipeline\.microbatches 4 \(every degree of parallel\.workers "
                                        r"\[2, 6\]\)$"):
        make_exp(exp_dict, parallel__workers=[2, 6], parallel__pipeline=pipe, train__batch_size=64)


def test_ray_train_is_asked_for_whole_pipelines_only():
    """Ray Train's elastic policy counts the workers that fit in the cluster's reserved resources; an elastic
    pipeline's trainer rounds that count down to whole pipelines (a group of 3 two-stage workers could not form
    a mesh), and a fixed or DDP group keeps Ray's own policy."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from raytrain import _ray_compat

    trainer = _ray_compat.whole_groups_trainer(TorchTrainer, 2)
    assert issubclass(trainer, TorchTrainer)
    policy = trainer.scaling_policy(ScalingConfig(num_workers=(2, 6), resources_per_worker={"CPU": 1}))
    nodes = {"head": {"CPU": 2.0}, "spot-1": {"CPU": 1.0}}  # 3 workers fit
    assert policy._count_possible_workers(nodes) == 2
    assert policy._count_possible_workers({**nodes, "spot-2": {"CPU": 1.0}}) == 4
    assert policy._count_possible_workers({"head": {"CPU": 1.0}}) == 0  # below one pipeline: Ray Train waits
    assert policy._count_possible_workers({"head": {"CPU": 9.0}}) == 6  # capped at max


def test_clusters_fit_understands_a_range(capsys, tmp_path):
    """`raytrain clusters fit`: an elastic run fits once its minimum does, and says how far it grows."""
    import yaml

    from raytrain.cli import main

    cluster = str(Path(__file__).resolve().parents[1] / "clusters" / "kuberay-job.yaml")  # 16 one-CPU slots

    def fit(lo: int, hi: int, batch: int) -> tuple[int, str]:
        spec = {"name": "e", "data": {"dataset": "digits"}, "train": {"batch_size": batch},
                "parallel": {"workers": [lo, hi], "cpus_per_worker": 1}}
        (tmp_path / "e.yaml").write_text(yaml.safe_dump(spec))
        rc = main(["clusters", "fit", str(tmp_path / "e.yaml"), cluster])
        return rc, capsys.readouterr().out

    rc, out = fit(16, 18, 2448)
    assert rc == 0 and "the run needs 16 to 18 (elastic) worker(s) x {CPU 1}" in out
    assert "the run starts once 16 fit and grows to 16 of 18 (parallel.workers max 18 never fits)" in out
    rc, out = fit(17, 18, 306)
    assert rc == 2 and "does not fit: at least 17 worker(s) (parallel.workers min) per run but the cluster holds 16" in out
