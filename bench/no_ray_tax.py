"""No Ray tax on one machine: `raytrain train bench/recipes/mnist-fast-cnn.yaml` (one worker, no Ray started) vs the
same recipe written by hand in plain PyTorch (bench/plain_fast.py), each command from its start to its exit,
alternating, `repeats` times each; medians and every run kept. Inner figures beside: raytrain's start to
first step and its breakdown, the plain script's data-ready and first-step times, each side's accuracy."""

from __future__ import annotations

import os

from bench.common import OUT, ROOT, cli, median, mnist_available, module

RECIPE = ROOT / "bench" / "recipes" / "mnist-fast-cnn.yaml"  # the recipe bench/plain_fast.py writes by hand


def _raytrain(seed: int) -> dict:
    r = cli("train", str(RECIPE), "--set", f"output={OUT}", "--set", f"seed={seed}")
    s, f = r["summary"], r["summary"].get("final", {})
    return {"process_wall_s": r["process_wall_s"], "first_step_s": s.get("first_step_s"), "startup": s.get("startup"),
            "ray": s.get("ray"), "val_accuracy": f.get("val_accuracy"), "epochs": f.get("epoch")}


def _plain(seed: int) -> dict:
    out, wall = module("plain_fast", "--seed", str(seed))
    return {"process_wall_s": wall, "first_step_s": out["first_step_s"], "data_ready_s": out["data_ready_s"],
            "val_accuracy": out["epochs"][-1]["test_accuracy"], "epochs": len(out["epochs"])}


def run(repeats: int = int(os.environ.get("BENCH_REPEATS", "3")), seed: int = 1) -> dict:
    if not mnist_available():
        return {"skipped": "MNIST files not at $RAYTRAIN_DATA/mnist"}
    ours, plain = [], []
    for _ in range(repeats):
        plain.append(_plain(seed))
        ours.append(_raytrain(seed))
    walls = {k: median([r["process_wall_s"] for r in v]) for k, v in (("raytrain", ours), ("plain", plain))}
    return {"raytrain": ours, "plain": plain, "median_wall_s": walls, "ratio": walls["raytrain"] / walls["plain"],
            "median_first_step_s": median([r["first_step_s"] for r in ours]),
            "task": f"MNIST, mnist-fast-cnn's recipe (seed {seed}), 2 epochs or the target, {repeats} alternating runs each"}


def rows(m: dict) -> list[tuple[str, str, str]]:
    if not m or "ratio" not in m:
        return []
    w = m["median_wall_s"]
    walls = lambda runs: ", ".join(f"{r['process_wall_s']:.1f}" for r in runs)  # noqa: E731
    phases = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in (m["raytrain"][0].get("startup") or {}).items())
    return [
        ("one-worker `raytrain train bench/recipes/mnist-fast-cnn.yaml` (no Ray; mnist-fast until cnn_bn) vs the same "
         "recipe in plain PyTorch (bench/plain_fast.py), start → exit, alternating",
         f"{w['raytrain']:.1f} s ({walls(m['raytrain'])}) vs {w['plain']:.1f} s ({walls(m['plain'])}) = "
         f"**{m['ratio']:.2f}×**; val acc {m['raytrain'][0]['val_accuracy']:.4f} vs {m['plain'][0]['val_accuracy']:.4f}",
         "≤1.15×"),
        ("that run's start → first step",
         f"**{m['median_first_step_s']:.1f} s** (plain: data ready {m['plain'][0]['data_ready_s']:.1f} s, first step "
         f"{m['plain'][0]['first_step_s']:.1f} s); {phases}", "≤3 s"),
    ]
