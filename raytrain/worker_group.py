"""A run's Ray Train worker group: the TorchTrainer (Train V2) around `raytrain.worker`, and its result.

Ray Train persists checkpoints to the run's storage (any pyarrow filesystem, so s3:// and gs:// too) and
restarts the group from the latest one on failure (`parallel.max_failures`). Rank 0 appends each epoch's
row to metrics.jsonl itself once its report returned (`hosts.TrainHost`): the controller only sees reports
it polled before a worker died, so a callback there would lose the last epoch's row to a crash.
"""

from __future__ import annotations

from typing import Callable, Optional

import ray
from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from raytrain import _ray_compat
from raytrain import checkpoint as ckpt
from raytrain import storage
from raytrain.config import Experiment
from raytrain.data.ingest import Ingest
from raytrain.notice import GRACE_S
from raytrain.plan import RunPlan
from raytrain.runtime import CONTROLLER_FAILURE_LIMIT
from raytrain.worker import train_loop_per_worker

COLLECTIVE_TIMEOUT_S = 120  # a rank that dies mid-collective fails the group within this, never hangs it
COMPILE_COLLECTIVE_TIMEOUT_S = 900  # torch.compile's first step can keep a slow rank away that long


def build_trainer(exp: Experiment, plan: RunPlan, ingest: Ingest, storage_root: storage.Location,
                  factory: Optional[Callable] = None, callbacks: Optional[list] = None,
                  loop_callbacks: Optional[list] = None) -> TorchTrainer:
    """The TorchTrainer for `exp`; checkpoints go to <storage_root>/train/checkpoint_*. `callbacks` are Ray
    Train's (on the driver); `loop_callbacks` are raytrain's, pickled to every worker's loop."""
    par = exp.parallel
    path, fs = storage_root.for_ray()
    timeout = COMPILE_COLLECTIVE_TIMEOUT_S if exp.train.compile else COLLECTIVE_TIMEOUT_S
    stages = par.pipeline.stages
    # an elastic pipeline grows and shrinks by whole pipelines (its data-parallel degree only)
    trainer = _ray_compat.whole_groups_trainer(TorchTrainer, stages) if par.elastic and stages > 1 else TorchTrainer
    return trainer(
        train_loop_per_worker,
        train_loop_config={"plan": plan.to_json(), "model_factory": factory, "callbacks": list(loop_callbacks or [])},
        torch_config=TorchConfig(backend="nccl" if par.use_gpu else "gloo", timeout_s=timeout),
        scaling_config=scaling(par),
        run_config=RunConfig(
            name=ckpt.RUN_STORAGE, storage_path=path, storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=exp.checkpoint.keep),
            failure_config=failures(par),
            logging_config=LoggingConfig(log_level="WARNING"),  # our epoch lines, not per-report INFO chatter
            callbacks=list(callbacks or []),
        ),
        datasets=ingest.datasets,
        dataset_config=DataConfig(datasets_to_split=ingest.split,  # materialised parts are cut per rank already
                                  execution_options=_ray_compat.ingest_options()),
    )


def scaling(par) -> ScalingConfig:
    """A fixed group, or an elastic one (`parallel.workers: [min, max]`): Ray Train starts it with as many
    workers as fit once `min` do, restarts it smaller when a node is lost, and every `parallel.resize_check_s`
    restarts it larger when more fit; each start resumes from the newest checkpoint (`hosts.TrainHost`)."""
    workers = (par.min_workers, par.max_workers) if par.elastic else par.workers
    return ScalingConfig(num_workers=workers, use_gpu=par.use_gpu, resources_per_worker=par.bundle(),
                         elastic_resize_monitor_interval_s=par.resize_check_s)


def failures(par) -> FailureConfig:
    """`parallel.max_failures` worker-group failures (a lost node's workers included; drained nodes have Ray's
    own, unbounded preemption budget, and a restart at the drain's deadline plus `notice.GRACE_S`). An elastic
    group may also fail to start once per lost node: Ray Train sizes the restart from a view of the cluster
    refreshed every 20 s (its AutoscalingCoordinator), so a restart right after a node died can ask for the dead
    node's workers and time out waiting for them, then retries smaller; a fixed group gets one such retry."""
    extra = par.max_failures if par.elastic else 0
    return FailureConfig(max_failures=par.max_failures, controller_failure_limit=CONTROLLER_FAILURE_LIMIT + extra,
                         preemption_grace_s=GRACE_S)


def fit(exp: Experiment, plan: RunPlan, ingest: Ingest, run_dir: storage.Location,
        factory: Optional[Callable], callbacks: Optional[list] = None) -> tuple[dict, Optional[str], Optional[str]]:
    """(final metrics, checkpoint URI, error) of the worker group's run."""
    trainer = build_trainer(exp, plan, ingest, run_dir, factory, loop_callbacks=callbacks)
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        return {}, None, root_cause(e)
    where = ckpt.in_storage(run_dir / ckpt.RUN_STORAGE, result.checkpoint).uri if result.checkpoint else None
    return dict(result.metrics or {}), where, None


def root_cause(e: Exception) -> str:
    """The root cause in one line: for worker errors, the first failing rank's exception."""
    cause = getattr(e, "controller_failure", None)
    if cause is not None:  # e.g. the worker group could not be placed in time
        lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
        return f"controller: {type(cause).__name__}: {lines[0] if lines else ''}"[:300]
    failures = getattr(e, "worker_failures", None)
    if failures:
        rank, err = sorted(failures.items())[0]
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        return f"rank {rank}: {lines[-1] if lines else type(err).__name__}"[:300]
    text = str(e).strip()
    return next((ln for ln in text.splitlines() if ln.strip()), type(e).__name__)[:300]
