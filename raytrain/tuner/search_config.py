"""The `search:` block's schema (Tune's sampling, ASHA, the trials' resources, the budget, the confirmation), kept
apart from `raytrain.tuner.spec` (the spec built from it and an experiment) so neither file grows past a
screenful; spec imports every name back, so `from raytrain.tuner.spec import SearchConfig` goes on working.
docs/configuration.md documents it (generated: `make docs`)."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from raytrain.config import Strict, WorkerResources

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
