"""Where the per-worker loop runs, and the only module of it that knows Ray Train or Tune.

The loop (`raytrain.loop`) asks its host for: rank and world, the device, a dataset by name, the
checkpoint to resume from (the one Ray or Tune registered, plus the storage to list older ones in),
and `report(metrics, files)`. Three hosts:
  * TrainHost  - a Ray Train worker (worker groups: DDP, pipelines, `parallel.isolate`); Ray Train
                 persists checkpoints to the run's storage and restarts the group on failure;
  * TuneHost   - a Tune trial process training its one worker itself; Tune persists checkpoints;
  * LocalHost  - the calling process, one worker; raytrain persists checkpoints itself (Ray Train's
                 local mode persists none and would leave a process-global train context behind).
"""

from __future__ import annotations

import json
import tempfile
import time
from typing import Optional

import torch

from raytrain import _ray_compat
from raytrain import checkpoint as ckpt
from raytrain import storage
from raytrain.notice import GRACE_S, Notice
from raytrain.plan import RunPlan
from raytrain.storage import Location


class Host:
    rank = 0
    world = 1
    device = torch.device("cpu")
    notice_stops = True  # after the notice's checkpoint: stop (this process is going away) or train on

    def shard(self, name: str):
        raise NotImplementedError

    def registered(self) -> Optional[Location]:
        """The checkpoint Ray/Tune registered for this run or trial (None: none, or not tracked)."""
        return None

    def checkpoints(self) -> Optional[Location]:
        """The folder holding this run's checkpoint_* (listed for older ones)."""
        return None

    def notice(self, step: int) -> Optional[Notice]:
        """Why this worker must checkpoint now (a drained node, SIGTERM), or None. Called at every step
        boundary, on every rank, until one comes (a host whose check is a collective runs it on the same steps
        everywhere)."""
        return None

    def report(self, metrics: dict, files: Optional[dict[str, bytes]]) -> Optional[str]:
        """Write the row (and the checkpoint `files`, if any); returns the checkpoint's URI where this host
        knows it (rank 0 of a worker group, an in-process run), else None."""
        raise NotImplementedError

    def metrics_log(self) -> Optional["MetricsLog"]:
        """The run's metrics.jsonl where this host appends rows (rank 0 of a run), else None (Tune keeps a
        trial's)."""
        return None


def _directory(files: dict[str, bytes]) -> tempfile.TemporaryDirectory:
    d = tempfile.TemporaryDirectory(prefix="raytrain-ckpt-")
    ckpt.write_files(d.name, files)
    return d


class TrainHost(Host):
    notice_stops = False  # a drained node: checkpoint now, train on while a step fits, then wait for Ray Train
    # to restart the group at the deadline (`raytrain.notice`: a worker function that returned would end the run)

    def __init__(self, plan: RunPlan):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.plan = plan
        self.log: Optional[MetricsLog] = None
        self.every = plan.exp().checkpoint.notice_every_steps

    def shard(self, name: str):
        import ray.train

        return ray.train.get_dataset_shard(name)

    def notice(self, step: int) -> Optional[Notice]:
        """Ray Train's preemption notice (a node of the group being drained, with a deadline or none), asked
        every `checkpoint.notice_every_steps` steps: the call is a barrier across the group's workers. Ray Train
        restarts the group at the deadline (without one, its default wait after the drain was seen), plus the
        grace raytrain gives it."""
        if step % self.every != 0:
            return None
        info = _ray_compat.preemption_info()
        if info is None:
            return None
        deadline = info.deadline_ms / 1000 if info.deadline_ms else None
        restart = deadline if deadline is not None else time.time() + _ray_compat.preemption_default_wait_s()
        return Notice(f"node {', '.join(n[:8] for n in info.preempted_node_ids)} drained", deadline, restart + GRACE_S)

    def registered(self) -> Optional[Location]:
        """Ray Train's latest registered checkpoint, as a folder of this run's checkpoint storage (so its URI
        keeps the run's scheme and options)."""
        import ray.train

        cp = ray.train.get_checkpoint()
        if cp is None:
            return None
        return ckpt.in_storage(self.checkpoints(), cp)

    def checkpoints(self) -> Optional[Location]:
        return storage.resolve(self.plan.checkpoints) if self.plan.checkpoints else None

    def metrics_log(self) -> Optional["MetricsLog"]:
        if self.rank == 0 and self.plan.run_dir and self.log is None:
            self.log = MetricsLog(storage.resolve(self.plan.run_dir) / ckpt.METRICS)
        return self.log

    def report(self, metrics: dict, files: Optional[dict[str, bytes]]) -> Optional[str]:
        """Ray Train persists the checkpoint (under rank 0's folder name, shared by every rank's shard), then
        rank 0 logs the row: a report the controller had not polled when a worker died would lose it."""
        import ray.train

        name = ckpt.new_dir_name() if self.rank == 0 else None
        if not files:
            ray.train.report(metrics)
        else:
            with _directory(files) as d:
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=name)
        log, where = self.metrics_log(), None
        if log is not None:
            row = dict(metrics)
            if files:
                row["checkpoint"] = where = (self.checkpoints() / name).uri
            log.append(row)
        if self.world > 1:  # rank 0's checkpoint upload ends before any rank's next NCCL collective waits on it
            from ray.train.collective import barrier

            barrier()
        return where


class TuneHost(Host):
    def __init__(self, datasets: dict, device: torch.device):
        self.datasets, self.device = datasets, device

    def shard(self, name: str):
        return self.datasets[name]

    def registered(self) -> Optional[Location]:
        from ray import tune

        cp = tune.get_checkpoint()
        return storage.from_fs(cp.filesystem, cp.path) if cp is not None else None

    def report(self, metrics: dict, files: Optional[dict[str, bytes]]) -> Optional[str]:
        from ray import tune

        if not files:
            tune.report(metrics)
            return None
        with _directory(files) as d:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        return None  # Tune persists it under a name of its own


class LocalHost(Host):
    """One worker in the calling process. Each checkpoint goes straight to the run's storage: state
    first, its checksum last (a crash mid-write leaves a folder that fails verification and is skipped),
    then the metrics row that names it; only the newest `keep` are kept."""

    def __init__(self, datasets: dict, device: torch.device, run: Location, keep: int):
        self.datasets, self.device, self.keep = datasets, device, keep
        self.storage = run / ckpt.RUN_STORAGE
        self.log = MetricsLog(run / ckpt.METRICS)

    def shard(self, name: str):
        return self.datasets[name]

    def checkpoints(self) -> Optional[Location]:
        return self.storage

    def metrics_log(self) -> Optional["MetricsLog"]:
        return self.log

    def notice(self, step: int) -> Optional[Notice]:
        """SIGTERM (Kubernetes, `ray job stop`) while training: checkpoint at this step and stop."""
        from raytrain.runtime import notice

        reason = notice()
        return Notice(reason) if reason else None

    def report(self, metrics: dict, files: Optional[dict[str, bytes]]) -> Optional[str]:
        row = dict(metrics)
        if files:
            target = self.storage / ckpt.new_dir_name()
            ckpt.write_files(target, files)
            row["checkpoint"] = target.uri
            folders = ckpt.checkpoint_dirs(self.storage)
            done = [d for d in folders if ckpt.complete(d)]
            for old in [d for d in folders if d not in done] + done[self.keep:]:  # cut-short copies go first
                old.delete_dir()
        self.log.append(row)
        return row.get("checkpoint")


class MetricsLog:
    """metrics.jsonl: one JSON row per report. Every write replaces the whole file with one complete
    object (object stores have no append; locally a temp file + rename), so a reader never sees a torn row."""

    def __init__(self, loc: Location):
        self.loc = loc
        self.lines = loc.read_text().splitlines() if loc.exists() else []

    def rows(self) -> list[dict]:
        return [json.loads(line) for line in self.lines if line.strip()]

    def append(self, row: dict) -> None:
        self.lines.append(json.dumps(row, default=str))
        self.loc.write_text("\n".join(self.lines) + "\n")


def read_rows(run: Location, steps: bool = False) -> list[dict]:
    """A run's metrics.jsonl rows: one per epoch (and per rung probe); `steps` adds the rows of checkpoints
    taken inside an epoch (`step_checkpoint`)."""
    rows = MetricsLog(run / ckpt.METRICS).rows()
    return rows if steps else [r for r in rows if not r.get("step_checkpoint")]
