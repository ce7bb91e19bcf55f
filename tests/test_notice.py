"""A worker's part after a drain notice (raytrain/notice.py), without Ray: one rank (no process group, so the
agreement collective is the rank's own answer), steps played by the test. The real thing, on two Ray nodes:
tests/test_multinode.py::test_a_node_drained_with_a_deadline_checkpoints_before_it."""

from __future__ import annotations

import time

import pytest

from raytrain import notice


@pytest.fixture
def quick(monkeypatch):
    """A wait that gives up at Ray Train's restart time, and a small slack, so a test lasts seconds."""
    monkeypatch.setattr(notice, "WAIT_MARGIN_S", 0.0)
    monkeypatch.setattr(notice, "SLACK_S", 0.3)


def _play(drain: notice.Drain, times: notice.StepTimes, step_s: float = 0.05, steps: int = 400):
    """The loop's calls: the notice's checkpoint, then a step boundary after each step, until the drain waits
    (and gives up, WaitExpired). Returns (checkpoints as (step, note, time), steps trained, the error)."""
    written, trained = [], []

    def write(step):
        return lambda note: written.append((step, note, time.time()))

    with pytest.raises(notice.WaitExpired) as err:
        drain.checkpoint(write(0), drain.first_note())
        drain.at_boundary(write(0))
        for step in range(1, steps):
            times.going_on()
            time.sleep(step_s)
            trained.append(step)
            times.step_ended()
            drain.at_boundary(write(step))
    return written, trained, err.value


def test_a_drained_group_trains_on_until_a_step_no_longer_fits_then_checkpoints_there_and_waits(quick):
    times = notice.StepTimes()
    times.recent.append(0.05)  # the steps before the notice
    deadline = time.time() + 1.5
    drain = notice.Drain(notice.Notice("node 1a2b drained", deadline, deadline), 0, times)
    written, trained, err = _play(drain, times)
    assert [w[0] for w in written] == [0, trained[-1]]  # the notice's, then the last step trained: nothing lost
    assert trained, "no step trained between the notice and the deadline"
    assert written[0][1].startswith("node 1a2b drained, ") and "training on while a step and a checkpoint fit" in \
        written[0][1]
    assert written[1][1].startswith("the last before the drain deadline, ") and written[1][2] < deadline
    assert str(err).startswith("node 1a2b drained: Ray Train had not restarted the group")


def test_a_drain_without_a_deadline_checkpoints_at_the_notice_and_waits(quick):
    times = notice.StepTimes()
    times.recent.append(0.05)
    n = notice.Notice("node 1a2b drained", None, time.time() + 0.2)
    assert str(n) == "node 1a2b drained, no deadline given"
    written, trained, _ = _play(notice.Drain(n, 0, times), times)
    assert [w[0] for w in written] == [0] and trained == []


def test_at_an_epochs_start_the_epochs_checkpoint_is_the_last(quick):
    """No time left after an epoch's checkpoint: no second checkpoint, straight to the wait."""
    times = notice.StepTimes()
    times.recent.append(0.05)
    deadline = time.time() + 0.2
    drain = notice.Drain(notice.Notice("node 1a2b drained", deadline, deadline), 0, times)
    with pytest.raises(notice.WaitExpired):
        drain.at_boundary(None)


def test_a_notice_without_a_restart_reads_as_its_reason():
    assert str(notice.Notice("SIGTERM")) == "SIGTERM"  # an in-process run's: "interrupted: SIGTERM at ..."


def test_another_node_drained_later_counts_only_with_an_earlier_deadline():
    now = time.time()
    drain = notice.Drain(notice.Notice("node a drained", now + 30, now + 30), 0, notice.StepTimes())
    drain.update(notice.Notice("node a, b drained", now + 40, now + 40))
    assert drain.notice.deadline == now + 30
    drain.update(notice.Notice("node a, c drained", now + 10, now + 10))
    assert drain.notice.reason == "node a, c drained" and drain.notice.deadline == now + 10
