"""raytrain's console lines go through the `raytrain` logger; this gives it a `[raytrain] ...` handler
on stdout while a command or API call runs (and in worker processes), and takes it away afterwards."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager

LOGGER = logging.getLogger("raytrain")
_FORMAT = "[raytrain] %(message)s"


def _handler() -> logging.Handler:
    h = logging.StreamHandler(sys.stdout)
    h.setFormatter(logging.Formatter(_FORMAT))
    h.set_name("raytrain-console")
    return h


def attach() -> None:
    """A process-lifetime handler (worker and trial processes are Ray's, one per task)."""
    if not any(h.get_name() == "raytrain-console" for h in LOGGER.handlers):
        LOGGER.addHandler(_handler())
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


@contextmanager
def attached():
    """The handler for the duration of a call; the logger is left as it was found."""
    if any(h.get_name() == "raytrain-console" for h in LOGGER.handlers):
        yield
        return
    level, propagate, h = LOGGER.level, LOGGER.propagate, _handler()
    LOGGER.addHandler(h)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
    try:
        yield
    finally:
        LOGGER.removeHandler(h)
        LOGGER.setLevel(level)
        LOGGER.propagate = propagate
