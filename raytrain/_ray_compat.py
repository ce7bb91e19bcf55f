"""Every private corner of Ray that raytrain touches, in one place (pyproject pins Ray to the 2.60 series).

`tests/test_ray_compat.py` fails loudly when an upgrade moves any of them.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

# Environment variables read by Ray Train V2 (ray/train/v2/_internal/constants.py). Set before Ray's
# processes start, so the controller, workers and Ray Data actors inherit them.
TRAIN_ENV = {
    # Worker-group start-up gets a deadline (Ray's default waits without bound for resources).
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "30",
    # The controller polls its workers this often (default 2 s): a finished run was noticed up to 2 s late.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # Train V2 re-logs every print() through its structured logger, so worker lines showed twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}
DATA_ENV = {"RAY_DATA_LOG_LEVEL": "WARNING"}  # one "Starting execution..." per epoch per split otherwise
# Tune forces an experiment snapshot whenever a trial checkpointed `num_to_keep` times since the last one and
# warns each time; epochs of a few seconds make that every report. The snapshots stay; the warning goes.
TUNE_ENV = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
ENV = {**TRAIN_ENV, **DATA_ENV, **TUNE_ENV}
# --verbose (verbose=True): Ray Data's own INFO lines too, as Ray prints them by default.
VERBOSE_ENV = {"RAY_DATA_LOG_LEVEL": "INFO"}
# Quiet (the default), on the driver: Tune's legacy output engine, silent at verbose=0 (the new one prints its
# experiment box and two paths at any verbosity), and no traceback per failed trial; raytrain.tuner.events says
# one line per trial event instead (a failed trial's cause included), the ranked table each trial's end.
QUIET_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0", **DATA_ENV}
# (logger, message start): Tune's own line listing the trials that failed, which the ranked table says too.
TUNE_INCOMPLETE = ("ray.tune.tune", "Trials did not complete")


def train_constants_module():
    """The module that defines TRAIN_ENV's names (the smoke test reads them there)."""
    from ray.train.v2._internal import constants

    return constants


def quiet_train_report_log() -> None:
    """Train V2 logs every report's full metrics at INFO from a logger named after its file; raytrain's
    epoch line says the same in one line."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def quiet_tune_checkpoint_log() -> None:
    """A Tune trial logs "Checkpoint successfully created at: ..." at INFO for every epoch's checkpoint."""
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)


def autoscaler_util():
    """Ray's cluster-launcher config preparation and validation, as `ray up` runs them."""
    from ray.autoscaler._private import util

    return util


def set_env_defaults(verbose: bool = False) -> None:
    for key, value in {**ENV, **(VERBOSE_ENV if verbose else {})}.items():
        os.environ.setdefault(key, value)


# Ray's own console lines a user cannot act on, at their source (raytrain.console keeps them out unless verbose):
# "Token authentication is enabled for this Ray cluster..." at every embedded ray.init (the token is Ray's own);
AUTH_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
# "Progress bars disabled..." once per worker: raytrain turns them off (its epoch lines are the progress);
DATA_PROGRESS_LOGGER = "ray.data._internal.progress"
# an `E ... core_worker.cc` line on every Ray Train run, about Train's own PreemptionWatcher actor (ray#53727).
HARMLESS_CORE_ERRORS = ("has constructor arguments in the object store and max_restarts > 0",)


def ingest_options():
    """Ray Train's default ingest options (`DataConfig.default_ingest_options`) without `exclude_resources`,
    which Train passes itself and Ray Data deprecates: a warning with its source path in every run otherwise."""
    from ray.data import DataContext, ExecutionOptions

    now = DataContext.get_current().execution_options
    return ExecutionOptions(resource_limits=now.resource_limits, preserve_order=now.preserve_order,
                            verbose_progress=now.verbose_progress)


@contextmanager
def forwarded_lines(transform):
    """While inside, every batch of lines Ray forwards from its processes to this driver's console (a dict
    with "lines", "pid", "actor_name", ...) goes through `transform(batch) -> batch or None` first."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    had, emit = "emit" in vars(dispatcher), dispatcher.emit

    def filtered(batch):
        batch = transform(batch)
        if batch is not None and batch.get("lines"):
            emit(batch)

    dispatcher.emit = filtered
    try:
        yield
    finally:
        if had:
            dispatcher.emit = emit
        else:
            del dispatcher.emit


# Ray Data's fixed-shape tensor column (ArrowTensorTypeV2) as it is stored: a large_list of the flattened values
# per row, tagged in the field's metadata. Written from here, a cache file gets Ray's column type without
# importing Ray (a run with no Ray writes the cache too); Ray reads it back as its own extension type
# (tests/test_ray_compat.py checks this against ArrowTensorArray.from_numpy).
TENSOR_EXTENSION_NAME = b"ray.data.arrow_tensor_v2"


def tensor_field(name: str, x):
    """(pyarrow field, storage array) holding `x` (N, *shape) as Ray Data's tensor column."""
    import numpy as np
    import pyarrow as pa

    x = np.ascontiguousarray(x)
    per = int(np.prod(x.shape[1:]))
    offsets = pa.array(np.arange(len(x) + 1, dtype=np.int64) * per)
    storage = pa.LargeListArray.from_arrays(offsets, pa.array(x.reshape(-1)))
    meta = {b"ARROW:extension:name": TENSOR_EXTENSION_NAME,
            b"ARROW:extension:metadata": str(list(x.shape[1:])).encode()}
    return pa.field(name, storage.type, metadata=meta), storage


def preemption_info():
    """Ray Train V2's preemption notice inside a worker (`ray.train.get_preemption_info`, alpha in Ray 2.60):
    a `PreemptionInfo` once a node of the group is being drained, else None. A barrier across the group."""
    import ray.train

    return ray.train.get_preemption_info()


def preemption_default_wait_s() -> float:
    """How long Ray Train's controller waits after seeing a drain that gave no deadline before it restarts the
    group (`DEFAULT_PREEMPTION_DEADLINE_S`)."""
    from ray.train.v2._internal import constants

    return float(constants.DEFAULT_PREEMPTION_DEADLINE_S)


def trial_storage():
    """(pyarrow filesystem, path) of the search trial this process trains for, in the search's storage, or
    None outside one. In a Tune trial process: Tune's folder for the trial (its session's StorageContext;
    `tune.get_context().get_trial_dir()` is a local staging folder, and a reused trial process gets one Tune
    does not upload). In a Train worker of a multi-worker trial: the parent of the trial's TorchTrainer
    folder (<search>/trials/<trial id>), from Train V2's context (`get_storage()`, which Ray's own error
    messages point users to)."""
    from ray.train._internal import session as tune_session

    s = tune_session.get_session()
    if s is not None and getattr(s, "storage", None) is not None:
        return s.storage.storage_filesystem, s.storage.trial_fs_path
    from ray.train.v2._internal.execution.context import get_train_context

    try:
        st = get_train_context().get_storage()
    except RuntimeError:  # not in a Train worker either
        return None
    return st.storage_filesystem, st.experiment_fs_path.rstrip("/").rsplit("/", 1)[0]


def dashboard_address():
    """host:port of the dashboard of the Ray this process is connected to, or None (no Ray, or no dashboard).
    Ray keeps it on its private global node (`ray.init()`'s context reads it there too)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    from ray._private import worker

    return getattr(getattr(worker, "_global_node", None), "webui_url", None) or None


def whole_groups_trainer(trainer_cls, multiple: int):
    """`trainer_cls` (a Train V2 trainer) whose elastic group starts and resizes only to multiples of `multiple`
    workers (whole pipelines). Ray 2.60 has this rule for TPU slices only (`ElasticScalingPolicy` rounds its
    count of workers that fit down to whole slices); Train builds its policy inside `fit()`
    (`create_scaling_policy`), so the subclass hands the controller its own, rounding the same count down."""
    from ray.train.v2._internal.execution.scaling_policy import ElasticScalingPolicy

    class WholeGroups(ElasticScalingPolicy):
        def _count_possible_workers(self, reserved_resources) -> int:
            n = super()._count_possible_workers(reserved_resources)
            return n - n % multiple

    class Trainer(trainer_cls):
        scaling_policy = WholeGroups  # what the controller gets (tests/test_elastic.py reads its count)

        def _initialize_and_run_controller(self, **controller_init_kwargs):
            controller_init_kwargs["scaling_policy"] = self.scaling_policy(self.scaling_config)
            return super()._initialize_and_run_controller(**controller_init_kwargs)

    Trainer.__name__ = trainer_cls.__name__  # as Ray names the run's trainer (the class stays local: by value)
    return Trainer
