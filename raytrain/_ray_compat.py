"""Every private corner of Ray that raytrain touches, in one place (pyproject pins Ray to the 2.60 series).

`tests/test_ray_compat.py` fails loudly when an upgrade moves any of them.
"""

from __future__ import annotations

import logging
import os

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


def set_env_defaults() -> None:
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
