"""Smoke test of every private Ray corner raytrain relies on (raytrain/_ray_compat.py): when a Ray upgrade
moves one, this fails here, loudly, instead of a run misbehaving quietly."""

from __future__ import annotations

import inspect
import logging

import ray

from raytrain import _ray_compat


def test_ray_is_the_series_the_project_pins():
    assert ray.__version__.startswith("2.60."), ray.__version__


def test_train_env_variables_are_the_ones_ray_train_reads():
    source = inspect.getsource(_ray_compat.train_constants_module())
    for name in _ray_compat.TRAIN_ENV:
        assert f'"{name}"' in source, f"Ray Train no longer reads {name}"


def test_train_report_logger_is_where_we_quiet_it():
    """Ray Train V2 names the logger that prints every report after its file: the one we quiet is that one."""
    from ray.train.v2._internal.execution import context

    assert context.logger is logging.getLogger(context.__file__)
    _ray_compat.quiet_train_report_log()
    assert context.logger.getEffectiveLevel() == logging.WARNING


def test_tune_checkpoint_logger_is_where_we_quiet_it():
    import importlib

    module = importlib.import_module("ray.train._internal.storage")
    assert "Checkpoint successfully created" in inspect.getsource(module)
    assert module.logger is logging.getLogger("ray.train._internal.storage")


def test_autoscaler_config_helpers_exist():
    util = _ray_compat.autoscaler_util()
    for name in ("prepare_config", "validate_config", "merge_setup_commands", "fill_node_type_min_max_workers"):
        assert callable(getattr(util, name)), name


def test_public_ray_pieces_with_weaker_stability_promises():
    import ray.data
    from ray.tune.search.basic_variant import BasicVariantGenerator

    assert callable(ray.data.from_blocks)  # DeveloperAPI: metadata computed locally, no task
    params = inspect.signature(ray.train.report).parameters
    assert "checkpoint_dir_name" in params  # rank 0 names the checkpoint it then logs
    state = BasicVariantGenerator.get_state  # our budget counters ride in its saved __dict__
    assert "__dict__" in inspect.getsource(state)
