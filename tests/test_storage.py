"""Runs on storage that outlives the cluster: output, --resume, export and report on a real S3 API (moto's
server on a loopback port, started by the session's `s3_server` fixture), and one-line refusals for every
storage mistake. No mocks of Ray or S3 beyond that server."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import RESUME_SEARCH, SNAPSHOT_EVERY_SECOND, armed, free_port, make_exp, run_cli
from raytrain import driver
from raytrain.cli import main
from raytrain.hosts import read_rows
from raytrain.storage import resolve

ROOT = Path(__file__).resolve().parents[1]


def _s3():
    # the session's fake account, named here: a test that unsets the credentials still looks into the store
    boto3 = pytest.importorskip("boto3")  # imported here: collecting this file (`pytest -m gpu`) needs no boto3
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def _keys(bucket: str, prefix: str = "") -> list[str]:
    pages = _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _store() -> dict[str, list[str]]:
    """Every bucket of the S3 server and every key in it."""
    return {b["Name"]: _keys(b["Name"]) for b in _s3().list_buckets()["Buckets"]}


def _epochs(run_uri: str) -> list[int]:
    return [r["epoch"] for r in read_rows(resolve(run_uri))]


def _yaml(tmp_path: Path, exp_dict: dict, **top) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**exp_dict, **top}))
    return str(path)


# --------------------------------------------------------------------------- mistakes: one line, exit 2, fast

def _closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


BAD = {
    "no bucket": (lambda b: "s3:///runs", "output s3:///runs: no bucket in the URI"),
    "unknown option": (lambda b: f"s3://{b}/runs?secret_key=x", "unknown URI option 'secret_key'"),
    "unreachable endpoint": (lambda b: f"s3://{b}/runs?endpoint_override=http://127.0.0.1:{_closed_port()}",
                             "cannot reach the storage endpoint"),
    "missing bucket": (lambda b: "s3://no-such-bucket-here/runs", "bucket 'no-such-bucket-here' does not exist"),
    "unknown scheme": (lambda b: "nosuchfs://b/runs", "no filesystem for nosuchfs://"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_output_uri_is_one_line_exit_2_fast(case, s3_server, exp_dict, tmp_path, capsys):
    uri, culprit = BAD[case][0](s3_server()), BAD[case][1]
    before = _store()
    assert main(["train", _yaml(tmp_path, exp_dict), "--set", f"output={uri}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and culprit in err[0] and "Traceback" not in err[0], err
    assert _store() == before  # no bucket created, no object written
    assert not (ROOT / "s3:").exists() and not (tmp_path / "s3:").exists()  # never a local folder named after a URI


@pytest.mark.parametrize("uri,unset,culprit", [
    ("s3://{b}/runs", ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), "no AWS credentials"),
    ("gs://{b}/runs", ("GOOGLE_APPLICATION_CREDENTIALS",), "no Google Cloud credentials"),
])
def test_missing_credentials_are_one_line(uri, unset, culprit, s3_server, exp_dict, tmp_path, capsys, monkeypatch):
    for key in unset:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws or gcloud credentials files either
    uri = uri.format(b=s3_server())
    before = _store()
    assert main(["train", _yaml(tmp_path, exp_dict), "--set", f"output={uri}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and culprit in err[0], err
    assert _store() == before  # nothing written, even with the store's anonymous access at hand
    assert not (ROOT / uri[:3]).exists() and not (tmp_path / uri[:3]).exists()  # no local "s3:" / "gs:" folder


def test_export_and_report_of_a_missing_run_on_s3_are_one_line(s3_server, capsys):
    bucket = s3_server()
    assert main(["export", f"s3://{bucket}/runs/nothing"]) == 2
    assert "not a raytrain run folder" in capsys.readouterr().err
    assert main(["report", f"s3://{bucket}/runs/nothing"]) == 2
    assert "no search.json" in capsys.readouterr().err


# --------------------------------------------------------------------------- runs on S3

def test_train_on_s3_then_export_and_fall_back_past_a_torn_checkpoint(ray_local, s3_server, exp_dict, tmp_path):
    bucket = s3_server()
    first = driver.run(make_exp(exp_dict, output=f"s3://{bucket}/runs"))
    run = first.run_dir
    assert first.status == "completed" and run.startswith(f"s3://{bucket}/runs/t/"), first
    prefix = run.removeprefix(f"s3://{bucket}/") + "/"
    keys = [k.removeprefix(prefix) for k in _keys(bucket, prefix)]
    for name in ("config.yaml", "metrics.jsonl", "result.json"):
        assert name in keys, keys
    states = sorted(k for k in keys if k.endswith("/state.pt"))
    assert len(states) == 2 and all(f"{k}.sha256" in keys for k in states), keys  # every epoch, keep=2
    assert _epochs(run) == [1, 2]

    out = tmp_path / "model.pt"
    assert main(["export", run, "--out", str(out)]) == 0
    weights = torch.load(out, weights_only=True)
    assert {k: tuple(v.shape) for k, v in weights.items()}["1.weight"] == (128, 64)  # mlp width 0.5 on 8x8 digits

    def checkpointed(key: str) -> dict:
        """The model weights a checkpoint's state file in the bucket holds, read without raytrain."""
        body = _s3().get_object(Bucket=bucket, Key=prefix + key)["Body"].read()
        return torch.load(io.BytesIO(body), weights_only=True)["model"]

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    newest, previous = checkpointed(states[-1]), checkpointed(states[0])
    assert same(weights, newest) and not same(weights, previous)  # the newest checkpoint's weights

    # The newest checkpoint on S3 torn (a partial upload): export and resume find the previous one by listing
    # the bucket; export writes epoch 1's weights.
    _s3().put_object(Bucket=bucket, Key=prefix + states[-1], Body=b"\x00torn")
    with pytest.warns(UserWarning, match=f"{states[-1]}: checksum mismatch"):
        assert main(["export", run, "--out", str(tmp_path / "previous.pt")]) == 0
    assert same(torch.load(tmp_path / "previous.pt", weights_only=True), previous)
    resumed = driver.run(make_exp(exp_dict, output=f"s3://{bucket}/runs", train__epochs=3), resume=run)
    assert resumed.status == "completed", resumed
    assert _epochs(run) == [1, 2, 2, 3]  # resumed from epoch 1's checkpoint: epoch 2 redone


@pytest.mark.slow
def test_ddp_group_on_s3_survives_a_sigkilled_worker_and_trains_sorted_data_like_shuffled(ray_local, s3_server,
                                                                                         tmp_path):
    """Two DDP workers (a Ray Train worker group) checkpointing to S3: one SIGKILLed mid-epoch 2 (its 36th step of
    22 an epoch), the other waiting on it in an all-reduce. Ray Train restarts the group from the latest checkpoint
    on S3, epoch 1's: epochs 1, 2 and 3 logged once each. (One worker with parallel.isolate, a Python error and a
    kill mid-checkpoint, two failures survived: tests/test_reliability.py.)
    The same group (one start-up for both checks) trains data stored sorted by label as it trains shuffled data
    (tests/test_shuffle.py): each rank holds the whole split and takes its slice of every epoch's permutation, the
    restarted group too (cut in stored order, rank 0 had only labels 0-4 and rank 1 only 5-9)."""
    import raytrain
    from test_shuffle import _digits_parquet, _exp

    bucket, arm = s3_server(), str(tmp_path / "kill-arm")
    val = _digits_parquet(tmp_path / "val.parquet", "as-is", slice(1400, None))
    train = _digits_parquet(tmp_path / "train-sorted.parquet", "sorted", slice(0, 1400))
    exp = make_exp(_exp(tmp_path, train, val, workers=2), output=f"s3://{bucket}/runs", train__batch_size=64,
                   model={"name": "usermodels:ddp_faults", "kwargs": {"arm": arm}})
    with armed(arm) as fired:
        s = raytrain.train(exp)
    assert fired == [True] and s.status == "completed" and s.mode == "worker-group", (fired, s)
    assert _epochs(s.run_dir) == [1, 2, 3]
    assert s.metrics["val_accuracy"] > 0.8, [r["val_accuracy"] for r in read_rows(resolve(s.run_dir))]


def _wait(predicate, proc, seconds: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, f"finished before {what}: {proc.stdout.read()[-2000:] if proc.stdout else ''}"
        time.sleep(every)
    pytest.fail(f"no {what} within {seconds:.0f} s")


@pytest.mark.slow
def test_killed_driver_then_resume_from_s3_finishes_at_the_right_epoch(starts_ray, s3_server, exp_dict, tmp_path):
    """An in-process run's process SIGKILLed mid-epoch 3 (by its own model, at its 60th step of 26 an epoch),
    with epochs 1 and 2 and their checkpoints in S3: `--resume` continues at epoch 3 and finishes."""
    bucket = s3_server()
    exp = {**exp_dict, "model": {"name": "usermodels:kill_at"}, "train": {**exp_dict["train"], "epochs": 4}}
    spec = _yaml(tmp_path, exp, output=f"s3://{bucket}/runs")
    cmd = [sys.executable, "-m", "raytrain", "train", spec]
    arm = tmp_path / "kill-arm"
    arm.write_text("armed")
    env = {**os.environ, "RAYTRAIN_TEST_KILL_AT": f"60:{arm}",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    killed = run_cli(cmd, 240, cwd=tmp_path, env=env)
    assert killed.returncode == -signal.SIGKILL and not arm.exists(), killed.stderr[-2000:]
    run = "s3://" + bucket + "/" + next(k for k in _keys(bucket) if k.endswith("config.yaml")).rsplit("/", 1)[0]
    assert _epochs(run) == [1, 2]
    resumed = run_cli(cmd + ["--resume", run], 240, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _epochs(run) == [1, 2, 3, 4]  # continued at epoch 3, right after the newest checkpoint
    assert json.loads(resolve(run + "/result.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_search_on_s3_killed_and_resumed_keeps_finished_trials_then_reports(ray_local, s3_server, tmp_path):
    """A search driver SIGKILLed while its cluster lives on (a `ray job submit` whose submitter died; here the
    session's Ray, reached at its address as any cluster is): once one trial is finished in S3 and the other is
    held mid-epoch 3 by its model, the driver dies; `--resume` on the same cluster finishes the other trial from
    its checkpoint without one more result for the finished one, its rung signal carried over (the seconds it
    took to the rung accuracy, in epoch 1), then `report` reads it all from S3. (The cluster dying with the driver
    is the train test above; local storage takes the same pyarrow path.) The resume runs `raytrain search --resume`
    through the CLI's main in this process: a driver started afresh, as the killed one's cluster sees it."""
    bucket = s3_server()
    arm = tmp_path / "hold"  # trial 2 waits at its 60th step while this exists (tests/usermodels.py hold_at)
    arm.touch()
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**RESUME_SEARCH, "model": {**RESUME_SEARCH["model"], "kwargs": {"arm": str(arm)}},
                                    "output": f"s3://{bucket}/runs"}))
    cmd = [sys.executable, "-m", "raytrain", "search", str(spec)]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**env, **SNAPSHOT_EVERY_SECOND})

    def snapshot() -> dict:
        """trial id -> (storage path, status, whether it has a checkpoint), as Tune's latest state snapshot in S3
        holds them."""
        from ray.tune import ExperimentAnalysis

        states = [k for k in _keys(bucket) if "/tune/experiment_state-" in k]
        if not states:
            return {}
        tune_dir, fs = resolve(f"s3://{bucket}/{states[-1].rsplit('/', 1)[0]}").for_ray()
        try:
            trials = ExperimentAnalysis(tune_dir, storage_filesystem=fs).trials
        except Exception:  # the snapshot is being replaced: look again
            return {}
        return {t.trial_id: (t.path.split("/", 1)[1], t.status, t.checkpoint is not None) for t in trials}

    def results(trial: str) -> list[dict]:
        """Tune's result.json of a trial, as stored in S3 now."""
        if not _keys(bucket, f"{trial}/result.json"):
            return []
        body = _s3().get_object(Bucket=bucket, Key=f"{trial}/result.json")["Body"].read().decode()
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def finished() -> list[str]:
        """The trials finished in the snapshot, once another one is held, has 2 results in S3 and a checkpoint in
        that snapshot: the resume continues it from there (Tune may snapshot less often than it syncs results)."""
        if not Path(f"{arm}.held").exists():
            return []
        trials = snapshot().values()
        done = [path for path, status, _ in trials if status == "TERMINATED"]
        started = [path for path, status, saved in trials
                   if status != "TERMINATED" and saved and len(results(path)) >= 2]
        return done if done and started else []

    def trained(trial: str) -> tuple:
        """What training a trial leaves in S3: its checkpoint objects (each epoch's, written by the trial
        itself) and its results (Tune's result.json)."""
        return _keys(bucket, f"{trial}/checkpoint_"), len(results(trial))

    try:
        # each look reads Tune's snapshot back from S3 in this process: once a second, not to starve the trials
        done = _wait(finished, proc, 240, "a finished trial beside a held one", every=1.0)
    finally:
        proc.kill()  # SIGKILL: the driver dies mid-search (or the wait failed: never leave it running)
        proc.wait(timeout=30)
        arm.unlink()  # the resumed trial goes on without a hold
    before = {t: trained(t) for t in done}
    assert all(len({k.split("/")[-2] for k in ks}) == 4 for ks, _ in before.values()), before  # 4 epochs, 4 checkpoints
    trials = snapshot()
    run = "s3://" + bucket + "/" + next(k for k in _keys(bucket) if k.endswith("spec.yaml")).rsplit("/", 1)[0]
    assert not resolve(run + "/search.json").exists()
    # the resume: the CLI's own entry (argument parsing included) in this process, on the session's Ray (the same
    # cluster; the killed driver above reached it as a separate process does)
    assert main(["search", str(spec), "--resume", run]) == 0
    summary = json.loads(resolve(run + "/search.json").read_text())
    assert {r["trial_id"] for r in summary["trials"]} == set(trials)  # the same trials, restored, not new ones
    assert all(r["epochs"] == 4 for r in summary["trials"]), summary["trials"]
    for trial, was in before.items():  # finished before the kill: not one checkpoint or result more
        assert trained(trial) == was, trial
    for path, *_ in trials.values():  # the interrupted one went on from its checkpoint, not from epoch 1
        rows = [r for r in results(path) if "epoch" in r]
        epochs = [r["epoch"] for r in rows]
        assert epochs[-1] == 4 and epochs.count(1) == 1, (path, epochs)
        # ASHA's signal went on too: the seconds to the rung accuracy, reached in epoch 1, not taken afresh
        assert rows[0]["val_accuracy"] >= 0.3 and {r["seconds_to_rung"] for r in rows} == {rows[0]["elapsed_s"]}, rows
    assert main(["report", run]) == 0
    html = resolve(run + "/report.html").read_text()
    assert "No configuration reached 99.99%" in html and html.count("data:image/png;base64,") == 2
