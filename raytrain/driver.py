"""Driver side of one experiment: check everything, lay out the run folder, build the datasets, then train
in this process (one worker) or in a Ray Train worker group, and summarise.

The checks, and the choice of where the run trains, are `raytrain.preflight` (imported back here, so
`driver.preflight` and friends go on working).
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import time
from typing import Callable, Iterable, Optional

import torch

from raytrain import checkpoint as ckpt
from raytrain.data import prepare as data_mod
from raytrain import loop, recovery, runtime, storage
from raytrain.config import Experiment
from raytrain.callbacks import Callback, CallbackError
from raytrain.configio import to_yaml
from raytrain.data.ingest import Ingest, build, from_user, steps_per_epoch
from raytrain.errors import Interrupted, UserError
from raytrain.hosts import LocalHost, read_rows
from raytrain.plan import RunPlan
from raytrain.preflight import (  # noqa: F401  (re-exported: driver.preflight, driver.without_ray, ...)
    Prepared, check_model_fits, check_resources, in_process, preflight, warm_up, without_ray, workers_text)
from raytrain.records import RunSummary

log = logging.getLogger("raytrain")


def run(exp: Experiment, resume: Optional[str] = None, launch: Optional[float] = None,
        prepared: Optional[Prepared] = None, factory: Optional[Callable] = None,
        datasets: Optional[dict] = None, ray: str = "embedded", callbacks: Iterable[Callback] = ()) -> RunSummary:
    """Train `exp` (in a new run folder, or continuing `resume`); returns the summary also written to
    result.json. `callbacks` (instances) join the YAML's in the loop of every worker. `launch` is when the user's command started (for time-to-first-step); `prepared` is
    `preflight(exp)` if the caller already ran it; `factory` / `datasets` come from the Python API; `ray` is
    the Ray session the caller holds ("embedded", "cluster", "existing") or "none" (`without_ray`)."""
    launch = launch or time.time()
    on_ray = ray != "none"
    # With no Ray nothing hides torch's compiler imports (the first optimizer pulls them in): they go on a
    # thread while this one reads the data.
    warming = runtime.in_background(warm_up) if not on_ray else None
    marks = {"ray_ready": time.time()}
    run_dir = _resume_dir(resume) if resume is not None else None
    user: Optional[Ingest] = None
    if datasets is not None:
        info, user, decoded = from_user(datasets, exp, exp.seed)
        check_model_fits(exp, info, factory)
        prep = Prepared(exp, info)
    else:
        prep = prepared or preflight(exp, factory)
    marks["data_ready"] = time.time()  # with `prepared`: only what ray.init did not hide
    local = in_process(exp) if on_ray else True
    interrupted: Optional[str] = None
    check_resources(exp, local, prep.info, on_ray)
    if run_dir is None:
        run_dir = storage.new_run_dir(storage.resolve(exp.output), exp.name)
        if user is not None and info.ingest == "materialize":
            exp = keep_data(exp, decoded, run_dir)
    (run_dir / (ckpt.CONFIG if resume is None else f"config.resume-{int(launch)}.yaml")).write_text(to_yaml(exp))
    info = prep.info
    log.info(f"run {run_dir}  ({info.n_train} train / {info.n_val} val / {info.n_test or 'no'} test examples, "
             f"shape {info.in_shape}, {info.num_classes} classes, {workers_text(exp.parallel)} worker(s), "
             f"{'in-process' if local else 'worker group'}, {info.ingest})")
    logged = len(read_rows(run_dir)) if resume is not None else 0  # a resumed run's start-up: its first new row
    # Materialised data for a worker in this process is read here as arrays, on Ray too: Ray Data's blocks, its
    # executor and stats actor would carry it from this process to this process (seconds on a Ray's first run).
    here = (local and info.ingest == "materialize") or not on_ray
    ingest = user or (in_memory(info) if here else build(exp, info, prep.source))
    marks["datasets_ready"] = time.time()
    if warming is not None:
        warming.result()  # a wait here shows in model_setup
    plan = RunPlan(exp.model_dump_json(), info.to_json(), steps_per_epoch(exp, info), ingest.shards,
                   run_dir=run_dir.uri, checkpoints=(run_dir / ckpt.RUN_STORAGE).uri, launch_time=launch,
                   compile_cache=str(storage.local_cache_root(exp.output) / "inductor"),
                   mode="in-process" if local else "worker-group")
    if local:
        try:
            metrics, checkpoint, error = _train_here(exp, plan, ingest, run_dir, factory, marks, on_ray, callbacks)
        except Interrupted as e:
            interrupted = f"{e}; `raytrain train --resume {run_dir.uri}` continues at the next step"
            metrics, checkpoint, error = {"stop_reason": "interrupted"}, None, None
    else:
        from raytrain.worker_group import fit

        metrics, checkpoint, error = fit(exp, plan, ingest, run_dir, factory, list(callbacks))
    rows = read_rows(run_dir)
    first = rows[logged] if len(rows) > logged else {}
    if error is None and not metrics and rows:
        metrics = rows[-1]
    summary = {
        "run_dir": run_dir.uri, "status": _status(error, metrics),
        "error": error, "wall_s": time.time() - launch, "final": metrics, "mode": plan.mode, "ingest": info.ingest,
        "checkpoint": checkpoint or _last_checkpoint(run_dir), "metrics_log": (run_dir / ckpt.METRICS).uri,
        "config": exp.model_dump(mode="json"), "first_step_s": first.get("first_step_s"), "ray": ray,
        "classes": info.classes, **splits_summary(info),
        "startup": startup_breakdown(launch, marks, first, plan.mode, on_ray, arrays=user is None and here),
        "startup_side_by_side": {k: round(t - launch, 2) for k, t in (("ray_init", prep.ray_up_at),
                                 ("imports_and_checks", prep.checked_at)) if t},
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # this process alone
    }
    result = RunSummary(**summary)
    (run_dir / ckpt.RESULT).write_text(json.dumps(result.as_dict(), indent=2, default=str))
    if interrupted:
        raise Interrupted(interrupted)
    return result


def _status(error: Optional[str], final: dict) -> str:
    if error:
        return "failed"
    return final.get("stop_reason", "completed")


def splits_summary(info: data_mod.DataInfo) -> dict:
    """How many examples each split holds and where validation and test come from (a dataset with no test
    set: `examples` None, and `source` says why): every number in a summary names its split (val_* on
    validation, test_* on the test set, read once at the end)."""
    return {"splits": {"train": {"examples": info.n_train},
                       "val": {"examples": info.n_val, "source": info.val_source},
                       "test": {"examples": info.n_test if info.test_path else None, "source": info.test_source}}}


def keep_data(exp: Experiment, decoded: dict, run_dir: storage.Location) -> Experiment:
    """A run trained on the caller's Ray Datasets keeps a Parquet copy of the decoded data in its folder, and
    its config.yaml points there, so `raytrain train --resume` and `export` work on it from the CLI too."""
    data = {}
    for split, ds in decoded.items():
        where = run_dir / "data" / split
        path, fs = where.for_ray()
        # materialised already: a few files of <=256 MiB, not one small write per block (bench/README.md)
        ds.repartition(max(1, -(-ds.size_bytes() // (256 << 20)))).write_parquet(path, filesystem=fs)
        data[split] = where.uri
    return exp.model_copy(update={"data": exp.data.model_copy(update={
        "dataset": "parquet", "path": data["train"], "val_path": data["val"], "test_path": data.get("test"),
        "features": "x", "label": "y",
        "shape": None, "ingest": "materialize"})})


def _resume_dir(resume) -> storage.Location:
    run_dir = storage.resolve(resume, "--resume")
    storage.check_reachable(run_dir, "--resume")
    if not (run_dir / ckpt.RUN_STORAGE).is_dir():
        raise UserError(f"--resume {resume}: not a raytrain run folder (no {ckpt.RUN_STORAGE}/ inside)")
    return run_dir


def in_memory(info: data_mod.DataInfo) -> Ingest:
    """A run whose one worker trains in this process (with or without Ray): the cache's train and val (and test)
    files read into arrays here (pyarrow, no Ray Data)."""
    from raytrain.data.memory import read_cache

    paths = {"train": info.train_path, "val": info.val_path, **({"test": info.test_path} if info.test_path else {})}
    splits = {name: read_cache(path, info.in_shape) for name, path in paths.items()}
    return Ingest(splits, {name: [name] for name in splits})


def _train_here(exp, plan, ingest, run_dir, factory, marks, on_ray=True,
                callbacks: Iterable[Callback] = ()) -> tuple[dict, Optional[str], Optional[str]]:
    """The one worker in this process; a Python error restarts it from the latest checkpoint, up to
    parallel.max_failures times, once the failed attempt is freed; not after a CUDA error that leaves the GPU
    unusable (`raytrain.recovery`; a SIGKILL ends the process: `--resume` continues the run). On Ray its
    resources are held in a placement group while it trains; with no Ray there is nobody to hold them from."""
    device = torch.device("cuda", torch.cuda.current_device()) if exp.parallel.use_gpu else torch.device("cpu")
    host = LocalHost(ingest.datasets, device, run_dir, exp.checkpoint.keep)
    failures = 0
    with runtime.reserve(exp.parallel.bundle()) if on_ray else contextlib.nullcontext():
        marks["worker_entered"] = time.time()
        while True:
            try:
                with runtime.notice_listener():  # SIGTERM: a checkpoint at the next step, then Interrupted
                    loop.run(host, plan, factory, entered=marks["worker_entered"], callbacks=callbacks)
                return {}, None, None
            except (UserError, KeyboardInterrupt, Interrupted):
                raise
            except CallbackError as e:  # the callback would fail again: not restarted
                return {}, None, f"CallbackError: {e}"[:300]
            except Exception as e:
                failures += 1
                reason = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:300]
            broken = recovery.release_attempt(device)  # here, its traceback gone: the failed attempt's memory back
            if broken is not None:
                return {}, None, recovery.not_restarted(reason, broken, run_dir.uri)
            if failures > exp.parallel.max_failures:
                return {}, None, reason
            log.warning(f"training failed ({reason}); restart {failures}/{exp.parallel.max_failures} from the "
                        "latest checkpoint")


def startup_breakdown(launch: float, marks: dict, first_row: dict, mode: str, on_ray: bool, arrays: bool) -> dict:
    """Seconds spent in each start-up phase, from the command's start to the first finished step. With no
    Ray the phases are imports, data, reading it into memory, and the model; `arrays`: the data went into
    memory as arrays (no Ray Datasets), as it does for every worker in the calling process."""
    at = {"launch": 0.0, **{k: v - launch for k, v in marks.items()}}
    for key in ("worker_entered", "model_ready"):
        if f"startup_{key}_s" in first_row:
            at[key] = first_row[f"startup_{key}_s"]
    if "first_step_s" in first_row:
        at["first_step"] = first_row["first_step_s"]
    start = "train_controller_and_worker_group" if mode == "worker-group" else "reserve_resources"
    phases = [("imports_and_ray_init" if on_ray else "imports", "launch", "ray_ready"),
              ("data_prepare", "ray_ready", "data_ready"),
              ("data_into_memory" if arrays else "datasets_materialize", "data_ready", "datasets_ready"),
              *([(start, "datasets_ready", "worker_entered")] if on_ray else []),
              ("model_setup", "worker_entered" if on_ray else "datasets_ready", "model_ready"), ("first_batch_and_step", "model_ready", "first_step")]
    return {name: round(at[b] - at[a], 2) for name, a, b in phases if a in at and b in at}


def _last_checkpoint(run_dir: storage.Location) -> Optional[str]:
    cps = ckpt.checkpoint_dirs(run_dir / ckpt.RUN_STORAGE)
    return cps[0].uri if cps else None
