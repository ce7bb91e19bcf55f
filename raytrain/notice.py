"""A drain notice inside a worker group: lose at most the step in flight, not every step since the notice.

Ray Train restarts a group whose node is being drained only at the drain's deadline (plus
`FailureConfig.preemption_grace_s`), from the newest checkpoint, as a `PreemptionError` (its own budget,
`max_preemption_failures`); a worker function that returns ends the run as finished and one that raises is a
worker failure, so a group cannot hand over before then. So the group checkpoints at the notice, trains on
while every rank sees time for another step and a checkpoint before the deadline (from the measured step and
checkpoint times, with a margin), writes its last checkpoint at the step they agree on (a collective), and waits
for Ray Train's teardown in short sleeps, up to a bound past the time Ray Train restarts it (then it fails, and
is restarted from that checkpoint as a failure). Told no deadline, it checkpoints at the notice and waits.
An in-process run (SIGTERM) stops itself after the notice's checkpoint instead (`Host.notice_stops`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, NoReturn, Optional

from raytrain import collectives

log = logging.getLogger("raytrain")

GRACE_S = 0.0  # FailureConfig.preemption_grace_s (worker_group.failures): the last checkpoint ends before the deadline
MARGIN = 1.5  # on the measured step and checkpoint seconds: another step "clearly" fits
SLACK_S = 2.0  # and this much more: clocks of different nodes, the controller's poll, a slower upload
WAIT_MARGIN_S = 60.0  # past Ray Train's restart time, a waiting group gives up
WAIT_SLICE_S = 0.5


@dataclass(frozen=True)
class Notice:
    """Why a worker must checkpoint now. A drained node's also says its `deadline` (epoch seconds; None when
    the drain gave none) and `restart_by`, when Ray Train restarts the group at the latest."""
    reason: str
    deadline: Optional[float] = None
    restart_by: Optional[float] = None

    def __str__(self) -> str:
        if self.deadline is not None:
            return f"{self.reason}, {max(self.deadline - time.time(), 0.0):.1f} s before its deadline"
        return self.reason if self.restart_by is None else f"{self.reason}, no deadline given"


class WaitExpired(RuntimeError):
    """Ray Train did not tear down a drained group by the bound of its wait."""


class StepTimes:
    """Wall seconds of the last few steps (callbacks included; checkpoints written between two steps and an
    epoch's evaluation excluded): the loop calls `step_ended` at each step boundary, `going_on` when it trains
    on, `epoch_start` before an epoch's first step."""

    def __init__(self, keep: int = 5):
        self.recent: deque = deque(maxlen=keep)
        self.since: Optional[float] = None

    def step_ended(self) -> None:
        if self.since is not None:
            self.recent.append(time.perf_counter() - self.since)
        self.since = None

    def going_on(self) -> None:
        self.since = time.perf_counter()

    def epoch_start(self) -> None:
        self.since = None

    def longest(self) -> Optional[float]:
        return max(self.recent) if self.recent else None


class Drain:
    """A worker's part after a drain notice; every rank makes the same calls at the same steps."""

    def __init__(self, notice: Notice, rank: int, times: StepTimes):
        self.notice, self.rank, self.times = notice, rank, times
        self.checkpoint_s = 0.0  # the longest checkpoint since the notice
        self.covered = False  # the newest checkpoint holds every step trained

    def update(self, notice: Notice) -> None:
        """A later notice (another node drained): its deadline counts if earlier."""
        if notice.deadline is not None and self.notice.deadline is not None and notice.deadline < self.notice.deadline:
            self.notice = notice

    def first_note(self) -> str:
        then = "training on while a step and a checkpoint fit before it" if self.notice.deadline is not None else \
            "waiting for Ray Train's restart"
        return f"{self.notice}: {then}"

    def checkpoint(self, write: Callable[[str], None], note: str) -> None:
        t0 = time.perf_counter()
        write(note)
        self.checkpoint_s = max(self.checkpoint_s, time.perf_counter() - t0)
        self.covered = True

    def fits(self, extra_s: float = 0.0) -> bool:
        """Whether every rank sees time for another step (plus `extra_s`) and a checkpoint before the deadline:
        a collective, so all stop at the same step."""
        step, deadline = self.times.longest(), self.notice.deadline
        need = None if step is None else MARGIN * (step + self.checkpoint_s + extra_s) + SLACK_S
        return collectives.all_true(deadline is not None and need is not None and deadline - time.time() > need)

    def at_boundary(self, write: Optional[Callable[[str], None]], extra_s: float = 0.0) -> None:
        """At a step boundary (`write` writes a step checkpoint there) or an epoch's start (`write` None: the
        epoch's checkpoint was just written): returns if another step fits; else writes the last checkpoint
        (unless the newest already holds every step) and waits for Ray Train's restart, never returning."""
        if self.fits(extra_s):
            self.covered = False
            return
        if write is not None and not self.covered:
            left = "" if self.notice.deadline is None else f", {self.notice.deadline - time.time():.1f} s left"
            self.checkpoint(write, f"the last before the drain deadline{left}")
        self.wait()

    def wait(self) -> NoReturn:
        """Sleeps in short slices until Ray Train tears the group down (at the deadline, plus its grace); past
        `WAIT_MARGIN_S` after that, fails, naming why, to be restarted from the newest checkpoint as a failure."""
        by = (self.notice.restart_by or time.time()) + WAIT_MARGIN_S
        if self.rank == 0:
            left = max((self.notice.restart_by or time.time()) - time.time(), 0.0)
            log.warning(f"{self.notice.reason}: checkpointed; waiting for Ray Train to restart the group, in "
                        f"{left:.0f} s (giving up {WAIT_MARGIN_S:.0f} s after)")
        while (left := by - time.time()) > 0:
            time.sleep(min(WAIT_SLICE_S, left))
        raise WaitExpired(f"{self.notice.reason}: Ray Train had not restarted the group {WAIT_MARGIN_S:.0f} s after "
                          "the drain's deadline; failing, to restart from the newest checkpoint")
