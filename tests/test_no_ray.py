"""No Ray tax: a one-worker run of materialised data on this machine starts no Ray, imports none of Ray, Tune,
pyarrow.compute or matplotlib, and resumes. (That it trains exactly like the same run in a Ray Train worker group,
every epoch, even through the group's restarts: tests/test_reliability.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import metric_rows, run_cli, write_yaml

PROBE = """
import json, sys
import raytrain
exp = raytrain.load_experiment(sys.argv[1])
r = raytrain.train(exp)
heavy = sorted({m for m in sys.modules if m.split(".")[0] in ("ray", "matplotlib") or m == "pyarrow.compute"})
print(json.dumps({"status": r.status, "ray": r.summary["ray"], "mode": r.mode, "run_dir": r.run_dir,
                  "startup": r.startup, "heavy": heavy}))
"""


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


@pytest.fixture
def exp_file(tmp_path, exp_dict):
    exp_dict["train"]["epochs"] = 2
    return write_yaml(tmp_path / "e.yaml", exp_dict)


def test_a_one_worker_run_imports_no_ray_and_resumes(tmp_path, exp_file):
    """The first run decodes the data into the cache (scikit-learn's digits loader brings pandas and with it
    pyarrow.compute); a run over the cache imports none of the heavy set; neither imports Ray."""
    for first in (True, False):
        r = subprocess.run([sys.executable, "-c", PROBE, str(exp_file)], capture_output=True, text=True, timeout=240,
                           env=_env())
        assert r.returncode == 0, r.stderr[-3000:]
        got = json.loads(r.stdout.strip().splitlines()[-1])
        assert got["status"] == "completed" and got["ray"] == "none" and got["mode"] == "in-process", got
        assert got["heavy"] == (["pyarrow.compute"] if first and got["heavy"] else []), got["heavy"]
    assert {"imports", "data_prepare", "data_into_memory", "model_setup", "first_batch_and_step"} <= set(got["startup"])
    run = got["run_dir"]
    more = run_cli([sys.executable, "-m", "raytrain", "train", str(exp_file), "--resume", run, "--set", "train.epochs=3"],
                   timeout=240, env=_env())
    assert more.returncode == 0, more.stderr[-3000:]
    assert [row["epoch"] for row in metric_rows(run)] == [1, 2, 3]
    assert json.loads((tmp_path / "runs" / "t" / os.path.basename(run) / "result.json").read_text())["ray"] == "none"
