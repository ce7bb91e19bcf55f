"""Kill the search driver part-way; `--resume` finishes the search without retraining finished trials.
Runs against its own Ray head (a SIGKILLed driver must not take the cluster with it)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import RESUME_SEARCH



def _finished(tune_dir: Path) -> dict[str, int]:
    """trial dir name -> number of reported results, for trials whose last result says done."""
    out = {}
    for res in tune_dir.glob("*/result.json"):
        lines = [json.loads(l) for l in res.read_text().splitlines() if l.strip()]
        if lines and lines[-1].get("done"):
            out[res.parent.name] = len(lines)
    return out


@pytest.mark.slow
def test_resume_after_driver_killed(ray_head, tmp_path):
    _, _, env = ray_head
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**RESUME_SEARCH, "output": str(tmp_path / "runs")}))
    cmd = [sys.executable, "-m", "raytrain", "search", str(spec)]
    driver = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    done: dict = {}
    tune_dirs: list = []
    while time.monotonic() < deadline and not done:
        tune_dirs = list((tmp_path / "runs").glob("r-search/*/tune"))
        done = _finished(tune_dirs[0]) if tune_dirs else {}
        assert driver.poll() is None, "search finished before it could be interrupted"
        time.sleep(0.1)
    assert done, "no trial finished within 240 s"
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    run_dir = tune_dirs[0].parent
    assert not (run_dir / "search.json").exists()

    resumed = subprocess.run(cmd + ["--resume", str(run_dir)], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=480)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "search.json").read_text())
    assert len(summary["trials"]) == 2
    assert all(r["epochs"] == 10 for r in summary["trials"]), summary["trials"]
    after = _finished(tune_dirs[0])
    for trial, n in done.items():  # finished before the kill: not one more result
        assert after[trial] == n, (trial, n, after[trial])
