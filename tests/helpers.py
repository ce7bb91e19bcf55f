"""Helpers shared by the tests (fixtures live in conftest.py): one `make_exp`, metric rows, YAML files,
free ports, and a real Ray head of the test's own."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

def make_exp(d: dict, **patch):
    """A validated Experiment from a dict, with `a__b=value` patches applied to key a.b."""
    import json

    from raytrain.configio import set_dotted, validate_experiment

    d = json.loads(json.dumps(d))
    for dotted, value in patch.items():
        set_dotted(d, dotted.replace("__", "."), value)
    return validate_experiment(d, "test")


def metric_rows(run_dir) -> list[dict]:
    """The per-epoch rows of a run's metrics.jsonl (a local path or a URI)."""
    from raytrain.hosts import read_rows
    from raytrain.storage import resolve

    return read_rows(resolve(str(run_dir)))


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


_HANDED_OUT: set[int] = set()  # every port free_ports gave this process: never given twice


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports for servers a test starts. All `n` are bound at once before any is
    released: one at a time, the kernel may hand the same port back twice (a head's client server and its
    agent got one port, and `ray start` refused it). Nor is a port given twice in this process: the S3 port is
    chosen at import but bound only when the first storage test starts the server."""
    import socket

    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in _HANDED_OUT:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    _HANDED_OUT.update(ports)
    return ports


def free_port() -> int:
    return free_ports(1)[0]


@contextlib.contextmanager
def head(tmp_path: Path, extra_args: tuple = (), extra_env: dict | None = None, port: int | None = None,
          num_cpus: int = 2, start_timeout: float = 60):
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
    dash, client, agent, metrics = free_ports(4)
    port = port or free_port()
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
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
           f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
           "--disable-usage-stats", *extra_args]
    log_path = tmp_path / "head.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    address, url = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + start_timeout
        while "Ray runtime started" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-2000:]
            if time.monotonic() > deadline:
                pytest.fail(f"ray head did not start within {start_timeout:.0f} s")
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


@contextlib.contextmanager
def armed(*arms: str):
    """Arm these fault files (tests/usermodels.py) around a run; the list it yields says afterwards, for each,
    whether a fault consumed it."""
    paths = [Path(a) for a in arms]
    for p in paths:
        p.write_text("armed")
    fired: list[bool] = []
    try:
        yield fired
    finally:
        fired += [not p.exists() for p in paths]
        for p in paths:
            p.unlink(missing_ok=True)


# A search of 2 trials, one at a time; the second holds at its 60th step (mid-epoch 3 on digits at batch 64) while
# the file its model.kwargs.arm names exists (tests/usermodels.py hold_at), so a driver killed once the first is
# seen finished in storage still has the second to resume (tests/test_storage.py).
RESUME_SEARCH = {
    "name": "r", "seed": 0, "data": {"dataset": "digits"}, "model": {"name": "usermodels:hold_at"},
    "train": {"batch_size": 64, "precision": "fp32", "optimizer": {"name": "sgd", "lr": 0.05}},
    "search": {"samples": 1, "space": {"model.kwargs.step": {"grid": [0, 60]}},
               "asha": {"max_t": 4, "grace_period": 4, "reduction_factor": 2, "rung_accuracy": 0.3},
               "max_concurrent": 1, "order": "listed", "trial": {"workers": 1},
               # a target no trial reaches (all train 4 epochs), and a rung accuracy every trial reaches in its
               # first epoch: the seconds it took must survive a resume (RungClock, kept with the trial's checkpoints)
               "objective": {"time_to_target": 0.9999}},
}

# Tune snapshots its experiment state (and syncs trial results to storage) at most every 10 s by default: a
# trial that ended less than a snapshot before the driver died is rerun by a resume, by Tune's design. The
# driver a test kills snapshots every second, so a trial seen finished in storage is finished in the snapshot.
SNAPSHOT_EVERY_SECOND = {"TUNE_GLOBAL_CHECKPOINT_S": "1"}


def run_cli(cmd: list, timeout: float, **kw) -> subprocess.CompletedProcess:
    """`subprocess.run` of a CLI command, failing the test with the command's last output if it overruns
    (pytest-timeout would show only where the test waited)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        def tail(b, n):  # on POSIX the partial output arrives as bytes, even with text=True
            return (b.decode(errors="replace") if isinstance(b, bytes) else b or "")[-n:]
        pytest.fail(f"{' '.join(map(str, cmd[1:]))} still running after {timeout:.0f} s:\n"
                    f"{tail(e.stdout, 3000)}\n---\n{tail(e.stderr, 5000)}")


# What Ray's, Ray Data's and Tune's own console output looks like (issue 34: none of it by default): C++ log
# lines, Python log records and warnings with their source paths, tracebacks, Ray Data's notices, Tune's tables.
RAY_INTERNALS = (r"core_worker|\.cc:\d+|\.py:\d+|\b(INFO|DEBUG|WARNING)\b|Traceback|Progress bars|Deprecat|"
                 r"deduplicates logs|execution finished|Started a local Ray|Trial status:|View detailed results|[│╭╰├]")


def ray_internal_lines(output: str) -> list[str]:
    """The lines of a command's output that come from Ray's internals, not from raytrain or the user."""
    import re

    return [line for line in output.splitlines() if re.search(RAY_INTERNALS, line)]
