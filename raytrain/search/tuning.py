"""Ray Tune over experiments: a function trainable per trial launches that trial's TorchTrainer
(Train V2 pattern) and forwards its reports with TuneReportCallback; ASHA prunes at rungs.

Resource accounting, so a search can never deadlock on a small cluster:
  * the trial driver (this function) reserves 256 MiB of memory and no CPU, the Train controller
    nothing: they only wait;
  * each trial's Train workers reserve trial.workers x cpus_per_worker (and GPUs);
  * Ray Data reads run on the trial driver *before* its workers start (datasets are materialised),
    so no read task ever waits behind training workers;
  * max_concurrent (auto) = how many trials' workers the cluster holds at once, so a new trial never
    waits for CPUs another running trial holds; a trial waits for its predecessor's workers to be
    released (bounded) before it returns, and every Train wait is bounded (30 s start-up, 1 retry).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from raytrain.errors import UserError
from raytrain.runtime import check_fits
from raytrain.search.spec import SearchConfig, SearchSpec

TUNE_DIR = "tune"
RELEASE_WAIT_S = 30.0
TRIAL_DRIVER_MEMORY = 256 * 1024**2
STATE_API_WAIT_S = 30.0


def run_trial(config: dict, raw: dict, search_json: str, source: str) -> None:
    """One trial: build its experiment, train it on Ray Train, report every epoch to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from raytrain import runtime, trainer

    runtime.bound_ray_train_waits()  # on a cluster at RAY_ADDRESS the trial process did not inherit them
    spec = SearchSpec(raw, SearchConfig.model_validate_json(search_json), source)
    try:
        exp = spec.trial_experiment(config)
        prep = trainer.preflight(exp)
    except UserError as e:  # a combination the schema or the hardware refuses: skip it, keep searching
        tune.report({"val_accuracy": 0.0, "val_loss": math.inf, "epoch": 0, "stop_reason": f"skipped: {e}"})
        return
    trial_dir = Path(tune.get_context().get_trial_dir())
    fit = trainer.build_trainer(prep, trial_dir, time.time(), callbacks=[TuneReportCallback()])
    try:
        fit.fit()
    except ray.train.TrainingFailedError as e:
        raise RuntimeError(trainer.root_cause(e)) from None
    finally:
        _wait_released(exp.parallel.workers * exp.parallel.cpus_per_worker)


def _wait_released(cpus: float) -> None:
    """Return only once this trial's workers' CPUs are back (bounded), so the next trial's workers fit."""
    deadline = time.monotonic() + RELEASE_WAIT_S
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0.0) >= cpus - 1e-6:
            return
        time.sleep(0.5)


def require_state_api() -> None:
    """Refuse a search on a cluster without the dashboard's state API.

    Train V2 places each trial's workers in a placement group owned by the *driver's job*; when ASHA
    stops a trial, only Train's PlacementGroupCleaner (which asks the state API whether the trial's
    controller is alive) gives those CPUs back. Without it every stopped trial leaks its workers'
    CPUs and the search starves (measured: 14 of 18 trials failed to place their workers)."""
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


def max_concurrent(spec: SearchSpec) -> int:
    """Trials whose workers the cluster holds at once (refuses a trial that can never be placed)."""
    t = spec.search.trial
    check_fits(t.workers, t.cpus_per_worker, t.use_gpu, t.worker_resources)
    total = ray.cluster_resources()
    fits = [int(total.get("CPU", 0) // (t.workers * t.cpus_per_worker))]
    if t.use_gpu:
        fits.append(int(total.get("GPU", 0) // t.workers))
    auto = max(1, min(fits))
    want = auto if spec.search.max_concurrent == "auto" else min(int(spec.search.max_concurrent), auto)
    return max(1, min(want, spec.n_trials()))


def _trainable(spec: SearchSpec):
    fn = tune.with_parameters(run_trial, raw=spec.raw, search_json=spec.search.model_dump_json(), source=spec.source)
    # The trial driver only waits: it reserves memory, not CPU (Tune refuses an empty request, and a
    # fractional CPU would leave 1.98 CPUs for two 1-CPU trials: the second's workers would never fit).
    return tune.with_resources(fn, {"memory": TRIAL_DRIVER_MEMORY})


def build_tuner(spec: SearchSpec, run_dir: Path, resume: bool = False) -> tune.Tuner:
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    s = spec.search
    trainable = _trainable(spec)
    if resume:
        return tune.Tuner.restore(str(run_dir / TUNE_DIR), trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    return tune.Tuner(
        trainable,
        param_space=spec.param_space(),
        tune_config=tune.TuneConfig(scheduler=make_scheduler(s), num_samples=spec.n_trials(),
                                    search_alg=_seeded_search(spec, max_concurrent(spec))),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(run_dir), failure_config=tune.FailureConfig(max_failures=0),
                                  callbacks=[TBXLoggerCallback(), CSVLoggerCallback(), JsonLoggerCallback()]),
    )


def make_scheduler(s: SearchConfig) -> ASHAScheduler:
    """ASHA on epochs (one report per epoch = one training_iteration). With time_to_target it still
    prunes on accuracy: a trial that is behind at a rung is unlikely to reach the target first."""
    metric, mode = ("val_accuracy", "max") if s.objective.time_to_target else (s.objective.metric, s.objective.mode)
    return ASHAScheduler(time_attr="training_iteration", metric=metric, mode=mode, max_t=s.asha.max_t,
                         grace_period=s.asha.grace_period, reduction_factor=s.asha.reduction_factor)


def _seeded_search(spec: SearchSpec, concurrent: int):
    """Tune's default generator, seeded, and carrying the concurrency limit itself: Tune silently ignores
    TuneConfig.max_concurrent_trials when the search_alg is a BasicVariantGenerator we pass in.

    Grid points go in as points_to_evaluate, one trial each, in the spec's order (see SearchConfig.order);
    num_samples is then the trial count, so nothing is generated after them."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    seed = spec.search.seed if spec.search.seed is not None else spec.base.seed
    return BasicVariantGenerator(points_to_evaluate=spec.grid_points(), random_state=seed, max_concurrent=concurrent)


def collect(spec: SearchSpec, grid) -> list[dict]:
    """One row per trial: params, history, final metrics, status, ranked by the objective."""
    rows = []
    for r in grid:
        df = r.metrics_dataframe
        hist = [] if df is None else json.loads(df.to_json(orient="records"))
        m = dict(r.metrics or {})
        params = {k: v for k, v in (r.config or {}).items()}
        epochs = int(m.get("epoch", 0) or 0)
        if r.error is not None:
            status = f"error: {str(r.error).strip().splitlines()[-1][:160]}"
        elif m.get("stop_reason"):
            status = m["stop_reason"]
        elif epochs < spec.search.asha.max_t:
            status = f"stopped by ASHA after epoch {epochs}"
        else:
            status = "completed"
        rows.append({"trial_id": m.get("trial_id") or Path(r.path).name, "params": params, "status": status,
                     "epochs": epochs, "val_accuracy": m.get("val_accuracy"), "val_loss": m.get("val_loss"),
                     "elapsed_s": m.get("elapsed_s"), "time_to_target_s": m.get("time_to_target_s"),
                     "params_total": m.get("params_total"), "path": r.path,
                     "history": [{k: h.get(k) for k in ("epoch", "val_accuracy", "val_loss", "elapsed_s", "train_loss",
                                                        "timestamp")}
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


def trial_epochs(rows: list[dict]) -> int:
    return sum(r["epochs"] for r in rows)


def stray_train_workers() -> int:
    """Alive Ray Train worker actors (0 after a clean search)."""
    from ray.util.state import list_actors

    return len(list_actors(address=_gcs(), filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                           timeout=10))


def _gcs() -> str:
    """Our cluster's address, explicitly: without it the state API may follow a stale
    /tmp/ray/ray_current_cluster left by some earlier `ray start` to a dead cluster."""
    return ray.get_runtime_context().gcs_address

