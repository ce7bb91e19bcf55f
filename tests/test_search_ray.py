"""Searches on a real local Ray: ASHA wiring, a real small search, clean-up, results, refusals."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from raytrain import driver as run_driver
from raytrain.configio import load_experiment
from raytrain.errors import UserError
from raytrain.tuner import driver, tuning
from raytrain.tuner.report import write_report
from raytrain.tuner.spec import SearchConfig, load_spec

SPEC = {
    "name": "s", "seed": 0, "data": {"dataset": "digits"}, "model": {"name": "mlp", "width": 0.5},
    "train": {"batch_size": 64, "precision": "fp32", "optimizer": {"name": "sgd", "lr": 0.05}},
    "search": {"samples": 4, "space": {"train.optimizer.lr": {"loguniform": [1.0e-4, 0.3]},
                                       "train.schedule.name": {"choice": ["constant", "cosine"]}},
               "asha": {"max_t": 4, "grace_period": 1, "reduction_factor": 2}, "trial": {"workers": 1}},
}


def test_asha_wiring_with_scripted_results():
    """Our scheduler (time attr, metric, mode, rungs) stops the bottom trials at the first rung."""
    sched = tuning.make_scheduler(SearchConfig(asha={"max_t": 8, "grace_period": 1, "reduction_factor": 2}))
    trials = [Trial("__fake", stub=True, trial_id=f"t{i}") for i in range(4)]
    for t in trials:
        sched.on_trial_add(None, t)
    decisions = [sched.on_trial_result(None, t, {"training_iteration": 1, "val_accuracy": acc})
                 for t, acc in zip(trials, [0.9, 0.95, 0.5, 0.4])]
    assert decisions[:2] == [TrialScheduler.CONTINUE] * 2
    assert TrialScheduler.STOP in decisions[2:]
    tt = tuning.make_scheduler(SearchConfig(objective={"time_to_target": 0.9}))
    assert (tt._metric, tt._mode) == ("seconds_to_rung", "min")


def test_time_objective_rungs_keep_the_trial_that_gets_there_sooner():
    """Three trials at the first rung: a slow, accurate one (98.5% after 13 s) and two fast ones past the
    intermediate 98% in 6 s and 5 s. Accuracy at equal epochs would stop the 5-second one; seconds to 98%
    keeps it. A trial that has not reached 98% ranks behind all of them."""
    from raytrain.tuner.spec import RungClock

    def decide(s: SearchConfig, results):
        sched = tuning.make_scheduler(s)
        trials = [Trial("__fake", stub=True, trial_id=f"t{i}") for i in range(len(results))]
        for t in trials:
            sched.on_trial_add(None, t)
        # each trial's own clock adds the signal to its report, as run_trial does
        return [sched.on_trial_result(None, t, RungClock(s).add({"training_iteration": 1, "val_accuracy": acc,
                                                                 "elapsed_s": sec}))
                for t, (acc, sec) in zip(trials, results)]

    results = [(0.985, 13.0), (0.981, 6.0), (0.980, 5.0), (0.979, 4.0)]
    asha = {"max_t": 4, "grace_period": 1, "reduction_factor": 2}
    assert RungClock(SearchConfig(objective={"time_to_target": 0.99})).accuracy == pytest.approx(0.98)
    by_time = decide(SearchConfig(objective={"time_to_target": 0.99}, asha=asha), results)
    by_accuracy = decide(SearchConfig(asha=asha), results)
    assert by_time[:3] == [TrialScheduler.CONTINUE] * 3 and by_time[3] == TrialScheduler.STOP
    assert by_accuracy[2] == TrialScheduler.STOP


def test_rungs_on_seconds_compare_accuracy_at_equal_training_seconds():
    """With asha.grace_s the rungs sit on the trials' training clock (elapsed_s) where the trials report
    (tuner.hooks.RungProbe): at 2 s the trial behind in accuracy is stopped, whatever its epoch; reports before a rung
    decide nothing; a trial outliving the last rung is not stopped for it; a rung compares the best accuracy
    each trial has reported by then, so a dip right after pruning does not stop the trial."""
    from raytrain.tuner.spec import SECOND_RUNGS, RungClock

    for rf, grace in ((2, 2.0), (3, 3.0), (4, 2.0), (1.5, 0.7)):  # ASHA places exactly the rungs trials report at
        c = SearchConfig(objective={"time_to_target": 0.99}, asha={"max_t": 3, "grace_s": grace, "reduction_factor": rf})
        rungs = [m for m, _ in reversed(tuning.make_scheduler(c)._brackets[0]._rungs)]
        assert len(rungs) == SECOND_RUNGS and rungs == pytest.approx(c.asha.rung_seconds()), (rf, rungs)
    s = SearchConfig(objective={"time_to_target": 0.99}, asha={"max_t": 3, "grace_s": 2, "reduction_factor": 2})
    sched = tuning.make_scheduler(s)
    assert s.asha.rung_seconds()[:3] == [2.0, 4.0, 8.0]
    trials = [Trial("__fake", stub=True, trial_id=f"t{i}") for i in range(3)]
    for t in trials:
        sched.on_trial_add(None, t)
    clocks = [RungClock(s) for _ in trials]  # each trial's own, as run_trial adds it to every report
    early = sched.on_trial_result(None, trials[0], clocks[0].add({"elapsed_s": 1.2, "val_accuracy": 0.1, "epoch": 1}))
    assert early == TrialScheduler.CONTINUE
    at_rung = [sched.on_trial_result(None, t, c.add({"elapsed_s": sec, "val_accuracy": acc, "probe": True}))
               for t, c, (sec, acc) in zip(trials, clocks, [(2.01, 0.95), (2.02, 0.97), (2.05, 0.90)])]
    assert at_rung == [TrialScheduler.CONTINUE, TrialScheduler.CONTINUE, TrialScheduler.STOP]
    assert sched.on_trial_result(None, trials[1], clocks[1].add({"elapsed_s": 1e6, "val_accuracy": 0.99})) \
        == TrialScheduler.CONTINUE
    # a rung just after pruning's dip: judged on the best the trial has reported by then (its epoch's end)
    more = [Trial("__fake", stub=True, trial_id=f"u{i}") for i in range(2)]
    for t in more:
        sched.on_trial_add(None, t)
    pruned, other = RungClock(s), RungClock(s)
    sched.on_trial_result(None, more[1], other.add({"elapsed_s": 4.01, "val_accuracy": 0.975}))
    sched.on_trial_result(None, more[0], pruned.add({"elapsed_s": 3.5, "val_accuracy": 0.98, "epoch": 1}))
    dip = pruned.add({"elapsed_s": 4.02, "val_accuracy": 0.96, "probe": True})
    assert dip["best_val_accuracy"] == 0.98 and dip["val_accuracy"] == 0.96
    assert sched.on_trial_result(None, more[0], dip) == TrialScheduler.CONTINUE


def test_budget_counts_the_epochs_each_trial_trained_including_where_asha_stopped_it():
    """Tune hands the report ASHA stops a trial at to on_trial_complete, not on_trial_result: it still counts,
    a fraction of an epoch at a rung on seconds; a trial restarted from an earlier checkpoint keeps what it spent."""
    gen = tuning.BudgetedSearch(trial_epochs=3)
    gen.on_trial_result("a", {"trained_epochs": 1})
    gen.on_trial_result("a", {"trained_epochs": 2})
    gen.on_trial_complete("b", {"trained_epochs": 0.27, "probe": True})  # stopped at its first rung
    gen.on_trial_result("a", {"trained_epochs": 1})  # restarted from epoch 1's checkpoint
    assert gen.spent_trial_epochs == pytest.approx(2.27) and gen._spent() is None
    gen.on_trial_complete("c", {"trained_epochs": 0.8})
    assert gen._spent() == "trial-epoch budget 3 spent"


def _noop_trainable(config):
    pass


def _generator(**budget) -> tuning.BudgetedSearch:
    """A BudgetedSearch with 4 trials to hand out, fed as Tune feeds it (add_configurations, then next_trial)."""
    from ray import tune

    gen = tuning.BudgetedSearch(max_concurrent=4, **budget)
    gen.add_configurations({"e": {"run": _noop_trainable, "config": {"x": tune.choice([1, 2])}, "num_samples": 4}})
    return gen


def test_resumed_budget_counts_what_was_spent_not_the_time_the_search_was_down():
    """A resumed search restores its generator from the state Tune saved with its last snapshot (get_state /
    set_state): the wall seconds and trial-epochs spent by then still count, the 1000 s the search was down
    do not. Seen as admission: a trial is handed out only while the budget holds."""
    def resumed(gen: tuning.BudgetedSearch, down_s: float) -> tuning.BudgetedSearch:
        state = gen.get_state()
        state["started"] -= down_s  # saved down_s ago: every clock reading it holds is that much older now
        again = _generator()
        again.set_state(state)
        return again

    for wall_s, admits in ((60, True), (30, False)):  # 40 s spent before the snapshot
        gen = _generator(wall_s=wall_s)
        gen.started -= 40
        again = resumed(gen, down_s=1000)
        assert (again.next_trial() is not None) == admits, (wall_s, again.stopped_admitting)
    assert again.stopped_admitting == "wall budget 30 s spent" and again.is_finished()
    for budget, admits in ((4, True), (3, False)):  # 3 trial-epochs spent before the snapshot
        gen = _generator(trial_epochs=budget)
        gen.on_trial_result("a", {"trained_epochs": 3})
        assert (resumed(gen, down_s=1000).next_trial() is not None) == admits, budget


def test_streamed_search_leaves_a_whole_cpu_for_its_reads(tmp_path):
    """A trial builds its streamed Datasets while Tune holds its CPUs; Ray Data's Parquet sampling tasks then
    take a whole CPU each: with less reserved they could never run. Refused in one line, before Ray is asked."""
    spec = json.loads(json.dumps(SPEC))
    spec["data"] = {"dataset": "digits", "ingest": "stream", "stream_cpus": 0.5}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**spec, "output": str(tmp_path / "runs")}))
    with pytest.raises(UserError, match="data.stream_cpus 0.5: a search over streamed data needs at least 1 CPU"):
        tuning.max_concurrent(load_spec(path))


@pytest.mark.slow
def test_small_search_end_to_end(ray_local, tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({**SPEC, "output": str(tmp_path / "runs")}))
    summary = driver.run(load_spec(spec_path))
    rows = summary["trials"]
    assert len(rows) == 4 and all(not str(r["status"]).startswith("error") for r in rows), rows
    assert any(r["epochs"] < 4 for r in rows), "ASHA stopped no trial early"
    assert summary["trial_epochs"] < 4 * 4
    assert rows[0]["val_accuracy"] == max(r["val_accuracy"] for r in rows)

    deadline = time.monotonic() + 20  # workers of stopped trials are gone within seconds
    while tuning.stray_train_workers() and time.monotonic() < deadline:
        time.sleep(1)
    assert tuning.stray_train_workers() == 0

    run_dir = Path(summary["run_dir"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((run_dir / "tune").rglob("events.out.tfevents.*"))
    assert len(events) >= 4
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert any(tag.endswith("val_accuracy") for tag in acc.Tags()["scalars"])

    html = Path(write_report(run_dir)).read_text()
    assert html.count("data:image/png;base64,") == 2 and "ASHA rungs" in html

    best = load_experiment(run_dir / "best.yaml", ["train.epochs=1", f"output={tmp_path / 'best'}"])
    assert best.train.optimizer.lr == pytest.approx(rows[0]["params"]["train.optimizer.lr"])
    assert run_driver.run(best).status == "completed"


def test_trial_that_can_never_fit_fails_fast(ray_local, tmp_path):
    spec_path = tmp_path / "spec.yaml"
    big = json.loads(json.dumps(SPEC))
    big["search"]["trial"] = {"workers": 4}
    big["output"] = str(tmp_path / "runs")
    spec_path.write_text(yaml.safe_dump(big))
    with pytest.raises(UserError, match="4 worker\\(s\\) need 4 CPU but the cluster has 2"):
        driver.run(load_spec(spec_path))
    assert not (tmp_path / "runs").exists()  # nothing created


def test_wall_budget_spent_before_the_first_trial_admits_none(ray_local, tmp_path):
    """A wall budget of a nanosecond (0 itself is refused) is spent before Tune asks for the first trial: no
    trial runs, and the search says so instead of failing."""
    spec = json.loads(json.dumps(SPEC))
    spec["search"]["budget"] = {"wall_s": 1e-9}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({**spec, "output": str(tmp_path / "runs")}))
    summary = driver.run(load_spec(spec_path))
    assert summary["trials"] == [] and summary["trial_epochs"] == 0, summary
    assert summary["budget_note"].endswith("; admitted 0 of 4 trials"), summary["budget_note"]
    assert json.loads((Path(summary["run_dir"]) / "search.json").read_text())["trials"] == []
    assert not (Path(summary["run_dir"]) / "best.yaml").exists()


@pytest.mark.slow
def test_admission_limit_holds_where_ray_would_allow_more(ray_head_with, tmp_path):
    """max_concurrent: 2 on a cluster with room for 6 trials, 4 trials: never more than 2 alive at once, and 2 do
    run side by side. Spans come from each trial process's monotonic clock (one clock per machine), from
    entering the trial to its last report (a trial's start-up alone is long enough for two to overlap: one
    epoch of the small default model suffices)."""
    import subprocess
    import sys

    spec = json.loads(json.dumps(SPEC))
    spec["search"] = {"samples": 4, "space": {"train.optimizer.lr": {"loguniform": [0.01, 0.1]}}, "max_concurrent": 2,
                      "asha": {"max_t": 1, "grace_period": 1}, "trial": {"workers": 1}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**spec, "output": str(tmp_path / "runs")}))
    proc = subprocess.run([sys.executable, "-m", "raytrain", "search", str(path)], env=ray_head_with(6), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(next((tmp_path / "runs").glob("s-search/*/search.json")).read_text())
    spans = [(r["history"][0]["trial_started_mono"], max(h["reported_mono"] for h in r["history"]))
             for r in summary["trials"]]
    assert len(spans) == 4
    alive = [sum(a <= t < b for a, b in spans) for t, _ in spans]  # trials alive when each one started
    assert max(alive) == 2, spans


def test_every_trial_is_warmed_and_retrains_exactly(ray_local, tmp_path):
    """Each trial takes a few throwaway steps before its clock starts (tuner.hooks.WarmUp: a fresh process's
    first steps would be timed otherwise); those steps touch nothing of the trial: the same configuration
    trained twice (a fresh and a reused process) and its best.yaml retrained with `raytrain train` (no
    warm-up) give the identical run."""
    spec = json.loads(json.dumps(SPEC))
    spec["model"] = {"name": "cnn", "width": 0.5}
    spec["search"].update(samples=2, objective={"time_to_target": 0.9}, space={"train.optimizer.lr": {"choice": [0.1]}},
                          max_concurrent=1, trial={"workers": 1, "cpus_per_worker": 2},
                          asha={"max_t": 3, "grace_period": 3})
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({**spec, "output": str(tmp_path / "runs")}))
    summary = driver.run(load_spec(spec_path))
    warmed, trial = sorted(summary["trials"], key=lambda r: r["history"][0]["trial_started_mono"])
    assert warmed["warm_up_s"] > 0 and trial["warm_up_s"] > 0, summary["trials"]
    assert warmed["val_accuracy"] == pytest.approx(trial["val_accuracy"], abs=1e-9)
    assert warmed["history"][-1]["train_loss"] == pytest.approx(trial["history"][-1]["train_loss"], rel=1e-6)
    again = run_driver.run(load_experiment(Path(summary["run_dir"]) / "best.yaml", [f"output={tmp_path / 'best'}"]))
    assert again.final["epoch"] == trial["epochs"]
    assert again.final["val_accuracy"] == pytest.approx(trial["val_accuracy"], abs=1e-9)
    assert again.final["train_loss"] == pytest.approx(trial["history"][-1]["train_loss"], rel=1e-6)


def test_time_search_budget_best_yaml_and_report(ray_local, tmp_path):
    """A time-to-target search on digits with ASHA's rungs on training seconds and a trial-epoch budget: each
    trial reports its val accuracy as its clock passes a rung, mid-epoch, and a trial stopped there counts the
    fraction of the epoch it trained; admission stops once the budget is spent (running ones finish) and the
    search says what it spent; its best.yaml, retrained with `raytrain train` (no rungs), reproduces the
    winning trial exactly: the evaluations at the rungs change nothing of its training; report.html opens with
    the fastest configuration and a ready command."""
    spec = json.loads(json.dumps(SPEC))
    spec["model"] = {"name": "cnn", "width": 0.5}  # dropout: a rung's evaluation must hand training mode back
    spec["search"].update(samples=12, objective={"time_to_target": 0.9}, budget={"trial_epochs": 6},
                          space={"train.optimizer.lr": {"loguniform": [0.02, 0.2]}}, max_concurrent=1,
                          trial={"workers": 1, "cpus_per_worker": 2},
                          asha={"max_t": 4, "grace_s": 0.1, "reduction_factor": 2})
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({**spec, "output": str(tmp_path / "runs")}))
    summary = driver.run(load_spec(spec_path))
    rows = summary["trials"]
    assert len(rows) < 12 and summary["trial_epochs"] >= 6  # admission stopped; running one finished
    assert summary["budget_note"].startswith(f"spent {summary['wall_s']:.0f} s, {summary['trial_epochs']} of 6 "
                                             "trial-epochs; admitted")
    # what each trial's own reports say it trained (epochs, and the fraction at a rung mid-epoch), summed here
    trained = [max(h["trained_epochs"] for h in r["history"]) for r in rows]
    assert [r["trained_epochs"] for r in rows] == pytest.approx(trained, abs=1e-3), rows
    assert summary["trial_epochs"] == pytest.approx(sum(trained), abs=0.01)
    probes = [h for r in rows for h in r["history"] if h["probe"]]  # reports at the rungs, mid-epoch
    assert probes and all(0 < h["trained_epochs"] % 1 and h["elapsed_s"] >= 0.1 for h in probes), probes
    for r in rows:  # a trial stopped at a rung mid-epoch counts that fraction; at an epoch end, whole epochs
        assert bool(r["trained_epochs"] % 1) == r["status"].startswith("stopped by ASHA at"), r
    winner = rows[0]
    assert winner["time_to_target_s"] is not None, rows

    best = load_experiment(Path(summary["run_dir"]) / "best.yaml", [f"output={tmp_path / 'best'}"])
    assert best.parallel.cpus_per_worker == 2 and best.train.early_stopping.target == 0.9
    assert best.parallel.max_failures == 2  # the experiment's own restarts, not the trials' none
    again = run_driver.run(best)
    assert again.status.startswith("target val_accuracy=0.9 reached"), again
    assert again.final["epoch"] == winner["epochs"]  # the same epoch reaches the target
    assert again.final["val_accuracy"] == pytest.approx(winner["val_accuracy"], abs=1e-9)
    assert again.final["train_loss"] == pytest.approx(winner["history"][-1]["train_loss"], rel=1e-6)

    html = Path(write_report(summary["run_dir"])).read_text()
    head = html.split("<h2>")[0]
    assert "Fastest to 90.00%" in head and "raytrain train " in head and "best.yaml" in head
    assert f"of {len(summary['trials'])} trials reached 90.00%" in head
