"""Ray Tune over experiments: a function trainable per trial (`tuner.trial`), ASHA at rungs, a seeded
generator that carries the concurrency limit and the search's budget.

Resource accounting, so a search can never deadlock on a small cluster:
  * a one-worker trial's process holds that worker's CPUs (and GPU fraction) and trains itself;
  * a multi-worker trial's driver reserves 256 MiB of memory and no CPU, the Train controller nothing:
    they only wait; its Train workers reserve trial.workers x the worker bundle;
  * materialised datasets are built before training starts, so no read task waits behind workers;
  * max_concurrent (auto) = how many trials the cluster holds at once, so a new trial never waits for
    CPUs another running trial holds; a nested trial waits for its workers to be released (bounded)
    before it returns, and every Train wait is bounded (30 s start-up, 1 retry).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from raytrain import console
from raytrain.errors import UserError
from raytrain.runtime import check_fits, needed
from raytrain.storage import Location
from raytrain.tuner import events, labels
from raytrain.tuner.spec import RungClock, SearchConfig, SearchSpec
from raytrain.tuner.trial import trainable

TUNE_DIR = "tune"
STATE_API_WAIT_S = 30.0


def require_state_api() -> None:
    """Refuse a search with nested (Ray Train) trials on a cluster without the dashboard's state API.

    Train V2 places each trial's workers in a placement group owned by the *driver's job*; when ASHA
    stops a trial, only Train's PlacementGroupCleaner (which asks the state API whether the trial's
    controller is alive) gives those CPUs back. Without it every stopped trial leaks its workers'
    CPUs and the search starves: later trials cannot place their workers."""
    from ray.util.state import list_actors

    deadline = time.monotonic() + STATE_API_WAIT_S  # a dashboard that just started needs a few seconds
    while True:
        try:
            list_actors(address=_gcs(), limit=1, timeout=5)
            return
        except Exception as e:
            if time.monotonic() > deadline:
                raise UserError(f"search needs the Ray dashboard (state API) to free stopped trials' workers; start "
                                f"Ray with it (ray start --include-dashboard=true) ({type(e).__name__})") from None
            time.sleep(1.0)


def stream_cpus(spec: SearchSpec) -> float:
    """CPUs a trial's streamed data needs beside its workers (0 when its data is materialised)."""
    from raytrain.data.prepare import ingest_mode

    return spec.base.data.stream_cpus if ingest_mode(spec.base.data) == "stream" else 0.0


def max_concurrent(spec: SearchSpec) -> int:
    """Trials the cluster holds at once (refuses a trial that can never be placed). A streaming trial's reads
    need `data.stream_cpus` beside its workers: admission leaves them free, or the reads would wait forever."""
    t = spec.search.trial
    bundle, extra = t.bundle(), stream_cpus(spec)
    if 0 < extra < 1:  # a trial builds its streamed Datasets while its CPUs are held: their sampling tasks take 1 each
        raise UserError(f"data.stream_cpus {extra:g}: a search over streamed data needs at least 1 CPU beside its "
                        "trials (Ray Data's Parquet sampling tasks take a whole CPU)")
    check_fits(t.workers, bundle, extra)
    total = ray.cluster_resources()
    need = {k: v for k, v in needed(t.workers, bundle, extra).items() if bundle[k] > 0}
    fits = [int(total.get(k, 0.0) / v + 1e-9) for k, v in need.items()]
    auto = max(1, min(fits))
    want = auto if spec.search.max_concurrent == "auto" else min(int(spec.search.max_concurrent), auto)
    return max(1, min(want, spec.n_trials()))


def build_tuner(spec: SearchSpec, run_dir: Location, concurrent: int, resume: bool = False,
                scheduler=None) -> tune.Tuner:
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    s = spec.search
    fn = trainable(spec, run_dir)
    path, fs = run_dir.for_ray()
    if resume:
        if scheduler is not None:
            raise ValueError("a resumed search keeps the scheduler it started with")
        return tune.Tuner.restore((run_dir / TUNE_DIR).path, trainable=fn, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False, storage_filesystem=fs)
    return tune.Tuner(
        fn,
        param_space=spec.param_space(),
        tune_config=tune.TuneConfig(scheduler=scheduler or make_scheduler(s), num_samples=spec.n_trials(),
                                    search_alg=seeded_search(spec, concurrent),
                                    reuse_actors=s.trial.in_trial),  # a trial process serves the next trial
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=path, storage_filesystem=fs,
                                  # raytrain's one line per trial event; Tune's status tables with --verbose
                                  verbose=1 if console.is_verbose() else 0,
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  # every trial checkpoint is kept: with num_to_keep, a driver killed between
                                  # Tune deleting an old checkpoint and snapshotting its state resumes a trial
                                  # from a checkpoint that no longer exists (seen on S3)
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                                  callbacks=[TBXLoggerCallback(), CSVLoggerCallback(), JsonLoggerCallback(),
                                             events.EventLines(s.asha.max_t, s.objective.time_to_target)]),
    )


def make_scheduler(s: SearchConfig) -> ASHAScheduler:
    """ASHA on epochs (one report per epoch = one training_iteration): for an accuracy objective its rungs
    compare the objective's metric; for a time objective, the seconds to an intermediate accuracy (`RungClock`,
    added to every report by the trial). With `asha.grace_s`, ASHA on training seconds (`elapsed_s`, the clock
    time_to_target_s reads): each trial reports its val accuracy at every rung (`tuner.hooks.RungProbe`), and the
    rungs compare the best it has reported by then (`RungClock`) at equal seconds. Trials end by their own
    epochs, never at ASHA's max_t."""
    a = s.asha
    if a.grace_s is not None:
        rungs = a.rung_seconds()
        return ASHAScheduler(time_attr="elapsed_s", metric=RungClock.BEST, mode="max", grace_period=rungs[0],
                             max_t=rungs[-1] * a.reduction_factor ** 0.5, reduction_factor=a.reduction_factor,  # these rungs
                             stop_last_trials=False)  # a trial outliving the last rung is not stopped there
    metric, mode = (RungClock.METRIC, "min") if s.objective.time_to_target else (s.objective.metric, s.objective.mode)
    return ASHAScheduler(time_attr="training_iteration", metric=metric, mode=mode, max_t=a.max_t,
                         grace_period=a.grace_period, reduction_factor=a.reduction_factor)


class BudgetedSearch(BasicVariantGenerator):
    """Tune's default generator, seeded, carrying the concurrency limit (Tune ignores
    TuneConfig.max_concurrent_trials for a search_alg passed in) and the search's budget: once its wall
    time or trial-epochs are spent it admits no more trials and the running ones finish. Its counters
    are saved with Tune's search state, so a resumed search keeps what it had spent. With `search.confirm`,
    what the confirmation is projected to take (`confirm.Reserve`) counts as spent already."""

    def __init__(self, *args, wall_s=None, trial_epochs=None, reserve=None, **kw):
        super().__init__(*args, **kw)
        self.budget_wall_s, self.budget_trial_epochs, self.reserve = wall_s, trial_epochs, reserve
        self.started, self.stopped_admitting = time.time(), None
        self.trained: dict[str, float] = {}  # trial id -> the most epochs it trained (fractions at rungs on seconds)
        self.spent_wall_s = 0.0  # as of the last save: a resumed search does not count the time it was down
        self.created: dict[str, float] = {}  # trial id -> when it was admitted (this driver's clock)

    @property
    def spent_trial_epochs(self) -> float:
        return sum(self.trained.values())

    def get_state(self):
        self.spent_wall_s = time.time() - self.started
        return super().get_state()

    def set_state(self, state):
        super().set_state(state)
        self.__dict__.setdefault("trained", {})  # state saved before rungs on seconds
        self.__dict__.setdefault("reserve", None)  # state saved before search.confirm
        self.started = time.time() - self.spent_wall_s

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._count(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        self._count(trial_id, result)  # the report ASHA stopped a trial at comes here, not to on_trial_result
        if self.reserve is not None:
            # setdefault: a search resumed from state saved before admissions were timed has no `created`
            admitted = self.__dict__.setdefault("created", {}).pop(trial_id, None)
            self.reserve.complete(trial_id, error, None if admitted is None else time.monotonic() - admitted)
        super().on_trial_complete(trial_id, result=result, error=error)

    def _count(self, trial_id: str, result) -> None:
        if result and result.get("trained_epochs") is not None:  # epochs, and fractions at rungs on seconds
            # the most a trial trained: one restarted from an earlier checkpoint still spent what it lost
            self.trained[trial_id] = max(self.trained.get(trial_id, 0.0), float(result["trained_epochs"]))
        if self.reserve is not None:
            self.reserve.observe(trial_id, result)

    def next_trial(self):
        reason = self._spent()
        if reason and not self.is_finished():
            self.stopped_admitting = reason
            self.set_finished()
        trial = super().next_trial()
        if trial is not None:
            self.__dict__.setdefault("created", {})[trial.trial_id] = time.monotonic()
            if self.reserve is not None:
                self.reserve.admitted(trial.trial_id, trial.config)
        return trial

    def _spent(self):
        wall, epochs = self.reserve.estimate() if self.reserve is not None else (0.0, 0.0)
        if self.budget_wall_s is not None and time.time() - self.started + wall >= self.budget_wall_s:
            return f"wall budget {self.budget_wall_s:g} s spent" + (f" ({wall:.0f} s of it kept for the confirmation)"
                                                                   if wall else "")
        if self.budget_trial_epochs is not None and self.spent_trial_epochs + epochs >= self.budget_trial_epochs:
            return f"trial-epoch budget {self.budget_trial_epochs} spent" + (
                f" ({epochs:.3g} of it kept for the confirmation)" if epochs else "")
        return None


def seeded_search(spec: SearchSpec, concurrent: int) -> BudgetedSearch:
    """Grid points go in as points_to_evaluate, one trial each, in the spec's order (see SearchConfig.order);
    num_samples is then the trial count, so nothing is generated after them."""
    from raytrain.tuner.confirm import Reserve

    seed = spec.search.seed if spec.search.seed is not None else spec.base.seed
    b, s = spec.search.budget, spec.search
    return BudgetedSearch(points_to_evaluate=spec.grid_points(), random_state=seed, max_concurrent=concurrent,
                          wall_s=b.wall_s, trial_epochs=b.trial_epochs,
                          reserve=Reserve(s, concurrent) if s.confirm and (b.wall_s or b.trial_epochs) else None)


def best(rows: list[dict]):
    """The top-ranked trial that finished properly (not errored, skipped or diverged), or None."""
    return next((r for r in rows if not str(r["status"]).startswith(("error", "skipped", "diverged"))), None)


def collect(spec: SearchSpec, grid) -> list[dict]:
    """One row per trial: params, history, final metrics, status, ranked by the objective."""
    rows = []
    for r in grid:
        df = r.metrics_dataframe
        hist = [] if df is None else json.loads(df.to_json(orient="records"))
        m = dict(r.metrics or {})
        params = {k: v for k, v in (r.config or {}).items()}
        epochs = max([int(h.get("epoch") or 0) for h in hist] + [int(m.get("epoch") or 0)])  # completed ones
        trained = float(m.get("trained_epochs", epochs) or 0.0)
        if r.error is not None:
            status = f"error: {str(r.error).strip().splitlines()[-1][:160]}"
        else:
            status = labels.status({**m, "trained_epochs": trained}, epochs, spec.search.asha.max_t)
        rows.append({"trial_id": m.get("trial_id") or Path(r.path).name, "params": params, "status": status,
                     "epochs": epochs, "trained_epochs": round(trained, 3), "val_accuracy": m.get("val_accuracy"),
                     "val_loss": m.get("val_loss"), "elapsed_s": m.get("elapsed_s"), "time_to_target_s": m.get("time_to_target_s"),
                     # the test split, read once at a trial's end (absent: stopped early by ASHA, or no test set)
                     **{k: m[k] for k in ("test_accuracy", "test_loss") if m.get(k) is not None},
                     "params_total": m.get("params_total"), "path": r.path,
                     "warm_up_s": m.get("warm_up_s"),  # the trial process's warm-up, before this trial's clock
                     "history": [{k: h.get(k) for k in ("epoch", "val_accuracy", "val_loss", "elapsed_s", "train_loss",
                                                        "trained_epochs", "probe", "best_val_accuracy", "timestamp",
                                                        "trial_started_mono", "reported_mono")}
                                 for h in hist]})
    return rank(rows, spec.search)


def rank(rows: list[dict], s: SearchConfig) -> list[dict]:
    """time_to_target: reached first (fastest first), then the rest by accuracy; else by the metric."""
    def acc(r):
        v = r.get("val_accuracy")
        return -math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else v

    if s.objective.time_to_target is not None:
        hit = sorted((r for r in rows if r.get("time_to_target_s") is not None), key=lambda r: r["time_to_target_s"])
        miss = sorted((r for r in rows if r.get("time_to_target_s") is None), key=acc, reverse=True)
        ranked = hit + miss
    else:
        key = s.objective.metric
        sign = -1 if s.objective.mode == "max" else 1
        ranked = sorted(rows, key=lambda r: sign * (r.get(key) if r.get(key) is not None and not
                                                     (isinstance(r.get(key), float) and math.isnan(r[key])) else -sign * math.inf))
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
    return ranked


def trial_epochs(rows: list[dict]) -> float | int:
    """Epochs trained by all trials, a trial stopped mid-epoch (rungs on seconds) counting its fraction."""
    total = round(sum(r["trained_epochs"] for r in rows), 2)
    return int(total) if total == int(total) else total


def stray_train_workers() -> int:
    """Alive Ray Train worker actors (0 after a clean search)."""
    from ray.util.state import list_actors

    return len(list_actors(address=_gcs(), filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                           timeout=10))


def _gcs() -> str:
    """Our cluster's address, explicitly: without it the state API may follow a stale
    /tmp/ray/ray_current_cluster left by some earlier `ray start` to a dead cluster."""
    return ray.get_runtime_context().gcs_address
