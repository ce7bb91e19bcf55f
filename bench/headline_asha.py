"""ASHA on the headline search itself: search/mnist-speed.yaml as shipped (150 configurations, rungs at 1.5 s x 5),
then the same 150 configurations with ASHA off (every trial to its target or its epochs), one after the other in
one run, for each sampling seed (seed 1 is the shipped spec's). ~65 minutes a seed: `BENCH_SEEDS=2 python -m bench
--only headline_asha` runs one seed and keeps the others' earlier results (each seed's pair is stamped). The budget is lifted in both, so that both run every configuration (the shipped
14-minute budget is read against the ASHA run's wall). The `search` section compares 30 configurations for two
seeds: with one trial at a time, ASHA's first trials pass every rung for want of company, a cost that weighs more
in a small search; this is the comparison at the size the headline runs at."""

from __future__ import annotations

import os
import time

from bench.common import ROOT, load
from bench.search import OFF, _search

SAMPLES = 150
SEEDS = (1, 2)


def _rank(best: dict | None, reached: list[dict]) -> int | None:
    """Where a configuration stands (1 = fastest) among those that reached the target in the other search."""
    ranks = [i for i, r in enumerate(reached, 1) if best and r["params"] == best["params"]]
    return ranks[0] if ranks else None


def run() -> dict:
    seeds = os.environ.get("BENCH_SEEDS", ",".join(map(str, SEEDS))).split(",")
    done = (load("headline_asha") or {}).get("seeds", {})
    return {"seeds": {**done, **{s: _compare(int(s)) for s in seeds}},
            "task": f"MNIST to 99.0%, 2 CPUs, trials 1 x 2 CPUs, {SAMPLES} configurations a seed, no budget"}


def _compare(seed: int) -> dict:
    spec = ROOT / "search" / "mnist-speed.yaml"
    common = (f"search.samples={SAMPLES}", f"search.seed={seed}", "search.budget={}")
    asha = _search(spec, *common)
    off = _search(spec, *common, OFF, timeout=3 * 3600)
    return {"asha": asha, "off": off, **derived(asha, off), "measured_at": time.strftime("%Y-%m-%d %H:%M")}


def derived(asha: dict, off: dict) -> dict:
    """The comparison. The two searches run one after the other, ~an hour apart, and this VM drifts (±20%), so
    beside ASHA's best time against off's, each search's best configuration is also read in the other run: where
    ASHA's best stands among every configuration timed under the same conditions, and whether ASHA kept off's
    best (it reached the target under ASHA too) or stopped it."""
    b, o = asha["best"], off["best"]
    in_off = [r["time_to_target_s"] for r in off["reached_params"] if b and r["params"] == b["params"]]
    in_asha = [r["time_to_target_s"] for r in asha["reached_params"] if o and r["params"] == o["params"]]
    asha_params = [r["params"] for r in asha["reached_params"]]
    return {"trial_epochs_ratio": asha["trial_epochs"] / off["trial_epochs"], "wall_ratio": asha["wall_s"] / off["wall_s"],
            "same_best": bool(b and o and b["params"] == o["params"]),
            "best_time_ratio": b["time_to_target_s"] / o["time_to_target_s"] if b and o else None,
            "asha_best_rank_in_off": _rank(b, off["reached_params"]),
            "asha_best_in_off_ratio": in_off[0] / o["time_to_target_s"] if in_off and o else None,
            "off_best_rank_in_asha": _rank(o, asha["reached_params"]),  # None: ASHA stopped off's best
            "off_best_in_asha_ratio": in_asha[0] / b["time_to_target_s"] if in_asha and b else None,
            "off_reachers_asha_also_reached": sum(r["params"] in asha_params for r in off["reached_params"])}


def rows(r: dict) -> list[tuple[str, str, str]]:
    if not r:
        return []
    out = []
    for seed, c in sorted(r["seeds"].items()):
        a, o = c["asha"], c["off"]
        best = ("the same best" if c["same_best"] else
                f"ASHA's best {a['best']['time_to_target_s']:.2f} s vs {o['best']['time_to_target_s']:.2f} s = "
                f"{c['best_time_ratio']:.2f}×; timed in the off run it ranks {c['asha_best_rank_in_off']} of "
                f"{o['reached']}, at {c['asha_best_in_off_ratio']:.2f}× its best; off's best "
                + (f"kept (rank {c['off_best_rank_in_asha']} under ASHA, {c['off_best_in_asha_ratio']:.2f}× its best)"
                   if c["off_best_rank_in_asha"] else "stopped by ASHA") if c["asha_best_in_off_ratio"] else
                f"ASHA's best {c['best_time_ratio']:.2f}× off's" if c["best_time_ratio"] else "no best")
        out.append((f"ASHA on the headline search itself vs the same {a['trials']} configurations with ASHA off, "
                    f"seed {seed} ({c['measured_at']}): trial-epochs, best configuration, wall",
                    f"**{a['trial_epochs']:g} vs {o['trial_epochs']:g} = {c['trial_epochs_ratio']:.0%}**, {best}; "
                    f"{a['reached']} vs {o['reached']} reached 99.0%; wall {a['wall_s']:.0f} s vs {o['wall_s']:.0f} s "
                    f"= {c['wall_ratio']:.0%}", "≤40%, same best or within 5%"))
    return out
