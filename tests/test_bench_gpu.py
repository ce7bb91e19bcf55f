"""The GPU check's own plumbing, on this CPU machine (no GPU is faked): it runs where the project is only on
PYTHONPATH (the GPU host's setup), its results go to the folder it is given, and its table reads missing or
missed figures without raising."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from bench import gpu
from bench.gpu_check import data_env

ROOT = Path(__file__).resolve().parents[1]
DIGITS = {"name": "b", "seed": 0, "data": {"dataset": "digits"}, "model": {"name": "mlp", "width": 0.5},
          "train": {"epochs": 1, "batch_size": 64, "precision": "fp32", "optimizer": {"name": "sgd", "lr": 0.05}},
          "parallel": {"workers": 1, "cpus_per_worker": 1}}


def _host_like_env(tmp_path: Path) -> tuple[str, dict]:
    """The base interpreter of this venv, with its packages and the project only on PYTHONPATH and boto3
    unimportable: as on the GPU host after `source .device/setup.sh` (no console script, no boto3)."""
    base = getattr(sys, "_base_executable", sys.executable)
    if Path(base).parent == Path(sys.executable).parent or (Path(base).parent / "raytrain").exists():
        pytest.skip("needs a venv whose base interpreter has no raytrain script beside it")
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "boto3.py").write_text("raise ImportError('no boto3 on this host')\n")
    path = os.pathsep.join([str(blocked), sysconfig.get_paths()["purelib"], str(ROOT)])
    return base, {**os.environ, "PYTHONPATH": path, "PYTHONNOUSERSITE": "1"}


def test_bench_commands_run_where_raytrain_is_only_on_pythonpath(tmp_path):
    import yaml

    python, env = _host_like_env(tmp_path)
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({**DIGITS, "output": str(tmp_path / "runs")}))
    code = ("import json; from bench.common import cli; "
            f"r = cli('train', {str(tmp_path / 'e.yaml')!r}); "
            "print(json.dumps({'status': r['summary'].get('status'), 'code': r['exit_code']}))")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"status": "completed", "code": 0}


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU host this runs the whole check (make gpu-check)")
def test_gpu_check_writes_every_result_to_its_folder_and_says_why_no_rows(tmp_path):
    python, env = _host_like_env(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([python, "-m", "bench.gpu_check", "--out", str(out), "--budget-s", "100"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=240)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]  # no GPU: the check did not pass
    assert sorted(p.name for p in out.iterdir()) == ["gpu.json", "summary.md", "tests.log", "tests.xml"]
    result = json.loads((out / "gpu.json").read_text())
    assert result["tests"]["exit_code"] == 0 and "skipped" in result["tests"]["last_line"]  # collected, then skipped
    assert result["gpu"] is None and "no CUDA GPU" in result["error"]
    assert "needs a CUDA GPU" in (out / "tests.log").read_text()
    assert "no CUDA GPU" in (out / "summary.md").read_text()


def test_data_dir_is_made_absolute_and_defaults_to_the_bundle(tmp_path):
    (tmp_path / ".device" / "mnist").mkdir(parents=True)
    assert data_env({"RAYTRAIN_DATA": ".device"}, tmp_path)["RAYTRAIN_DATA"] == str(tmp_path / ".device")
    assert data_env({}, tmp_path)["RAYTRAIN_DATA"] == str(tmp_path / ".device")
    assert data_env({"RAYTRAIN_DATA": "/data"}, tmp_path)["RAYTRAIN_DATA"] == "/data"
    assert "RAYTRAIN_DATA" not in data_env({}, tmp_path / "elsewhere")


FULL = {"gpu": "H200", "throughput": {"fast recipe, batch 128": {
    "samples_per_s": 95_000.0, "plain_samples_per_s": 100_000.0, "ratio": 0.95, "precision": "bf16",
    "device_cache": True, "syncs_per_step": 0.0}},
    "mnist_fast": {"to_target_since_launch_s": 9.5, "process_wall_s": 11.0, "first_step_s": 4.2, "epochs": 2,
                   "best_val_accuracy": 0.991, "plain_example_to_target_s": 20.0, "plain_example_process_wall_s": 21.0,
                   "plain_best": 0.9912},
    "in_process_first_step_s": [4.0, 4.2, 4.5], "worker_group_start": {"first_step_s": 12.0},
    "bare_start": {"first_step_s": 9.0}}


def test_rows_of_a_full_result():
    text = "\n".join(m for _, m, _ in gpu.rows(FULL))
    assert "95000 vs 100000 = **0.95** (bf16, device cache on)" in text
    assert "target at 9.5 s, exit at 11.0 s (first step 4.2 s)" in text and "20.0 s to target" in text
    assert "4.2 s (median of 3) / 12.0 s / 9.0 s" in text


def test_rows_when_the_target_is_missed_and_rows_are_missing():
    missed = json.loads(json.dumps(FULL))
    missed["mnist_fast"].update(to_target_since_launch_s=None, best_val_accuracy=0.9893, plain_example_to_target_s=None)
    missed["throughput"]["fast recipe, batch 128"].update(samples_per_s=None, ratio=None, syncs_per_step=None)
    del missed["worker_group_start"], missed["bare_start"]
    text = "\n".join(m for _, m, _ in gpu.rows(missed))
    assert "NOT REACHED (best 0.9893 in 2 epochs)" in text and "plain example's NOT REACHED (best 0.9912)" in text
    assert "n/a vs 100000 = **n/a**" in text and "/ n/a s / n/a s" in text
    assert gpu.rows({"gpu": None, "error": "no CUDA GPU here"}) == [] and gpu.rows(None) == []
