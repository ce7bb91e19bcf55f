"""Connecting to Ray, and checking that a request can ever be satisfied before Ray waits for it."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Optional

from raytrain import _ray_compat
from raytrain.errors import UserError

CONTROLLER_FAILURE_LIMIT = 1
RESERVE_TIMEOUT_S = 60.0


@contextmanager
def scoped_env(values: dict):
    """Set these environment variables (where unset) inside, as they were afterwards."""
    before = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ray_env() -> dict:
    """What every Ray process of ours must inherit: bounded Ray Train waits, quiet Ray Data (as this process has
    them where set: --verbose's), and the call's verbosity."""
    keys = [*_ray_compat.ENV, *_ray_compat.VERBOSE_ENV, "RAYTRAIN_VERBOSE"]
    return {**_ray_compat.ENV, **{k: os.environ[k] for k in keys if k in os.environ}}


@contextmanager
def ray_session(num_cpus: int | None = None, dashboard: bool = True):
    """Use the running Ray (a notebook's, tests', a Tune trial's), the cluster at RAY_ADDRESS, or start an
    embedded one. Only an embedded Ray started here is shut down on exit; the environment variables it
    needed and PYTHONPATH are put back. Its dashboard binds to 127.0.0.1. Yields "existing", "cluster"
    or "embedded"."""
    import ray

    with ExitStack() as undo:  # unwound in reverse: SIGTERM handler, Ray, PYTHONPATH, env
        undo.enter_context(scoped_env(ray_env()))
        if ray.is_initialized():
            yield "existing"
            return
        undo.enter_context(logger_state("ray"))  # ray.init(configure_logging=...) reconfigures it
        if not os.environ.get("RAY_ADDRESS"):
            # An embedded Ray's processes inherit this environment, so no job runtime_env is needed: with one,
            # no task could use the workers Ray pre-starts (their env differs) and each paid a fresh process.
            undo.enter_context(pythonpath_first(os.getcwd()))
            # address="local": a new embedded Ray, never a `ray start` cluster that happens to be running here.
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                           configure_logging=True, logging_level="WARNING")
            kind = "embedded"
        else:
            path = os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True,
                           runtime_env={"env_vars": {"PYTHONPATH": path, **ray_env()}})
            kind = "cluster"
        undo.callback(ray.shutdown)
        undo.enter_context(sigterm_as_interrupt())
        yield kind


def ray_running() -> bool:
    """Whether this process already has a Ray session (a notebook's, a test's, a Tune trial's), without
    importing Ray to find out."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (what Kubernetes and `ray job stop` send) handled like Ctrl-C: the same clean shutdown. The
    handler as it was, afterwards; off the main thread (where signals cannot be handled) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def preserved():
    """The process's environment and SIGTERM handler as they were, afterwards: `ray.init` sets variables
    (RAY_AUTH_MODE, PYTHONBREAKPOINT, ...) and a signal handler, and libraries imported along the way (torch's
    compiler, scikit-learn) set their own. The Python API promises the caller's process back unchanged."""
    env = dict(os.environ)
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        for key in [k for k in os.environ if k not in env]:
            del os.environ[key]
        os.environ.update(env)
        if main:
            signal.signal(signal.SIGTERM, handler)


@contextmanager
def logger_state(name: str):
    """A logger's level, handlers and propagation as they were, afterwards."""
    lg = logging.getLogger(name)
    level, handlers, propagate = lg.level, list(lg.handlers), lg.propagate
    try:
        yield
    finally:
        lg.setLevel(level)
        lg.handlers[:] = handlers
        lg.propagate = propagate


@contextmanager
def pythonpath_first(*paths: str):
    """`paths` first on this process's PYTHONPATH while inside (an embedded Ray's processes inherit it);
    the variable as it was afterwards."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [*paths, before] if p)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


_NOTICE = {"listening": False, "reason": None}  # signals are per process: so is what one asked for


def _terminate(signum, frame):
    """While a loop is listening (`notice_listener`), the first SIGTERM asks it to checkpoint at its next step
    and stop; otherwise (or a second one) it interrupts at once, like Ctrl-C."""
    if _NOTICE["listening"] and _NOTICE["reason"] is None:
        _NOTICE["reason"] = "SIGTERM"
        return
    raise KeyboardInterrupt("SIGTERM")


@contextmanager
def notice_listener():
    """Around an in-process training loop: SIGTERM becomes a notice it reads at each step (`notice()`)."""
    _NOTICE.update(listening=True, reason=None)
    try:
        yield
    finally:
        _NOTICE.update(listening=False, reason=None)


def notice() -> Optional[str]:
    """Why this process was asked to stop (e.g. "SIGTERM"), or None."""
    return _NOTICE["reason"]


def in_background(fn, *args) -> Future:
    """Run fn(*args) on a thread while the caller goes on (e.g. into ray.init); `.result()` returns or raises."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raytrain-prepare")
    future = pool.submit(fn, *args)
    pool.shutdown(wait=False)
    return future


def dashboard_url() -> str | None:
    """The dashboard of the Ray this process is connected to now (None: no Ray, or one without a dashboard).
    Asked of Ray each time, not remembered: a notebook's Ray may change between calls."""
    url = _ray_compat.dashboard_address()
    return f"http://{url}" if url and not url.startswith("http") else url


def autoscaling_allowed() -> bool:
    """True when the cluster may grow to meet a request (set RAYTRAIN_AUTOSCALING=1 on autoscaling clusters)."""
    return os.environ.get("RAYTRAIN_AUTOSCALING", "0") == "1"


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def one_gpu_for_ray_and_here() -> bool:
    """Whether a one-GPU worker can train in this process: Ray's inventory holds exactly one GPU and this
    process sees exactly one, so the GPU Ray reserves for the worker is the one it would train on. Otherwise
    (several GPUs on either side, a Ray started with another set of devices) only a Ray-placed worker knows
    which device Ray gave it."""
    import torch

    return same_single_gpu(torch.cuda.device_count(), sum(n["Resources"].get("GPU", 0.0) for n in alive_nodes()))


def same_single_gpu(visible_here: int, ray_gpus: float) -> bool:
    return visible_here == 1 and ray_gpus == 1


def multi_node() -> bool:
    """More than one node now, or a cluster that may add nodes."""
    return autoscaling_allowed() or len(alive_nodes()) > 1


def check_shared_output(output: str, declared_shared: bool) -> None:
    """Refuse a local `output` on a multi-node (or autoscaling) cluster: each node has its own disk, so
    checkpoints and trials' results would scatter."""
    from raytrain.storage import is_uri

    if not is_uri(output) and not declared_shared and multi_node():
        raise UserError(f"output {output}: a local path on a multi-node cluster (each node has its own disk); use "
                        "s3://... or gs://..., or a path every node mounts with output_shared: true")


KEYS = {"CPU": "parallel.workers x parallel.cpus_per_worker", "GPU": "parallel.use_gpu"}


def needed(workers: int, bundle: dict[str, float], extra_cpus: float = 0.0) -> dict[str, float]:
    """What `workers` x `bundle` hold together, plus `extra_cpus` for Ray Data's reads."""
    return {k: v * workers + (extra_cpus if k == "CPU" else 0.0) for k, v in bundle.items()}


def check_fits(workers: int, bundle: dict[str, float], extra_cpus: float = 0.0, keys: dict | None = None,
               most: Optional[int] = None) -> None:
    """Refuse (UserError) `workers` x `bundle` (plus `extra_cpus` for Ray Data) when the cluster can never
    hold them, instead of letting Ray wait for it. An elastic group (`workers` its minimum, `most` its maximum)
    needs only its minimum; a cluster that holds fewer than `most` now is said in one line (it grows as nodes join)."""
    if autoscaling_allowed():
        return
    keys = keys or KEYS
    nodes = alive_nodes()
    total = {k: sum(n["Resources"].get(k, 0.0) for n in nodes) for k in bundle}
    least = " (the minimum of parallel.workers)" if most and most > workers else ""
    for key, need in needed(workers, bundle, extra_cpus).items():
        per_worker = bundle[key]
        if total[key] < need - 1e-9:
            what = keys.get(key, key)
            more = f" + {extra_cpus:g} for Ray Data (data.stream_cpus)" if key == "CPU" and extra_cpus else ""
            raise UserError(f"{what}: {workers} worker(s){least} need {per_worker * workers:g} {key}{more} but the "
                            f"cluster has {total[key]:g} (set RAYTRAIN_AUTOSCALING=1 if it autoscales)")
    if not any(all(n["Resources"].get(k, 0.0) >= v for k, v in bundle.items()) for n in nodes):
        raise UserError(f"parallel: no single node has {bundle} for one worker")
    if least:
        extra = {k: extra_cpus if k == "CPU" else 0.0 for k in bundle}
        now = min(int((total[k] - extra[k]) / v + 1e-9) for k, v in bundle.items() if v > 0)
        if now < most:
            logging.getLogger("raytrain").info(
                f"parallel.workers [{workers}, {most}]: the cluster holds {now} worker(s) now; the group starts with "
                f"what fits and grows as nodes join (every parallel.resize_check_s)")


def check_fits_here(bundle: dict[str, float]) -> None:
    """The one worker of a run with no Ray against this machine: the CPUs this process may use, its GPUs."""
    import torch

    have = {"CPU": float(len(os.sched_getaffinity(0))), "GPU": float(torch.cuda.device_count())}
    for key, need in bundle.items():
        if have.get(key, 0.0) < need - 1e-9:
            raise UserError(f"{KEYS.get(key, key)}: 1 worker needs {need:g} {key} but this machine has {have.get(key, 0.0):g}")


@contextmanager
def reserve(bundle: dict[str, float]):
    """Hold one worker's resources in a placement group while this process trains in-process, so Ray
    schedules nothing else onto them (a bounded wait when the cluster is busy)."""
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group([bundle], strategy="STRICT_PACK")
    t0 = time.monotonic()
    ready = pg.wait(timeout_seconds=RESERVE_TIMEOUT_S)
    if not ready:
        remove_placement_group(pg)
        raise UserError(f"parallel: waited {time.monotonic() - t0:.0f} s for {bundle} on the cluster; it is busy "
                        "with other work (retry later, or set parallel.isolate: true to queue in Ray Train)")
    try:
        yield pg
    finally:
        remove_placement_group(pg)
