"""A search spec = an experiment YAML + a `search:` block. Parsed, checked against the experiment schema
key by key, and turned into a Tune param_space, before anything runs. The block's schema is
`raytrain.tuner.search_config`; RungClock, the signal a time objective's rungs compare, is here."""

from __future__ import annotations

import copy
import itertools
import math
import random
from pathlib import Path

from pydantic import ValidationError

from raytrain.config import Experiment
from raytrain.configio import apply_overrides, read_yaml, set_dotted, validate_experiment
from raytrain.errors import UserError, format_validation_error
from raytrain.tuner.search_config import (  # noqa: F401  (re-exported: the search: block's schema)
    KINDS, SECOND_RUNGS, Asha, Budget, Confirm, Objective, SearchConfig, TrialResources)


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
