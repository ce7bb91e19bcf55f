"""`ray job submit` end to end: a real local head (token auth on, dashboard on 127.0.0.1, free ports),
a job submitted with JobSubmissionClient and the project as its working_dir, followed to SUCCEEDED;
its logs and result files are read back. Only the head this test started is stopped."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def job_head(tmp_path_factory):
    """One head for this module's job tests (each job has its own run folder): one start-up, not two."""
    from helpers import head

    with head(tmp_path_factory.mktemp("head")) as (address, url, env, _):
        yield address, url, env


def _token(head_env: dict) -> str:
    """The token the test head was started with."""
    return Path(head_env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()


@pytest.mark.slow
def test_train_job_submitted_to_a_local_head(job_head, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    _, url, env = job_head
    # The head runs with token auth; this process imported Ray before it started, so Ray's own auth mode
    # is already fixed here: send the head's token (what RAY_AUTH_MODE=token makes the CLI do).
    client = JobSubmissionClient(url, headers={"authorization": f"Bearer {_token(env)}"})
    out = tmp_path / "job-runs"
    entrypoint = (f"python -m raytrain train experiments/digits-cnn.yaml --set train.epochs=2 "
                  f"--set parallel.workers=1 --set train.batch_size=64 --set output={out}")
    job = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(ROOT)},
                            entrypoint_num_cpus=0, metadata={"test": "raytrain"})
    deadline = time.monotonic() + 300
    status = client.get_job_status(job)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(job)
    logs = client.get_job_logs(job)
    if status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        client.stop_job(job)
        pytest.fail(f"job still {status} after 300 s:\n{logs[-2000:]}")
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "== raytrain summary ==" in logs and "status      completed" in logs
    results = list(out.glob("digits-cnn/*/result.json"))
    assert len(results) == 1, list(out.rglob("*"))
    summary = json.loads(results[0].read_text())
    assert summary["status"] == "completed" and summary["final"]["epoch"] == 2
    assert Path(summary["checkpoint"]).is_dir()


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_three_concurrent_search_jobs_do_not_interfere(job_head, tmp_path):
    """Load: 3 searches of the same name submitted at once to one 2-CPU head all finish every trial, each in
    its own run folder; their trials (one each: 3 wanting the 2 CPUs at once) queue for the CPUs (never more than
    2 alive at once, by each trial process's monotonic clock: one clock per machine), and none fails for want of
    one."""
    import yaml
    from ray.job_submission import JobStatus, JobSubmissionClient

    _, url, env = job_head
    client = JobSubmissionClient(url, headers={"authorization": f"Bearer {_token(env)}"})
    jobs = {}
    for k in range(3):
        spec = {"name": "load", "seed": k, "data": {"dataset": "digits"}, "model": {"name": "mlp", "width": 0.5},
                "train": {"batch_size": 64, "precision": "fp32", "optimizer": {"name": "sgd", "lr": 0.05}},
                "output": str(tmp_path / "runs"),
                "search": {"samples": 1, "space": {"train.optimizer.lr": {"grid": [0.1]}}, "max_concurrent": 1,
                           "asha": {"max_t": 1, "grace_period": 1}, "trial": {"workers": 1}}}
        path = tmp_path / f"load{k}.yaml"
        path.write_text(yaml.safe_dump(spec))
        jobs[k] = client.submit_job(entrypoint=f"python -m raytrain search {path}", entrypoint_num_cpus=0,
                                    runtime_env={"working_dir": str(ROOT)})
    deadline = time.monotonic() + 420
    final = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    while time.monotonic() < deadline and not all(client.get_job_status(j) in final for j in jobs.values()):
        time.sleep(0.5)
    statuses = {k: client.get_job_status(j) for k, j in jobs.items()}
    for k, j in jobs.items():
        if statuses[k] not in final:
            client.stop_job(j)
    assert all(s == JobStatus.SUCCEEDED for s in statuses.values()), \
        {k: (statuses[k], client.get_job_logs(j)[-1500:]) for k, j in jobs.items()}
    dirs = sorted((tmp_path / "runs").glob("*/*/search.json"))
    assert len(dirs) == 3 and len({d.parent for d in dirs}) == 3, dirs  # same name, separate run folders
    spans = []
    for d in dirs:
        trials = json.loads(d.read_text())["trials"]
        assert [t["status"] for t in trials] == ["completed"], trials
        spans += [(t["history"][0]["trial_started_mono"], max(h["reported_mono"] for h in t["history"]))
                  for t in trials]
    alive = [sum(a <= t < b for a, b in spans) for t, _ in spans]  # trials alive when each one started
    assert max(alive) <= 2, spans  # the head's 2 CPUs, one a trial
