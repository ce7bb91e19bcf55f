"""A real multi-node Ray cluster on this machine (issue 32): a head of the test's own and a second node started by
`ray start --address=...` with its own resources, run output on the S3 API server (moto). An elastic DDP group
(`parallel.workers: [1, 2]`, one worker per node) whose second node is SIGKILLed mid-epoch goes on with the
worker left from the newest step checkpoint and grows back when a node joins again; a node drained with a
deadline (`ray drain-node`, as the autoscaler does for a spot reclaim) makes the group train on and checkpoint
last just before the deadline, and the run resumes from that checkpoint, losing at most one step; a local
`output` is refused on the real two nodes (no environment override). Every step trained is logged by
`multinode.StepLog`, so each test knows exactly which steps ran where and which were redone. (No-Ray unit tests
of elastic groups: tests/test_elastic.py; of a drained group's steps: tests/test_notice.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import head, run_cli, write_yaml
from raytrain._ray_compat import TRAIN_ENV
from multinode import Node, steps, wait_for

TESTS = Path(__file__).resolve().parent
EVERY = 5  # checkpoint.every_steps of the kill test
# Ray Train's controller polls the workers' reports this often (raytrain sets RAY_TRAIN_HEALTH_CHECK_INTERVAL_S):
# a checkpoint reported less than this before its node died was never registered, so the one before it is resumed
POLL_S = float(TRAIN_ENV["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"])
# Faster than Ray's defaults, for a test's patience only: a dead raylet is declared dead after 3 missed 1 s health
# checks (not 5 x 3 s), Train's drain watcher polls every second (not 5 s), and a worker group that cannot be
# placed gives up after 10 s (raytrain's 30 s): Ray Train's first restart after a node died may still ask for it.
FAST = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
        "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "1", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "10"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server):
    """A head with 1 CPU (so the second worker needs the second node) and a bucket for the runs."""
    tmp = tmp_path_factory.mktemp("cluster")
    with head(tmp, extra_env=FAST, num_cpus=1, start_timeout=180) as (address, _, env, _):
        env = {k: v for k, v in env.items() if k != "RAYTRAIN_AUTOSCALING"}  # the real node count decides
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env["PYTHONPATH"]])  # multinode.StepLog on the workers
        yield SimpleNamespace(address=address, env=env, bucket=s3_server(), tmp=tmp)


@pytest.fixture
def node2(cluster, tmp_path):
    node = Node(cluster.address, cluster.env, tmp_path, "node2").started()
    yield node
    node.kill()


class Run:
    """`raytrain train` of an elastic [1, 2] DDP group on the cluster, its steps logged and paced."""

    def __init__(self, cluster, tmp_path: Path, name: str, pace: float, epochs: int = 3, batch: int = 64,
                 **checkpoint):
        self.log, self.pace, self.summary = tmp_path / "steps.jsonl", tmp_path / "pace", tmp_path / "s.json"
        self.set_pace(pace)
        exp = {"name": name, "seed": 0, "data": {"dataset": "digits"}, "model": {"name": "mlp", "width": 0.5},
               "train": {"epochs": epochs, "batch_size": batch, "precision": "fp32", "optimizer": {"name": "sgd", "lr": 0.05}},
               "parallel": {"workers": [1, 2], "cpus_per_worker": 1, "resize_check_s": 2, "max_failures": 3},
               "checkpoint": checkpoint, "output": f"s3://{cluster.bucket}/runs",
               "callbacks": [{"name": "multinode:StepLog", "args": {"path": str(self.log), "pace": str(self.pace)}}]}
        cfg = write_yaml(tmp_path / f"{name}.yaml", exp)
        self.out = open(tmp_path / "driver.out", "w")
        self.root, self.run_dir = f"s3://{cluster.bucket}/runs/{name}", None
        self.proc = subprocess.Popen([sys.executable, "-m", "raytrain", "train", str(cfg), "--summary-json",
                                      str(self.summary)], env=cluster.env, cwd=tmp_path, stdout=self.out,
                                     stderr=subprocess.STDOUT)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        """The driver this test started, ended if a failed wait left it running."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.out.close()

    def set_pace(self, seconds: float) -> None:
        self.pace.write_text(str(seconds))

    def steps(self) -> list[dict]:
        return steps(self.log)

    def trained(self, what: str, check, timeout: float = 240) -> list[dict]:
        """Waits until `check(step rows)` holds (failing with the driver's output if the driver ended first)."""
        def ready():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (exit {self.proc.returncode}) before {what}:\n{self.tail()}")
            rows = self.steps()
            return rows if check(rows) else None
        return wait_for(what, ready, timeout)

    def step_checkpoints(self) -> list[tuple[int, int]]:
        """(epoch 0-based, step) of every step checkpoint the run logged so far, from its metrics.jsonl on S3."""
        from raytrain.hosts import read_rows
        from raytrain.storage import resolve

        if self.run_dir is None:
            root = resolve(self.root)
            runs = root.children(dirs_only=True) if root.exists() else []
            self.run_dir = runs[0] if runs else None
        rows = read_rows(self.run_dir, steps=True) if self.run_dir is not None else []
        return [(r["epoch"] - 1, r["step"]) for r in rows if r.get("step_checkpoint")]

    def finish(self, timeout: float = 300) -> dict:
        import json

        self.set_pace(0)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"the run still going after {timeout:.0f} s:\n{self.tail()}")
        assert self.proc.returncode == 0, self.tail()
        return json.loads(self.summary.read_text())

    def deadline(self) -> float | None:
        """The drain deadline (epoch seconds) in Ray Train's preemption notice, as its watcher logged it."""
        import re

        self.out.flush()
        found = re.search(r"PreemptionWatcher: preemption detected.*deadline_ms=(\d+)", Path(self.out.name).read_text())
        return int(found.group(1)) / 1000 if found else None

    def tail(self) -> str:
        self.out.flush()
        return Path(self.out.name).read_text()[-4000:]


def _first(rows: list[dict], **match) -> dict:
    return next(r for r in rows if all(r[k] == v for k, v in match.items()))


@pytest.mark.multinode_slow
def test_local_output_is_refused_on_two_real_nodes(cluster, node2, tmp_path, starts_ray):
    """The cluster really has two nodes (no RAYTRAIN_AUTOSCALING): a local `output` would scatter checkpoints
    over two disks, so it is refused in one line before any run folder exists; an elastic range whose minimum the
    two nodes can never hold is refused naming the minimum."""
    exp = {"name": "local", "data": {"dataset": "digits"}, "model": {"name": "mlp", "width": 0.5},
           "train": {"epochs": 1, "batch_size": 64, "precision": "fp32"}, "parallel": {"workers": [1, 2]},
           "output": str(tmp_path / "runs")}
    write_yaml(tmp_path / "local.yaml", exp)
    # an elastic range needs its minimum: 3 one-CPU workers never fit the two one-CPU nodes
    write_yaml(tmp_path / "range.yaml", {**exp, "parallel": {"workers": [3, 4]},
                                         "train": {**exp["train"], "batch_size": 60}})
    # Both `raytrain train` commands in one process (the CLI's `main`, each connecting to the cluster and
    # disconnecting), their exit codes on stdout and their error output apart.
    script = ("import sys\nfrom raytrain.cli import main\n"
              "codes = [main(['train', 'local.yaml'])]\nprint('=== next', file=sys.stderr, flush=True)\n"
              "codes.append(main(['train', 'range.yaml']))\nprint('codes', *codes)\n")
    r = run_cli([sys.executable, "-c", script], timeout=240, env=cluster.env, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "codes 2 2", r.stdout[-2000:] + r.stderr[-3000:]
    local, ranged = r.stderr.split("=== next\n")
    line = f"output {tmp_path / 'runs'}: a local path on a multi-node cluster (each node has its own disk)"
    assert [ln for ln in local.splitlines() if ln.startswith("raytrain:")] == [
        f"raytrain: {line}; use s3://... or gs://..., or a path every node mounts with output_shared: true"], local
    assert "Traceback" not in r.stderr and not (tmp_path / "runs" / "local").exists()  # no run folder
    assert "raytrain: parallel.workers x parallel.cpus_per_worker: 3 worker(s) (the minimum of " \
        "parallel.workers) need 3 CPU but the cluster has 2" in ranged, ranged[-2000:]


@pytest.mark.slow
@pytest.mark.multinode_slow
def test_a_node_drained_with_a_deadline_checkpoints_before_it(cluster, node2, tmp_path, starts_ray):
    """`ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION --deadline-remaining-seconds 30` on the second node
    (epoch checkpoints only, so every step checkpoint is the drain's): the group checkpoints at the notice, trains
    on while a step and a checkpoint fit, checkpoints again before the deadline and waits; the test kills the node
    at the deadline (as the cloud would), and the run resumes after that last checkpoint with the worker left:
    at most one step trained is lost (`raytrain.notice`)."""
    with Run(cluster, tmp_path, "drain", pace=0.3, epochs=2, batch=32, notice_every_steps=1) as run:
        rows = run.trained("2 workers in epoch 1", lambda rs: any(r["world"] == 2 and r["step"] >= 2 for r in rs))
        node_id = _first(rows, node="node2")["node_id"]
        run.set_pace(2.0)  # slowly from here, so no epoch ends (with its own checkpoint) before the deadline
        drained = subprocess.run([str(Path(sys.executable).parent / "ray"), "drain-node", f"--address={cluster.address}",
                                  f"--node-id={node_id}", "--reason=DRAIN_NODE_REASON_PREEMPTION",
                                  "--reason-message=spot reclaim (test)", "--deadline-remaining-seconds=30"],
                                 env=cluster.env, capture_output=True, text=True, timeout=60)
        assert drained.returncode == 0, drained.stdout + drained.stderr
        # the deadline as Ray Train's drain watcher read it from the GCS (the CLI's own start-up took some of it)
        deadline = wait_for("Ray Train's preemption notice", lambda: run.deadline(), 30)
        seen: dict[tuple[int, int], float] = {}  # each step checkpoint, when it was first listed
        while time.time() < deadline:
            for cp in run.step_checkpoints():
                seen.setdefault(cp, time.time())
            time.sleep(min(0.3, max(0.0, deadline - time.time())))
        node2.kill()  # at the deadline: the reclaim
        run.set_pace(0.3)
        run.trained("the worker left training", lambda rs: any(r["world"] == 1 for r in rs))
        summary = run.finish()
    assert summary["status"] == "completed", summary
    trained = run.steps()
    assert seen, f"no step checkpoint before the deadline:\n{run.tail()}"
    (notice, _), (last, written_at) = min(seen.items()), max(seen.items())
    resumed = _first(trained, world=1)
    lost = [r for r in trained if r["world"] == 2 and r["rank"] == 0 and (r["epoch"], r["step"]) > last]
    print(f"\n[figures] drain: notice checkpoint at epoch {notice[0] + 1} step {notice[1]}, last at step {last[1]} "
          f"({deadline - written_at:.1f} s before the deadline, {last[1] - notice[1]} step(s) trained after the notice "
          f"kept); resumed with 1 worker at epoch {resumed['epoch'] + 1} step {resumed['step']}: {len(lost)} step(s) "
          "lost")
    assert written_at < deadline
    assert (resumed["epoch"], resumed["step"]) == (last[0], last[1] + 1)  # from the last checkpoint before it
    assert len(lost) <= 1, lost  # at most the step in flight
    assert last > notice, "the group stopped at the notice instead of training on until the deadline"
    assert all(r["node"] == "head" for r in trained if r["t"] >= resumed["t"])
    assert [r["epoch"] for r in _epoch_rows(summary)] == [1, 2]


@pytest.mark.slow
@pytest.mark.multinode_slow
def test_a_node_killed_mid_epoch_then_back_shrinks_and_grows_the_group(cluster, node2, tmp_path, starts_ray):
    """The second node's raylet (and all it started) SIGKILLed mid-epoch 1: the group restarts with the worker
    left, at the step after the newest step checkpoint Ray Train registered (at most `every_steps` redone, plus the
    steps of the last report's poll interval if the node died inside it); a node started again joins
    at the next resize check and the group grows back to 2; the run completes, each epoch logged once."""
    with Run(cluster, tmp_path, "kill", pace=0.3, every_steps=EVERY) as run:
        run.trained("2 workers past step 7", lambda rs: any(r["world"] == 2 and r["step"] >= 7 for r in rs))
        node2.kill()
        killed_at = time.time()
        run.trained("the worker left training", lambda rs: any(r["world"] == 1 for r in rs))
        run.set_pace(1.0)  # the one worker goes on slowly until the group has grown back
        back = Node(cluster.address, cluster.env, tmp_path, "node3").started()
        try:
            run.trained("the group grown back onto the new node", lambda rs: any(r["node"] == "node3" for r in rs))
            summary = run.finish()
        finally:
            back.kill()
    assert summary["status"] == "completed", summary
    rows = run.steps()
    shrunk = _first(rows, world=1)
    last = max((r["epoch"], r["step"]) for r in rows if r["world"] == 2 and r["t"] < shrunk["t"])
    resumed = (shrunk["epoch"], shrunk["step"] - 1)  # the checkpoint it resumed from
    grown = _first(rows, node="node3")
    print(f"\n[figures] kill: last step trained {last}, resumed with 1 worker after step {resumed} "
          f"({last[1] - resumed[1] if last[0] == resumed[0] else 'epoch'} step(s) redone), "
          f"{shrunk['t'] - killed_at:.0f} s after the kill; grown back to 2 at epoch {grown['epoch'] + 1} step "
          f"{grown['step']}")
    newest = (last[0], last[1] - last[1] % EVERY)  # the newest step checkpoint the group reported before the kill
    assert resumed[0] == last[0] and resumed in (newest, (newest[0], newest[1] - EVERY)), (resumed, newest)
    assert resumed in run.step_checkpoints() or resumed[1] == 0  # a step checkpoint (or the epoch's start)
    if resumed != newest:  # lost only if Ray Train's controller had not yet polled its report when the node died
        reported_at = next(r["t"] for r in rows if (r["epoch"], r["step"]) == newest and r["rank"] == 0)
        trained_to = max(r["t"] for r in rows if r["world"] == 2 and r["t"] < shrunk["t"])
        assert trained_to - reported_at <= POLL_S + 1.0, (reported_at, trained_to)
    assert grown["world"] == 2 and grown["t"] > shrunk["t"]
    assert (grown["epoch"], grown["step"] - 1) in run.step_checkpoints() + [(e, 0) for e in range(3)]
    assert [r["epoch"] for r in _epoch_rows(summary)] == [1, 2, 3]  # every epoch once, whatever was redone


def _epoch_rows(summary: dict) -> list[dict]:
    from helpers import metric_rows

    return metric_rows(summary["run_dir"])
