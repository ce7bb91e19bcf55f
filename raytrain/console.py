"""raytrain's console lines go through the `raytrain` logger; this gives it a `[raytrain] ...` handler
on stdout while a command or API call runs (and in worker processes), and takes it away afterwards.

Quiet by default: Ray's, Ray Data's and Tune's own lines that a user cannot act on are turned off where they
come from (logger levels, Ray Data's settings, Tune's verbosity; `_ray_compat` names each), and what Ray
forwards from its processes passes `Forwarded` on its way to the driver's console: errors still show, a
traceback as its one last line. `verbose` (`raytrain -v`, `train(..., verbose=True)`) shows everything as
Ray prints it. Ray's processes started for the call inherit the setting through RAYTRAIN_VERBOSE.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from contextlib import ExitStack, contextmanager
from typing import Optional

from raytrain import _ray_compat

LOGGER = logging.getLogger("raytrain")
_FORMAT = "[raytrain] %(message)s"
VERBOSE_ENV = "RAYTRAIN_VERBOSE"


def is_verbose() -> bool:
    """Everything Ray, Ray Data and Tune print, as they print it (set for the call by `attached`)."""
    return os.environ.get(VERBOSE_ENV) == "1"


def shown(where: str) -> str:
    """A path under the working directory as a relative one (shorter lines, commands that paste as they are)."""
    if "://" in where or not os.path.isabs(where):
        return where
    rel = os.path.relpath(where)
    return where if rel.startswith("..") else rel


def _handler() -> logging.Handler:
    h = logging.StreamHandler(sys.stdout)
    h.setFormatter(logging.Formatter(_FORMAT))
    h.set_name("raytrain-console")
    return h


def attach(level: int = logging.INFO) -> None:
    """A process-lifetime handler (worker and trial processes are Ray's, one per task); Ray Data's lines
    that say nothing to act on are turned off in this process unless verbose."""
    if not any(h.get_name() == "raytrain-console" for h in LOGGER.handlers):
        LOGGER.addHandler(_handler())
    LOGGER.setLevel(level)
    LOGGER.propagate = False
    if not is_verbose():
        quiet_process()


def quiet_process() -> None:
    """In a Ray worker or trial process: Ray Data's per-execution INFO lines and its progress-bar notice off
    (a notebook's own Ray starts its workers without raytrain's RAY_DATA_LOG_LEVEL)."""
    import ray.data  # noqa: F401  (its logging is configured on import: set the levels after that)

    data = logging.getLogger("ray.data")
    data.setLevel(max(data.getEffectiveLevel(), logging.WARNING))
    logging.getLogger(_ray_compat.DATA_PROGRESS_LOGGER).setLevel(logging.ERROR)


@contextmanager
def attached(verbose: Optional[bool] = None, ray: bool = True):
    """The handler for the duration of a call, and the call's verbosity (None: as RAYTRAIN_VERBOSE says);
    the logger, loggers quieted and environment are left as they were found. `ray=False`: a call that uses no
    Ray (nothing of Ray's to quiet, and Ray is not imported to do it)."""
    chosen = is_verbose() if verbose is None else verbose
    with ExitStack() as undo:
        undo.enter_context(_env({VERBOSE_ENV: "1" if chosen else "0",
                                 **(_ray_compat.VERBOSE_ENV if chosen else _ray_compat.QUIET_ENV)}))
        if not chosen and ray:
            undo.enter_context(_quiet_driver())
        if not any(h.get_name() == "raytrain-console" for h in LOGGER.handlers):
            level, propagate, h = LOGGER.level, LOGGER.propagate, _handler()
            LOGGER.addHandler(h)
            LOGGER.setLevel(logging.INFO)
            LOGGER.propagate = False
            undo.callback(LOGGER.removeHandler, h)
            undo.callback(LOGGER.setLevel, level)
            undo.callback(setattr, LOGGER, "propagate", propagate)
        yield


@contextmanager
def _env(values: dict):
    """RAYTRAIN_VERBOSE set; the others where unset (a user's own RAY_DATA_LOG_LEVEL wins); as before afterwards."""
    before = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if k == VERBOSE_ENV:
            os.environ[k] = v
        else:
            os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _quiet_driver():
    """This process's Ray loggers that say nothing to act on, raised while inside; what Ray forwards from
    its processes through `Forwarded`."""
    names = {_ray_compat.AUTH_TOKEN_LOGGER: logging.ERROR, _ray_compat.DATA_PROGRESS_LOGGER: logging.ERROR}
    if "ray.data" in sys.modules:  # already configured (a notebook): its INFO lines stay in its log file
        names["ray.data"] = max(logging.getLogger("ray.data").getEffectiveLevel(), logging.WARNING)
    before = {n: logging.getLogger(n).level for n in names}
    for n, level in names.items():
        logging.getLogger(n).setLevel(level)
    tune, said = logging.getLogger(_ray_compat.TUNE_INCOMPLETE[0]), _ray_compat.TUNE_INCOMPLETE[1]
    drop = _Drop(said)
    tune.addFilter(drop)
    try:
        with _ray_compat.forwarded_lines(Forwarded()):
            yield
    finally:
        tune.removeFilter(drop)
        for n, level in before.items():
            logging.getLogger(n).setLevel(level)


class _Drop(logging.Filter):
    """Drops a logger's records whose message starts with `start`."""

    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


# Ray core's own C++ log lines: "[2026-12-03 05:03:51,713 E 6917 6955] core_worker.cc:2465: ..."
_CORE_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,.]+ ([DIWEF]) \d+ \d+\] [\w./-]+\.(?:cc|h):\d+: (.*)$")
_THREAD = re.compile(r"^(Exception in thread [^ ]+|Error in training function):$")  # what a traceback ended
_TRACEBACK_BODY = ("During handling of the above exception", "The above exception was the direct cause")


class Forwarded:
    """What reaches the driver's console of the lines Ray forwards from its processes, in quiet mode: Ray
    core's C++ diagnostics only at error level (less those `_ray_compat.HARMLESS_CORE_ERRORS` names); a
    traceback as its last line (the exception, after "Exception in thread X:" or Train's "Error in training
    function:" where one was printed);
    everything else as printed (raytrain's own lines, the user's prints, warnings)."""

    def __init__(self):
        self.in_traceback: dict = {}  # pid -> prefix for its exception line, while inside a traceback
        self.after: dict = {}  # pid -> that prefix, right after its exception line (a chained traceback may follow)

    def __call__(self, batch: dict) -> dict:
        pid = batch.get("pid")
        return {**batch, "lines": [out for line in batch.get("lines", []) if (out := self.line(pid, line)) is not None]}

    def line(self, pid, line: str) -> Optional[str]:
        core = _CORE_LINE.match(line)
        if core:
            level, message = core.groups()
            return line if level in "EF" and not any(h in message for h in _ray_compat.HARMLESS_CORE_ERRORS) else None
        prefix = self.in_traceback.get(pid)
        if prefix is not None:
            if not line.strip() or line[:1].isspace() or line.startswith("Traceback"):
                return None
            del self.in_traceback[pid]
            self.after[pid] = prefix
            return prefix + line
        prefix = self.after.pop(pid, None)
        if prefix is not None:
            if not line.strip() or line.startswith(_TRACEBACK_BODY):
                self.after[pid] = prefix
                return None
            if line.startswith("Traceback (most recent call last):"):
                self.in_traceback[pid] = prefix
                return None
        if _THREAD.match(line):
            self.in_traceback[pid] = line + " "
            return None
        if line.startswith("Traceback (most recent call last):"):
            self.in_traceback[pid] = ""
            return None
        return line
