"""ASHA on the headline search itself: search/mnist-speed.yaml as shipped (150 configurations of seed 1, rungs at
1.5 s x 5), then the same 150 configurations with ASHA off (every trial to its target or its epochs), one after
the other in one run. The budget is lifted in both, so that both run every configuration (the shipped 14-minute
budget is reported against the ASHA run's wall). The `search` section compares 30 configurations for two seeds:
with one trial at a time, ASHA's first trials pass every rung for want of company, a cost that weighs more in a
small search; this is the comparison at the size the headline runs at. ASHA off takes ~50 minutes here."""

from __future__ import annotations

from bench.common import ROOT
from bench.search import OFF, _search

SAMPLES = 150


def _rank(best: dict | None, reached: list[dict]) -> int | None:
    """Where a configuration stands (1 = fastest) among those that reached the target in the other search."""
    ranks = [i for i, r in enumerate(reached, 1) if best and r["params"] == best["params"]]
    return ranks[0] if ranks else None


def run() -> dict:
    spec, common = ROOT / "search" / "mnist-speed.yaml", (f"search.samples={SAMPLES}", "search.budget={}")
    asha = _search(spec, *common)
    off = _search(spec, *common, OFF, timeout=3 * 3600)
    b, o = asha["best"], off["best"]
    asha_params = [r["params"] for r in asha["reached_params"]]
    return {"asha": asha, "off": off, "trial_epochs_ratio": asha["trial_epochs"] / off["trial_epochs"],
            "wall_ratio": asha["wall_s"] / off["wall_s"],
            "same_best": bool(b and o and b["params"] == o["params"]),
            "best_time_ratio": b["time_to_target_s"] / o["time_to_target_s"] if b and o else None,
            "asha_best_rank_in_off": _rank(b, off["reached_params"]),
            "off_reachers_asha_also_reached": sum(r["params"] in asha_params for r in off["reached_params"]),
            "task": f"MNIST to 99.0%, 2 CPUs, trials 1 x 2 CPUs, {SAMPLES} configurations (seed 1), no budget"}


def rows(r: dict) -> list[tuple[str, str, str]]:
    if not r:
        return []
    a, o = r["asha"], r["off"]
    best = ("the same best" if r["same_best"] else
            f"ASHA's best {a['best']['time_to_target_s']:.2f} s vs {o['best']['time_to_target_s']:.2f} s = "
            f"{r['best_time_ratio']:.2f}× (rank {r['asha_best_rank_in_off']} of {o['reached']} there)"
            if r["best_time_ratio"] else "no best")
    return [(f"ASHA on the headline search itself vs the same {a['trials']} configurations with ASHA off "
             "(`python -m bench --only headline_asha`): trial-epochs, best configuration, wall",
             f"**{a['trial_epochs']:g} vs {o['trial_epochs']:g} = {r['trial_epochs_ratio']:.0%}**, {best}; "
             f"{a['reached']} vs {o['reached']} reached 99.0%; wall {a['wall_s']:.0f} s vs {o['wall_s']:.0f} s "
             f"= {r['wall_ratio']:.0%}", "≤40%, same best or within 5%")]
