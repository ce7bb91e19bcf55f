"""Shared fixtures. Tests start their own Ray and end only what they started."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from raytrain.runtime import bound_ray_train_waits, pythonpath_first

bound_ray_train_waits()  # the same env the CLI sets, before any Ray process starts


@pytest.fixture(scope="session")
def ray_local():
    """A session-scoped local Ray with 2 CPUs (the CI machine's size), shut down at the end."""
    import ray

    if ray.is_initialized():  # someone else's Ray: use it, never end it
        yield ray
        return
    repo = str(Path(__file__).resolve().parents[1])
    # As raytrain.runtime does for an embedded Ray: its processes inherit this environment (a job
    # runtime_env would keep tasks off the workers Ray pre-starts).
    with pythonpath_first(repo, str(Path(__file__).parent)):
        ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                 logging_level="WARNING")
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


def make_exp(d: dict, **patch):
    """A validated Experiment from a dict, with `a__b=value` patches applied to key a.b."""
    import json

    from raytrain.config import set_dotted, validate_experiment

    d = json.loads(json.dumps(d))
    for dotted, value in patch.items():
        set_dotted(d, dotted.replace("__", "."), value)
    return validate_experiment(d, "test")


def metric_rows(run_dir) -> list[dict]:
    """The per-epoch rows of a run's metrics.jsonl."""
    import json

    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _head(tmp_path: Path, extra_args: tuple = (), extra_env: dict | None = None, port: int | None = None,
          num_cpus: int = 2):
    """A real Ray head (`ray start --head --block`) on free ports, dashboard on 127.0.0.1, token auth on,
    in its own process group, with its own token. Yields (gcs_address, dashboard_url, env for clients — holding
    RAY_AUTH_TOKEN_PATH —, head log path); on exit
    stops this head and everything it started (the group: GCS, raylets, autoscaler, fake nodes) and
    nothing else."""
    import shutil
    import signal
    import subprocess
    import secrets
    import sys
    import time

    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    port, dash = port or free_port(), free_port()
    # `ray start` with token auth needs an existing token (only `ray.init()` makes one): this head gets
    # its own, so the test depends on nothing in ~/.ray; clients read it from RAY_AUTH_TOKEN_PATH.
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    # Jobs run the head's PATH python: start the head from this environment, as the README says.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_DATA_LOG_LEVEL": "WARNING",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
           **(extra_env or {})}
    cmd = [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={num_cpus}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
           "--disable-usage-stats", *extra_args]
    log_path = tmp_path / "head.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    address, url = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-2000:]
            if time.monotonic() > deadline:
                pytest.fail("ray head did not start within 60 s")
            time.sleep(0.5)
        yield address, url, {**env, "RAY_ADDRESS": address}, log_path
    finally:
        try:  # the whole group: GCS, raylet, dashboard, autoscaler, fake nodes — ours, and only ours
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=0.5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass  # `ray start --block` often outlives SIGTERM by >10 s here (3 s waits never sufficed): not worth waiting for
        try:  # whatever of it is still up
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        log.close()
        # `ray start` recorded this head as "the current cluster"; don't leave later drivers pointing at it.
        current = Path("/tmp/ray/ray_current_cluster")
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()


@pytest.fixture
def ray_head(tmp_path):
    """A real Ray head on free ports (see `_head`): yields (gcs_address, dashboard_url, env for clients)."""
    with _head(tmp_path) as (address, url, env, _):
        yield address, url, env


@pytest.fixture
def autoscaling_head(tmp_path):
    """A head whose autoscaler runs clusters/local.yaml (fake multi-node provider): yields
    (env for clients, head log path). Its 1 CPU holds no trainer worker; pools come on demand."""
    import yaml

    port = free_port()
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "clusters" / "local.yaml").read_text())
    config["provider"]["gcs_address"] = f"127.0.0.1:{port}"
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(config))
    with _head(tmp_path, ("--autoscaling-config", str(tmp_path / "local.yaml")), {"RAY_FAKE_CLUSTER": "1"},
               port=port, num_cpus=1) as (_, _, env, log):
        yield env, log
