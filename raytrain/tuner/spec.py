"""A search spec = an experiment YAML + a `search:` block. Parsed, checked against the experiment schema
key by key, and turned into a Tune param_space, before anything runs."""

from __future__ import annotations

import copy
import itertools
import math
import random
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from raytrain.config import Experiment, Strict, WorkerResources
from raytrain.configio import apply_overrides, read_yaml, set_dotted, validate_experiment
from raytrain.errors import UserError, format_validation_error

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
SECOND_RUNGS = 8  # rungs on seconds: grace_s x rf^0..7 (2 s x 4^7 = 9 h); a trial outliving the last goes on unjudged


class Objective(Strict):
    metric: str = "val_accuracy"
    """Metric ASHA compares at its rungs and the final ranking uses (without time_to_target)."""
    mode: Literal["max", "min"] = "max"
    """Whether larger or smaller is better."""
    time_to_target: Optional[float] = Field(None, gt=0.0)
    """Rank by training seconds to reach this val_accuracy; a trial stops the moment it reaches it (at an epoch's
    end). ASHA's rungs then compare the best val accuracy reached by equal training seconds (`asha.grace_s`) or,
    on epochs, the seconds each trial took to reach `asha.rung_accuracy`."""


class Asha(Strict):
    max_t: int = Field(10, ge=1)
    """Epochs a surviving trial trains (the trial experiment's train.epochs)."""
    grace_period: int = Field(1, ge=1)
    """Epochs every trial gets before it can be stopped."""
    reduction_factor: float = Field(3.0, gt=1.0)
    """Keep the top 1/reduction_factor of trials at each rung."""
    rung_accuracy: Optional[float] = Field(None, gt=0.0, lt=1.0)
    """time_to_target with epoch rungs: the intermediate val accuracy whose training seconds the rungs compare
    (default: the target's error doubled, 0.99 -> 0.98); a trial yet to reach it ranks behind every one that has."""
    grace_s: Optional[float] = Field(None, gt=0.0)
    """time_to_target, one-worker trials: rungs on training seconds instead of epochs, the first at grace_s and
    then every reduction_factor times later, 8 rungs (grace_period and rung_accuracy are then unused). At each
    a trial evaluates mid-epoch (not counted as training time) and the rungs compare the best val accuracy each
    trial has reached by then: who is ahead in the race to the target, whatever their epochs cost."""

    @model_validator(mode="after")
    def _grace(self) -> "Asha":
        if self.grace_period > self.max_t:
            raise ValueError(f"search.asha.grace_period {self.grace_period} exceeds max_t {self.max_t}")
        return self

    def rung_seconds(self) -> list[float]:
        """The training seconds of the rungs on seconds (`grace_s`), as ASHA places them; [] for epoch rungs."""
        if self.grace_s is None:
            return []
        return [self.grace_s * self.reduction_factor ** k for k in range(SECOND_RUNGS)]


class TrialResources(WorkerResources):
    workers: int = Field(1, ge=1)
    """Workers per trial: 1 trains inside the Tune trial process; more start a Ray Train worker group."""
    isolate: bool = False
    """Train even a one-worker trial in its own Ray Train worker group (nested TorchTrainer)."""

    @property
    def in_trial(self) -> bool:
        """The trial's one worker trains in the (reused) Tune trial process itself."""
        return self.workers == 1 and not self.isolate


class Budget(Strict):
    """With `confirm`, it covers the confirmation too: admission stops once what was spent plus the confirmation's
    projected cost reach it (`confirm.Reserve`)."""

    wall_s: Optional[float] = Field(None, gt=0.0)
    """Stop admitting new trials once the search has run this long (running trials finish)."""
    trial_epochs: Optional[int] = Field(None, ge=1)
    """Stop admitting new trials once this many trial-epochs have been trained (running trials finish)."""


class Confirm(Strict):
    """After the search, retrain its top configurations on fresh seeds as the trials trained (resources, epochs, stop
    at the target; no ASHA) and make best.yaml the one whose WORST seed is best (a finalist missing the target on
    any seed ranks behind all that reach it on every seed): one trial's number is one draw, and the search's top
    trial is the luckiest draw among many (winner's curse)."""
    top_k: int = Field(ge=1)
    """Finalists: the search's top-ranked configurations (ranked as without confirmation), errored and skipped
    trials left out."""
    seeds: int = Field(ge=1)
    """Fresh seeds each finalist retrains on (the experiment seed + 1000 + i, none the search trained with); a
    seed also draws the run's validation split (data.val_fraction) and its initialisation and order."""


class SearchConfig(Strict):
    samples: int = Field(4, ge=1)
    """Tune's num_samples: random draws, repeated for every grid point."""
    space: dict[str, dict[str, list]] = Field(default_factory=dict)
    """Dotted experiment keys -> {grid|choice: [values]} or {uniform|loguniform|randint: [low, high]}."""
    objective: Objective = Objective()
    asha: Asha = Asha()
    max_concurrent: Union[Literal["auto"], int] = "auto"
    """Trials at once; auto = what the cluster's CPUs/GPUs hold with every trial's workers placed."""
    trial: TrialResources = TrialResources()
    seed: Optional[int] = None
    """Seed for Tune's sampling and the grid shuffle (null: the experiment seed)."""
    budget: Budget = Budget()
    """Limits on the whole search; what was spent is reported in search.json."""
    confirm: Optional[Confirm] = None
    """Absent: best.yaml is the search's top trial."""
    order: Literal["shuffled", "listed"] = "shuffled"
    """Order grid points are tried in. ASHA judges a trial against those that reached its rung before
    it, and its analysis assumes configs arrive in random order: a listed grid (all small learning
    rates first) lets weak early trials through every rung. shuffled = a seeded permutation."""

    @model_validator(mode="after")
    def _second_rungs(self) -> "SearchConfig":
        if self.asha.grace_s is not None:
            if self.objective.time_to_target is None:
                raise ValueError("search.asha.grace_s: rungs on seconds race to a target; set objective.time_to_target")
            if self.trial.workers != 1:
                raise ValueError(f"search.asha.grace_s: rungs on seconds need one-worker trials (search.trial.workers "
                                 f"is {self.trial.workers}: ranks timing themselves could disagree on the step)")
        return self

    @field_validator("space")
    @classmethod
    def _kinds(cls, space: dict) -> dict:
        for key, dist in space.items():
            if len(dist) != 1 or next(iter(dist)) not in KINDS:
                raise ValueError(f"{key}: give exactly one of {', '.join(KINDS)}")
            kind, args = next(iter(dist.items()))
            if not args:
                raise ValueError(f"{key}: {kind} needs values")
            if kind in ("uniform", "loguniform", "randint"):
                if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args) or not args[0] < args[1]:
                    raise ValueError(f"{key}: {kind} takes [low, high] numbers with low < high")
                if kind == "loguniform" and args[0] <= 0:
                    raise ValueError(f"{key}: loguniform needs low > 0")
                if kind == "randint" and not all(float(a).is_integer() for a in args):
                    raise ValueError(f"{key}: randint takes integer bounds")
        return space


class RungClock:
    """What ASHA's rungs compare for a time objective, added to each of a trial's reports.

    Rungs on epochs: the training seconds the trial took to reach an intermediate accuracy, the signal that
    predicts time to target. Accuracy at equal epochs would favour configurations that are slow per epoch;
    accuracy "at equal seconds" cannot be had from per-epoch reports of epochs of different lengths. A trial yet
    to reach it ranks behind every trial that has, by its seconds so far.

    Rungs on seconds (`asha.grace_s`): the best val accuracy the trial has reported by then (its evaluations at
    the rungs and at epoch ends). A rung just after structured pruning cuts channels would otherwise catch the
    dip before the recovery and stop the configurations fastest to the target (it happened: docs/search.md)."""

    METRIC, BEST, BEHIND = "seconds_to_rung", "best_val_accuracy", 1.0e6

    def __init__(self, s: SearchConfig):
        target = s.objective.time_to_target
        self.second_rungs = target is not None and s.asha.grace_s is not None
        epoch_rungs = target is not None and not self.second_rungs
        self.accuracy = (s.asha.rung_accuracy or 2 * target - 1) if epoch_rungs else None
        self.reached, self.best = None, -math.inf

    def add(self, metrics: dict) -> dict:
        if "val_accuracy" not in metrics:
            return metrics
        if self.second_rungs:
            self.best = max(self.best, metrics["val_accuracy"])
            return {**metrics, self.BEST: self.best}
        if self.accuracy is None:
            return metrics
        if self.reached is None and metrics["val_accuracy"] >= self.accuracy:
            self.reached = float(metrics.get("elapsed_s", 0.0))
        seconds = self.reached if self.reached is not None else self.BEHIND + float(metrics.get("elapsed_s", 0.0))
        return {**metrics, self.METRIC: seconds}

    def state_dict(self) -> dict:
        """What a restored trial must not forget (the trial keeps it with its checkpoints): the clock restarting
        would let a rung just after a resume judge a pruning dip, or time a rung accuracy already reached, afresh."""
        return {"reached": self.reached, "best": self.best if math.isfinite(self.best) else None}

    def load_state_dict(self, d: dict) -> None:
        self.reached = d.get("reached")
        self.best = d["best"] if d.get("best") is not None else -math.inf


class SearchSpec:
    """The validated base experiment (raw mapping + model) and its search block."""

    def __init__(self, raw: dict, search: SearchConfig, source: str):
        self.raw, self.search, self.source = _absolute_paths(raw), search, source
        self.notes: list[str] = []
        self.base = self.trial_experiment({})
        self.space_values = self._check_space()
        self._check_confirm()

    def _check_confirm(self) -> None:
        c = self.search.confirm
        if c is None:
            return
        if "seed" in self.search.space:
            raise UserError(f"{self.source}: search.confirm: the seed is searched (search.space.seed), and the "
                            "confirmation retrains each finalist on fresh seeds: drop one of the two")
        if c.top_k > self.n_trials():
            raise UserError(f"{self.source}: search.confirm.top_k {c.top_k} exceeds the {self.n_trials()} trial(s) "
                            "the search plans: lower it or raise search.samples")

    def trial_values(self) -> dict:
        """The keys every trial's experiment gets: its resources, its epochs, the stop at the target."""
        t, a = self.search.trial, self.search.asha
        fixed = {"parallel.workers": t.workers, "parallel.cpus_per_worker": t.cpus_per_worker,
                 "parallel.use_gpu": t.use_gpu, "parallel.gpus_per_worker": t.gpus_per_worker,
                 "parallel.worker_resources": dict(t.worker_resources), "parallel.isolate": t.isolate,
                 "train.epochs": a.max_t, "parallel.max_failures": 0}  # a failing trial ends; the search goes on
        if self.search.objective.time_to_target is not None:
            fixed["train.early_stopping"] = {"metric": "val_accuracy", "mode": "max", "patience": a.max_t,
                                             "target": self.search.objective.time_to_target}
        return fixed

    def trial_raw(self, params: dict) -> dict:
        raw = copy.deepcopy(self.raw)
        for key, value in {**self.trial_values(), **params}.items():
            set_dotted(raw, key, copy.deepcopy(value))
        return raw

    def trial_experiment(self, params: dict, source: str | None = None) -> Experiment:
        return validate_experiment(self.trial_raw(params), source or self.source + (f" with {params}" if params else ""))

    def _check_space(self) -> dict[str, list]:
        """Try every listed value (and both bounds) against the experiment schema; drop values this
        hardware can't run (fp16 on CPU) with a note; refuse anything else."""
        kept: dict[str, list] = {}
        for key, dist in self.search.space.items():
            kind, args = next(iter(dist.items()))
            ok = []
            for value in args:
                try:
                    self.trial_experiment({key: value}, source="value")
                    ok.append(value)
                except UserError as e:
                    if key == "train.precision" and value == "fp16" and not self.search.trial.use_gpu:
                        self.notes.append(f"search.space.{key}: skipping fp16 (CPU trials; use bf16)")
                        continue
                    reason = str(e).removeprefix("value: ")
                    raise UserError(f"{self.source}: search.space.{key}: value {value!r} rejected: {reason}") from None
            if not ok:
                raise UserError(f"{self.source}: search.space.{key}: no value this cluster can run")
            kept[key] = ok if kind in ("grid", "choice") else args
        return kept

    def param_space(self) -> dict:
        from ray import tune

        make = {"grid": tune.grid_search, "choice": tune.choice,
                "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
                "randint": lambda a: tune.randint(int(a[0]), int(a[1]) + 1)}  # inclusive high, as YAML readers expect
        return {key: make[next(iter(dist))](self.space_values[key]) for key, dist in self.search.space.items()}

    def grid_points(self) -> list[dict]:
        """Every grid point, `samples` times each, in the order trials should start ([] without a grid).
        Other keys (choice, uniform, ...) are still sampled by Tune for each point."""
        keys = [k for k, d in self.search.space.items() if "grid" in d]
        if not keys:
            return []
        points = [dict(zip(keys, combo)) for _ in range(self.search.samples)
                  for combo in itertools.product(*(self.space_values[k] for k in keys))]
        if self.search.order == "shuffled":
            seed = self.search.seed if self.search.seed is not None else self.base.seed
            random.Random(seed).shuffle(points)
        return points

    def n_trials(self) -> int:
        grid = [len(self.space_values[k]) for k, d in self.search.space.items() if "grid" in d]
        return self.search.samples * math.prod(grid)


def _absolute_paths(raw: dict) -> dict:
    """Trials run in other processes (and cwd): pin a local `output` and `data.path` to where the user launched."""
    from raytrain.storage import is_uri

    raw = copy.deepcopy(raw)
    out = raw.get("output") or "runs"
    raw["output"] = out if is_uri(str(out)) else str(Path(out).expanduser().resolve())
    data = raw.get("data")
    for key in ("path", "val_path", "test_path"):
        if isinstance(data, dict) and isinstance(data.get(key), str) and not is_uri(data[key]):
            data[key] = str(Path(data[key]).expanduser().resolve())
    return raw


def load_spec(path: str | Path, overrides: list[str] | None = None) -> SearchSpec:
    path = Path(path)
    raw = read_yaml(path)
    raw = apply_overrides(raw, list(overrides or []))
    block = raw.pop("search", None)
    if block is None:
        raise UserError(f"{path}: no search: block (this is an experiment; use raytrain train)")
    try:
        search = SearchConfig.model_validate(block)
    except ValidationError as e:
        raise UserError(format_validation_error(e, str(path)).replace(f"{path}: ", f"{path}: search.", 1)) from None
    return SearchSpec(raw, search, str(path))
