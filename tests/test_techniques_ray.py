"""Techniques inside real Ray Train runs: magnitude sparsity, early stopping with time-to-target, divergence.
(Structured pruning under DDP, ranks identical: tests/test_train_ray.py's user-project run, which prunes.)"""

from __future__ import annotations

import pytest

from raytrain import driver
from helpers import make_exp as _exp


def test_magnitude_sparsity_and_time_to_target(ray_local, exp_dict):
    exp = _exp(exp_dict, model__name="cnn", train__epochs=4, train__early_stopping={"target": 0.5},
               pruning={"method": "magnitude", "ratio": 0.7})
    s = driver.run(exp)
    f = s.final
    assert s.status.startswith("target val_accuracy=0.5 reached"), s
    assert f["epoch"] == f["time_to_target_epochs"] < 4 and f["time_to_target_s"] > 0
    assert f["weight_sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert f["params_nonzero"] < 0.4 * f["params_total"]


def test_divergence_ends_run_as_diverged(ray_local, exp_dict):
    exp = _exp(exp_dict, train__epochs=3, train__optimizer={"name": "sgd", "lr": 1.0e4, "momentum": 0.9})
    s = driver.run(exp)
    assert s.status == "diverged", s
    assert s.final["epoch"] < 3
