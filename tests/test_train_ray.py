"""Data-parallel training on a real local Ray (2 CPUs): accuracy, DDP equivalence, Parquet, and refusals
that must come before Ray waits for anything. (Resume: tests/test_reliability.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from helpers import make_exp, metric_rows, ray_internal_lines
from raytrain import driver
from raytrain.errors import UserError


def _one_batch_parquet(path, n=72, dim=16):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    pq.write_table(pa.table({"f": pa.array(x.tolist(), pa.list_(pa.float32())), "c": pa.array(np.arange(n) % 4)}), path)
    return path


def test_ddp_two_workers_equal_one_worker_after_one_step(ray_local, exp_dict, tmp_path):
    """Same global batch, same init: the averaged DDP gradient equals the single-process gradient."""
    data = {"dataset": "parquet", "path": str(_one_batch_parquet(tmp_path / "d.parquet")), "features": "f",
            "label": "c", "val_fraction": 8 / 72}
    losses = []
    for workers in (1, 2):
        exp = make_exp(exp_dict, data=data, parallel__workers=workers, train__epochs=1, train__batch_size=64,
                   train__optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0})
        s = driver.run(exp)
        assert s.status == "completed", s
        losses.append(s.final["val_loss"])
    assert abs(losses[0] - losses[1]) < 1e-5, losses


def test_user_project_parquet_and_model_from_the_launch_directory(tmp_path, starts_ray):
    """A user's own directory: their Parquet (other column names) and their model module beside it, trained
    with the installed `raytrain` console script on an embedded Ray; the driver and both workers import
    the model from the launch directory. Two DDP workers learn; every epoch is a row and a checkpoint, and only
    `checkpoint.keep` of them stay. The same run structures-prunes its (convolutional) model mid-training, gradually
    over epochs 2-3: the DDP ranks stay identical, and the model really gets smaller (this run is the structured
    pruning under DDP test: one worker group serves both)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    table = pa.table({"pixels": pa.array((d.data / 16).tolist(), pa.list_(pa.float32())), "target": pa.array(d.target)})
    pq.write_table(table, tmp_path / "digits.parquet")
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n\n\ndef small(in_shape, num_classes):\n"
        "    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),\n"
        "                         nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, num_classes))\n")
    dense = 16 * 9 + 16 + 16 * 16 * 9 + 16 + 16 * 64 * 10 + 10  # the user's model's parameters before pruning
    exp = {"name": "mine", "seed": 0, "data": {"dataset": "parquet", "path": "digits.parquet", "features": "pixels",
                                               "label": "target", "shape": [1, 8, 8]},
           "model": {"name": "my_models:small"}, "output": "runs", "parallel": {"workers": 2},
           "checkpoint": {"every_epochs": 1, "keep": 2},
           "pruning": {"method": "structured", "ratio": 0.5, "schedule": "gradual", "start_epoch": 1, "end_epoch": 2},
           "train": {"epochs": 3, "batch_size": 64, "precision": "fp32", "optimizer": {"name": "sgd", "lr": 0.1}}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    cli = Path(sys.executable).parent / "raytrain"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    proc = subprocess.run([str(cli), "train", "exp.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = next(tmp_path.glob("runs/mine/*"))
    # the console: raytrain's lines and summary, no line from Ray's internals, then what to run next
    out = proc.stdout + proc.stderr
    assert ray_internal_lines(out) == [], out
    assert "[raytrain] epoch 3/3" in out and "\n== raytrain summary ==\nstatus      completed\n" in out, out
    assert proc.stdout.splitlines()[-1].startswith(f"next: raytrain export runs/mine/{run_dir.name}  |  "), out
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["final"]["val_accuracy"] > 0.7, result["final"]
    assert result["mode"] == "worker-group" and result["final"]["epoch"] == 3
    final = result["final"]  # structured pruning under DDP: every rank holds the same pruned weights
    assert final["pruned_ratio"] == 0.5 and final["rank_weight_spread"] == 0.0
    assert final["params_total"] < 0.6 * dense
    rows = metric_rows(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all("checkpoint" in r for r in rows)
    assert len([c for c in (run_dir / "train").glob("checkpoint_*") if c.is_dir()]) == 2


@pytest.mark.parametrize("patch,msg", [
    ({"parallel__workers": 4, "train__batch_size": 64}, "4 worker(s) need 4 CPU but the cluster has 2"),
    ({"parallel__cpus_per_worker": 3}, "need 3 CPU but the cluster has 2"),
    # more GPUs than any host has: the same refusal on a CPU-only machine and on a GPU host
    ({"parallel__use_gpu": True, "parallel__gpus_per_worker": 1024},
     "parallel.use_gpu: 1 worker(s) need 1024 GPU but the cluster has"),
])
def test_impossible_resources_refused_fast(ray_local, exp_dict, patch, msg):
    with pytest.raises(UserError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        driver.run(make_exp(exp_dict, **patch))
    assert not list(Path(exp_dict["output"]).glob("t/*"))  # nothing created: no run folder


def test_resume_of_non_run_dir_refused(ray_local, exp_dict, tmp_path):
    with pytest.raises(UserError, match="not a raytrain run folder"):
        driver.run(make_exp(exp_dict), resume=tmp_path)
