"""Reliability: faults survived, impossible requests refused fast, nothing lost. Real processes, no mocks:
a SIGKILLed Train worker, a process killed mid-checkpoint-write, a torn latest checkpoint, resources no
node has, and the security defaults of an embedded Ray.
(Killed search driver -> --resume: tests/test_storage.py; a diverging trial in a search ends alone: the search
of tests/test_callbacks.py; bad inputs: tests/test_bad_input_battery.py; concurrent search jobs: tests/test_jobs.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from raytrain import checkpoint as ckpt
from helpers import armed, make_exp, metric_rows
from raytrain import driver
from raytrain.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _epochs(run_dir) -> list[int]:
    return [r["epoch"] for r in metric_rows(run_dir)]


def test_python_error_in_the_loop_restarts_from_the_latest_checkpoint(exp_dict):
    """A RuntimeError mid-epoch 2 of a one-worker run: raytrain's loop restarts it from epoch 1's checkpoint
    and the run completes, epochs 1, 2, 3 logged once each; with parallel.max_failures 0 the same error fails
    the run after epoch 1, naming the error."""
    import raytrain
    from usermodels import RAISE_ARM

    with armed(RAISE_ARM) as fired:
        ok = raytrain.train(make_exp(exp_dict, model__name="usermodels:raise_once", train__epochs=3))
    assert fired == [True] and ok.status == "completed" and ok.mode == "in-process", ok
    assert _epochs(ok.run_dir) == [1, 2, 3]
    with armed(RAISE_ARM) as fired:
        failed = raytrain.train(make_exp(exp_dict, model__name="usermodels:raise_once", train__epochs=3,
                                         parallel__max_failures=0))
    assert fired == [True] and failed.status == "failed", failed
    assert "RuntimeError: planted training error" in failed.error and _epochs(failed.run_dir) == [1]
    assert json.loads((Path(failed.run_dir) / "result.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_worker_group_survives_an_error_then_a_kill_mid_checkpoint_and_trains_as_with_no_ray(ray_local, exp_dict,
                                                                                             tmp_path):
    """One worker in a Ray Train worker group (parallel.isolate; in-process, a SIGKILL would end pytest), failing
    twice (parallel.max_failures 2). First a Python error mid-epoch 2, raised by its model. Then, in the restarted
    group, the real risk: a SIGKILL while Ray Train copies its checkpoint into the run's storage. A watcher
    catches a checkpoint folder that exists but is not yet complete (the ballast makes each copy ~100 MB), freezes
    the worker (SIGSTOP), and SIGKILLs it if the folder is still incomplete; if the copy finished in between, it
    lets the worker go on and waits for the next checkpoint. Ray Train restarts the group each time; it resumes
    from the latest complete checkpoint and redoes only the epoch that was cut. Every epoch's metrics are those of
    the same seed trained uninterrupted on the path with no Ray (the driver's, `ray="none"`, as the CLI takes it
    for a one-worker run; in this process, beside the session's Ray it does not use): the same examples in the
    same order, before and after each restart."""
    import os
    import signal
    import threading

    # the uninterrupted reference, with no Ray (big_state trains as tiny does), its run out of the watcher's way
    alone = driver.run(make_exp(exp_dict, model__name="usermodels:tiny", output=str(tmp_path / "alone"),
                                train__epochs=3), ray="none")
    assert alone.status == "completed" and alone.ray == "none" and alone.mode == "in-process", alone
    pid_file, arm = tmp_path / "worker.pid", str(tmp_path / "raise-arm")
    exp = make_exp(exp_dict, model__name="usermodels:big_state", model__kwargs={"pid_file": str(pid_file), "arm": arm},
                   train__epochs=3, parallel__isolate=True, checkpoint__keep=3)
    storage = Path(exp_dict["output"]) / "t"
    caught: dict = {}
    stop = threading.Event()

    def size(d: Path) -> int:
        state = d / ckpt.STATE_FILE
        return state.stat().st_size if state.is_file() else 0

    def complete(d: Path, full) -> bool:
        return (d / f"{ckpt.STATE_FILE}.sha256").is_file() and size(d) == full

    def frozen(pid: int, seconds: float = 5.0) -> None:
        """Returns once every thread of `pid` is stopped (a write under way finishes first)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in Path(f"/proc/{pid}/task").iterdir()]
            if all(st in "tT" for st in states):
                return
            time.sleep(0.001)
        raise AssertionError(f"worker {pid} not stopped within {seconds} s")

    def watch():
        full, seen = None, set()
        while not stop.is_set() and not caught:
            # folders only: Ray's controller writes checkpoint_manager_snapshot.json beside them, which once
            # passed for a second folder and had the worker killed before epoch 1's row was logged
            folders = sorted(p for p in storage.glob("*/train/checkpoint_*") if p.is_dir())
            if full is None and len(folders) >= 2:
                # the first folder's copy is over once the next one exists (Ray persists a report's checkpoint
                # before the loop goes on): its size is what a complete copy weighs
                full, seen = size(folders[0]), {folders[0]}
            for d in folders if full is not None else []:
                if d in seen or complete(d, full):
                    seen.add(d)
                    continue
                pid = int(pid_file.read_text())
                os.kill(pid, signal.SIGSTOP)
                try:
                    frozen(pid)
                    if complete(d, full):  # the copy finished before the freeze: try the next checkpoint
                        seen.add(d)
                        continue
                    caught.update(dir=d, size=size(d), full=full)
                    os.kill(pid, signal.SIGKILL)
                    return
                finally:
                    if not caught:
                        os.kill(pid, signal.SIGCONT)  # never leave a frozen worker behind
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with armed(arm) as fired:
            s = driver.run(exp)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert fired == [True], "no error mid-epoch 2"
    assert caught, "never saw a checkpoint mid-copy"
    assert s.status == "completed" and s.mode == "worker-group", s
    # The torn folder was never a usable checkpoint; each cut epoch is redone, nothing else is.
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_local(caught["dir"])
    assert _epochs(s.run_dir) == [1, 2, 3]
    for x, y in zip(metric_rows(alone.run_dir), metric_rows(s.run_dir), strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy", "train_accuracy"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), (key, x["epoch"], x[key], y[key])


def test_resume_candidates_registered_first_unregistered_newer_never(tmp_path):
    """A complete folder newer than the one Ray registered was never registered (a copy a crash cut off after
    its last byte): resume must not take it, even though it verifies."""
    from raytrain.storage import resolve

    for k in range(1, 5):
        ckpt.save_local(tmp_path / f"checkpoint_2026-01-01_00-00-0{k}.000000", {"epoch": k})
    store = resolve(str(tmp_path))
    registered = store / "checkpoint_2026-01-01_00-00-03.000000"
    names = [c.name[-15:-7] for c in ckpt.candidates(registered, store)]
    assert names == ["00-00-03", "00-00-02", "00-00-01"]
    state, used = ckpt.load_first(ckpt.candidates(registered, store), ckpt.STATE_FILE)
    assert state["epoch"] == 3 and used == registered
    assert [c.name[-15:-7] for c in ckpt.candidates(None, store)][0] == "00-00-04"  # nothing registered: newest


def test_torn_latest_checkpoint_falls_back_with_a_warning(tmp_path):
    from raytrain.storage import resolve

    old, new = tmp_path / "checkpoint_1", tmp_path / "checkpoint_2"
    ckpt.save_local(old, {"epoch": 0})
    ckpt.save_local(new, {"epoch": 1})
    data = (new / ckpt.STATE_FILE).read_bytes()
    (new / ckpt.STATE_FILE).write_bytes(data[: len(data) // 3])
    with pytest.warns(UserWarning, match="checkpoint_2/state.pt: checksum mismatch"):
        state, used = ckpt.load_first(ckpt.checkpoint_dirs(resolve(str(tmp_path))), ckpt.STATE_FILE)
    assert used.path == str(old) and state["epoch"] == 0


def test_resume_continues_then_skips_a_corrupt_latest_checkpoint(ray_local, exp_dict):
    """One run, resumed twice: a clean resume continues at the next epoch with the clock carried over (the
    checkpoint's clock set to 1000 s: the resumed epoch ends at 1000 s plus its own seconds); after the latest
    checkpoint is torn, the next resume falls back to the one before it. (On the session's Ray the one worker
    trains in this process, its data read into memory as arrays: no Ray Datasets carry it to itself.)"""
    first = driver.run(make_exp(exp_dict, train__epochs=2))
    assert first.mode == "in-process" and "data_into_memory" in first.startup, first.startup
    run_dir = Path(first.run_dir)
    state = ckpt.load_local(first.checkpoint)
    state["elapsed_s"] = 1000.0
    ckpt.save_local(first.checkpoint, state)  # a valid checkpoint whose clock reads 1000 s
    second = driver.run(make_exp(exp_dict, train__epochs=3), resume=run_dir)
    assert second.run_dir == first.run_dir and second.status == "completed", second
    assert _epochs(run_dir) == [1, 2, 3]
    resumed = metric_rows(run_dir)[2]
    assert resumed["elapsed_s"] == pytest.approx(1000.0 + resumed["epoch_s"], abs=0.01), resumed  # clock carried over
    assert second.final["elapsed_s"] == pytest.approx(resumed["elapsed_s"])
    (Path(second.checkpoint) / ckpt.STATE_FILE).write_bytes(b"\x00garbage")  # a torn / tampered latest checkpoint
    third = driver.run(make_exp(exp_dict, train__epochs=4), resume=run_dir)
    assert third.status == "completed", third
    assert _epochs(run_dir) == [1, 2, 3, 3, 4]  # resumed from epoch 2's checkpoint, epoch 3 redone


@pytest.mark.parametrize("patch,msg", [
    ({"parallel__worker_resources": {"pool_gpu_8x": 1}}, "pool_gpu_8x: 1 worker(s) need 1 pool_gpu_8x but the cluster has 0"),
    ({"parallel__workers": 3, "train__batch_size": 63}, "3 worker(s) need 3 CPU but the cluster has 2"),
])
def test_train_with_resources_no_node_has_is_refused_fast(ray_local, exp_dict, patch, msg):
    with pytest.raises(UserError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        driver.run(make_exp(exp_dict, **patch))
    assert not list(Path(exp_dict["output"]).glob("t/*"))  # nothing created: no run folder


@pytest.mark.parametrize("trial,msg", [
    ({"workers": 1, "use_gpu": True, "gpus_per_worker": 1024},  # more than any host has: host-independent
     "parallel.use_gpu: 1 worker(s) need 1024 GPU but the cluster has"),
    ({"workers": 1, "worker_resources": {"pool_x": 1}}, "pool_x: 1 worker(s) need 1 pool_x"),
])
def test_search_with_resources_no_node_has_is_refused_fast(ray_local, tmp_path, trial, msg):
    from raytrain.tuner import driver
    from raytrain.tuner.spec import load_spec

    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(json.dumps({
        "name": "r", "data": {"dataset": "digits"}, "model": {"name": "mlp"}, "output": str(tmp_path / "runs"),
        "train": {"batch_size": 64, "precision": "fp32"},
        "search": {"space": {"train.optimizer.lr": {"grid": [0.01, 0.1]}}, "trial": trial}}))
    with pytest.raises(UserError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        driver.run(load_spec(spec_path))
    assert not list((tmp_path / "runs").glob("r-search/*"))  # nothing created: no search folder


def test_embedded_ray_dashboard_is_local_and_needs_the_token(tmp_path, starts_ray):
    script = textwrap.dedent("""
        import json, socket, struct, urllib.error, urllib.request
        from raytrain.runtime import ray_session, dashboard_url

        def listening_ips(port):  # from /proc/net/tcp{,6}: local addresses in state LISTEN (0A) on `port`
            ips = set()
            for name in ("/proc/net/tcp", "/proc/net/tcp6"):
                try:
                    rows = open(name).read().splitlines()[1:]
                except OSError:
                    continue
                for row in rows:
                    local, state = row.split()[1], row.split()[3]
                    addr, p = local.split(":")
                    if state == "0A" and int(p, 16) == port:
                        raw = bytes.fromhex(addr)
                        if len(raw) == 4:
                            ips.add(socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(addr, 16))))
                        else:
                            ips.add(socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))
            return sorted(ips)

        with ray_session(num_cpus=1):
            url = dashboard_url()
            port = int(url.rsplit(":", 1)[1])
            listening = listening_ips(port)
            def status(headers):
                try:
                    return urllib.request.urlopen(urllib.request.Request(url + "/api/jobs/", headers=headers),
                                                  timeout=10).status
                except urllib.error.HTTPError as e:
                    return e.code

            # the header Ray's own clients send, with the token this Ray was started with
            from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled
            token = get_auth_headers_if_auth_enabled({})
            print("RESULT " + json.dumps({"url": url, "listening": listening, "status": status({}),
                                          "with_token": status(token) if token else None}))
    """)
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    got = json.loads(line[len("RESULT "):])
    assert got["url"].startswith("http://127.0.0.1:")
    assert got["listening"] == ["127.0.0.1"]
    assert got["status"] in (401, 403)  # token authentication is on: no token, no job API
    assert got["with_token"] == 200  # ... and with it, the job API answers
