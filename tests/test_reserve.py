"""The confirmation's reserve counts what a run costs outside its training (process start, data build): the
search's own trials show it, from admission to completion on the driver's clock. No Ray."""

from __future__ import annotations

import pickle
import time

import pytest

from raytrain.tuner import tuning
from raytrain.tuner.confirm import Reserve
from raytrain.tuner.spec import SearchConfig


def _result(t_s, epochs, span) -> dict:
    return {"time_to_target_s": t_s, "val_accuracy": 0.95, "trained_epochs": epochs, "trial_started_mono": 100.0,
            "reported_mono": 100.0 + span}


def test_the_reserve_counts_each_runs_start_up_as_the_trials_showed_it():
    """Trial a: admitted 30 s before it completed, 4 s of it training: 26 s outside it. Trial b: 10 s, 6 of
    training: 4 s. The reserve for 2 finalists x 2 seeds, one at a time: each run costs its span plus the most
    overhead seen (26 s), whatever the finalist."""
    s = SearchConfig(objective={"time_to_target": 0.9}, asha={"max_t": 3}, confirm={"top_k": 2, "seeds": 2})
    gen = tuning.BudgetedSearch(wall_s=1000, reserve=Reserve(s, concurrent=1))
    now = time.monotonic()
    gen.created.update(a=now - 30.0, b=now - 10.0)
    gen.on_trial_result("a", _result(5.0, 2, 4.0))
    gen.on_trial_complete("a", _result(5.0, 2, 4.0))
    gen.on_trial_result("b", _result(3.0, 1, 6.0))
    gen.on_trial_complete("b", _result(3.0, 1, 6.0))
    assert gen.reserve.overhead == pytest.approx(26.0, abs=0.5)
    wall, epochs = gen.reserve.estimate()
    assert wall == pytest.approx(2 * ((4.0 + 26.0) + (6.0 + 26.0)), abs=2.0) and epochs == pytest.approx(2 * 3)
    assert "a" not in gen.created and "b" not in gen.created


def test_a_reserve_saved_before_overheads_were_counted_still_estimates():
    """A search resumed from state written by the previous version: its Reserve has no `overhead`."""
    s = SearchConfig(objective={"time_to_target": 0.9}, asha={"max_t": 3}, confirm={"top_k": 1, "seeds": 2})
    reserve = Reserve(s, concurrent=1)
    del reserve.overhead
    reserve = pickle.loads(pickle.dumps(reserve))
    reserve.observe("a", _result(5.0, 2, 4.0))
    reserve.complete("a", False, 9.0)
    assert reserve.overhead == pytest.approx(5.0)
    assert reserve.estimate() == pytest.approx((2 * (4.0 + 5.0), 4.0))


def test_a_finalist_stopped_short_is_scaled_to_its_own_horizon_not_max_t():
    """The space searches train.epochs: a finalist ASHA stopped after 1 of its 2 epochs costs 2 epochs' worth
    in the confirmation, not asha.max_t's 5 (the 2026-12-03 headline search stopped admitting at 219 s of its
    780 s budget on that overestimate). A trial admitted without a searched horizon trains max_t."""
    s = SearchConfig(objective={"time_to_target": 0.99}, asha={"max_t": 5}, confirm={"top_k": 2, "seeds": 2})
    reserve = Reserve(s, concurrent=1)
    reserve.admitted("a", {"train.epochs": 2, "model.width": 1.0})
    reserve.admitted("b", {"model.width": 1.0})
    for trial in "ab":
        reserve.observe(trial, {**_result(None, 1, 10.0), "stop_reason": "stopped by ASHA"})
        reserve.complete(trial, False, 10.0)
    wall, epochs = reserve.estimate()
    assert wall == pytest.approx(2 * (10.0 * 2 + 10.0 * 5)) and epochs == pytest.approx(2 * (2 + 5))
    old = pickle.loads(pickle.dumps(reserve))
    del old.horizon  # state saved before horizons were kept: every finalist scaled to max_t, as then
    assert old.estimate() == pytest.approx((2 * (10.0 * 5 + 10.0 * 5), 2 * (5 + 5)))
