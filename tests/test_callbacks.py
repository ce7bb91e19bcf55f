"""User callbacks (issue 29): TensorBoard and MLflow against a real tracking server (one run from the Python API,
then `--resume` from the CLI into the same MLflow run and TensorBoard folder), both in a search trial, TensorBoard
for a run on S3, a callback that raises, and a bad name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import free_port, make_exp, metric_rows, run_cli, write_yaml

ROOT = Path(__file__).resolve().parents[1]
TB = "raytrain.integrations:TensorBoard"


def _env(**extra) -> dict:
    """The CLI's environment: no Ray address (a one-worker materialised run then starts no Ray)."""
    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **extra}


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return run_cli([sys.executable, "-m", "raytrain", *map(str, args)], timeout=240, cwd=ROOT, env=env or _env())


def _scalars(folder: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every event file in `folder`, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _numbers(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _assert_same(scalars: dict[str, dict[int, float]], rows: list[dict]) -> None:
    """Every number of every metrics row is a scalar at step = its epoch, and nothing else is."""
    expected = {(k, r["epoch"]): v for r in rows for k, v in _numbers(r).items()}
    got = {(k, step): v for k, by_step in scalars.items() for step, v in by_step.items()}
    assert set(got) == set(expected), sorted(set(got) ^ set(expected))
    for key, v in expected.items():
        assert got[key] == pytest.approx(v, rel=1e-6, abs=1e-9), key


def test_tensorboard_for_a_run_on_s3_uploads_its_events_every_epoch(s3_server, tmp_path, exp_dict, monkeypatch):
    """tensorboardX writes local files: a run folder on S3 gets them written under the local cache and uploaded
    to <run>/tensorboard (the same numbers as the run's metrics.jsonl on S3)."""
    import raytrain
    from raytrain.integrations import TensorBoard
    from raytrain.integrations.common import copy_tree
    from raytrain.storage import resolve

    monkeypatch.setenv("RAYTRAIN_CACHE", str(tmp_path / "cache"))
    r = raytrain.train(make_exp(exp_dict, output=f"s3://{s3_server()}/runs"), callbacks=[TensorBoard()])
    assert r.status == "completed" and r.run_dir.startswith("s3://"), (r.status, r.error)
    assert copy_tree(resolve(r.run_dir) / "tensorboard", tmp_path / "events") >= 1
    _assert_same(_scalars(tmp_path / "events"), metric_rows(r.run_dir))
    assert list((tmp_path / "cache" / "tensorboard").rglob("events.out.tfevents.*"))


def test_a_callback_that_raises_fails_the_run_in_one_line_and_keeps_its_checkpoints(tmp_path, exp_dict):
    """tests.usermodels:Boom raises at the end of epoch 2: the run fails (exit 1, like any failed run) with one
    line naming the callback and its event; epoch 1's checkpoint is intact and exports."""
    from raytrain import api
    from raytrain import checkpoint as ckpt
    from raytrain.storage import resolve

    exp_dict["train"]["epochs"] = 3
    exp_dict["parallel"]["max_failures"] = 0
    exp_dict["callbacks"] = ["tests.usermodels:Boom"]
    r = _cli("train", write_yaml(tmp_path / "e.yaml", exp_dict))
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    named = [ln for ln in (r.stdout + r.stderr).splitlines() if "Boom" in ln]
    assert named == ["status      failed: CallbackError: callback Boom.on_epoch_end failed: RuntimeError: boom at "
                     "epoch 2"], named
    assert "Traceback" not in r.stdout + r.stderr
    (run,) = (tmp_path / "runs" / "t").iterdir()
    assert [row["epoch"] for row in metric_rows(run)] == [1]
    (cp,) = ckpt.checkpoint_dirs(resolve(str(run)) / ckpt.RUN_STORAGE)
    assert int(ckpt.load(cp)["epoch"]) == 0  # verified against its checksum
    assert Path(api.export(run)).is_file()


def test_a_bad_callback_name_is_one_line_before_anything_is_created(tmp_path, exp_dict):
    from raytrain.errors import UserError
    from raytrain.tuner import driver
    from raytrain.tuner.spec import load_spec

    exp_dict["callbacks"] = ["raytrain.integrations:TensorBoard", "raytrain.integrations:Nope"]
    r = _cli("train", write_yaml(tmp_path / "e.yaml", exp_dict))
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().startswith("raytrain: callbacks[1]: cannot import 'raytrain.integrations:Nope'"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "runs" / "t").exists()
    spec = {**exp_dict, "search": {"samples": 1, "space": {"train.optimizer.lr": {"choice": [0.05]}}}}
    with pytest.raises(UserError, match=r"^callbacks\[1\]: cannot import 'raytrain.integrations:Nope'"):
        driver.run(load_spec(write_yaml(tmp_path / "s.yaml", spec)))  # refused before Ray is asked anything
    assert not (tmp_path / "runs" / "t-search").exists()


# -- MLflow, against a real tracking server ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free loopback port, its own SQLite store and artifact folder, in its own process
    group (ended at teardown: that group only). Yields its URI."""
    base = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(base / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}", "--artifacts-destination", str(base / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=base,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job runner (needs huey)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # creating the store's tables is slow on a busy 2-core machine
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up: {(base / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        log.close()


def test_mlflow_and_tensorboard_log_every_row_and_a_cli_resume_continues_both(mlflow_server, tmp_path, exp_dict):
    """One run with both callbacks (one start-up for both checks). The Python API's instances: MLflow logs the
    params, every row's metrics and the final checkpoint; TensorBoard writes every number of every row as a scalar
    at step = its epoch, and nothing else. Then `raytrain train --resume` from the CLI, the YAML naming both
    (TensorBoard from the CLI; MLflow's server from its own variable): the same MLflow run goes on, and
    TensorBoard's second event file adds the new row, every row's numbers still there once each. (A YAML callback
    in a fresh CLI run: the Boom test; in a search trial: the test below.)"""
    import hashlib

    from mlflow import MlflowClient

    import raytrain
    from raytrain.integrations import MLflow, TensorBoard

    r = raytrain.train(make_exp(exp_dict), callbacks=[MLflow(tracking_uri=mlflow_server), TensorBoard()])
    assert r.status == "completed", r.error
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    rows = metric_rows(r.run_dir)
    assert [row["epoch"] for row in rows] == [1, 2]
    scalars = _scalars(Path(r.run_dir) / "tensorboard")
    assert {"train_loss", "val_loss", "val_accuracy", "lr"} <= set(scalars)
    _assert_same(scalars, rows)

    def check(run, rows):
        assert run.info.status == "FINISHED"
        for key in ("train_loss", "val_loss", "val_accuracy", "lr", "elapsed_s"):
            history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
            assert history == pytest.approx({row["epoch"]: row[key] for row in rows}, rel=1e-9), key

    check(run, rows)
    params = run.data.params
    assert params["train.optimizer.lr"] == "0.05" and params["model.name"] == "mlp" and params["train.epochs"] == "2"
    assert params["data.dataset"] == "digits" and params["name"] == "t"
    assert run.info.run_name == Path(r.run_dir).name and run.data.tags["raytrain.stop_reason"] == "completed"
    got = Path(client.download_artifacts(run.info.run_id, "checkpoint", str(tmp_path / "dl")))
    final = Path(rows[-1]["checkpoint"])
    assert sorted(p.name for p in got.iterdir()) == ["state.pt", "state.pt.sha256"]
    assert hashlib.sha256((got / "state.pt").read_bytes()).hexdigest() == (final / "state.pt.sha256").read_text()

    # The CLI resumes it with more epochs, the YAML naming the callbacks and MLflow's own variable the server.
    exp_dict["callbacks"] = [TB, "raytrain.integrations:MLflow"]
    cli = _cli("train", write_yaml(tmp_path / "e.yaml", exp_dict), "--resume", r.run_dir, "--set", "train.epochs=3",
               env=_env(MLFLOW_TRACKING_URI=mlflow_server))
    assert cli.returncode == 0, cli.stderr[-3000:]
    (again,) = client.search_runs([run.info.experiment_id])
    assert again.info.run_id == run.info.run_id
    rows = metric_rows(r.run_dir)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    check(again, rows)
    assert again.data.params["train.epochs"] == "2" and again.data.tags["resumed.train.epochs"] == "3"
    assert again.data.tags["raytrain.resumed_after_epoch"] == "2"
    _assert_same(_scalars(Path(r.run_dir) / "tensorboard"), rows)  # with the second event file: every row, nothing else


def test_both_callbacks_in_a_search_trial_beside_a_diverging_trial_that_ends_alone(ray_local, mlflow_server,
                                                                                   tmp_path, exp_dict):
    """A search's trials have no run folder: the base YAML's TensorBoard writes into the trial's Tune folder,
    beside Tune's own event files, and MLflow logs the trial as one run; both hold the numbers the trial
    reported, though Tune ends the trial inside its last report (no on_report after it).
    The same search (one start-up for both checks; tests/test_reliability.py's guarantee) runs a second trial at
    once, whose learning rate makes it diverge: it alone is stopped, at its first epoch, and the first completes."""
    from mlflow import MlflowClient

    from raytrain.tuner import driver
    from raytrain.tuner.spec import load_spec

    spec = {**exp_dict, "name": "searched",
            "train": {**exp_dict["train"], "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.0}},
            "callbacks": [TB, {"name": "raytrain.integrations:MLflow", "args": {"tracking_uri": mlflow_server}}],
            "search": {"samples": 1, "space": {"train.optimizer.lr": {"grid": [0.05, 1.0e6]}}, "max_concurrent": 2,
                       "asha": {"max_t": 2, "grace_period": 2}, "trial": {"workers": 1}}}
    summary = driver.run(load_spec(write_yaml(tmp_path / "s.yaml", spec)))
    by_lr = {t["params"]["train.optimizer.lr"]: t for t in summary["trials"]}
    assert by_lr[1.0e6]["status"] == "diverged" and by_lr[1.0e6]["epochs"] == 1  # stopped at its first epoch
    trial = by_lr[0.05]
    assert trial["status"] == "completed" and trial["val_accuracy"] > 0.5, trial
    history = [h for h in trial["history"] if not h.get("probe")]
    assert [h["epoch"] for h in history] == [1, 2], history
    folder = Path(trial["path"]) / "tensorboard"
    assert folder in set(Path(summary["run_dir"]).glob("tune/*/tensorboard")), folder
    scalars = _scalars(folder)
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("searched").experiment_id])
    (run,) = [r for r in runs if r.data.params["train.optimizer.lr"] == "0.05"]
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "val_loss", "val_accuracy", "elapsed_s"):
        reported = {h["epoch"]: h[key] for h in history}
        assert scalars[key] == pytest.approx(reported, rel=1e-6), key
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert logged == pytest.approx(reported, rel=1e-9), key


def test_mlflow_refuses_what_it_cannot_use_in_one_line(monkeypatch):
    """No tracking server named, or one that does not answer: one line before any run starts; long settings
    are cut to the params' smallest server limit."""
    from raytrain.errors import UserError
    from raytrain.integrations import MLflow
    from raytrain.integrations.mlflow import PARAM_CHARS, flatten

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UserError, match="no tracking server; set MLFLOW_TRACKING_URI"):
        MLflow()
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UserError, match=f"MLflow tracking_uri {dead}: unreachable"):
        MLflow(tracking_uri=dead)
    flat = flatten({"a": {"b": 1, "c": [1, 2], "d": {}}, "e": "x" * 1000, "f": None})
    assert flat == {"a.b": "1", "a.c": "[1, 2]", "a.d": "{}", "e": "x" * (PARAM_CHARS - 3) + "...", "f": "null"}
