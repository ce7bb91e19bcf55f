"""A search's confirmation, the Ray-free part: which configurations go to it (finalists), on which seeds, in which
order, and how they are ranked once retrained: by their WORST seed.

Why the worst seed: the search's top trial is the best of many one-seed draws, so its number is biased low
(winner's curse), and a recipe that reaches the target on one seed but not on the next is not a recipe. A
finalist that misses the target on any seed ranks behind every finalist that reached it on all; among those
that did, the slowest seed decides (the mean breaks ties). The search's own trial of a finalist is shown beside,
never counted: it is the draw that selected it.

Every number here comes from the run's validation split except `test_accuracy` (the test split, read once at a
run's end; present when the dataset has one): `SPLITS` says so in search.json."""

from __future__ import annotations

import math
from typing import Optional

from raytrain.tuner.labels import params_text, trial_name

SEED_OFFSET = 1000  # fresh seeds: the experiment seed + SEED_OFFSET + i
SPLITS = {"time_to_target_s": "validation", "val_accuracy": "validation", "val_loss": "validation",
          "test_accuracy": "test", "test_loss": "test"}
FAILED = ("error", "skipped", "diverged")


def fresh_seeds(seed: int, n: int, used: set[int]) -> list[int]:
    """n seeds derived from the experiment seed, none of them one the search trained with."""
    out, i = [], 0
    while len(out) < n:
        candidate = seed + SEED_OFFSET + i
        if candidate not in used:
            out.append(candidate)
        i += 1
    return out


def pick(rows: list[dict], top_k: int) -> list[dict]:
    """The search's top_k configurations as ranked (errored, skipped and diverged trials left out)."""
    ok = [r for r in rows if not str(r["status"]).startswith(FAILED)]
    return [{"finalist": i, "search_trial_id": r["trial_id"], "search_rank": r["rank"], "params": r["params"],
             "search_time_to_target_s": r.get("time_to_target_s"), "search_val_accuracy": r.get("val_accuracy")}
            for i, r in enumerate(ok[:top_k], 1)]


def points(finalists: list[dict], seeds: list[int]) -> list[dict]:
    """The (finalist, seed) runs in the order they start: seed by seed, every finalist once per seed, so that a
    finalist's runs are spread over the stage as everyone's are (a machine's speed can drift over minutes)."""
    return [{"finalist": f["finalist"], "seed": s, "config": {**f["params"], "seed": s}} for s in seeds for f in finalists]


def _num(v) -> Optional[float]:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _failed(r: dict) -> bool:
    return str(r.get("status", "")).startswith(FAILED)


def rank(finalists: list[dict], runs: list[dict], seeds: list[int], objective: dict) -> list[dict]:
    """The finalists with their per-seed numbers, ranked by the worst seed (see the module's docstring). A seed
    with no run (or a failed one) counts as a miss; for a metric objective, as the worst value there is."""
    target = objective.get("time_to_target")
    metric, sign = objective.get("metric", "val_accuracy"), (1 if objective.get("mode", "max") == "max" else -1)
    out = []
    for f in finalists:
        by_seed = {r["seed"]: r for r in runs if r["finalist"] == f["finalist"]}
        mine = [by_seed.get(s) or {"seed": s, "status": "error: no run"} for s in seeds]
        ok = [r for r in mine if not _failed(r)]
        accs = [_num(r.get("val_accuracy")) for r in mine]
        tests = [_num(r.get("test_accuracy")) for r in mine]
        worst_acc = min((a if a is not None and not _failed(r) else -math.inf) for a, r in zip(accs, mine))
        row = {**f, "seeds": seeds, "runs": len(ok), "worst_val_accuracy": worst_acc if worst_acc > -math.inf else None,
               "worst_test_accuracy": min(tests) if tests and all(t is not None for t in tests) else None}
        if target is not None:
            times = [_num(r.get("time_to_target_s")) for r in ok]
            reached = [t for t in times if t is not None]
            row.update(reached=len(reached), all_reached=len(reached) == len(seeds),
                       worst_time_to_target_s=max(reached) if len(reached) == len(seeds) else None,
                       mean_time_to_target_s=sum(reached) / len(reached) if reached else None)
            key = ((0, row["worst_time_to_target_s"], row["mean_time_to_target_s"]) if row["all_reached"] else
                   (1, -len(reached), -worst_acc))
        else:
            values = [_num(r.get(metric)) if not _failed(r) else None for r in mine]
            complete = all(v is not None for v in values)
            row.update(worst=min(v * sign for v in values) * sign if complete else None, all_reached=complete)
            key = (0, -sign * row["worst"]) if complete else (1, -sum(v is not None for v in values))
        out.append((key + (f["search_rank"],), row))
    ranked = [row for _, row in sorted(out, key=lambda kr: kr[0])]
    for i, row in enumerate(ranked, 1):
        row["confirmed_rank"] = i
    return ranked


def worst_text(f: dict, objective: dict) -> str:
    """A finalist's worst seed, in words (the console and the CLI's table)."""
    target = objective.get("time_to_target")
    if target is not None:
        if f["all_reached"]:
            return f"worst seed {f['worst_time_to_target_s']:.1f} s to {target:.2%}"
        return f"reached {target:.2%} on {f['reached']} of {len(f['seeds'])} seeds"
    if f["all_reached"]:
        return f"worst seed {objective.get('metric', 'val_accuracy')} {f['worst']:.4g}"
    return f"{f['runs']} of {len(f['seeds'])} seeds finished"


def table(block: dict, objective: dict) -> str:
    """The confirmed ranking, one line per finalist (the CLI prints it under the trials' table)."""
    lines = [f"confirmation: top {block['top_k']} retrained on seeds {block['seeds']} (the search trained on seed "
             f"{block['search_seed']}); ranked by the worst seed"]
    for f in block["finalists"]:
        runs = [r for r in block["runs"] if r["finalist"] == f["finalist"]]
        per = "  ".join(f"seed {r['seed']}: " + (f"{r['time_to_target_s']:.1f} s" if r.get("time_to_target_s") is not None
                                                  else f"val_acc {r['val_accuracy']:.4f}" if _num(r.get("val_accuracy"))
                                                  is not None else str(r["status"])[:30]) for r in runs)
        lines.append(f"  {f['confirmed_rank']}. {trial_name(f['search_trial_id'])} (search rank {f['search_rank']}): "
                     f"{worst_text(f, objective)}  [{per}]  {params_text(f['params'])}")
    return "\n".join(lines)
