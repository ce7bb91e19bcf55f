"""Pipeline parallelism, pure PyTorch on real gloo processes: splitting, gradient and loss parity
with single-process training (GPipe, 1F1B, interleaved), BatchNorm vs gradient accumulation, DP x PP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from raytrain.errors import UserError
from raytrain.models import build_model
from raytrain.parallel import pipeline as pl
from raytrain.parallel.spawn import run_ranks

SHAPE = (1, 8, 8)


def _batch(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, SHAPE, 10, 0.5)


def _pipeline_step(name, schedule, stages, microbatches, lr):
    """One pipelined step on this rank's share of the batch; returns (loss sum, grads, loss sum after an SGD step)."""
    X, Y = _batch()
    mesh = pl.make_mesh(stages, "cpu")
    b = X.shape[0] // mesh.dp
    pipe = pl.build_pipeline(_model(name), mesh, schedule, microbatches, torch.device("cpu"),
                             example=torch.zeros(b // microbatches, *SHAPE))
    x, y = X[mesh.dp_rank * b:(mesh.dp_rank + 1) * b], Y[mesh.dp_rank * b:(mesh.dp_rank + 1) * b]
    n, labels = pl.share_batch(mesh, y if mesh.pp_rank == 0 else None, b, torch.device("cpu"))
    loss, _ = pl.run_step(pipe, x, labels, n, train=True)
    grads = {k: p.grad.clone() for part in pipe.parts for k, p in part.named_parameters()}
    torch.optim.SGD(pipe.parameters(), lr=lr).step()
    pipe.train(False)
    after, _ = pl.run_step(pipe, x, labels, n, train=False)
    return loss, grads, after


def _pipeline_steps(cases):
    """`_pipeline_step` for each case in turn, in one process group: one spawn of the ranks serves every case."""
    return [_pipeline_step(*case) for case in cases]


TWO_RANK_CASES = [("mlp", "gpipe", 2, 2, 0.1), ("mlp", "1f1b", 2, 4, 0.1), ("mlp", "interleaved_1f1b", 2, 4, 0.1),
                  ("vit", "gpipe", 2, 4, 0.1), ("resnet", "1f1b", 2, 4, 0.1)]


@pytest.fixture(scope="module")
def two_ranks():
    """Every two-rank case's per-rank results, keyed by case (one spawn of 2 gloo ranks for all of them)."""
    per_rank = run_ranks(_pipeline_steps, 2, TWO_RANK_CASES)
    return {case: [rank[i] for rank in per_rank] for i, case in enumerate(TWO_RANK_CASES)}


def _reference(name, lr, accumulate: int = 1):
    """Single process: mean loss over the batch (or gradient accumulation over `accumulate` chunks)."""
    X, Y = _batch()
    model = _model(name)
    loss = 0.0
    for x, y in zip(X.chunk(accumulate), Y.chunk(accumulate)):
        l = F.cross_entropy(model(x), y) / accumulate
        l.backward()
        loss += float(l.detach())
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    torch.optim.SGD(model.parameters(), lr=lr).step()
    with torch.no_grad():
        after = float(F.cross_entropy(model.eval()(X), Y))
    return loss, grads, after


def _check(results, ref, n=16):
    loss = sum(r[0] for r in results) / n
    assert_close(loss, ref[0], atol=1e-5, rtol=1e-5)
    seen = {}
    for r in results:
        for k, g in r[1].items():
            assert_close(g, ref[1][k], atol=1e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
            seen[k] = True
    assert set(seen) == set(ref[1])  # every parameter lives on some stage
    assert_close(sum(r[2] for r in results) / n, ref[2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("schedule,microbatches", [("gpipe", 2), ("1f1b", 4), ("interleaved_1f1b", 4)])
def test_two_stage_pipeline_matches_single_process(two_ranks, schedule, microbatches):
    results = two_ranks[("mlp", schedule, 2, microbatches, 0.1)]
    _check(results, _reference("mlp", 0.1))


def test_vit_two_stages_gpipe_matches_single_process(two_ranks):
    results = two_ranks[("vit", "gpipe", 2, 4, 0.1)]
    _check(results, _reference("vit", 0.1))


def test_batchnorm_pipeline_matches_gradient_accumulation_not_full_batch(two_ranks):
    results = two_ranks[("resnet", "1f1b", 2, 4, 0.1)]
    accumulated = _reference("resnet", 0.1, accumulate=4)
    _check(results, accumulated)
    full = _reference("resnet", 0.1)
    with pytest.raises(AssertionError):  # per-micro-batch statistics: not the full-batch gradient
        _check(results, full)


def test_dp2_x_pp2_on_four_ranks_gives_single_process_loss_after_a_step():
    results = run_ranks(_pipeline_step, 4, "mlp", "gpipe", 2, 2, 0.5)
    _check(results, _reference("mlp", 0.5))


def test_auto_split_balances_parameters():
    import itertools

    costs = [10.0, 1, 1, 1, 10, 1, 10]
    starts = pl.balance(costs, 3)

    def worst(cuts):
        b = [0, *cuts, len(costs)]
        return max(sum(costs[i:j]) for i, j in zip(b, b[1:]))

    best = min(worst(c) for c in itertools.combinations(range(1, len(costs)), 2))  # brute-force oracle
    assert starts[0] == 0 and worst(starts[1:]) == best == 12
    parts = pl.split_model(_model("vit"), 2)
    sizes = [sum(p.numel() for p in part.parameters()) for part in parts]
    assert max(sizes) / sum(sizes) < 0.55
    assert [k for part in parts for k in part.state_dict()] == list(_model("vit").state_dict())  # full-model keys


def test_explicit_split_and_refusals():
    model = _model("mlp")  # blocks 0..5
    parts = pl.split_model(model, 2, ["3"])
    assert [list(dict(p.named_children())) for p in parts] == [["0", "1", "2"], ["3", "4", "5"]]
    with pytest.raises(UserError, match="only 6 top-level blocks"):
        pl.split_model(model, 7)
    with pytest.raises(UserError, match="no top-level block named 'fc'"):
        pl.split_model(model, 2, ["fc"])
    with pytest.raises(UserError, match="2 split point"):
        pl.split_model(model, 2, ["2", "4"])
    with pytest.raises(UserError, match="neither an nn.Sequential"):
        pl.sequential_of(nn.Linear(2, 2))
