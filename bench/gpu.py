"""GPU rows (`make gpu-check OUT=DIR` runs them after the gpu tests, see `bench.gpu_check`; every figure names
the GPU it came from):

  * throughput: samples/s of `raytrain train` against a plain PyTorch loop doing the same work: the recipe's
    model, batch, optimizer, LR schedule (stepped per batch), precision and memory format, EPOCHS epochs, the
    data on the GPU in both (raytrain's device cache; one normalised tensor on the GPU), the median of the
    epochs after the first. Pruning and early stopping are off on both sides (a recipe that prunes trains a
    different model from its pruning epoch on; mnist-fast does not prune today). The plain loop runs twice: with torch's defaults (what a user writes), and
    with raytrain's kernels (its optimizer as `raytrain.optim` builds it, cudnn.benchmark); the ratio is
    against the faster of the two;
  * syncs per training step, counted in those same runs (`bench.syncs.SyncsPerStep`, epoch 1): fp32 (classic)
    and bf16 (fast);
  * mnist-fast to 99.0% from the command's start to its exit, beside PyTorch's plain MNIST example;
  * start -> first step: the runs above (one worker, in-process) and one Ray Train worker group, beside one
    bare TorchTrainer.

Every row has a time limit and is skipped (said so in the results) when the budget left cannot hold it, so
the whole section ends inside the budget it is given.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from bench.common import ROOT, cli, median, module, steady

EPOCHS = 3
RECIPES = {"classic cnn, batch 64": "mnist-classic.yaml", "fast recipe, batch 128": "mnist-fast.yaml"}
SAME_WORK = [f"train.epochs={EPOCHS}", "train.early_stopping=null", "pruning.method=none", "data.device_cache=true",
             "callbacks=[bench.syncs:SyncsPerStep]"]
LIMITS_S = {"throughput": 150, "mnist_fast": 120, "worker_group": 120, "bare": 90}  # per row, at most


def _sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def plain_rate(yaml_file: str, raytrain_kernels: bool, epochs: int = EPOCHS, deadline: float = math.inf,
               device: str = "cuda") -> dict:
    """The recipe in a bare loop over MNIST held on the GPU, normalised once: samples/s of each epoch (no
    epoch starts after `deadline`, a time.monotonic() value)."""
    from raytrain.configio import load_experiment
    from raytrain.data.mnist import MNIST_MEAN, MNIST_STD, default_dir, load_mnist
    from raytrain.models import model_from
    from raytrain.optim import build_optimizer
    from raytrain.techniques.memory_format import wants_channels_last
    from raytrain.techniques.precision import resolve_precision
    from raytrain.techniques.schedule import build_scheduler

    exp = load_experiment(ROOT / "experiments" / yaml_file, [f"train.epochs={epochs}", "pruning.method=none"])
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(exp.seed)
    (xt, yt), _ = load_mnist(default_dir())
    x = (torch.from_numpy(xt).to(dev).float() / 255 - MNIST_MEAN) / MNIST_STD  # (n, 1, 28, 28)
    y = torch.from_numpy(yt).to(dev).long()
    model = model_from(exp.model, (1, 28, 28), 10).to(dev)
    if wants_channels_last(exp.train.channels_last, model):
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    cfg, bs = exp.train.optimizer, exp.train.batch_size
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = raytrain_kernels
    if raytrain_kernels:
        opt = build_optimizer(model, cfg)
    elif cfg.name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    elif cfg.name == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adadelta(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(len(y) / bs)
    sched = build_scheduler(opt, exp.train.schedule, epochs, steps, cfg.lr)
    precision = resolve_precision(exp.train.precision, dev)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    rates = []
    try:
        for _ in range(epochs):
            if rates and time.monotonic() > deadline:
                break
            model.train()
            sync()
            t0 = time.perf_counter()
            perm = torch.randperm(len(y), device=dev)
            for i in range(0, len(y), bs):
                idx = perm[i:i + bs]
                with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                    loss = F.cross_entropy(model(x[idx]).float(), y[idx])
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
            sync()
            rates.append(len(y) / (time.perf_counter() - t0))
    finally:
        torch.backends.cudnn.benchmark = before
    return {"samples_per_s": steady(rates), "all": [round(r) for r in rates], "precision": precision,
            "optimizer": type(opt).__name__ + (" (fused)" if opt.defaults.get("fused") else "")}


def raytrain_rate(yaml_file: str, output: str, timeout: float) -> dict:
    r = cli("train", str(ROOT / "experiments" / yaml_file), *_sets("parallel.use_gpu=true", *SAME_WORK,
            f"output={output}"), timeout=timeout)
    rows = _rows(r)
    first = rows[0] if rows else {}
    return {"samples_per_s": steady([x["samples_per_s"] for x in rows]) if rows else None,
            "all": [round(x["samples_per_s"]) for x in rows], "device_cache": first.get("device_cache"),
            "precision": first.get("precision"), "syncs_per_step": first.get("syncs_per_step"),
            "sync_sites": first.get("sync_sites"), "first_step_s": r["summary"].get("first_step_s"),
            "process_wall_s": r["process_wall_s"], "exit_code": r["exit_code"], "error": r["summary"].get("error")}


def _rows(r: dict) -> list[dict]:
    from bench.common import rows_of

    return rows_of(r["summary"]) if r["summary"].get("run_dir") else []


def throughput(label: str, yaml_file: str, output: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    ours = raytrain_rate(yaml_file, output, timeout)
    share = (deadline - time.monotonic()) / 2
    plain = {"torch_defaults": plain_rate(yaml_file, False, deadline=deadline - share),
             "raytrain_kernels": plain_rate(yaml_file, True, deadline=deadline)}
    best = max(p["samples_per_s"] for p in plain.values())
    ratio = ours["samples_per_s"] / best if ours["samples_per_s"] else None
    return {**ours, "plain": plain, "plain_samples_per_s": best, "ratio": ratio}


def mnist_fast(output: str, timeout: float) -> dict:
    fast = cli("train", str(ROOT / "experiments" / "mnist-fast.yaml"), *_sets("parallel.use_gpu=true", f"output={output}"),
               timeout=timeout)
    s, rows = fast["summary"], _rows(fast)
    plain, plain_wall = module("plain_mnist", "--target", "0.99", "--device", "cuda", timeout=timeout)
    return {"process_wall_s": fast["process_wall_s"], "first_step_s": s.get("first_step_s"),
            "to_target_since_launch_s": (s.get("final") or {}).get("time_to_target_since_launch_s"),
            "best_val_accuracy": max((x["val_accuracy"] for x in rows), default=None), "epochs": len(rows),
            "status": s.get("status"), "startup": s.get("startup"), "plain_example_process_wall_s": plain_wall,
            "plain_example_to_target_s": plain["to_target_since_start_s"] if plain["reached"] else None,
            "plain_epochs": len(plain["epochs"]), "plain_best": max(e["test_accuracy"] for e in plain["epochs"])}


def worker_group_start(output: str, timeout: float) -> dict:
    r = cli("train", str(ROOT / "experiments" / "mnist-fast.yaml"), *_sets(
        "parallel.use_gpu=true", "parallel.isolate=true", "train.epochs=1", "train.early_stopping=null",
        f"output={output}"), timeout=timeout)
    return {"first_step_s": r["summary"].get("first_step_s"), "startup": r["summary"].get("startup"),
            "process_wall_s": r["process_wall_s"]}


def bare_start(timeout: float) -> dict:
    return {"first_step_s": module("bare_trainer", "--workers", "1", "--gpu", timeout=timeout)[0]["function_reached_s"]}


def run(budget_s: float = 420, output: Optional[str] = None, save: Optional[Callable[[dict], None]] = None) -> dict:
    """Every row that fits in `budget_s`; `save(results)` after each (a run cut short keeps what it measured)."""
    end = time.monotonic() + budget_s
    if not torch.cuda.is_available():
        return {"gpu": None, "error": "no CUDA GPU here (torch.cuda.is_available() is False)"}
    output = output or str(ROOT / "runs" / "gpu-check")
    out: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "epochs": EPOCHS,
                 "throughput": {}, "skipped": {}, "failed": {}}
    jobs = [*[(f"throughput/{label}", "throughput", lambda t, a=label, f=f: throughput(a, f, output, t))
              for label, f in RECIPES.items()],
            ("mnist_fast", "mnist_fast", lambda t: mnist_fast(output, t)),
            ("worker_group_start", "worker_group", lambda t: worker_group_start(output, t)),
            ("bare_start", "bare", bare_start)]
    for key, kind, job in jobs:
        left = end - time.monotonic()
        if left < LIMITS_S[kind] * 0.5:
            out["skipped"][key] = f"budget: {left:.0f} s left, the row may take {LIMITS_S[kind]} s"
        else:
            try:
                value = job(min(LIMITS_S[kind], left))
                if key.startswith("throughput/"):
                    out["throughput"][key.split("/", 1)[1]] = value
                else:
                    out[key] = value
            except Exception as e:  # a failed row is recorded; the rows after it still run
                out["failed"][key] = f"{type(e).__name__}: {str(e).strip()[-600:]}"
        if save:
            save(out)
    starts = [t["first_step_s"] for t in out["throughput"].values() if t.get("first_step_s")]
    if out.get("mnist_fast", {}).get("first_step_s"):
        starts.append(out["mnist_fast"]["first_step_s"])
    out["in_process_first_step_s"] = sorted(round(s, 2) for s in starts)
    return out


def _s(v, fmt: str = ".1f", none: str = "n/a") -> str:
    return none if v is None else format(v, fmt)


def rows(g: dict) -> list[tuple[str, str, str]]:
    """README rows; every value may be missing (a row skipped, failed or cut short) and reads "n/a" then."""
    out: list[tuple[str, str, str]] = []
    name = (g or {}).get("gpu")
    if not name:
        return out
    for label, t in g.get("throughput", {}).items():
        cache = {True: "on", False: "off"}.get(t.get("device_cache"), "n/a")
        out.append((f"[{name}] samples/s vs a plain PyTorch loop, same work, data on the GPU: {label}",
                    f"{_s(t.get('samples_per_s'), '.0f')} vs {_s(t.get('plain_samples_per_s'), '.0f')} = "
                    f"**{_s(t.get('ratio'), '.2f')}** ({t.get('precision')}, device cache {cache})", "≥0.95"))
        out.append((f"[{name}] host-device syncs per training step, {t.get('precision')} ({label})",
                    _s(t.get("syncs_per_step"), ".2f"), "0"))
    m = g.get("mnist_fast")
    if m:
        ours = (f"target at {_s(m.get('to_target_since_launch_s'))} s" if m.get("to_target_since_launch_s") is not None
                else f"NOT REACHED (best {_s(m.get('best_val_accuracy'), '.4f')} in {m.get('epochs')} epochs)")
        plain = (f"{_s(m.get('plain_example_to_target_s'))} s to target" if m.get("plain_example_to_target_s") is not None
                 else f"NOT REACHED (best {_s(m.get('plain_best'), '.4f')})")
        out.append((f"[{name}] mnist-fast to 99.0% from command start (PyTorch's plain example on the same GPU)",
                    f"{ours}, exit at {_s(m.get('process_wall_s'))} s (first step {_s(m.get('first_step_s'))} s) vs "
                    f"the plain example's {plain}, {_s(m.get('plain_example_process_wall_s'))} s to exit", "report"))
    starts = g.get("in_process_first_step_s") or []
    wg, bare = (g.get("worker_group_start") or {}).get("first_step_s"), (g.get("bare_start") or {}).get("first_step_s")
    if starts or wg is not None:
        out.append((f"[{name}] start → first step: one worker (in-process) / a Ray Train worker group / a bare TorchTrainer",
                    f"{_s(median(starts) if starts else None)} s (median of {len(starts)}) / {_s(wg)} s / {_s(bare)} s",
                    "≤10 s"))
    return out


def main() -> None:
    """`python -m bench.gpu [--out FILE] [--budget-s S]`: the rows alone (no tests), to FILE as JSON."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.gpu")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu" / "gpu.json"))
    ap.add_argument("--budget-s", type=float, default=420)
    args = ap.parse_args()
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = run(args.budget_s, save=lambda r: path.write_text(json.dumps(r, indent=2, default=str)))
    path.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, default=str)[:4000])


if __name__ == "__main__":
    main()
