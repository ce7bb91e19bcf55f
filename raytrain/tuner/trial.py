"""One search trial, as a Tune function trainable.

A one-worker trial trains inside its Tune trial process (`TuneHost`): Tune reserves its CPUs and GPU
fraction (`tune.with_resources`), persists its checkpoints (`tune.report(..., checkpoint=...)`), restores
them (`tune.get_checkpoint()`), and reuses the process for the next trial (`reuse_actors`), so a trial
costs about its own epochs. Its data is read once per process and data setting (materialised data as arrays
from the cache, not through Ray Data, whose start in each trial process cost the search seconds).

A multi-worker (or `trial.isolate`) trial launches its own TorchTrainer (Train V2) and forwards its
reports with `TuneReportCallback`.
"""

from __future__ import annotations

import json
import logging
import math
import time

import ray
import torch
from ray import tune

from raytrain import _ray_compat, console, loop, storage
from raytrain.errors import UserError
from raytrain.runtime import needed
from raytrain.tuner.hooks import span
from raytrain.tuner.spec import RungClock, SearchConfig, SearchSpec

RELEASE_WAIT_S = 30.0
CLOCK_FILE = "rung_clock.json"  # a nested trial's RungClock, so that a restarted trial's rungs go on (_load_clock)
log = logging.getLogger("raytrain")


def run_trial(config: dict, raw: dict, search_json: str, source: str, run_uri: str) -> None:
    """One trial: build its experiment, train it, report every epoch to Tune."""
    from raytrain import driver
    from raytrain.data.ingest import build, steps_per_epoch
    from raytrain.plan import RunPlan

    started = time.monotonic()
    console.attach(logging.INFO if console.is_verbose() else logging.WARNING)  # the driver says one line per event
    _ray_compat.quiet_tune_checkpoint_log()
    spec = SearchSpec(raw, SearchConfig.model_validate_json(search_json), source)
    clock = RungClock(spec.search)
    try:
        exp = spec.trial_experiment(config)
        prep = driver.preflight(exp)
    except UserError as e:  # a combination the schema or the hardware refuses: skip it, keep searching
        tune.report(clock.add({"val_accuracy": 0.0, "val_loss": math.inf, "epoch": 0, "elapsed_s": 0.0,
                                                "stop_reason": f"skipped: {e}", **span(started)}))
        return
    key = (prep.info.to_json(), exp.data.model_dump_json(), exp.seed, exp.parallel.workers,
           exp.parallel.pipeline.stages > 1)
    # The trial process is an in-trial trial's one worker, on the node whose cache the preflight just filled: its
    # materialised data is read there as arrays (Ray Data would only carry it from this process to itself).
    here = spec.search.trial.in_trial and prep.info.ingest == "materialize"
    ingest = _DATASETS.get(key, lambda: _read_only(driver.in_memory(prep.info)) if here else
                           build(exp, prep.info, prep.source))
    plan = RunPlan(exp.model_dump_json(), prep.info.to_json(), steps_per_epoch(exp, prep.info), ingest.shards,
                   launch_time=time.time(), mode="trial", console_lines=False, step_checkpoints=False,
                   report_may_end=True)
    rungs = spec.search.asha.rung_seconds()
    if spec.search.trial.in_trial:
        from raytrain.hosts import TuneHost
        from raytrain.tuner.hooks import RungProbe, TrialReport, WarmUp

        device = torch.device("cuda", 0) if exp.parallel.use_gpu else torch.device("cpu")
        report = TrialReport(clock, started)
        hooks = [report, WarmUp(report), *([RungProbe(rungs, report)] if rungs else [])]
        loop.run(TuneHost(ingest.datasets, device), plan, callbacks=hooks)
        return
    _nested(exp, plan, ingest, run_uri, clock, rungs)


class _Reused:
    """The datasets of a trial process's last data setting, reused by its next trial with the same setting
    (Tune reuses trial processes: building them again would cost each trial its data's start-up). One entry:
    a trial with another setting replaces it, and the old one's blocks are freed."""

    def __init__(self):
        self.key, self.value = None, None

    def get(self, key, build):
        if key != self.key:
            self.key, self.value = None, None  # drop the old datasets before building the new ones
            self.value, self.key = build(), key
        return self.value


_DATASETS = _Reused()


def _read_only(ingest):
    """Arrays kept for the next trial of a reused process, made read-only: each trial's held copy is its own
    (`data.memory.InMemory` copies what it may not write), so no trial's in-place op reaches the next trial's data."""
    for arrays in ingest.datasets.values():
        arrays.x.setflags(write=False)
        arrays.y.setflags(write=False)
    return ingest


def _load_clock(clock: RungClock, path: storage.Location) -> None:
    """A restored trial's rung signal, as it was when its checkpoint was reported. In-trial: from the folder of
    the checkpoint Tune registered (the one the loop restores, unless that one is torn and an older one is
    used: the clock is then an epoch ahead, which only keeps a best reached in the lost epoch). Nested: one
    file per trial, written after Train reported each checkpoint (a trial dying in between retimes one rung).
    Absent (a checkpoint from before the clock was kept) or unreadable: a fresh clock, as before."""
    try:
        if path.exists():
            clock.load_state_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, AttributeError, UserError) as e:
        log.warning(f"{path.uri}: unreadable rung clock ({e}); this trial's rungs start afresh")


def _nested(exp, plan, ingest, run_uri: str, clock: RungClock, rungs: list[float]) -> None:
    """The trial's own TorchTrainer, its checkpoints in the search's storage (<run>/trials/<trial id>/train),
    never in Tune's local staging folder, so they outlive the cluster and a resumed search finds them."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from raytrain.worker_group import build_trainer, root_cause

    trial_dir = storage.resolve(run_uri) / "trials" / tune.get_context().get_trial_id()
    _load_clock(clock, trial_dir / CLOCK_FILE)  # a restarted trial's TorchTrainer resumes from trial_dir

    class Forward(TuneReportCallback):  # Train's reports to Tune, with ASHA's signal added
        def after_report(self, run_context, metrics, checkpoint):
            super().after_report(run_context, [clock.add(m) for m in metrics], checkpoint)
            if checkpoint is not None:
                (trial_dir / CLOCK_FILE).write_text(json.dumps(clock.state_dict()))

    from raytrain.tuner.hooks import RungProbe

    fit = build_trainer(exp, plan, ingest, trial_dir, callbacks=[Forward()],
                        loop_callbacks=[RungProbe(rungs)] if rungs else None)
    try:
        fit.fit()
    except ray.train.TrainingFailedError as e:
        raise RuntimeError(root_cause(e)) from None
    finally:
        wait_released(exp.parallel.workers, exp.parallel.bundle())


def wait_released(workers: int, bundle: dict) -> None:
    """Return only once this trial's workers' CPUs and GPUs are back (bounded), so the next trial's fit."""
    deadline = time.monotonic() + RELEASE_WAIT_S
    need = {k: v for k, v in needed(workers, bundle).items() if k in ("CPU", "GPU")}
    while time.monotonic() < deadline:
        free = ray.available_resources()
        if all(free.get(k, 0.0) >= v - 1e-6 for k, v in need.items()):
            return
        time.sleep(0.5)


def trainable(spec: SearchSpec, run_dir):
    fn = tune.with_parameters(run_trial, raw=spec.raw, search_json=spec.search.model_dump_json(), source=spec.source,
                              run_uri=run_dir.uri)
    t = spec.search.trial
    if t.in_trial:  # the trial process is the worker: it holds the worker's resources itself
        return tune.with_resources(fn, t.bundle())
    # A nested trial's driver only waits: it reserves memory, not CPU (Tune refuses an empty request, and a
    # fractional CPU would leave 1.98 CPUs for two 1-CPU trials: the second's workers would never fit).
    return tune.with_resources(fn, {"memory": 256 * 1024**2})

