"""Driver side of one experiment: prepare data, check it can run, build the TorchTrainer, fit, summarise.

Everything that can be refused is refused here, before Ray is asked to wait for anything.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import pyarrow.parquet as pq
import ray
import ray.data
import torch
from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchConfig, TorchTrainer

from raytrain import data as data_mod
from raytrain.config import Experiment, to_yaml
from raytrain.errors import UserError
from raytrain.models import check_model
from raytrain.runtime import CONTROLLER_FAILURE_LIMIT, check_fits
from raytrain.techniques.pruning import check_supported
from raytrain.worker import train_loop_per_worker

RAY_RUN_NAME = "train"  # Ray Train's storage folder inside a run dir: <run_dir>/train/checkpoint_*
COLLECTIVE_TIMEOUT_S = 120  # a rank that dies mid-collective fails the group within this, never hangs it


@dataclass
class Prepared:
    exp: Experiment
    info: data_mod.DataInfo


def new_run_dir(exp: Experiment) -> Path:
    """<output>/<name>/<timestamp>[-k]/, created exclusively: never another run's folder."""
    base = Path(exp.output) / exp.name
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        cand = base / (stamp if k == 0 else f"{stamp}-{k}")
        try:
            cand.mkdir(parents=True, exist_ok=False)
            return cand.resolve()
        except FileExistsError:
            continue
    raise UserError(f"output: cannot create a new run folder under {base}")


def preflight(exp: Experiment) -> Prepared:
    """Data and model checks that need no cluster: bad input fails here, in one line."""
    info = data_mod.prepare(exp.data, exp.seed, Path(exp.output) / ".cache" / "data")
    if info.n_train < exp.parallel.workers:
        raise UserError(f"parallel.workers {exp.parallel.workers}: more workers than training examples ({info.n_train})")
    model = check_model(exp.model.name, info.in_shape, info.num_classes, exp.model.width, exp.model.dropout)
    if exp.pruning.method != "none":
        check_supported(model, exp.pruning.method, torch.zeros(1, *info.in_shape))
    pp = exp.parallel.pipeline
    if pp.stages > 1:  # more stages than blocks, unknown split names: refused before Ray starts
        from raytrain.parallel import pipeline  # torch.distributed.pipelining: ~0.9 s of imports, pipelines only

        pipeline.split_points(pipeline.sequential_of(model), pp.stages * pipeline.stages_per_rank(pp.schedule), pp.split)
        if exp.per_worker_batch * exp.parallel.dp > info.n_train:
            raise UserError(f"train.batch_size {exp.train.batch_size}: larger than the training set ({info.n_train})")
    return Prepared(exp, info)


class MetricsLog(UserCallback):
    """Appends every report (epoch metrics, checkpoint path) to <run_dir>/metrics.jsonl as it happens."""

    def __init__(self, path: str):
        self.path = path

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        row = dict(metrics[0])
        if checkpoint is not None:
            row["checkpoint"] = checkpoint.path
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def build_trainer(prep: Prepared, run_dir: Path, launch_time: float, callbacks: Optional[list] = None) -> TorchTrainer:
    exp, info = prep.exp, prep.info
    par = exp.parallel
    # Read on the driver and hand Ray Data the Arrow tables (`from_arrow` is already materialised):
    # on a 2-CPU node the workers hold every CPU, so nothing of Ray Data may need one while training
    # runs; and unlike read_parquet(...).materialize() no read task (a fresh worker process) is started,
    # which took 4 of the 22 s before the first step.
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = ctx.enable_operator_progress_bars = False  # per-epoch lines are the progress
    tables = {name: pq.read_table(path) for name, path in (("train", info.train_path), ("val", info.val_path))}
    if par.pipeline.stages == 1:
        # One dataset per rank, cut here, instead of Train's streaming_split: a split starts a coordinator
        # actor and a fresh execution every epoch (3 of the 19 s before the first step; ~1.5 s of a
        # 10 s MNIST epoch). Equal parts, like streaming_split(equal=True): DDP ranks must take
        # the same number of steps. Each rank still shuffles its part every epoch.
        datasets = {shard_name(name, rank): ray.data.from_arrow(_blocks(part))
                    for name, table in tables.items() for rank, part in enumerate(_equal_parts(table, par.workers))}
    else:
        # Pipelines: every worker sees the whole dataset and each group's first stage picks its batches
        # (raytrain.worker_pipeline); a split would hand shards to stages that never read them.
        datasets = {name: ray.data.from_arrow(_blocks(table)) for name, table in tables.items()}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": exp.model_dump(mode="json"), "data": info.to_json(), "launch_time": launch_time,
                           "compile_cache": str(Path(exp.output).resolve() / ".cache" / "inductor")},
        torch_config=TorchConfig(backend="nccl" if par.use_gpu else "gloo", timeout_s=COLLECTIVE_TIMEOUT_S),
        scaling_config=ScalingConfig(num_workers=par.workers, use_gpu=par.use_gpu,
                                     resources_per_worker={"CPU": par.cpus_per_worker, **par.worker_resources}),
        run_config=RunConfig(
            name=RAY_RUN_NAME, storage_path=str(run_dir),
            checkpoint_config=CheckpointConfig(num_to_keep=exp.checkpoint.keep),
            failure_config=FailureConfig(max_failures=par.max_failures, controller_failure_limit=CONTROLLER_FAILURE_LIMIT),
            logging_config=LoggingConfig(log_level="WARNING"),  # our epoch lines, not per-report INFO chatter
            callbacks=[MetricsLog(str(run_dir / "metrics.jsonl"))] + list(callbacks or []),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[]),  # split above; each worker iterates its own in-process
    )


def shard_name(split: str, rank: int) -> str:
    """The dataset a data-parallel rank reads for `split` ("train" / "val")."""
    return f"{split}_{rank}"


def _equal_parts(table, n: int) -> list:
    """`n` consecutive slices of `rows // n` rows each (the remainder is dropped, as streaming_split(equal=True) does)."""
    size = table.num_rows // n
    return [table.slice(i * size, size) for i in range(n)]


def _blocks(table, rows_per_block: int = 8192, min_blocks: int = 8) -> list:
    """Several blocks, not one: the iterator formats one block while the model trains on the last
    (and a pipeline group's first stage reads whole blocks)."""
    n = max(min_blocks, -(-table.num_rows // rows_per_block))
    step = max(1, -(-table.num_rows // n))
    return [table.slice(i, step) for i in range(0, max(table.num_rows, 1), step)]


def run(exp: Experiment, resume: Optional[Path] = None, launch: Optional[float] = None,
        prepared: Optional[Prepared] = None) -> dict[str, Any]:
    """Train `exp` (in a new run dir, or continuing `resume`); returns the summary also written to result.json.

    `launch` is when the user's command started (default: now), for the time-to-first-step figure;
    `prepared` is `preflight(exp)` if the caller already ran it (the CLI does, while Ray starts)."""
    launch = launch or time.time()
    if resume is not None:
        run_dir = resume.resolve()
        if not (run_dir / RAY_RUN_NAME).is_dir():
            raise UserError(f"--resume {resume}: not a raytrain run folder (no {RAY_RUN_NAME}/ inside)")
    marks = {"ray_ready": time.time()}
    prep = prepared or preflight(exp)
    marks["data_ready"] = time.time()  # with `prepared`: only what ray.init did not hide
    check_fits(exp.parallel.workers, exp.parallel.cpus_per_worker, exp.parallel.use_gpu, exp.parallel.worker_resources)
    if resume is None:
        run_dir = new_run_dir(exp)
    (run_dir / ("config.yaml" if resume is None else f"config.resume-{int(launch)}.yaml")).write_text(to_yaml(exp))
    print(f"[raytrain] run {run_dir}  ({prep.info.n_train} train / {prep.info.n_val} val examples, "
          f"shape {prep.info.in_shape}, {prep.info.num_classes} classes, {exp.parallel.workers} worker(s))", flush=True)
    trainer = build_trainer(prep, run_dir, launch)
    marks["datasets_ready"] = time.time()
    error = None
    try:
        result = trainer.fit()
        metrics, checkpoint = dict(result.metrics or {}), result.checkpoint
    except ray.train.TrainingFailedError as e:
        error, metrics, checkpoint = root_cause(e), _last_metrics(run_dir), None
    summary = {
        "run_dir": str(run_dir), "status": "failed" if error else metrics.get("stop_reason", "completed"),
        "error": error, "wall_s": time.time() - launch, "final": metrics,
        "checkpoint": checkpoint.path if checkpoint else _last_checkpoint(run_dir),
        "metrics_log": str(run_dir / "metrics.jsonl"), "config": exp.model_dump(mode="json"),
        "first_step_s": _first_row(run_dir).get("first_step_s"),
        "startup": startup_breakdown(launch, marks, _first_row(run_dir)),
    }
    (run_dir / "result.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def startup_breakdown(launch: float, marks: dict, first_row: dict) -> dict:
    """Seconds spent in each start-up phase, from the command's start to the first finished step."""
    at = {"launch": 0.0, **{k: v - launch for k, v in marks.items()}}
    for key in ("worker_entered", "model_ready"):
        if f"startup_{key}_s" in first_row:
            at[key] = first_row[f"startup_{key}_s"]
    if "first_step_s" in first_row:
        at["first_step"] = first_row["first_step_s"]
    phases = [("imports_and_ray_init", "launch", "ray_ready"), ("data_prepare", "ray_ready", "data_ready"),
              ("datasets_materialize", "data_ready", "datasets_ready"),
              ("train_controller_and_worker_group", "datasets_ready", "worker_entered"),
              ("model_setup", "worker_entered", "model_ready"), ("first_batch_and_step", "model_ready", "first_step")]
    return {name: round(at[b] - at[a], 2) for name, a, b in phases if a in at and b in at}


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


def _rows(run_dir: Path) -> list[str]:
    log = run_dir / "metrics.jsonl"
    return log.read_text().splitlines() if log.is_file() else []


def _last_metrics(run_dir: Path) -> dict:
    rows = _rows(run_dir)
    return json.loads(rows[-1]) if rows else {}


def _first_row(run_dir: Path) -> dict:
    rows = _rows(run_dir)
    return json.loads(rows[0]) if rows else {}


def _last_checkpoint(run_dir: Path) -> Optional[str]:
    cps = sorted(d for d in (run_dir / RAY_RUN_NAME).glob("checkpoint_*") if d.is_dir())
    return str(cps[-1]) if cps else None
