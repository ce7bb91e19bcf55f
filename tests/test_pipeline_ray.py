"""Pipeline training through Ray Train on a real local Ray: a failing stage ends the run (no hang), then stage
checkpoints -> resume -> export, and bad pipeline settings are refused before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from raytrain.data import prepare as data_mod
from raytrain import driver
from raytrain.cli import main
from helpers import make_exp, metric_rows
from raytrain.errors import UserError
from raytrain.epoch import StepEnv
from raytrain.models import build_model

PIPE = {"stages": 2, "microbatches": 4, "schedule": "1f1b"}


def _exp(d: dict, **patch):
    """A two-stage pipeline experiment (helpers.make_exp with the pipeline keys first)."""
    return make_exp(d, **{"parallel__workers": 2, "parallel__pipeline": dict(PIPE), **patch})


def _accuracy(model: torch.nn.Module, exp) -> float:
    """The unsplit model's accuracy on the run's validation split, computed here without Ray."""
    info = data_mod.prepare(exp.data, exp.seed, Path(exp.output) / ".cache" / "data")
    table = pq.read_table(info.val_path).to_pydict()
    env = StepEnv(torch.device("cpu"), "fp32", False, info.scale, info.mean, info.std)
    x, y = env.inputs({"x": torch.tensor(np.array(table["x"])), "y": torch.tensor(table["y"])})
    with torch.no_grad():
        return int((model.eval()(x).argmax(1) == y).sum()) / len(y)


def test_failing_stage_ends_the_run_then_stage_checkpoints_resume_and_export(ray_local, exp_dict, tmp_path, capsys):
    """A stage that raises mid-epoch 3, with parallel.max_failures 0, fails the run (no hang) naming the stage and
    the error; the run's two checkpoints hold one shard per stage. One stage's shard of the newest torn: export
    falls back to the previous checkpoint, and on resume both stages agree on that one (epoch 2 redone by every
    stage, not by one of them), then go on, resumed as an elastic range that grows to two pipelines (dp2 x pp2 on
    four Ray workers): epoch 2 redone by two data-parallel groups, each on its half of every global batch, gives
    what one group gave (the one-step parity without Ray: tests/test_pipeline.py). The export is an ordinary,
    unsplit state_dict."""
    arm = tmp_path / "boom"
    arm.touch()
    # block "3" (the last stage's first, cut there) raises on its 240th micro-batch (mid-epoch 3) while `arm` exists
    # 1600 of digits' 1797 examples trained on: 25 whole batches of 64, so a pipeline (which drops a last partial
    # batch: its micro-batches must be whole) trains the same steps as one plain worker
    failing = {"model__name": "usermodels:failing_last_stage", "model__kwargs": {"after": 240, "arm": str(arm)},
               "parallel__pipeline__split": ["3"], "parallel__max_failures": 0, "data__val_fraction": 197 / 1797}
    first = driver.run(_exp(exp_dict, train__epochs=3, **failing))
    assert first.status == "failed" and not arm.exists(), first
    assert "pipeline stage 1: RuntimeError: planted stage failure" in first.error
    run_dir = Path(first.run_dir)
    assert [json.loads(r)["epoch"] for r in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    files = sorted(p.name for p in Path(first.checkpoint).iterdir())
    assert [f for f in files if f.endswith(".pt")] == ["stage_0.pt", "stage_1.pt"]  # one shard per stage
    assert [f for f in files if f.endswith(".sha256")] == ["stage_0.pt.sha256", "stage_1.pt.sha256"]

    newest = Path(first.checkpoint)
    previous = sorted(p for p in newest.parent.glob("checkpoint_*") if p.is_dir() and p.name < newest.name)[-1]
    (newest / "stage_1.pt").write_bytes(b"\x00torn")
    capsys.readouterr()
    with pytest.warns(UserWarning, match="stage_1.pt: checksum mismatch"):
        assert main(["export", str(run_dir), "--out", str(tmp_path / "previous.pt")]) == 0
    assert f"from {previous}" in capsys.readouterr().out
    # resumed as an elastic pipeline [2, 4] of half-CPU workers: the session's 2 CPUs fit two whole pipelines (Ray
    # Train is asked for whole pipelines only), which split every global batch, so epoch 2 is redone as it first ran
    second = driver.run(_exp(exp_dict, train__epochs=3, parallel__workers=[2, 4], parallel__cpus_per_worker=0.5,
                             **failing), resume=run_dir)
    assert second.status == "completed", second
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 2, 3]  # resumed after epoch 1, not from scratch
    for key in ("train_loss", "val_loss"):
        assert rows[2][key] == pytest.approx(rows[1][key], rel=1e-5), key
    one_example = 1.01 / second.splits["val"]["examples"]  # a different reduction order may flip one argmax
    assert rows[2]["val_accuracy"] == pytest.approx(rows[1]["val_accuracy"], abs=one_example)
    final = second.final
    assert final["pipeline_stages"] == 2 and final["data_parallel"] == 2 and len(final["stage_params"]) == 2
    assert sum(final["stage_params"]) == final["params_total"]

    out = tmp_path / "model.pt"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    exp = _exp(exp_dict, **failing)
    model = build_model(exp.model.name, (1, 8, 8), 10, exp.model.width, kwargs=exp.model.kwargs)
    model.load_state_dict(torch.load(out, weights_only=True))  # an ordinary, unsplit state_dict
    assert _accuracy(model, exp) == pytest.approx(final["val_accuracy"], abs=1e-9)
    assert main(["export", str(run_dir), "--out", str(out)]) == 2  # never overwrites

    # The same model, seed and data with no pipeline (one worker, in this process; `arm` is gone, so it never
    # fails): a pipeline's micro-batches add up to the whole batch's gradient, so its epochs match the plain run's
    # (steps per epoch, the batches the first stage picks, validation).
    plain = driver.run(make_exp(exp_dict, train__epochs=2, parallel__workers=1, output=str(tmp_path / "plain"),
                                **{k: v for k, v in failing.items() if not k.startswith("parallel__pipeline")}))
    assert plain.status == "completed" and plain.mode == "in-process", plain
    assert plain.splits["train"]["examples"] == 1600
    for mine, piped in zip(metric_rows(plain.run_dir), rows[:2]):
        for key in ("train_loss", "val_loss"):
            assert mine[key] == pytest.approx(piped[key], rel=1e-5), (mine["epoch"], key)
        assert mine["val_accuracy"] == pytest.approx(piped["val_accuracy"], abs=one_example), mine["epoch"]


@pytest.mark.parametrize("patch,msg", [
    ({"train__batch_size": 66}, "train.batch_size 66 must be divisible by data-parallel degree 1 x "
                                "parallel.pipeline.microbatches 4"),
    ({"parallel__workers": 3}, "parallel.workers 3 must be divisible by parallel.pipeline.stages 2"),
    ({"parallel__pipeline__microbatches": 1}, "microbatches 1 must be >= stages 2 for 1f1b"),
    ({"parallel__pipeline__schedule": "interleaved_1f1b", "parallel__pipeline__microbatches": 3,
      "train__batch_size": 66}, "must be a multiple of stages 2 for interleaved_1f1b"),
    ({"pruning": {"method": "structured", "ratio": 0.5}, "train__epochs": 2}, "pruning.method must be none"),
    ({"parallel__use_gpu": True, "train__precision": "fp16"}, "fp16 is not supported with parallel.pipeline"),
])
def test_bad_pipeline_settings_refused(exp_dict, patch, msg):
    with pytest.raises(UserError, match=msg.replace(".", r"\.").replace("(", r"\(")):
        _exp(exp_dict, **patch)


@pytest.mark.parametrize("patch,msg", [
    ({"parallel__pipeline__stages": 2, "model__name": "usermodels:tiny", "parallel__pipeline__schedule": "interleaved_1f1b"},
     "4 stage(s) but the model has only 4 top-level blocks"),
    ({"parallel__pipeline__split": ["head"]}, "no top-level block named 'head'"),
])
def test_pipeline_model_mismatch_refused_in_preflight(exp_dict, patch, msg):
    exp = _exp(exp_dict, **patch)
    if "interleaved" in str(patch):
        exp = _exp(exp_dict, **{**patch, "parallel__workers": 4, "parallel__pipeline__stages": 4,
                                "train__batch_size": 64})
        msg = "8 stage(s) but the model has only 4 top-level blocks"
    with pytest.raises(UserError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        driver.preflight(exp)
