"""The console a user reads (issue 34): Ray's own lines kept out unless verbose (errors still show, in one
line), a search's one line per trial event, the ranked table, the commands after a run; and the real CLI's
output of the README's demo search, counted (one search on an embedded Ray)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ray.tune.experiment import Trial

from helpers import ray_internal_lines, run_cli
from raytrain import cli, console
from raytrain.tuner import driver, events

ROOT = Path(__file__).resolve().parents[1]
CORE = "[2026-12-03 05:03:51,713 {} 6917 6955] {}"
WATCHER = ("core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and ID: '5003d16c' has constructor "
           "arguments in the object store and max_restarts > 0. If the arguments in the object store go out of scope "
           "or are lost, the actor restart will fail.")


def test_forwarded_lines_keep_errors_in_one_line_and_drop_what_nobody_can_act_on():
    """Ray core's C++ lines only at error level, less the PreemptionWatcher note every Train run prints; a
    traceback (split across batches, chained, interleaved with another process's lines) as its exception line,
    after the thread it ended; raytrain's and the user's lines as printed."""
    quiet = console.Forwarded()
    out = quiet({"pid": 7, "actor_name": "TrainController", "lines": [
        CORE.format("E", WATCHER),
        CORE.format("W", "gcs_client.cc:10: retrying"),
        CORE.format("E", "raylet_client.cc:99: the worker died: out of memory"),
        "[raytrain] epoch 1/5  train_loss 2.2978  val_acc 0.4056",
        "Exception in thread PlacementGroupCleanerMonitor:",
        "Traceback (most recent call last):",
        '  File "/venv/lib/python3.11/threading.py", line 1045, in _bootstrap_inner',
    ]})
    other = quiet({"pid": 8, "lines": ["a user's print", "Error in training function:",
                                       "Traceback (most recent call last):",
                                       '  File "/venv/lib/python3.11/site-packages/ray/train/v2/x.py", line 9, in run',
                                       "RuntimeError: boom"]})
    rest = quiet({"pid": 7, "lines": [
        "    self.run()",
        "           ^^^^^^^",
        "KeyError: 'x'",
        "",
        "During handling of the above exception, another exception occurred:",
        "",
        "Traceback (most recent call last):",
        '  File "/venv/lib/python3.11/site-packages/ray/_private/services.py", line 759, in canonicalize',
        "ConnectionError: Found multiple active Ray instances",
        "after it",
    ]})
    assert out["lines"] == [CORE.format("E", "raylet_client.cc:99: the worker died: out of memory"),
                            "[raytrain] epoch 1/5  train_loss 2.2978  val_acc 0.4056"]
    assert out["actor_name"] == "TrainController"
    assert other["lines"] == ["a user's print", "Error in training function: RuntimeError: boom"]
    assert rest["lines"] == ["Exception in thread PlacementGroupCleanerMonitor: KeyError: 'x'",
                             "Exception in thread PlacementGroupCleanerMonitor: ConnectionError: Found multiple active "
                             "Ray instances", "after it"]


def _trial(n: int, config: dict) -> Trial:
    return Trial("__fake", stub=True, trial_id=f"0723a_{n:05d}", config=config)


def test_search_event_lines(caplog):
    """What Tune hands the callback, in its order: a trial started, reported epochs, was stopped by ASHA (the
    report it stopped at comes marked done), reached its target and finished, or was skipped; a rung on seconds.
    One line each, within 160 characters, full dotted parameter names, trials numbered from 1."""
    lines = events.EventLines(max_t=6, target=0.99)
    long = {"pruning.ratio": 0.5, "train.schedule.name": "onecycle", "train.optimizer.lr": 0.0889123,
            **{f"model.very_long_parameter_name_{i}": "x" * 12 for i in range(6)}}
    a, b, c, d = _trial(0, long), _trial(1, {"train.optimizer.lr": 0.01}), _trial(2, {}), _trial(3, {})

    def report(trial, result):
        lines.on_trial_result(0, [], trial, result)
        trial.update_last_result(result)

    caplog.set_level(logging.INFO, logger="raytrain")
    lines.on_trial_start(0, [], a)
    lines.on_trial_start(0, [], b)
    report(a, {"epoch": 1, "val_accuracy": 0.5, "val_loss": 2.1, "elapsed_s": 0.7, "done": False})
    report(b, {"epoch": 1, "val_accuracy": 0.4, "val_loss": 2.2, "elapsed_s": 0.5, "done": True})  # ASHA: stop
    lines.on_trial_complete(0, [], b)
    report(a, {"epoch": 2, "val_accuracy": 0.991, "val_loss": 0.1, "elapsed_s": 1.5, "time_to_target_s": 1.5,
               "time_to_target_epochs": 2, "stop_reason": "target val_accuracy=0.99 reached", "done": False})
    lines.on_trial_complete(0, [], a)
    report(c, {"epoch": 0, "val_accuracy": 0.0, "stop_reason": "skipped: model.width: too big"})
    lines.on_trial_complete(0, [], c)
    report(d, {"probe": True, "elapsed_s": 1.52, "val_accuracy": 0.9, "best_val_accuracy": 0.93, "trained_epochs": 0.4})
    report(d, {"probe": True, "elapsed_s": 3.04, "val_accuracy": 0.92, "best_val_accuracy": 0.93,
               "trained_epochs": 0.8, "done": True})
    lines.on_trial_complete(0, [], d)
    said = [r.getMessage() for r in caplog.records]
    assert said[0].startswith("trial 1 started: pruning.ratio=0.5  train.schedule.name=onecycle  "
                              "train.optimizer.lr=0.0889  model.very_long") and said[0].endswith("…")
    assert said[1:] == [
        "trial 2 started: train.optimizer.lr=0.01",
        "trial 1 epoch 1/6: val_acc 0.5000  val_loss 2.1000  0.7 s of training",
        "trial 2 stopped by ASHA at epoch 1/6: val_acc 0.4000  val_loss 2.2000  0.5 s of training",
        "trial 1 reached 99.00% in 1.5 s of training (epoch 2)",
        "trial 1 finished at epoch 2/6: val_acc 0.9910  val_loss 0.1000  1.5 s of training "
        "(target val_accuracy=0.99 reached)",
        "trial 3 skipped: model.width: too big",
        "trial 4 rung at 1.5 s of training: val_acc 0.9000 (best 0.9300)",
        "trial 4 stopped by ASHA at 3.0 s of training (0.80 epochs): val_acc 0.9200",
    ]
    assert all(len("[raytrain] " + s) <= 160 for s in said)


def test_ranked_table_names_trials_as_the_console_does_and_stays_narrow():
    row = {"params": {"pruning.ratio": 0.5, "train.schedule.name": "onecycle"}, "epochs": 2, "val_accuracy": 0.76,
           "time_to_target_s": None, "elapsed_s": 0.39,
           "status": "stopped by ASHA at 1.5 s of training (0.27 epochs) and more words than fit"}
    summary = {"objective": {"metric": "val_accuracy"},
               "trials": [{**row, "rank": 1, "trial_id": "0723a_00003"}, {**row, "rank": 2, "trial_id": "0723a_00000"}]}
    table = driver.table(summary).splitlines()
    assert table[0].split() == ["rank", "trial", "pruning.ratio", "train.schedule.name", "epochs", "val_acc",
                                "train_s", "status"]  # to_target_s only for a time objective
    assert [ln.split()[:2] for ln in table[2:]] == [["1", "4"], ["2", "1"]]
    assert max(len(ln) for ln in table) <= 160 and not any(ln.endswith(" ") for ln in table)
    timed = driver.table({**summary, "objective": {"time_to_target": 0.9}}).splitlines()[0].split()
    assert "to_target_s" in timed


def test_next_commands_after_a_run(tmp_path, monkeypatch):
    """What makes sense for that run: export and more epochs after a completed one (paths under the working
    directory shortened), its answer after an early stop, a resume after a failure with a checkpoint."""
    monkeypatch.chdir(tmp_path)
    run = str(tmp_path / "runs" / "digits-cnn" / "20261203-050336")
    done = {"run_dir": run, "status": "completed", "final": {"epoch": 5}, "checkpoint": run + "/train/c"}
    line = cli.next_commands(done, "experiments/digits-cnn.yaml")
    assert line == ("next: raytrain export runs/digits-cnn/20261203-050336  |  raytrain evaluate "
                    "runs/digits-cnn/20261203-050336  |  raytrain train experiments/digits-cnn.yaml --resume "
                    "runs/digits-cnn/20261203-050336 --set train.epochs=10")
    stopped = cli.next_commands({**done, "status": "target val_accuracy=0.9 reached"}, "e.yaml")
    assert "--resume" not in stopped and "raytrain evaluate runs/digits-cnn/20261203-050336" in stopped
    failed = cli.next_commands({**done, "status": "failed"}, "e.yaml")
    assert failed == ("next: raytrain validate e.yaml  |  raytrain train e.yaml --resume "
                      "runs/digits-cnn/20261203-050336")
    assert "optimizer.lr" in cli.next_commands({**done, "status": "diverged"}, "e.yaml")


def test_verbose_flag_and_what_a_call_leaves_behind(monkeypatch):
    """-v before or after the verb; a call's verbosity, Tune's output engine and the loggers it quiets are as they
    were afterwards."""
    assert cli._parser().parse_args(["-v", "search", "s.yaml"]).verbose
    assert cli._parser().parse_args(["train", "e.yaml", "--verbose"]).verbose
    assert not cli._parser().parse_args(["train", "e.yaml"]).verbose
    for key in ("RAYTRAIN_VERBOSE", "RAY_AIR_NEW_OUTPUT", "TUNE_PRINT_ALL_TRIAL_ERRORS"):
        monkeypatch.delenv(key, raising=False)
    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    tune = logging.getLogger("ray.tune.tune")
    before = auth.level
    incomplete = logging.makeLogRecord({"msg": "Trials did not complete: [run_trial_0723a_00000]"})
    with console.attached(verbose=False):
        assert not console.is_verbose() and os.environ["RAY_AIR_NEW_OUTPUT"] == "0"
        assert auth.level == logging.ERROR and not tune.filter(incomplete)  # the ranked table says which failed
    with console.attached(verbose=True):
        assert console.is_verbose() and "RAY_AIR_NEW_OUTPUT" not in os.environ and auth.level == before
        assert tune.filter(incomplete)
    assert "RAYTRAIN_VERBOSE" not in os.environ and "RAY_AIR_NEW_OUTPUT" not in os.environ and auth.level == before
    assert tune.filter(incomplete)


def test_demo_search_prints_a_screenful(tmp_path, starts_ray):
    """`raytrain search search/digits-quick.yaml` as a new user runs it (from their folder, an embedded Ray):
    at most 60 lines, none wider than 160 characters, nothing from Ray's, Ray Data's or Tune's internals; one
    line as each trial starts and one as it ends, then the ranked table."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH", "RAYTRAIN_VERBOSE")}
    proc = run_cli([sys.executable, "-m", "raytrain", "search", str(ROOT / "search" / "digits-quick.yaml")], 300,
                   cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) <= 60 and max(len(ln) for ln in lines) <= 160, "\n".join(lines)
    assert ray_internal_lines(proc.stdout + proc.stderr) == [], "\n".join(lines)
    assert sum(" started: pruning.ratio=" in ln for ln in lines) == 6
    assert sum(ln.startswith("[raytrain] trial ") and (" finished at epoch " in ln or " stopped by ASHA " in ln)
               for ln in lines) == 6, "\n".join(lines)
    assert "== raytrain search ==" in lines and any(ln.startswith("next: raytrain train runs/") for ln in lines)


def test_a_run_that_misses_its_recipes_target_says_so():
    from raytrain.cli import missed_target

    cfg = {"train": {"early_stopping": {"metric": "val_accuracy", "mode": "max", "target": 0.99}}}
    assert missed_target({"config": cfg, "final": {"val_accuracy": 0.9899}, "status": "completed"}) == ("val_accuracy", 0.99)
    assert missed_target({"config": cfg, "final": {"val_accuracy": 0.991, "time_to_target_s": 3.0}, "status": "target"}) is None
    assert missed_target({"config": {"train": {"early_stopping": None}}, "final": {"val_accuracy": 0.5}}) is None
    assert missed_target({"config": cfg, "final": {}, "status": "failed"}) is None
