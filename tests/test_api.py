"""raytrain from Python: a user's own nn.Module factory and ray.data.Dataset, inside the caller's Ray, leaving
the process as it was; the run resumed from the CLI; bad datasets refused with the culprit; the pytest plugin
as a user's suite would use it. (A one-worker run from Python with no Ray running takes the no-Ray path and leaves
the process as it was: tests/test_no_ray.py.)"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import raytrain
from helpers import metric_rows

ROOT = Path(__file__).resolve().parents[1]


def small_net(in_shape, num_classes):
    """The user's model factory (module level: the run records it as test_api:small_net)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(in_shape)), 32), nn.ReLU(), nn.Linear(32, num_classes))


def _datasets(column="image", ragged=False):
    import ray.data
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    rows = [{column: (x[i].ravel()[: 60 + i % 2] if ragged else x[i]), "label": int(d.target[i])} for i in range(len(x))]
    # a few blocks each (from_items' default makes up to 200 blocks of a few rows, one Ray Data task each)
    return {"train": ray.data.from_items(rows[180:], override_num_blocks=4),
            "val": ray.data.from_items(rows[:180], override_num_blocks=2)}


def _exp(tmp_path, **patch):
    base = {"train__epochs": 2, "train__optimizer": {"name": "adamw", "lr": 0.01}, "output": str(tmp_path / "runs"),
            "name": "mine"}
    base.update(patch)
    from helpers import make_exp

    return make_exp({"parallel": {"workers": 1}, "train": {"batch_size": 64, "precision": "fp32"}}, **base)


def _state() -> dict:
    """What a call must leave as it found it."""
    lg = logging.getLogger("raytrain")
    return {"env": dict(os.environ), "threads": torch.get_num_threads(), "raytrain_logger": (lg.level, lg.propagate,
            list(lg.handlers)), "root_level": logging.getLogger().level, "sys_path": list(sys.path)}


def test_own_model_and_ray_dataset_then_resume_from_the_cli(ray_local, tmp_path):
    import ray

    datasets = _datasets()
    before = _state()
    result = raytrain.train(_exp(tmp_path), model=small_net, datasets=datasets)
    assert isinstance(result, raytrain.RunResult) and result.status == "completed", result
    assert result.mode == "in-process" and result.metrics["val_accuracy"] > 0.8 and result.metrics["epoch"] == 2
    assert ray.is_initialized()  # the caller's Ray is still there
    assert _state() == before  # environment, threads, logging, sys.path: as they were

    run = Path(result.run_dir)
    config = (run / "config.yaml").read_text()
    assert "name: test_api:small_net" in config and "dataset: parquet" in config  # the data kept beside the run
    cli = Path(sys.executable).parent / "raytrain"
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run([str(cli), "train", str(run / "config.yaml"), "--resume", str(run), "--set", "train.epochs=3"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["epoch"] for r in metric_rows(run)] == [1, 2, 3]
    final = json.loads((run / "result.json").read_text())
    assert final["status"] == "completed" and final["final"]["val_accuracy"] > 0.8
    exported = raytrain.export(run, tmp_path / "model.pt")
    small_net((1, 8, 8), 10).load_state_dict(torch.load(exported, weights_only=True))


@pytest.mark.parametrize("datasets,culprit", [
    (lambda: _datasets(column="img"), "data.features: column 'image' not in datasets['train'] (columns: img, label)"),
    (lambda: _datasets(ragged=True), "data.features: column 'image' is ragged"),
    (lambda: {"train": _datasets()["train"]}, "datasets: needs 'train' and 'val'"),
])
def test_bad_dataset_raises_user_error_with_the_culprit(ray_local, tmp_path, datasets, culprit):
    given = datasets()
    before = _state()
    with pytest.raises(raytrain.UserError) as e:
        raytrain.train(_exp(tmp_path), model=small_net, datasets=given)
    assert culprit in str(e.value) and "\n" not in str(e.value)
    assert _state() == before
    assert not (tmp_path / "runs").exists()


def test_help_reads_well():
    import pydoc

    text = pydoc.render_doc(raytrain.train, renderer=pydoc.plaintext)
    assert "model: a factory" in text and "datasets:" in text and "RunResult" in text
    for name in raytrain.__all__:
        assert getattr(raytrain, name).__doc__, name


@pytest.mark.slow
def test_users_own_pytest_with_the_plugin(starts_ray, tmp_path):
    """The plugin is an installed pytest11 entry point: a user's test directory with no conftest gets its fixtures."""
    (tmp_path / "test_mine.py").write_text(
        "import raytrain\n\n\n"
        "def test_my_model_learns(raytrain_ray, raytrain_experiment):\n"
        "    result = raytrain.train(raytrain_experiment(train__epochs=2))\n"
        "    assert result.status == 'completed' and result.metrics['val_accuracy'] > 0.5\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_mine.py"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout
