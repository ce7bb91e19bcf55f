"""Progress inside an epoch: a live bar on a terminal, a plain line every RAYTRAIN_PROGRESS_S seconds when
piped (here 0.1 s instead of 10, so an epoch of a second or two shows what a long one would), nothing per step."""

from __future__ import annotations

import io
import os
import re
import sys

from helpers import run_cli, write_yaml
from raytrain.progress import EpochProgress


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self, sync: bool = False) -> float:
        return self.t


def test_a_terminal_gets_a_bar_that_is_cleared_and_a_log_gets_periodic_lines(caplog, monkeypatch):
    tty = io.StringIO()
    p = EpochProgress(100, 3, 64, stream=tty, tty=True)
    hook, clock = p.at(0), _Clock()
    for step in range(1, 101):
        clock.t = step * 0.1  # 10 s epoch, 0.1 s a step
        hook(step, clock)
    p.end()
    frames = tty.getvalue().split("\r")
    assert 10 <= len(frames) <= 20  # every 0.5 s after the first 2 s, not every step
    assert "epoch 1/3" in frames[1] and "samples/s" in frames[1] and "ETA" in frames[1]
    assert frames[-1] == "\033[K"  # cleared for the epoch's own line
    monkeypatch.setenv("RAYTRAIN_PROGRESS_S", "2")
    caplog.set_level("INFO", logger="raytrain")
    piped = EpochProgress(100, 3, 64, stream=io.StringIO(), tty=False)
    hook = piped.at(1)
    for step in range(1, 101):
        clock.t = step * 0.1
        hook(step, clock)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and all(line.startswith("epoch 2/3  step ") for line in lines), lines  # at 2, 4, 6, 8 s
    assert "640 samples/s" in lines[0]


def test_a_piped_run_shows_progress_within_its_epochs(tmp_path):
    exp = {"name": "prog", "seed": 0, "data": {"dataset": "digits", "upscale": 3}, "output": str(tmp_path / "runs"),
           "model": {"name": "cnn"}, "train": {"epochs": 1, "batch_size": 16, "precision": "fp32",
                                               "optimizer": {"name": "sgd", "lr": 0.02}},
           "parallel": {"workers": 1, "cpus_per_worker": 1}}
    r = run_cli([sys.executable, "-m", "raytrain", "train", str(write_yaml(tmp_path / "p.yaml", exp))], timeout=240,
                env={**os.environ, "RAYTRAIN_PROGRESS_S": "0.1"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.splitlines()
    steps = [int(m.group(1)) for line in out for m in [re.search(r"epoch 1/1  step (\d+)/\d+ ", line)] if m]
    assert len(steps) >= 2 and steps == sorted(steps), out
    first_epoch_line = next(i for i, line in enumerate(out) if line.startswith("[raytrain] epoch 1/1  train_loss"))
    assert all(i < first_epoch_line for i, line in enumerate(out) if "epoch 1/1  step" in line)
    assert "\r" not in r.stdout  # no bar when piped
