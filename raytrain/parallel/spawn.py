"""Run a function on N local processes joined by a gloo process group (multiprocessing, spawn),
without Ray: the pipeline tests and bench use it, and it is handy to try a pipeline layout quickly.
Every wait is bounded: a rank that hangs raises TimeoutError instead of hanging the caller."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import socket
import time
from datetime import timedelta

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args, q) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        # Results travel as plain pickled bytes: put on the queue as tensors, torch's multiprocessing
        # reductions (registered by `import torch`) share them through a file descriptor that only lives
        # while this process does, and a rank that exits first leaves the caller a FileNotFoundError.
        q.put((rank, pickle.dumps(fn(*args)), None))
    except Exception as e:  # reported to the test, which fails with it
        q.put((rank, None, f"{type(e).__name__}: {e}"))
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int, *args, timeout: float = 120.0) -> list:
    """fn(*args) on ranks 0..world-1; returns their results in rank order (raises on any error or timeout)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, q), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    results, errors = {}, {}
    deadline = time.monotonic() + timeout
    try:
        while len(results) + len(errors) < world:
            try:
                rank, value, err = q.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"ranks {sorted(set(range(world)) - set(results) - set(errors))} "
                                   f"gave no result within {timeout:.0f} s") from None
            if err:
                errors[rank] = err
            else:
                results[rank] = pickle.loads(value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    if errors:
        raise RuntimeError(f"rank errors: {errors}")
    return [results[r] for r in range(world)]
