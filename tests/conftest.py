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
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="WARNING",
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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A real Ray head (`ray start --head --block`) on free ports, dashboard on 127.0.0.1, token auth on.
    Yields (gcs_address, dashboard_url, env for clients); stops only this head (terminates its process)."""
    import shutil
    import subprocess
    import sys
    import time

    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    port, dash = free_port(), free_port()
    # Jobs run the head's PATH python: start the head from this environment, as the README says.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_DATA_LOG_LEVEL": "WARNING",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    cmd = [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
           "--disable-usage-stats"]
    log = open(tmp_path / "head.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    address, url = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "Ray runtime started" in (tmp_path / "head.log").read_text():
            break
        assert proc.poll() is None, (tmp_path / "head.log").read_text()[-2000:]
        time.sleep(0.5)
    else:
        proc.terminate()
        pytest.fail("ray head did not start within 60 s")
    try:
        yield address, url, {**env, "RAY_ADDRESS": address}
    finally:
        proc.terminate()  # --block: SIGTERM stops the processes this head started, and only those
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        # `ray start` recorded this head as "the current cluster"; don't leave later drivers pointing at it.
        current = Path("/tmp/ray/ray_current_cluster")
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
