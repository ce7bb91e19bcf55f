"""`search.confirm`: after the search, its top_k configurations retrained on fresh seeds (`finalists` says which,
on which seeds, and how they are ranked), as Tune trials of the search's own trainable: the same resources,
placement, trial process reuse and warm-up as the trials, and the same epochs and stop at the target, but no
ASHA (a FIFO scheduler, no rungs and no evaluations at rung seconds): a confirmation run ends only at its target
or its last epoch. The runs go in `<run>/confirm` (Tune's experiment, restored by `search --resume`, which
finishes the runs left and reruns none that finished); the finalists and seeds are fixed once, in
`<run>/confirmation_plan.json`, before the first run starts.

The search's budget counts the confirmation (`Reserve`): admission stops early enough for it."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Optional

from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from raytrain import console
from raytrain.storage import Location
from raytrain.tuner import finalists
from raytrain.tuner.labels import fit, trial_name
from raytrain.tuner.spec import Asha, SearchConfig, SearchSpec

CONFIRM_DIR = "confirm"
PLAN_FILE = "confirmation_plan.json"
log = logging.getLogger("raytrain")


def _spec(spec: SearchSpec) -> SearchSpec:
    """The trials' spec with ASHA off: one rung at the last epoch (so no rungs on seconds, no probes)."""
    a = spec.search.asha
    off = Asha(max_t=a.max_t, grace_period=a.max_t, reduction_factor=a.reduction_factor)
    return SearchSpec(spec.raw, spec.search.model_copy(update={"asha": off, "confirm": None}), spec.source)


def plan(spec: SearchSpec, run_dir: Location, rows: list[dict]) -> dict:
    """The finalists and seeds, chosen once: a resumed search reads them back rather than choosing again."""
    path = run_dir / PLAN_FILE
    if path.exists():
        return json.loads(path.read_text())
    c, seed = spec.search.confirm, spec.base.seed
    chosen = finalists.pick(rows, c.top_k)
    seeds = finalists.fresh_seeds(seed, c.seeds, used={seed})
    p = {"top_k": c.top_k, "seeds": seeds, "search_seed": seed, "finalists": chosen,
         "points": finalists.points(chosen, seeds)}
    path.write_text(json.dumps(p, indent=2))
    return p


def run(spec: SearchSpec, run_dir: Location, rows: list[dict], concurrent: int, resume: bool) -> dict:
    """Retrain the finalists (or finish doing so) and rank them: search.json's `confirmation` block."""
    p = plan(spec, run_dir, rows)
    objective = spec.search.objective.model_dump()
    block = {"top_k": p["top_k"], "seeds": p["seeds"], "search_seed": p["search_seed"], "splits": finalists.SPLITS,
             "ranked_by": _ranked_by(spec), "order": "seed by seed, every finalist once per seed"}
    if not p["finalists"]:
        log.info("confirmation: no trial finished; nothing to confirm")
        return {**block, "finalists": [], "runs": [], "winner": None, "wall_s": 0.0, "trial_epochs": 0}
    log.info(fit(f"confirmation: {len(p['finalists'])} finalist(s) x seeds {p['seeds']} = {len(p['points'])} runs, "
                 f"{concurrent} at a time, no ASHA (the search trained on seed {p['search_seed']})"))
    t0 = time.time()
    grid = _tuner(spec, run_dir, p, concurrent, resume).fit()
    runs = collect(spec, p, grid)
    ranked = finalists.rank(p["finalists"], runs, p["seeds"], objective)
    win = ranked[0] if ranked[0]["runs"] else None  # a finalist none of whose runs finished is no winner
    if win is not None:
        log.info(fit(f"confirmation: winner {trial_name(win['search_trial_id'])} (search rank {win['search_rank']}): "
                     f"{finalists.worst_text(win, objective)}"))
    epochs = round(sum(r["trained_epochs"] for r in runs), 2)
    return {**block, "finalists": ranked, "runs": runs, "wall_s": time.time() - t0,
            "trial_epochs": int(epochs) if epochs == int(epochs) else epochs,
            "winner": None if win is None else {"search_trial_id": win["search_trial_id"], "params": win["params"],
                                                "search_rank": win["search_rank"], "all_reached": win["all_reached"]}}


def _ranked_by(spec: SearchSpec) -> str:
    o = spec.search.objective
    if o.time_to_target is not None:
        return (f"the worst seed's training seconds to {o.time_to_target:.2%} validation accuracy; a finalist that "
                "misses it on any seed ranks behind all that reach it on every seed")
    return f"the worst seed's {o.metric} ({'lowest' if o.mode == 'max' else 'highest'} over the seeds)"


def _tuner(spec: SearchSpec, run_dir: Location, p: dict, concurrent: int, resume: bool) -> tune.Tuner:
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    from raytrain.tuner.trial import trainable

    fn = trainable(_spec(spec), run_dir)
    path, fs = run_dir.for_ray()
    where = (run_dir / CONFIRM_DIR).path
    if resume and tune.Tuner.can_restore(where, storage_filesystem=fs):
        return tune.Tuner.restore(where, trainable=fn, resume_unfinished=True, resume_errored=False,
                                  restart_errored=False, storage_filesystem=fs)
    configs = [q["config"] for q in p["points"]]
    return tune.Tuner(
        fn,
        param_space={k: None for k in configs[0]},  # every value comes from its point
        tune_config=tune.TuneConfig(scheduler=FIFOScheduler(), num_samples=len(configs),
                                    search_alg=BasicVariantGenerator(points_to_evaluate=configs,
                                                                     max_concurrent=concurrent),
                                    reuse_actors=spec.search.trial.in_trial),
        run_config=tune.RunConfig(name=CONFIRM_DIR, storage_path=path, storage_filesystem=fs,
                                  verbose=1 if console.is_verbose() else 0,
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                                  callbacks=[TBXLoggerCallback(), CSVLoggerCallback(), JsonLoggerCallback(),
                                             RunLines(p, spec.search.objective.time_to_target)]))


def _point(p: dict, config: dict) -> Optional[int]:
    return next((i for i, q in enumerate(p["points"]) if q["config"] == config), None)


def collect(spec: SearchSpec, p: dict, grid) -> list[dict]:
    """One row per confirmation run, in the plan's order: its finalist and seed, how it ended, its numbers."""
    max_t, metric = spec.search.asha.max_t, spec.search.objective.metric
    rows = []
    for r in grid:
        i = _point(p, dict(r.config or {}))
        if i is None:
            continue
        m = dict(r.metrics or {})
        epochs = int(m.get("epoch") or 0)
        if r.error is not None:
            status = f"error: {str(r.error).strip().splitlines()[-1][:160]}"
        else:
            status = m.get("stop_reason") or ("completed" if epochs >= max_t else f"ended after epoch {epochs}")
        started, reported = m.get("trial_started_mono"), m.get("reported_mono")
        rows.append({"point": i, "finalist": p["points"][i]["finalist"], "seed": p["points"][i]["seed"],
                     "trial_id": m.get("trial_id") or Path(r.path).name, "status": status, "epochs": epochs,
                     "trained_epochs": round(float(m.get("trained_epochs", epochs) or 0.0), 3),
                     **{k: m.get(k) for k in ("time_to_target_s", "val_accuracy", "val_loss", "test_accuracy",
                                              "test_loss", metric, "elapsed_s")},
                     "wall_s": reported - started if started is not None and reported is not None else None,
                     "path": r.path})
    return sorted(rows, key=lambda r: r["point"])


class RunLines(tune.Callback):
    """One console line as each confirmation run starts and one as it ends (tuner/events.py's style)."""

    def __init__(self, p: dict, target: Optional[float]):
        self.p, self.target = p, target

    def _name(self, trial) -> str:
        i = _point(self.p, dict(trial.config or {}))
        if i is None:
            return f"confirmation {trial.trial_id}"
        q = self.p["points"][i]
        f = next(f for f in self.p["finalists"] if f["finalist"] == q["finalist"])
        return f"confirmation {i + 1}/{len(self.p['points'])}: {trial_name(f['search_trial_id'])} seed {q['seed']}"

    def on_trial_start(self, iteration, trials, trial, **info):
        log.info(fit(f"{self._name(trial)} started"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        m = trial.last_result or {}
        acc = m.get("val_accuracy")
        acc = "-" if acc is None or (isinstance(acc, float) and math.isnan(acc)) else f"{acc:.4f}"
        test = f", test_acc {m['test_accuracy']:.4f}" if m.get("test_accuracy") is not None else ""
        if self.target is not None and m.get("time_to_target_s") is not None:
            how = (f"reached {self.target:.2%} in {m['time_to_target_s']:.1f} s of training (epoch "
                   f"{m.get('time_to_target_epochs', m.get('epoch'))}{test})")
        elif self.target is not None:
            how = f"missed {self.target:.2%}: val_acc {acc} after epoch {m.get('epoch')}{test}"
        else:
            how = f"finished at epoch {m.get('epoch')}: val_acc {acc}{test}"
        log.info(fit(f"{self._name(trial)} {how}"))

    def on_trial_error(self, iteration, trials, trial, **info):
        lines = [ln.strip() for ln in str(trial.get_error() or "").strip().splitlines() if ln.strip()]
        log.warning(fit(f"{self._name(trial)} failed: {lines[-1] if lines else 'unknown error'}"))


class Reserve:
    """What the confirmation of the search's current top_k is projected to cost, so that the search's budget
    stops admitting trials early enough for it: per finalist, its trial's wall time (first entry to last report)
    and epochs, scaled to all the epochs of its own horizon (its `train.epochs` where the space searches it, else
    `asha.max_t`) where it stopped short of the target (a confirmation run is not stopped by ASHA), plus the most
    any trial spent outside its training (process start, data build, shutdown: a confirmation run on a fresh seed
    builds its data anew, as the search's first trial did), times the seeds,
    over the trials run at once; a finalist not yet known costs as much as the costliest known one. What the
    confirmation really spent is reported beside the budget (search.json's budget_note)."""

    def __init__(self, s: SearchConfig, concurrent: int):
        self.search, self.concurrent = s, max(1, concurrent)
        self.last: dict[str, dict] = {}  # trial id -> the numbers of its last report
        self.done: set[str] = set()  # finished properly (not errored)
        self.overhead = 0.0  # the most seconds a finished trial spent from admission to completion beyond its span
        self.horizon: dict[str, int] = {}  # trial id -> the epochs it would train unstopped (its train.epochs)

    def admitted(self, trial_id: str, config: dict) -> None:
        """A trial's config at admission: its own horizon where the space searches train.epochs."""
        if "train.epochs" in config:
            self.__dict__.setdefault("horizon", {})[trial_id] = int(config["train.epochs"])

    def observe(self, trial_id: str, result: Optional[dict]) -> None:
        if result:
            keep = ("time_to_target_s", "val_accuracy", "trained_epochs", "stop_reason", "trial_started_mono",
                    "reported_mono", self.search.objective.metric)
            self.last[trial_id] = {k: result.get(k) for k in keep}

    def complete(self, trial_id: str, error: bool, lifetime_s: Optional[float] = None) -> None:
        """`lifetime_s`: seconds from the trial's admission to its completion, on the driver's clock."""
        if error:
            self.last.pop(trial_id, None)
        elif trial_id in self.last:
            self.done.add(trial_id)
            if lifetime_s is not None:
                self.overhead = max(getattr(self, "overhead", 0.0), lifetime_s - _span(self.last[trial_id]))

    def _ended(self, trial_id: str) -> bool:
        """Finished, or its last report is its last (its own stop, or the target reached): Tune may ask for the
        next trial between a trial's last report and its completion."""
        r = self.last[trial_id]
        return trial_id in self.done or bool(r.get("stop_reason")) or r.get("time_to_target_s") is not None

    def estimate(self) -> tuple[float, float]:
        """(wall seconds, trial-epochs) the confirmation is projected to take."""
        from raytrain.tuner.tuning import rank

        c = self.search.confirm
        rows = [{**r, "trial_id": t, "status": r.get("stop_reason") or "ok"} for t, r in self.last.items() if self._ended(t)]
        top = [r for r in rank(rows, self.search) if not str(r["status"]).startswith(finalists.FAILED)][:c.top_k]
        costs, overhead = [], getattr(self, "overhead", 0.0)  # state saved before it was counted: none
        horizon = getattr(self, "horizon", {})  # state saved before horizons were kept: max_t for every trial
        for r in top:
            trained = float(r.get("trained_epochs") or 0.0)
            reached = self.search.objective.time_to_target is not None and r.get("time_to_target_s") is not None
            epochs = horizon.get(r["trial_id"], self.search.asha.max_t)
            scale = 1.0 if reached or trained <= 0 else max(epochs / trained, 1.0)
            costs.append((_span(r) * scale + overhead, trained * scale))
        if not costs:
            return 0.0, 0.0
        costs += [max(costs)] * (c.top_k - len(costs))
        return c.seeds * sum(w for w, _ in costs) / self.concurrent, c.seeds * sum(e for _, e in costs)


def _span(r: dict) -> float:
    """A trial's seconds from entering its training to its last report (the trial process's own clock)."""
    return max(0.0, (r.get("reported_mono") or 0.0) - (r.get("trial_started_mono") or 0.0))
