"""ASHA on the headline search itself: search/mnist-speed.yaml as shipped (150 configurations, rungs at 1.5 s x 5),
then the same 150 configurations with ASHA off (every trial to its target or its epochs), one after the other in
one run, for each sampling seed (seed 1 is the shipped spec's). ~65 minutes a seed: `BENCH_SEEDS=2 python -m bench
--only headline_asha` runs one seed and keeps the others' earlier results (each seed's pair is stamped). The
budget is lifted in both, so that both run every configuration (the shipped 14-minute budget is read against the
ASHA run's wall). The two searches run ~an hour apart and this VM drifts (±20%), so each search's best is also
read in the other run (`bench.search.derived`), and the `asha_pick` section then retrains the picks side by side.
The `search` section compares 30 configurations for two seeds: with one trial at a time, ASHA's first trials pass
every rung for want of company, a cost that weighs more in a small search; this is the comparison at the size the
headline runs at. The off arm does not depend on the rungs (OFF replaces the whole asha block): `BENCH_ARMS=asha`
reruns only the ASHA arm (new rungs) against each seed's stored off arm, which keeps its own stamp."""

from __future__ import annotations

import os
import time

import yaml

from bench.common import ROOT, load
from bench.search import OFF, _search, derived

SAMPLES = 150
SEEDS = (1, 2)


def run() -> dict:
    seeds = os.environ.get("BENCH_SEEDS", ",".join(map(str, SEEDS))).split(",")
    done = (load("headline_asha") or {}).get("seeds", {})
    only_asha = os.environ.get("BENCH_ARMS") == "asha"
    return {"seeds": {**done, **{s: _compare(int(s), done.get(s) if only_asha else None) for s in seeds}},
            "task": f"MNIST to 99.0%, 2 CPUs, trials 1 x 2 CPUs, {SAMPLES} configurations a seed, no budget"}


def _compare(seed: int, stored: dict | None) -> dict:
    """ASHA then off for `seed`; with `stored` (an earlier pair of this seed), ASHA against its off arm (a seed
    with none runs both)."""
    spec = ROOT / "search" / "mnist-speed.yaml"
    common = (f"search.samples={SAMPLES}", f"search.seed={seed}", "search.budget={}", "search.confirm=null")
    asha = _search(spec, *common)
    asha_at = time.strftime("%Y-%m-%d %H:%M")
    if stored:
        off, off_at = stored["off"], stored["off_measured_at"]
    else:
        off, off_at = _search(spec, *common, OFF, timeout=3 * 3600), time.strftime("%Y-%m-%d %H:%M")
    return {"asha": asha, "off": off, **derived(asha, off), "measured_at": asha_at, "off_measured_at": off_at,
            "rungs": yaml.safe_load(spec.read_text())["search"]["asha"]}


def rows(r: dict) -> list[tuple[str, str, str]]:
    if not r:
        return []
    out = []
    for seed, c in sorted(r["seeds"].items()):
        a, o = c["asha"], c["off"]
        if c["same_best"]:
            best = "the same best"
        elif c["asha_best_in_off_ratio"]:
            kept = (f"kept (rank {c['off_best_rank_in_asha']} under ASHA, {c['off_best_in_asha_ratio']:.2f}× its best)"
                    if c["off_best_rank_in_asha"] else "stopped by ASHA")
            best = (f"ASHA's best {a['best']['time_to_target_s']:.2f} s vs {o['best']['time_to_target_s']:.2f} s = "
                    f"{c['best_time_ratio']:.2f}×; timed in the off run it ranks {c['asha_best_rank_in_off']} of "
                    f"{o['reached']}, at {c['asha_best_in_off_ratio']:.2f}× its best; off's best {kept}")
        else:
            best = f"ASHA's best {c['best_time_ratio']:.2f}× off's" if c["best_time_ratio"] else "no best"
        rungs = c["rungs"]
        when = f"ASHA {c['measured_at']}, off {c['off_measured_at']}"
        at = f"{rungs['grace_s']:g} s" if rungs.get("grace_s") is not None else f"epoch {rungs.get('grace_period', 1)}"
        out.append((f"ASHA (rungs at {at} x {rungs.get('reduction_factor', 4):g}) on the headline search "
                    f"itself vs the same {a['trials']} configurations with ASHA off, seed {seed} ({when}): "
                    "trial-epochs, best configuration, wall",
                    f"**{a['trial_epochs']:g} vs {o['trial_epochs']:g} = {c['trial_epochs_ratio']:.0%}**, {best}; "
                    f"{a['reached']} vs {o['reached']} reached 99.0%; wall {a['wall_s']:.0f} s vs {o['wall_s']:.0f} s "
                    f"= {c['wall_ratio']:.0%}", "≤40%, same best or within 5%"))
    return out
