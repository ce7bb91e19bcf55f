"""Connecting to Ray, and checking that a request can ever be satisfied before Ray waits for it."""

from __future__ import annotations

import os
import signal
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

import ray

from raytrain.errors import UserError

# Bound every wait Ray Train does on our behalf (its defaults retry the controller forever).
WORKER_GROUP_START_TIMEOUT_S = "30"
HEALTH_CHECK_INTERVAL_S = "0.5"
CONTROLLER_FAILURE_LIMIT = 1
_dashboard: str | None = None


def bound_ray_train_waits() -> None:
    """Give worker-group start-up a deadline and quiet per-epoch chatter; set before Ray starts so
    the controller, workers and Ray Data actors inherit it."""
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", WORKER_GROUP_START_TIMEOUT_S)
    # The controller polls its workers this often (default 2 s): a finished run was noticed up to 2 s late.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)
    # Train V2 re-logs every print() through its structured logger, so worker lines showed twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")  # one "Starting execution..." per epoch per split otherwise


@contextmanager
def ray_session(num_cpus: int | None = None):
    """Use the running Ray (tests, Tune trials), the cluster at RAY_ADDRESS, or start an embedded one.

    Only an embedded Ray we started is shut down on exit. Its dashboard binds to 127.0.0.1.
    Workers import user models ("package.module:function") from the launch directory.
    """
    bound_ray_train_waits()
    if ray.is_initialized():
        yield False
        return
    global _dashboard
    started = not os.environ.get("RAY_ADDRESS")
    with ExitStack() as undo:  # unwound in reverse: SIGTERM handler, Ray, PYTHONPATH
        if started:
            # An embedded Ray's processes inherit this environment, so no job runtime_env is needed: with one,
            # no task could use the workers Ray pre-starts (their env differs) and each paid a fresh process.
            undo.enter_context(pythonpath_first(os.getcwd()))
            # address="local": a new embedded Ray, never a `ray start` cluster that happens to be running here.
            ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                           configure_logging=True, logging_level="WARNING")
            undo.callback(ray.shutdown)
        else:
            path = os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)
            runtime_env = {"env_vars": {"PYTHONPATH": path, "RAY_DATA_LOG_LEVEL": os.environ["RAY_DATA_LOG_LEVEL"]}}
            ctx = ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=runtime_env, log_to_driver=True)
        _dashboard = getattr(ctx, "dashboard_url", None)
        previous = signal.signal(signal.SIGTERM, _terminate)  # SIGTERM = Ctrl-C: the same clean shutdown
        undo.callback(signal.signal, signal.SIGTERM, previous)
        yield started


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


def _terminate(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def in_background(fn, *args) -> Future:
    """Run fn(*args) on a thread while the caller goes on (e.g. into ray.init); `.result()` returns or raises."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raytrain-prepare")
    future = pool.submit(fn, *args)
    pool.shutdown(wait=False)
    return future


def dashboard_url() -> str | None:
    """The dashboard of the Ray that `ray_session` connected to (None if it runs without one)."""
    url = _dashboard
    return f"http://{url}" if url and not url.startswith("http") else url


def autoscaling_allowed() -> bool:
    """True when the cluster may grow to meet a request (set RAYTRAIN_AUTOSCALING=1 on autoscaling clusters)."""
    return os.environ.get("RAYTRAIN_AUTOSCALING", "0") == "1"


def check_fits(workers: int, cpus_per_worker: float, use_gpu: bool, extra: dict | None = None) -> None:
    """Refuse (UserError) a worker group the cluster can never hold, instead of letting Ray wait for it."""
    if autoscaling_allowed():
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    need = {"CPU": float(cpus_per_worker), **({"GPU": 1.0} if use_gpu else {}), **(extra or {})}
    total = {k: sum(n["Resources"].get(k, 0.0) for n in nodes) for k in need}
    for key, per_worker in need.items():
        if total[key] < per_worker * workers:
            what = {"CPU": "parallel.workers x parallel.cpus_per_worker", "GPU": "parallel.use_gpu"}.get(key, key)
            raise UserError(f"{what}: {workers} worker(s) need {per_worker * workers:g} {key} but the cluster has "
                            f"{total[key]:g} (set RAYTRAIN_AUTOSCALING=1 if it autoscales)")
    if not any(all(n["Resources"].get(k, 0.0) >= v for k, v in need.items()) for n in nodes):
        raise UserError(f"parallel: no single node has {need} for one worker")

