"""Shared fixtures. Tests start their own Ray and end only what they started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raytrain.runtime import bound_ray_train_waits

bound_ray_train_waits()  # the same env the CLI sets, before any Ray process starts


@pytest.fixture(scope="session")
def ray_local():
    """A session-scoped local Ray with 2 CPUs (the CI machine's size), shut down at the end."""
    import ray

    if ray.is_initialized():  # someone else's Ray: use it, never end it
        yield ray
        return
    repo = str(Path(__file__).resolve().parents[1])
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([repo, str(Path(__file__).parent)]),
                                       "RAY_DATA_LOG_LEVEL": "WARNING"}})
    yield ray
    ray.shutdown()


@pytest.fixture
def exp_dict(tmp_path):
    """A small, fast experiment (digits, mlp, 1 worker) writing into tmp_path."""
    return {
        "name": "t", "seed": 0,
        "data": {"dataset": "digits"},
        "model": {"name": "mlp", "width": 0.5},
        "train": {"epochs": 2, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05}, "precision": "fp32"},
        "parallel": {"workers": 1, "cpus_per_worker": 1},
        "output": str(tmp_path / "runs"),
    }


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path
