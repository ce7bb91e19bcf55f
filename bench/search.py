"""The headline search (search/mnist-speed.yaml) on this machine's 2 CPUs, then its winner retrained from
best.yaml beside experiments/mnist-fast.yaml (alternating, two runs each: time to 99.0% from each command's
start), then ASHA against the same sampled configurations with ASHA off (every trial to its epochs or its
target)."""

from __future__ import annotations

import json

import yaml

from bench.common import OUT, ROOT, cli, median

N_COMPARE = 20  # configurations for the ASHA on/off comparison (no budget: the same configs both ways)


def _train(path: str) -> dict:
    r = cli("train", path, "--set", f"output={OUT}")
    f = r["summary"].get("final", {})
    return {"process_wall_s": r["process_wall_s"], "to_target_since_launch_s": f.get("time_to_target_since_launch_s"),
            "train_s_to_target": f.get("time_to_target_s"), "epochs": f.get("epoch"), "val_accuracy": f.get("val_accuracy")}


def _search(spec_path, *overrides) -> dict:
    r = cli("search", str(spec_path), "--set", f"output={OUT}", *[a for o in overrides for a in ("--set", o)])
    s = r["summary"]
    reached = [t for t in s["trials"] if t.get("time_to_target_s") is not None]
    return {"process_wall_s": r["process_wall_s"], "wall_s": s["wall_s"], "trials": len(s["trials"]),
            "trial_epochs": s["trial_epochs"], "reached": len(reached), "budget_note": s.get("budget_note"),
            "best": {k: reached[0][k] for k in ("params", "time_to_target_s", "epochs", "val_accuracy")} if reached else None,
            "best_yaml": s.get("best_yaml"), "run_dir": s["run_dir"]}


def run() -> dict:
    spec = ROOT / "search" / "mnist-speed.yaml"
    head = _search(spec)
    side = {"best": [], "mnist_fast": []}
    for _ in range(2):
        side["best"].append(_train(head["best_yaml"]))
        side["mnist_fast"].append(_train(str(ROOT / "experiments" / "mnist-fast.yaml")))
    compare = {}
    for label, asha in (("asha", None), ("off", "search.asha={max_t: 3, grace_period: 3}")):
        compare[label] = _search(spec, f"search.samples={N_COMPARE}", "search.budget={}", *([asha] if asha else []))
    compare["trial_epochs_ratio"] = compare["asha"]["trial_epochs"] / compare["off"]["trial_epochs"]
    b, o = compare["asha"]["best"], compare["off"]["best"]
    compare["same_best"] = bool(b and o and b["params"] == o["params"])
    compare["best_time_ratio"] = b["time_to_target_s"] / o["time_to_target_s"] if b and o else None
    med = {k: median([r["to_target_since_launch_s"] or float("inf") for r in v]) for k, v in side.items()}
    return {"headline": head, "side_by_side": side, "to_target_median_s": med,
            "best_vs_fast": med["best"] / med["mnist_fast"], "compare": compare,
            "spec": yaml.safe_load(spec.read_text())["search"], "task": "MNIST to 99.0%, 2 CPUs, trials 1 x 2 CPUs"}


def rows(r: dict) -> list[tuple[str, str, str]]:
    if not r:
        return []
    h, c, med = r["headline"], r["compare"], r["to_target_median_s"]
    best = json.dumps(h["best"]["params"]) if h.get("best") else "none"
    return [
        ("headline search `search/mnist-speed.yaml`: configurations reaching 99.0%, wall time",
         f"**{h['reached']}** of {h['trials']} trials ({h['trial_epochs']} trial-epochs), **{h['process_wall_s']:.0f} s** "
         f"from command start to exit ({h['budget_note']})", "≥3, ≤ 15 min"),
        ("its best, retrained from best.yaml, vs experiments/mnist-fast.yaml: time to 99.0% from command start "
         "(median of 2 each, alternating)",
         f"{med['best']:.1f} s vs {med['mnist_fast']:.1f} s = **{r['best_vs_fast']:.2f}×** (best: {best})", "≤1.0×"),
        (f"ASHA vs the same {N_COMPARE} configurations with ASHA off: trial-epochs, best configuration",
         f"{c['asha']['trial_epochs']} vs {c['off']['trial_epochs']} = **{c['trial_epochs_ratio']:.0%}**; wall "
         f"{c['asha']['wall_s']:.0f} s vs {c['off']['wall_s']:.0f} s; "
         + ("same best configuration" if c["same_best"] else
            f"best's time to target {c['best_time_ratio']:.2f}× the ASHA-off best's" if c["best_time_ratio"] else "—"),
         "≤40%, same best or within 5%"),
    ]
