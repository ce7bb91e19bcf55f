"""Before a run exists: everything that can be refused is refused (storage, data, model, resources) before Ray
is asked to wait for anything and before a run folder exists, and where the run trains is decided.

A single worker trains in the calling process (no Train controller or worker group to start before the first
step: docs/startup.md) when the cluster is one node and the worker needs nothing a Ray-placed process would give
it (a custom resource, a GPU this process cannot see); `parallel.isolate` keeps the worker group for Ray Train's
restarts and process isolation. With one worker, materialised data and no Ray around, no Ray is started at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from raytrain import runtime, storage
from raytrain.callbacks import from_names
from raytrain.config import Experiment
from raytrain.data import prepare as data_mod
from raytrain.errors import UserError
from raytrain.models import check_model
from raytrain.techniques import augment
from raytrain.techniques.pruning import check_supported


@dataclass
class Prepared:
    exp: Experiment
    info: Optional[data_mod.DataInfo]
    source: Any = None  # parquet.StreamSource when streaming
    checked_at: Optional[float] = None  # when imports and checks finished (on their thread, beside ray.init)
    ray_up_at: Optional[float] = None  # when Ray was up


def preflight(exp: Experiment, factory: Optional[Callable] = None) -> Prepared:
    """Storage, data and model checks that need no cluster: bad input fails here, in one line."""
    storage.check_reachable(storage.resolve(exp.output), "output")
    cache = storage.local_cache_root(exp.output) / "data"
    if data_mod.ingest_mode(exp.data) == "stream":
        info, source = data_mod.stream_source(exp.data, exp.seed, cache)
    else:
        info, source = data_mod.prepare(exp.data, exp.seed, cache), None
    check_model_fits(exp, info, factory)
    return Prepared(exp, info, source)


def warm_up() -> None:
    """The first torch.optim constructor imports torch._dynamo (slow): do it on the preflight thread,
    while ray.init waits for its processes, instead of in the in-process worker's model setup."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def check_model_fits(exp: Experiment, info: data_mod.DataInfo, factory: Optional[Callable] = None) -> None:
    from_names(exp.callbacks)  # the YAML's callbacks import and construct, before anything is created
    if info.n_train < exp.parallel.max_workers:
        raise UserError(f"parallel.workers {workers_text(exp.parallel)}: more workers than training examples "
                        f"({info.n_train})")
    m = exp.model
    model = check_model(m.name, info.in_shape, info.num_classes, m.width, m.dropout, factory=factory, kwargs=m.kwargs)
    if exp.pruning.method != "none":
        check_supported(model, exp.pruning.method, torch.zeros(1, *info.in_shape))
    augment.build(exp.data.augment, exp.seed, info.in_shape, torch.device("cpu"))  # images only: refused here
    pp = exp.parallel.pipeline
    if pp.stages > 1:  # more stages than blocks, unknown split names: refused before Ray starts
        from raytrain.parallel import pipeline  # torch.distributed.pipelining: slow imports, pipelines only

        pipeline.split_points(pipeline.sequential_of(model), pp.stages * pipeline.stages_per_rank(pp.schedule), pp.split)
        if exp.per_worker_batch * exp.parallel.dp > info.n_train:
            raise UserError(f"train.batch_size {exp.train.batch_size}: larger than the training set ({info.n_train})")


def _one_local_worker(exp: Experiment) -> bool:
    par = exp.parallel
    return par.max_workers == 1 and par.pipeline.stages == 1 and not par.isolate and not par.worker_resources


def without_ray(exp: Experiment, datasets: Optional[dict] = None) -> bool:
    """Whether the run needs no Ray at all: one worker, materialised data of its own (not the caller's Ray
    Datasets), on this machine (no RAY_ADDRESS, no Ray session already in this process). Such a run reads its
    data into tensors and trains here: Ray's processes, placement group and Ray Data would only add start-up."""
    if datasets is not None or not _one_local_worker(exp) or os.environ.get("RAY_ADDRESS") or runtime.ray_running():
        return False
    return data_mod.ingest_mode(exp.data) == "materialize"


def in_process(exp: Experiment) -> bool:
    """Whether the one worker of a run on Ray can train in this process (see the module docstring)."""
    par = exp.parallel
    if not _one_local_worker(exp):
        return False
    if par.use_gpu and not runtime.one_gpu_for_ray_and_here():
        return False  # Ray places the worker on the GPU it reserves (and sets what the worker sees)
    return not runtime.multi_node()


def check_resources(exp: Experiment, local: bool, info: data_mod.DataInfo, on_ray: bool = True) -> None:
    """Workers (and the CPUs streaming needs beside them) the cluster (or, with no Ray, this machine) can ever
    hold; local output on a multi-node cluster; all before anything is created."""
    par = exp.parallel
    if not on_ray:
        runtime.check_fits_here(par.bundle())
        return
    # an elastic group starts once its minimum fits
    runtime.check_fits(par.min_workers, par.bundle(), exp.data.stream_cpus if info.ingest == "stream" else 0.0,
                       most=par.max_workers)
    if not local:
        runtime.check_shared_output(exp.output, exp.output_shared)


def workers_text(par) -> str:
    return f"{par.min_workers}-{par.max_workers} (elastic)" if par.elastic else str(par.workers)
