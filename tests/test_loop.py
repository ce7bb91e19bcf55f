"""The loop without Ray: resume, stop reasons, checkpoint cadence, callback order and state, on the path a
one-worker materialised run takes in production (`raytrain.train` -> driver with no Ray -> LocalHost)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import raytrain
from raytrain import checkpoint as ckpt
from raytrain.callbacks import Callback
from raytrain.storage import resolve
from raytrain.hosts import read_rows
from raytrain.records import EpochRecord
from tests.helpers import make_exp, metric_rows


class Recorder(Callback):
    """Every event it sees, and a counter kept across resumes through its state."""

    def __init__(self):
        self.events: list[tuple] = []
        self.count = 0
        self.loaded = None

    def on_fit_start(self, ctx):
        self.events.append(("fit_start", ctx.state.epoch))

    def on_epoch_start(self, ctx, epoch):
        self.events.append(("epoch_start", epoch))

    def on_step_end(self, ctx, epoch, step, clock):
        if step == 1:
            self.events.append(("first_step", epoch))
        self.count += 1

    def on_epoch_end(self, ctx, record):
        self.events.append(("epoch_end", record.epoch))
        record.extra["recorder_count"] = self.count

    def on_fit_end(self, ctx, record):
        self.events.append(("fit_end", record.epoch, record.stop_reason))

    def on_report(self, ctx, record, checkpoint):
        self.events.append(("report", record.epoch, checkpoint is not None))

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.loaded = dict(state)
        self.count = state["count"]


class Raises(Callback):
    def on_epoch_end(self, ctx, record):
        if record.epoch == 2:
            raise ConnectionError("tracking server went away")


def _train(exp_dict, callbacks=(), resume=None, **patch):
    return raytrain.train(make_exp(exp_dict, **patch), callbacks=list(callbacks), resume=resume)


def test_events_come_in_order_and_records_carry_callback_metrics(exp_dict, no_ray):
    rec = Recorder()
    r = _train(exp_dict, [rec], train__epochs=2)
    assert r.summary["ray"] == "none"  # the production path with no Ray
    assert rec.events == [("fit_start", -1), ("epoch_start", 0), ("first_step", 0), ("epoch_end", 1),
                          ("report", 1, True), ("epoch_start", 1), ("first_step", 1), ("epoch_end", 2),
                          ("fit_end", 2, "completed"), ("report", 2, True)]
    rows = metric_rows(r.run_dir)
    steps = rows[0]["recorder_count"]
    assert steps > 0 and rows[1]["recorder_count"] == 2 * steps
    assert EpochRecord.from_row(rows[-1]).stop_reason == "completed"


def test_resume_continues_epochs_clock_schedule_and_callback_state(exp_dict):
    first = _train(exp_dict, [Recorder()], train__epochs=2)
    # The clock read from the checkpoint, not measured again: plant 1000 s in the newest one.
    newest = ckpt.checkpoint_dirs(resolve(first.run_dir) / ckpt.RUN_STORAGE)[0]
    state = ckpt.load(newest)
    assert state["callbacks"]["Recorder"]["count"] > 0
    state["elapsed_s"] = 1000.0
    ckpt.write_files(newest, ckpt.encode(state, ckpt.STATE_FILE))
    rec = Recorder()
    again = _train(exp_dict, [rec], resume=first.run_dir, train__epochs=3)
    rows = metric_rows(again.run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert 1000.0 < rows[-1]["elapsed_s"] < 1000.0 + 60
    assert rec.loaded == state["callbacks"]["Recorder"]
    assert rec.events[0] == ("fit_start", 1) and rec.events[1] == ("epoch_start", 2)
    assert rows[-1]["recorder_count"] == rows[1]["recorder_count"] * 3 // 2  # the counter went on


@pytest.mark.parametrize("lose", ["epoch", "step"])
def test_a_row_lost_after_its_checkpoint_is_logged_again_on_resume(exp_dict, lose, capfd):
    """A process killed after its checkpoint was persisted but before the row naming it was appended (a
    worker group's rank 0: Ray registers the checkpoint first) leaves metrics.jsonl without that row. The
    resume logs it from the checkpoint, once, marked `relogged`, with the figures it had: an epoch's row, or a
    step checkpoint's (a crash after step 7 of epoch 2, `every_steps: 5`)."""
    steps = {"checkpoint": {"every_steps": 5, "keep": 3}} if lose == "step" else {}
    if lose == "epoch":
        first = _train(exp_dict, train__epochs=2)
    else:
        first = _train(exp_dict, [FailAt(1, 7)], parallel__max_failures=0, train__epochs=2, **steps)
        assert first.status == "failed"
    log = resolve(first.run_dir) / ckpt.METRICS
    lines = log.read_text().splitlines()
    lost = json.loads(lines[-1])
    assert (lost["epoch"], lost.get("step")) == (2, None if lose == "epoch" else 5), lost
    assert lost["checkpoint"] == ckpt.checkpoint_dirs(resolve(first.run_dir) / ckpt.RUN_STORAGE)[0].uri
    log.write_text("\n".join(lines[:-1]) + "\n")  # as if killed between the checkpoint and its row
    capfd.readouterr()
    again = _train(exp_dict, resume=first.run_dir, train__epochs=3, **steps)
    said = "".join(capfd.readouterr())
    assert again.status == "completed", again
    rows = read_rows(resolve(first.run_dir), steps=True)
    back = [r for r in rows if r.get("relogged")]
    assert len(back) == 1, back
    kept = {k: v for k, v in back[0].items() if k != "relogged"}
    assert kept == {k: lost[k] for k in kept}, (kept, lost)
    # a final epoch's model statistics are taken after on_fit_end, so after its checkpoint: those alone are missing
    assert set(lost) - set(kept) <= {"flops_per_sample", "params_nonzero", "params_total", "rank_weight_spread",
                                     "weight_sparsity"}, set(lost) - set(kept)
    assert [r["epoch"] for r in rows if not r.get("step_checkpoint")] == [1, 2, 3]
    assert f"had no row for epoch 2{' step 5' if lose == 'step' else ''}," in said, said
    if lose == "epoch":  # a run resumed with its row in place logs nothing again
        _train(exp_dict, resume=first.run_dir, train__epochs=4)
        assert len([r for r in read_rows(resolve(first.run_dir), steps=True) if r.get("relogged")]) == 1


def test_checkpoint_cadence_every_n_epochs_and_the_last(exp_dict):
    r = _train(exp_dict, train__epochs=5, checkpoint={"every_epochs": 2, "keep": 5})
    rows = metric_rows(r.run_dir)
    assert [row["epoch"] for row in rows if "checkpoint" in row] == [2, 4, 5]


@pytest.mark.parametrize("patch, reason", [
    ({"train__early_stopping": {"metric": "val_accuracy", "mode": "max", "patience": 5, "target": 0.5}},
     "target val_accuracy=0.5 reached"),
    ({"train__optimizer": {"name": "sgd", "lr": 1.0e6}}, "diverged"),
    ({"train__early_stopping": {"metric": "val_loss", "mode": "min", "patience": 1, "min_delta": 10.0}},
     "no val_loss improvement > 10.0 for 1 epochs"),
])
def test_stop_reasons(exp_dict, patch, reason):
    r = _train(exp_dict, train__epochs=6, **patch)
    rows = metric_rows(r.run_dir)
    assert r.status.startswith(reason) and rows[-1]["stop_reason"].startswith(reason)
    assert len(rows) < 6 and "checkpoint" in rows[-1]
    if reason.startswith("target"):
        assert rows[-1]["time_to_target_epochs"] == len(rows)
        assert rows[-1]["time_to_target_s"] == pytest.approx(rows[-1]["elapsed_s"])


def test_early_stopping_state_in_old_checkpoints_is_read(exp_dict):
    """Checkpoints written before callbacks kept early stopping under "stopper": a resume still knows the
    epoch the target was reached at."""
    es = {"metric": "val_accuracy", "mode": "max", "patience": 5, "target": 0.3}
    first = _train(exp_dict, train__epochs=1, train__early_stopping=es)
    newest = ckpt.checkpoint_dirs(resolve(first.run_dir) / ckpt.RUN_STORAGE)[0]
    state = ckpt.load(newest)
    state["stopper"] = state["callbacks"].pop("EarlyStopping")
    assert state["stopper"]["target_epoch"] == 1
    state["stopper"]["target_seconds"] = 123.0
    ckpt.write_files(newest, ckpt.encode(state, ckpt.STATE_FILE))
    again = _train(exp_dict, resume=first.run_dir, train__epochs=2, train__early_stopping=es)
    assert metric_rows(again.run_dir)[-1]["time_to_target_s"] == 123.0


def test_a_raising_callback_fails_the_run_naming_it_and_keeps_its_checkpoints(exp_dict):
    r = _train(exp_dict, [Raises()], train__epochs=3, parallel__max_failures=0)
    assert r.status == "failed"
    assert r.error.startswith("CallbackError: callback Raises.on_epoch_end failed: ConnectionError: tracking server")
    rows = metric_rows(r.run_dir)
    assert [row["epoch"] for row in rows] == [1]
    kept = ckpt.checkpoint_dirs(resolve(r.run_dir) / ckpt.RUN_STORAGE)
    assert len(kept) == 1 and ckpt.complete(kept[0])
    assert json.loads((Path(r.run_dir) / ckpt.RESULT).read_text())["status"] == "failed"


def test_two_callbacks_with_one_name_are_refused(exp_dict):
    with pytest.raises(raytrain.UserError, match="given twice"):
        _train(exp_dict, [Recorder(), Recorder()])


def test_yaml_callback_names_are_imported_and_bad_ones_refused(exp_dict):
    r = raytrain.train(make_exp(exp_dict, callbacks=["tests.test_loop:Recorder"]))
    assert "recorder_count" in metric_rows(r.run_dir)[-1]
    with pytest.raises(raytrain.UserError, match=r"callbacks\[0\]: cannot import 'tests.test_loop:Nope'"):
        raytrain.train(make_exp(exp_dict, callbacks=["tests.test_loop:Nope"]))


class FailAt(Callback):
    """Raises after step `step` of epoch `epoch` (0-based): a crash mid-epoch."""

    def __init__(self, epoch: int = 1, step: int = 7):
        self.epoch, self.step = epoch, step

    def on_step_end(self, ctx, epoch, step, clock):
        if (epoch, step) == (self.epoch, self.step):
            raise RuntimeError("crash mid-epoch")


class TermAt(FailAt):
    """Sends this process SIGTERM after step `step` of epoch `epoch`: what Kubernetes or `ray job stop` does."""

    def on_step_end(self, ctx, epoch, step, clock):
        if (epoch, step) == (self.epoch, self.step):
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)


STEPS = {"train__epochs": 2, "train__batch_size": 32, "data__augment": {"flip": True, "crop": 1},
         "train__schedule": {"name": "onecycle"}}


def _weights(run_dir):
    newest = ckpt.checkpoint_dirs(resolve(run_dir) / ckpt.RUN_STORAGE)[0]
    return ckpt.load(newest)["model"]


def test_step_checkpoint_resume_continues_at_the_next_step_with_identical_weights(exp_dict):
    """A crash after step 7 of epoch 2 with `every_steps: 5`: the resume starts at step 6 of epoch 2 (the
    seeded order, augmentation draws, LR schedule and epoch sums all continue) and ends with the
    weights, the metrics and the clock of the run that was never interrupted."""
    clean = _train(exp_dict, **STEPS)
    cut = _train(exp_dict, [FailAt(1, 7)], parallel__max_failures=0, checkpoint={"every_steps": 5, "keep": 3},
                 **STEPS)
    assert cut.status == "failed" and "crash mid-epoch" in cut.error
    steps_rows = [r for r in read_rows(resolve(cut.run_dir), steps=True) if r.get("step_checkpoint")]
    assert [(r["epoch"], r["step"]) for r in steps_rows][-1] == (2, 5)
    rec = Recorder()
    done = _train(exp_dict, [rec], resume=cut.run_dir, checkpoint={"every_steps": 5, "keep": 3}, **STEPS)
    assert rec.events[:3] == [("fit_start", 0), ("epoch_start", 1), ("epoch_end", 2)]  # no first step 1: from 6
    assert rec.count == clean_steps(clean) - 5
    a, b = _weights(clean.run_dir), _weights(done.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last_clean, last_done = metric_rows(clean.run_dir)[-1], metric_rows(done.run_dir)[-1]
    for key in ("train_loss", "train_accuracy", "val_accuracy", "lr"):
        assert last_done[key] == pytest.approx(last_clean[key], rel=1e-9, abs=1e-12), key
    assert last_done["elapsed_s"] > steps_rows[-1]["elapsed_s"]  # the clock went on from the checkpoint's


def clean_steps(result) -> int:
    """Steps of the second epoch: digits' 1617 training examples in batches of 32 (the last, short, kept)."""
    return -(-1617 // 32)


def test_sigterm_checkpoints_at_the_next_step_exits_143_and_resume_goes_on(exp_dict, tmp_path):
    """SIGTERM (Kubernetes, `ray job stop`) to an in-process run: a checkpoint at the step it arrived in, one
    line naming the resume command, exit 143; `--resume` continues from the next step to the same weights."""
    import subprocess
    import sys

    import yaml

    d = make_exp(exp_dict, **STEPS).model_dump(mode="json")
    clean = _train(exp_dict, **STEPS)
    cfg = tmp_path / "term.yaml"
    cfg.write_text(yaml.safe_dump({**d, "callbacks": [{"name": "tests.test_loop:TermAt", "args": {"epoch": 1, "step": 9}}]}))
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "raytrain", "train", str(cfg)], capture_output=True, text=True,
                       timeout=300, cwd=root)
    assert r.returncode == 143, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("raytrain: interrupted: SIGTERM at epoch 2, step 9: checkpoint written") and "--resume" in last
    run_dir = last.split("--resume ")[1].split("`")[0]
    assert json.loads((Path(run_dir) / ckpt.RESULT).read_text())["status"] == "interrupted"
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(d))
    again = subprocess.run([sys.executable, "-m", "raytrain", "train", str(plain), "--resume", run_dir],
                           capture_output=True, text=True, timeout=300, cwd=root)
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = _weights(clean.run_dir), _weights(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


class Names(Callback):
    """The names of the callbacks the loop runs."""

    def on_fit_start(self, ctx):
        self.names = [c.name for c in ctx.state.callbacks.items]


@pytest.mark.parametrize("declared", [True, False])
def test_the_plan_declares_progress_and_step_checkpoints(exp_dict, no_ray, declared):
    """What a search's trial turns off in its plan (`console_lines`, `step_checkpoints`), the loop obeys without
    knowing who called it: no progress callback, and no checkpoint inside an epoch despite `every_steps`."""
    from raytrain import driver, loop, storage
    from raytrain.data.ingest import steps_per_epoch
    from raytrain.hosts import LocalHost
    from raytrain.plan import RunPlan

    exp = make_exp(exp_dict, train__epochs=1, checkpoint={"every_steps": 10})
    info = driver.preflight(exp).info
    ingest = driver.in_memory(info)
    run_dir = storage.new_run_dir(resolve(exp.output), exp.name)
    plan = RunPlan(exp.model_dump_json(), info.to_json(), steps_per_epoch(exp, info), ingest.shards,
                   run_dir=run_dir.uri, console_lines=declared, step_checkpoints=declared)
    seen = Names()
    loop.run(LocalHost(ingest.datasets, torch.device("cpu"), run_dir, 3), plan, callbacks=[seen])
    assert ("Progress" in seen.names) == declared, seen.names
    steps = [r["step"] for r in read_rows(run_dir, steps=True) if r.get("step_checkpoint")]
    assert steps == ([10, 20] if declared else []), steps
    epoch_row = next(r for r in read_rows(run_dir) if not r.get("step_checkpoint"))  # what those two cost, or 0
    assert (epoch_row["step_checkpoint_s"] > 0) == declared, epoch_row
    assert epoch_row["step_checkpoint_s"] < epoch_row["epoch_s"]
