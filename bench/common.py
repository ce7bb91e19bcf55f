"""What the bench sections share: paths, a small experiment factory, the CLI run as a user runs it, medians."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OUT = ROOT / "runs" / "bench"


def mnist_available() -> bool:
    from raytrain.data.mnist import MNIST_FILES, default_dir

    d = default_dir()
    return all((d / n).is_file() or (d / f"{n}.gz").is_file() for n in MNIST_FILES.values())


def bench_data() -> dict:
    """MNIST when its files are at the standard location (real-sized epochs), else digits upscaled to 32x32."""
    return {"dataset": "mnist"} if mnist_available() else {"dataset": "digits", "upscale": 4}


def experiment(**patch):
    from raytrain.configio import set_dotted, validate_experiment

    base = {
        "name": "bench", "seed": 0, "data": {"dataset": "digits", "upscale": 4},
        "model": {"name": "cnn"}, "output": str(OUT),
        "train": {"epochs": 4, "batch_size": 64, "precision": "fp32", "channels_last": False,
                  "optimizer": {"name": "sgd", "lr": 0.05}},
        "parallel": {"workers": 1, "cpus_per_worker": 1},
    }
    for dotted, value in patch.items():
        set_dotted(base, dotted.replace("__", "."), value)
    return validate_experiment(base, "bench")


def rows_of(summary) -> list[dict]:
    """The metrics rows of a run: a `driver.run` result (RunSummary) or a result.json dict."""
    from raytrain.hosts import read_rows
    from raytrain.storage import resolve

    return read_rows(resolve(summary["run_dir"] if isinstance(summary, dict) else summary.run_dir))


def steady(values: list[float]) -> float:
    """Median over epochs after the first (the first pays for warm-up and lazy init)."""
    return statistics.median(values[1:] if len(values) > 1 else values)


def median(values: list[float]) -> float:
    return statistics.median(values)


def cli(verb: str, *args: str, env: dict | None = None, timeout: float = 3600) -> dict:
    """`raytrain VERB ARGS` as a user runs it (a fresh process): its summary (--summary-json), the process's
    own wall time from start to exit, and its exit code. Started as `python -m raytrain`, which works wherever
    raytrain imports: also where the project is only on PYTHONPATH and no console script was installed (the
    GPU host)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "summary.json"
        cmd = [sys.executable, "-m", "raytrain", verb, *args, "--summary-json", str(out)]
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        peak = _watch_peak_rss(proc, str(out))
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(proc)
            raise
        wall = time.time() - t0
        summary = json.loads(out.read_text()) if out.is_file() else {}
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"raytrain {verb} {' '.join(args)} failed ({proc.returncode}): {stderr[-2000:]}")
    return {"summary": summary, "process_wall_s": wall, "exit_code": proc.returncode, "stdout": stdout[-4000:],
            "peak_rss_mb": peak[0] / 1024}


def stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """End a command started in its own session: SIGTERM first (raytrain shuts its embedded Ray down as on
    Ctrl-C), then SIGKILL to the whole group, so nothing it started outlives a timed-out row."""
    import signal

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.communicate(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _watch_peak_rss(proc: subprocess.Popen, marker: str) -> list[int]:
    """The process's own peak RSS (VmHWM, KiB), read every 0.1 s until it exits: start-up and shutdown
    included, its children (Ray's processes) not. Only once it runs the command (`marker` in its command
    line): between fork and exec the child still reports this process's peak."""
    peak = [0]

    def watch():
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        with open(f"/proc/{proc.pid}/status") as g:
                            hwm = next((int(line.split()[1]) for line in g if line.startswith("VmHWM")), 0)
                        peak[0] = max(peak[0], hwm)
            except (OSError, ValueError):
                pass
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()
    return peak


def module(name: str, *args: str, timeout: float = 3600) -> tuple[dict, float]:
    """`python -m bench.NAME ARGS` in a fresh process: (its last stdout line as JSON, process wall time)."""
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", f"bench.{name}", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"bench.{name} failed: {stderr[-2000:]}")
    return json.loads(stdout.strip().splitlines()[-1]), wall


def load(name: str):
    """A section's results: bench/results/NAME.json, or NAME/NAME.json there (a folder of its own: the GPU
    check's default output, `make gpu-check`)."""
    for p in (RESULTS / f"{name}.json", RESULTS / name / f"{name}.json"):
        if p.is_file():
            return json.loads(p.read_text())
    return None


def moto_s3(bucket: str):
    """An S3 API server (moto) on loopback with `bucket` created, and this process's environment pointed at it;
    returns (server, env): the env for child processes, the server to `.stop()`."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    os.environ.update(env)
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
    return server, env
