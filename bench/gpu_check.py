"""The GPU check, `make gpu-check OUT=DIR` (on a GPU host, after `source .device/setup.sh`): the gpu tests, then
the GPU bench rows, inside one time budget, everything written to DIR so a remote run can bring it back:

    DIR/tests.log    pytest's output (tests/test_gpu.py, run by file: no other test module is imported)
    DIR/tests.xml    the same as JUnit XML
    DIR/gpu.json     the bench rows (`bench.gpu`), rewritten after each row: a run cut short keeps what it measured
    DIR/summary.md   the rows as the README table shows them, and the tests' outcome

    python -m bench.gpu_check --out DIR [--budget-s 420] [--tests-s 240]

The tests get at most --tests-s and 60% of --budget-s (then they are interrupted: pytest still writes its
report), the rows what is left. RAYTRAIN_DATA is made absolute (and set to .device when unset and .device/mnist exists),
since Ray's processes and the tests do not run in this folder. Exit code 0 only when the tests passed on a GPU
and no row failed or was skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT


def data_env(env: dict, cwd: Path = ROOT) -> dict:
    """RAYTRAIN_DATA absolute; .device (the bundle's MNIST) where it is unset and the bundle is there."""
    data = env.get("RAYTRAIN_DATA")
    if not data and (cwd / ".device" / "mnist").is_dir():
        data = ".device"
    return {**env, "RAYTRAIN_DATA": str((cwd / data).resolve())} if data else dict(env)


def run_tests(out: Path, limit_s: float, env: dict) -> dict:
    """tests/test_gpu.py with the gpu marker, by file; interrupted (SIGINT, then SIGKILL) past `limit_s`."""
    args = [sys.executable, "-m", "pytest", "tests/test_gpu.py", "-m", "gpu", "-p", "no:cacheprovider", "-rs", "-v",
            f"--junitxml={out / 'tests.xml'}", "-o", "faulthandler_timeout=150"]
    try:
        import pytest_timeout  # noqa: F401  (on the GPU host's image; a hung test then fails alone)

        args += ["--timeout=200"]
    except ImportError:
        pass
    t0 = time.monotonic()
    with open(out / "tests.log", "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit_s)
            cut = False
        except subprocess.TimeoutExpired:
            cut = True
            os.killpg(proc.pid, signal.SIGINT)  # pytest stops, tears its Ray down and writes its report
            try:
                rc = proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
    tail = (out / "tests.log").read_text(errors="replace").strip().splitlines()
    return {"exit_code": rc, "seconds": round(time.monotonic() - t0, 1), "cut_at_limit_s": limit_s if cut else None,
            "last_line": tail[-1] if tail else ""}


def summary(tests: dict, bench: dict) -> str:
    from bench import gpu

    lines = [f"# GPU check on {bench.get('gpu') or 'no GPU'}", "",
             f"tests: exit code {tests['exit_code']} in {tests['seconds']} s: {tests['last_line']}"
             + (f" (interrupted at {tests['cut_at_limit_s']:.0f} s)" if tests.get("cut_at_limit_s") else ""), "",
             "| benchmark | measured | goal |", "| --- | --- | --- |"]
    lines += [f"| {b} | {m} | {g} |" for b, m, g in gpu.rows(bench)]
    for what in ("skipped", "failed"):
        lines += [f"- {what}: {k}: {v}" for k, v in (bench.get(what) or {}).items()]
    if bench.get("error"):
        lines.append(f"- bench: {bench['error']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu"), help="folder for every result file")
    ap.add_argument("--budget-s", type=float, default=420, help="the whole check, tests and rows (seconds)")
    ap.add_argument("--tests-s", type=float, default=240, help="the tests' share of the budget, at most")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = data_env(dict(os.environ))
    os.environ.update(env)  # the rows' commands inherit it
    limit = min(args.tests_s, 0.6 * args.budget_s)  # the rows keep at least 40% of the budget
    print(f"gpu-check: tests (at most {limit:.0f} s) -> {out}/tests.log", flush=True)
    tests = run_tests(out, limit, env)
    print(f"gpu-check: tests exit code {tests['exit_code']}: {tests['last_line']}", flush=True)
    from bench import gpu

    path = out / "gpu.json"

    def save(result: dict) -> None:
        path.write_text(json.dumps({**result, "tests": tests, "raytrain_data": env.get("RAYTRAIN_DATA")},
                                   indent=2, default=str))

    left = args.budget_s - (time.monotonic() - t0)
    print(f"gpu-check: bench rows (at most {left:.0f} s) -> {path}", flush=True)
    bench = gpu.run(max(left, 0.0), save=save)
    bench["measured_at"] = time.strftime("%Y-%m-%d %H:%M")
    save(bench)
    text = summary(tests, bench)
    (out / "summary.md").write_text(text)
    print(text, flush=True)
    ok = tests["exit_code"] == 0 and bench.get("gpu") and not bench.get("failed") and not bench.get("skipped")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
