"""Autoscaling on one machine: with clusters/local.yaml (the autoscaler's fake multi-node provider), a
run that asks for a pool's resource makes the autoscaler start a node of that pool, and the run completes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fast_autoscaler(monkeypatch):
    """The head's autoscaler looks at the cluster's demands every second, not every 5 s (Ray's default): the pool's
    node is queued as soon as the run asks for it. Requested before `autoscaling_head`, whose head inherits it."""
    monkeypatch.setenv("AUTOSCALER_UPDATE_INTERVAL_S", "1")


@pytest.mark.slow
def test_run_on_a_pool_starts_a_node_of_that_pool(fast_autoscaler, autoscaling_head, tmp_path):
    env, head_log = autoscaling_head
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "raytrain", "train", str(ROOT / "experiments" / "digits-cnn.yaml"),
           "--set", "parallel.workers=1", "--set", "parallel.worker_resources={pool_small: 1}",
           "--set", "train.epochs=2", "--set", f"output={out}"]
    env = {**env, "RAYTRAIN_AUTOSCALING": "1"}
    # The multi-node guard: a local output path on a cluster that can add nodes is refused before anything
    # starts, in one line that names the fix.
    refused = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr[-2000:]
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(f"raytrain: output {out}: a local path on a multi-node cluster") and "s3://" in line
    assert not list(out.glob("digits-cnn/*"))  # no run folder
    # This fake cluster's nodes all live on this machine, so the path is in fact shared: declared so, it runs.
    proc = subprocess.run(cmd + ["--set", "output_shared=true"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(next(out.glob("digits-cnn/*/result.json")).read_text())
    assert summary["status"] == "completed"
    session = re.search(r"(/tmp/ray/session_[^/\s]+)/logs", head_log.read_text()).group(1)
    monitor = (Path(session) / "logs" / "monitor.log").read_text()
    # The worker's {CPU 1, pool_small 1} exists only on pool.small nodes: one was started for it. (The
    # autoscaler may also add a pool.large node for the CPU tasks that read the data on a 1-CPU head.)
    assert "Launching 1 nodes, type pool.small." in monitor
    # With no autoscaling declared the guard counts the cluster's nodes instead: that refusal, on two real nodes,
    # is tests/test_multinode.py::test_local_output_is_refused_on_two_real_nodes.
