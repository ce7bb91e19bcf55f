"""ASHA against the full grid over the same 27 configs (lr x momentum x schedule, cnn on digits 16x16, rungs
1, 3, 9, 27), in three seeded orders (ASHA's cost depends on the order trials arrive in) vs the grid
(grace_period = max_t: nobody stopped; its compute does not depend on the order). Compute is trial-epochs;
wall is the search's own wall time. Trials train in their Tune trial processes, reused across trials."""

from __future__ import annotations

import json
import statistics

from bench.common import OUT

SPEC = {
    "name": "asha-bench", "seed": 0, "data": {"dataset": "digits", "upscale": 2, "val_fraction": 0.3},
    "model": {"name": "cnn"},
    "train": {"batch_size": 64, "precision": "auto", "optimizer": {"name": "sgd", "momentum": 0.9}},
    "search": {"samples": 1, "space": {"train.optimizer.lr": {"grid": [0.002, 0.006, 0.02]},
                                       "train.optimizer.momentum": {"grid": [0.0, 0.5, 0.9]},
                                       "train.schedule.name": {"grid": ["constant", "cosine", "onecycle"]}},
               "asha": {"max_t": 27, "grace_period": 1, "reduction_factor": 3}, "trial": {"workers": 1}},
}
SEEDS = (0, 1, 2)


def run() -> dict:
    import yaml

    from raytrain import runtime
    from raytrain.tuner import driver
    from raytrain.tuner.spec import load_spec

    runs = {}
    max_t = SPEC["search"]["asha"]["max_t"]
    with runtime.ray_session(num_cpus=2):
        for label, grace, seed in [(f"asha seed {s}", 1, s) for s in SEEDS] + [("grid", max_t, 0)]:
            spec = json.loads(json.dumps(SPEC))
            spec["search"].update(seed=seed)
            spec["search"]["asha"]["grace_period"] = grace
            spec["output"] = str(OUT)
            path = OUT / f"asha-{label.replace(' ', '-')}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(spec))
            s = driver.run(load_spec(path))
            best = max(r["val_accuracy"] or 0 for r in s["trials"])
            runs[label] = {"trial_epochs": s["trial_epochs"], "wall_s": s["wall_s"], "best_val_accuracy": best,
                           "trials": len(s["trials"]), "run_dir": s["run_dir"]}
    grid = runs.pop("grid")
    for r in runs.values():
        r["compute_ratio"] = r["trial_epochs"] / grid["trial_epochs"]
        r["wall_ratio"] = r["wall_s"] / grid["wall_s"]
        r["best_gap_pt"] = 100 * (grid["best_val_accuracy"] - r["best_val_accuracy"])
    return {"grid": grid, "asha_runs": runs,
            "compute_ratio": statistics.mean(r["compute_ratio"] for r in runs.values()),
            "wall_ratio": statistics.mean(r["wall_ratio"] for r in runs.values()),
            "best_gap_pt": max(r["best_gap_pt"] for r in runs.values()),
            "task": (f"27 configs (lr x momentum x schedule), cnn on digits 16x16 (539 validation images), max_t {max_t}, "
                     f"reduction factor 3, 2 trials at a time; ASHA in {len(runs)} shuffled orders (mean; worst gap)")}


def rows(h: dict) -> list[tuple[str, str, str]]:
    if not h or "asha_runs" not in h:
        return []
    g, runs = h["grid"], h["asha_runs"]
    each = ", ".join(f"{r['compute_ratio']:.0%}" for r in runs.values())
    walls = ", ".join(f"{r['wall_ratio']:.0%}" for r in runs.values())
    return [
        (f"ASHA vs full grid ({g['trials']} configs, {g['trial_epochs'] // g['trials']} epochs each): trial-epochs and "
         f"best-acc gap", f"**{h['compute_ratio']:.0%}** of the compute (mean of {len(runs)} shuffled orders: {each}; "
         f"grid {g['trial_epochs']} trial-epochs), worst gap **{h['best_gap_pt']:+.2f} pt**", "≤30% at ≤0.3 pt"),
        ("ASHA vs full grid: wall-time fraction beside the compute fraction",
         f"**{h['wall_ratio']:.0%}** of the grid's {g['wall_s']:.0f} s ({walls}) vs {h['compute_ratio']:.0%} of its "
         f"compute: **{100 * (h['wall_ratio'] - h['compute_ratio']):+.0f} points**", "within 5 points"),
    ]
