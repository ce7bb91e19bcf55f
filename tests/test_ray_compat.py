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


def test_the_lines_a_quiet_console_turns_off_come_from_where_we_quiet_them():
    """Ray's token notice and Ray Data's progress-bar notice are logged by the loggers raytrain raises; Tune's
    legacy output engine (silent at verbose=0) is still the one RAY_AIR_NEW_OUTPUT=0 selects."""
    import importlib
    import os

    from ray.tune.experimental.output import get_air_verbosity

    for name, text in ((_ray_compat.AUTH_TOKEN_LOGGER, "Token authentication is enabled for this Ray cluster"),
                       (_ray_compat.DATA_PROGRESS_LOGGER, "Progress bars disabled"), _ray_compat.TUNE_INCOMPLETE):
        module = importlib.import_module(name)
        assert text in inspect.getsource(module) and module.logger is logging.getLogger(name), name
    controller = importlib.import_module("ray.tune.execution.tune_controller")
    assert 'os.environ.get("TUNE_PRINT_ALL_TRIAL_ERRORS", "1")' in inspect.getsource(controller)
    assert set(_ray_compat.QUIET_ENV) >= {"RAY_AIR_NEW_OUTPUT"}
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ.update(_ray_compat.QUIET_ENV)
    try:
        assert get_air_verbosity(0) is None
    finally:
        if before is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT")
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = before


def test_ingest_options_are_trains_defaults_without_the_deprecated_one():
    """Train's default ingest options still pass `exclude_resources` (Ray Data warns, with its source path, in
    every run's DatasetManager); ours are the same options without it, and warn nothing."""
    import warnings

    from ray.train import DataConfig

    assert "exclude_resources=ctx.execution_options.exclude_resources" in inspect.getsource(
        DataConfig.default_ingest_options)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        ours = _ray_compat.ingest_options()
        default = DataConfig.default_ingest_options()
    assert [str(w.message) for w in said if "exclude_resources" in str(w.message)] == [
        "`ExecutionOptions.exclude_resources` is deprecated and will be removed after January 2027. Use "
        "`ExecutionOptions.label_selector` to constrain Ray Data work to labeled nodes."]  # Train's, not ours
    assert (ours.resource_limits, ours.exclude_resources, ours.preserve_order, ours.verbose_progress) == \
        (default.resource_limits, default.exclude_resources, default.preserve_order, default.verbose_progress)


def test_forwarded_lines_pass_through_rays_dispatcher_while_inside():
    """Every batch Ray forwards from its processes to the driver's console goes through Ray's dispatcher."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    seen = []
    # A batch as Ray's log monitor sends it: a Ray session of the test process (ray_local) has its own print
    # handler on this dispatcher too, and reads these keys.
    batch = {"ip": "127.0.0.1", "pid": "autoscaler", "job": "", "is_err": False, "actor_name": "", "task_name": ""}
    dispatcher.add_handler("raytrain-test", seen.append)
    try:
        with _ray_compat.forwarded_lines(lambda b: {**b, "lines": [ln for ln in b["lines"] if ln != "drop"]}):
            dispatcher.emit({**batch, "lines": ["keep", "drop"]})
            dispatcher.emit({**batch, "lines": ["drop"]})  # nothing left: not emitted
        dispatcher.emit({**batch, "lines": ["drop"]})
    finally:
        dispatcher.remove_handler("raytrain-test")
    assert [b["lines"] for b in seen] == [["keep"], ["drop"]]
    assert "emit" not in vars(dispatcher)


def test_the_tensor_column_written_without_ray_reads_back_as_rays_own(tmp_path, ray_local):
    """raytrain writes its cache's tensor column without importing Ray; Ray Data must read it as its own type."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    x = np.arange(5 * 2 * 3 * 3, dtype=np.uint8).reshape(5, 2, 3, 3)
    field, column = _ray_compat.tensor_field("x", x)
    pq.write_table(pa.Table.from_arrays([column], schema=pa.schema([field])), tmp_path / "t.parquet")
    back = pq.read_table(tmp_path / "t.parquet").column("x")
    assert back.type == ArrowTensorArray.from_numpy(x).type
    assert np.array_equal(back.chunk(0).to_numpy(), x)
    assert np.array_equal(ray.data.from_arrow(pq.read_table(tmp_path / "t.parquet")).take_batch(5)["x"], x)


def test_trial_storage_reads_the_sessions_storage_where_ray_keeps_it():
    """Outside a trial: None. Inside: Tune's session StorageContext (trial_fs_path) and Train V2's context
    (get_storage().experiment_fs_path); the names it reads are where Ray 2.60 keeps them (a Tune trial's is
    exercised end to end by tests/test_callbacks.py)."""
    from ray.train._internal import session, storage
    from ray.train.v2._internal.execution import context
    from ray.train.v2._internal.execution import storage as v2_storage

    assert _ray_compat.trial_storage() is None
    assert "storage" in inspect.signature(session._TrainSession.__init__).parameters
    assert isinstance(storage.StorageContext.trial_fs_path, property)
    assert isinstance(v2_storage.StorageContext.experiment_fs_path, property)
    assert "get_storage" in vars(context.TrainContext)


def test_the_drain_wait_without_a_deadline_is_the_one_the_controller_keeps():
    """A drain with no deadline: Ray Train's controller restarts the group that long after it saw it (the bound
    of a drained group's wait, `hosts.TrainHost.notice`); the preemption notice has the fields raytrain reads."""
    from ray.train.v2._internal.execution.controller import controller
    from ray.train.v2.api.preemption import PreemptionInfo

    assert _ray_compat.preemption_default_wait_s() > 0
    assert "detected_at_s + DEFAULT_PREEMPTION_DEADLINE_S" in inspect.getsource(controller)
    info = PreemptionInfo(deadline_ms=None, preempted_node_to_ranks={"b": [1], "a": [0]})
    assert info.preempted_node_ids == ["a", "b"] and info.deadline_ms is None
    assert "preemption_grace_s" in inspect.signature(ray.train.FailureConfig).parameters
