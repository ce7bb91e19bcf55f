"""Helpers of tests/test_multinode.py: a second Ray node of the test's own on this machine, and a callback that
logs every step a worker trains (imported by the workers: this folder is on their PYTHONPATH).

All nodes share this machine's disk, so the log is one local file every worker appends to; each line says which
node trained the step (`RAYTRAIN_TEST_NODE`, set in the environment of the node's `ray start`, which its
workers inherit), at which world size, and when.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from raytrain.callbacks import Callback

from helpers import free_ports

NODE_ENV = "RAYTRAIN_TEST_NODE"


class StepLog(Callback):
    """Appends {node, node_id, rank, world, epoch, step, t, pid} per trained step to `path`. `pace`: a file holding
    the seconds to sleep after each step (none: no sleep), so a test can act mid-epoch on a machine of any speed
    and keep a run going until its events are over."""

    def __init__(self, path: str, pace: str = ""):
        self.path, self.pace = path, Path(pace) if pace else None

    def on_step_end(self, ctx, epoch, step, clock):
        import ray

        row = {"node": os.environ.get(NODE_ENV, "head"), "node_id": ray.get_runtime_context().get_node_id(),
               "rank": ctx.rank, "world": ctx.world, "epoch": epoch, "step": step, "t": time.time(), "pid": os.getpid()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        with contextlib.suppress(FileNotFoundError, ValueError):
            time.sleep(float(self.pace.read_text())) if self.pace else None


def steps(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def wait_for(what: str, check, timeout: float, every: float = 0.5):
    """check()'s first truthy value, polled; fails the test naming `what` after `timeout` seconds."""
    import pytest

    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s for {what}")
        time.sleep(every)


class Node:
    """A Ray worker node of this test (`ray start --address=... --block`, in its own process group): `kill()`
    SIGKILLs its raylet and everything it started (that group: ours, and only ours), as a lost machine."""

    def __init__(self, address: str, env: dict, tmp_path: Path, name: str, num_cpus: int = 1):
        ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
        self.name, self.log_path = name, tmp_path / f"{name}.log"
        agent, metrics, runtime_env = free_ports(3)
        cmd = [ray_bin, "start", f"--address={address}", "--block", "--node-ip-address=127.0.0.1",
               f"--num-cpus={num_cpus}", f"--resources={json.dumps({name: 1})}", "--disable-usage-stats",
               f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
               f"--runtime-env-agent-port={runtime_env}"]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**env, NODE_ENV: name},
                                     cwd=tmp_path, start_new_session=True)

    def started(self, timeout: float = 90) -> "Node":
        wait_for(f"{self.name} to join ({self.log_path})",
                 lambda: self.proc.poll() is None and "Ray runtime started" in self.log_path.read_text(), timeout)
        return self

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.log.close()
