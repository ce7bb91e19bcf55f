"""Search specs: every kind parses into Tune's space; every bad input is one line before anything runs."""

from __future__ import annotations

import json

import pytest
import yaml
from ray import tune

from raytrain.cli import main
from raytrain.errors import UserError
from raytrain.tuner.spec import RungClock, SearchConfig, load_spec
from raytrain.tuner.tuning import rank

BASE = {"name": "s", "data": {"dataset": "digits"}, "model": {"name": "mlp"},
        "train": {"batch_size": 64, "precision": "fp32"}, "pruning": {"method": "structured"}}


def _spec(tmp_path, search: dict, **base):
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump({**BASE, **base, "search": search}))
    return p


def test_each_kind_becomes_a_tune_domain(tmp_path):
    spec = load_spec(_spec(tmp_path, {"samples": 2, "space": {
        "pruning.ratio": {"grid": [0.0, 0.3, 0.5]}, "train.precision": {"choice": ["fp32", "bf16"]},
        "train.optimizer.momentum": {"uniform": [0.5, 0.95]}, "train.optimizer.lr": {"loguniform": [1e-3, 0.3]},
        "train.batch_size": {"randint": [1, 4]}}}, **{"parallel": {"workers": 1}}))
    space = spec.param_space()
    assert space["pruning.ratio"] == {"grid_search": [0.0, 0.3, 0.5]}
    assert isinstance(space["train.precision"], tune.search.sample.Categorical)
    assert isinstance(space["train.optimizer.momentum"], tune.search.sample.Float)
    assert isinstance(space["train.optimizer.lr"].get_sampler(), tune.search.sample.LogUniform)
    assert (space["train.batch_size"].lower, space["train.batch_size"].upper) == (1, 5)  # inclusive high
    assert spec.n_trials() == 6
    exp = spec.trial_experiment({"pruning.ratio": 0.5, "train.optimizer.lr": 0.01})
    assert exp.pruning.ratio == 0.5 and exp.train.epochs == 10 and exp.parallel.max_failures == 0


def _generated(spec) -> list[dict]:
    """The configs Tune's generator (as build_tuner sets it up) hands out, in order; no cluster needed."""
    from ray.tune.experiment import Experiment

    from raytrain.tuner.tuning import seeded_search

    gen = seeded_search(spec, concurrent=0)
    gen.add_configurations(Experiment("e", lambda config: None, config=spec.param_space(), num_samples=spec.n_trials()))
    out = []
    while (trial := gen.next_trial()) is not None:
        out.append(trial.config)
    return out


def test_grid_points_shuffled_once_each_and_seeded(tmp_path):
    space = {"train.optimizer.lr": {"grid": [0.01, 0.1, 1.0]}, "train.optimizer.momentum": {"grid": [0.0, 0.9]},
             "pruning.ratio": {"uniform": [0.0, 0.5]}}
    listed = load_spec(_spec(tmp_path, {"samples": 2, "order": "listed", "space": space}))
    shuffled = load_spec(_spec(tmp_path, {"samples": 2, "space": space}))
    product = [{"train.optimizer.lr": lr, "train.optimizer.momentum": m} for lr in (0.01, 0.1, 1.0) for m in (0.0, 0.9)]
    assert listed.grid_points() == product * 2
    key = lambda p: sorted(p.items())  # noqa: E731
    assert sorted(shuffled.grid_points(), key=key) == sorted(product * 2, key=key)
    assert shuffled.grid_points() != listed.grid_points()
    assert shuffled.grid_points() == load_spec(_spec(tmp_path, {"samples": 2, "space": space})).grid_points()
    assert shuffled.grid_points() != load_spec(_spec(tmp_path, {"samples": 2, "seed": 5, "space": space})).grid_points()
    # Tune starts exactly those trials in that order, and still samples the non-grid keys
    configs = _generated(shuffled)
    assert [{k: c[k] for k in product[0]} for c in configs] == shuffled.grid_points()
    assert len({c["pruning.ratio"] for c in configs}) == 12 and all(0.0 <= c["pruning.ratio"] <= 0.5 for c in configs)


def test_no_grid_keys_samples_as_before(tmp_path):
    spec = load_spec(_spec(tmp_path, {"samples": 3, "space": {"train.optimizer.lr": {"loguniform": [1e-3, 0.3]}}}))
    assert spec.grid_points() == []
    assert len(_generated(spec)) == 3


def test_time_to_target_sets_early_stopping_target(tmp_path):
    spec = load_spec(_spec(tmp_path, {"objective": {"time_to_target": 0.9}, "asha": {"max_t": 4}}))
    exp = spec.trial_experiment({})
    assert exp.train.early_stopping.target == 0.9 and exp.train.epochs == 4


def test_fp16_skipped_on_cpu_with_a_note(tmp_path):
    spec = load_spec(_spec(tmp_path, {"space": {"train.precision": {"choice": ["fp16", "bf16"]}}}))
    assert spec.space_values["train.precision"] == ["bf16"]
    assert any("skipping fp16" in n for n in spec.notes)


@pytest.mark.parametrize("search,msg", [
    ({"space": {"pruning.ratoi": {"grid": [0.1]}}}, "search.space.pruning.ratoi: value 0.1 rejected: pruning.ratoi: unknown key"),
    ({"space": {"pruning.ratio": {"grid": [0.3, 1.5]}}}, "search.space.pruning.ratio: value 1.5 rejected"),
    ({"space": {"train.optimizer.lr": {"normal": [0, 1]}}}, "give exactly one of grid, choice"),
    ({"space": {"train.optimizer.lr": {"loguniform": [0.0, 1.0]}}}, "loguniform needs low > 0"),
    ({"space": {"train.optimizer.lr": {"uniform": [1.0, 0.1]}}}, "low < high"),
    ({"space": {"train.batch_size": {"randint": [1.5, 4]}}}, "randint takes integer bounds"),
    ({"space": {"train.precision": {"choice": ["fp16"]}}}, "no value this cluster can run"),
    ({"asha": {"max_t": 2, "grace_period": 3}}, "grace_period 3 exceeds max_t 2"),
    ({"asha": {"grace_s": 2}}, "search.asha.grace_s: rungs on seconds race to a target; set objective.time_to_target"),
    ({"asha": {"grace_s": 2}, "objective": {"time_to_target": 0.9}, "trial": {"workers": 2}},
     "search.asha.grace_s: rungs on seconds need one-worker trials"),
    ({"asha": {"grace_s": 0}}, "search.asha.grace_s"),
    ({"samples": 0}, "search.samples"),
    ({"sampels": 3}, "search.sampels: unknown key"),
])
def test_bad_spec_is_one_line_exit_2(tmp_path, capsys, search, msg):
    path = _spec(tmp_path, search)
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert msg in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_experiment_without_search_block_is_refused(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text(yaml.safe_dump(BASE))
    with pytest.raises(UserError, match="no search: block"):
        load_spec(p)


def test_ranking_by_time_to_target_then_accuracy():
    rows = [{"trial_id": "a", "val_accuracy": 0.95, "time_to_target_s": None},
            {"trial_id": "b", "val_accuracy": 0.99, "time_to_target_s": 20.0},
            {"trial_id": "c", "val_accuracy": 0.97, "time_to_target_s": None},
            {"trial_id": "d", "val_accuracy": 0.98, "time_to_target_s": 5.0}]
    ranked = rank(rows, SearchConfig(objective={"time_to_target": 0.98}))
    assert [r["trial_id"] for r in ranked] == ["d", "b", "c", "a"]
    by_acc = rank(rows, SearchConfig())
    assert [r["trial_id"] for r in by_acc] == ["b", "d", "c", "a"]


@pytest.mark.parametrize("asha", [{"max_t": 3, "grace_s": 1.5, "reduction_factor": 3},  # best accuracy so far
                                  {"max_t": 3, "grace_period": 1, "reduction_factor": 3}])  # seconds to 98%
def test_rung_clock_restored_from_its_state_goes_on_where_it_was(asha):
    """A resumed trial's clock (rung_clock.json, through JSON as the trial keeps it) answers its next report as the
    uninterrupted clock does, and a fresh one does not: the signal a rung right after a resume judges."""
    s = SearchConfig(objective={"time_to_target": 0.99}, asha=asha)
    before = [{"elapsed_s": 4.0, "val_accuracy": 0.985}, {"elapsed_s": 8.0, "val_accuracy": 0.97}]
    after = {"elapsed_s": 9.0, "val_accuracy": 0.975}  # a pruning dip right after the resume
    whole = RungClock(s)
    for m in before:
        whole.add(m)
    restored = RungClock(s)
    restored.load_state_dict(json.loads(json.dumps(whole.state_dict())))
    assert restored.add(after) == whole.add(after)
    assert RungClock(s).add(after) != whole.add(after)
    fresh = RungClock(s)
    fresh.load_state_dict(json.loads(json.dumps(RungClock(s).state_dict())))  # nothing reported yet: -inf -> null
    assert fresh.add(after) == RungClock(s).add(after)
