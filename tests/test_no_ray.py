"""No Ray tax: a one-worker run of materialised data on this machine starts no Ray, imports none of Ray, Tune,
pyarrow.compute or matplotlib, leaves the process as it found it, and resumes. (That it trains exactly like the
same run in a Ray Train worker group, every epoch, even through the group's restarts: tests/test_reliability.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import metric_rows, run_cli, write_yaml

PROBE = """
import json, logging, os, signal, sys
import torch, raytrain
def state():
    lg = lambda n: (logging.getLogger(n).level, logging.getLogger(n).propagate, len(logging.getLogger(n).handlers))
    return {"env": dict(os.environ), "path": list(sys.path), "loggers": [lg("ray"), lg("raytrain"), lg(None)],
            "threads": torch.get_num_threads(), "sigterm": str(signal.getsignal(signal.SIGTERM))}
exp = raytrain.load_experiment(sys.argv[1])
before = state()
r = raytrain.train(exp)
after = state()
heavy = sorted({m for m in sys.modules if m.split(".")[0] in ("ray", "matplotlib") or m == "pyarrow.compute"})
print(json.dumps({"status": r.status, "ray": r.summary["ray"], "mode": r.mode, "run_dir": r.run_dir,
                  "startup": r.startup, "heavy": heavy, "diff": [k for k in before if before[k] != after[k]],
                  "env": sorted(set(after["env"]) ^ set(before["env"]))}))
"""

# The CLI's resume, `raytrain train E --resume RUN` (the `main` that `python -m raytrain` runs), then what it imported.
RESUME = """
import json, sys
from raytrain.cli import main
code = main(["train", sys.argv[1], "--resume", sys.argv[2], "--set", "train.epochs=3"])
heavy = sorted({m for m in sys.modules if m.split(".")[0] in ("ray", "matplotlib") or m == "pyarrow.compute"})
print(json.dumps({"code": code, "heavy": heavy}))
"""


def _env() -> dict:
    """A user's clean environment: none of the session's Ray or Tune settings, no PYTHONPATH."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TUNE_")) and k != "PYTHONPATH"}


@pytest.fixture
def exp_file(tmp_path, exp_dict):
    exp_dict["train"]["epochs"] = 2
    return write_yaml(tmp_path / "e.yaml", exp_dict)


def test_a_one_worker_run_imports_no_ray_and_resumes(tmp_path, exp_file):
    """The first run decodes the data into the cache (scikit-learn's digits loader brings pandas and with it
    pyarrow.compute); a run over the cache (here the CLI's resume of the first) imports none of the heavy set;
    neither imports Ray. `raytrain.train` leaves the environment, PYTHONPATH, sys.path, the ray/raytrain/root
    loggers, torch's threads and the SIGTERM handler as they were."""
    r = subprocess.run([sys.executable, "-c", PROBE, str(exp_file)], capture_output=True, text=True, timeout=240,
                       env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["status"] == "completed" and got["ray"] == "none" and got["mode"] == "in-process", got
    assert got["diff"] == [] and got["env"] == [], got
    assert got["heavy"] in ([], ["pyarrow.compute"]), got["heavy"]
    assert {"imports", "data_prepare", "data_into_memory", "model_setup", "first_batch_and_step"} <= set(got["startup"])
    run = got["run_dir"]
    more = run_cli([sys.executable, "-c", RESUME, str(exp_file), run], timeout=240, env=_env())
    assert more.returncode == 0, more.stderr[-3000:]
    resumed = json.loads(more.stdout.strip().splitlines()[-1])
    assert resumed == {"code": 0, "heavy": []}, (resumed, more.stderr[-3000:])
    assert [row["epoch"] for row in metric_rows(run)] == [1, 2, 3]
    assert json.loads((tmp_path / "runs" / "t" / os.path.basename(run) / "result.json").read_text())["ray"] == "none"
