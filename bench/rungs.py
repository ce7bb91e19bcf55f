"""Where the headline search's rungs on seconds sit, chosen by replay. For two sampling seeds, the first 20 of
the configurations the `search` section compares are trained whole, one at a time as the search trains them, under
Tune's FIFOScheduler, each evaluated at dense rungs (1 s x 1.35^k, to 8.2 s) and at every epoch's end. Tune's own
ASHAScheduler is then fed those reports trial by trial, for each candidate (first rung, reduction factor), in the
order Tune drew the trials and in 400 random orders: a trial it stops costs the epochs it had trained at that rung.
Measured: trial-epochs against every trial trained whole (ASHA off), and how often the best configuration (or one
within 5% of its seconds to 99%) survives. Values between two recorded reports are interpolated: past 8.2 s that
spans up to an epoch (through a pruning dip the best-so-far signal then skips), and a rung a live trial would leave
to its epoch's report (passed on its last step or in its evaluation) is replayed as a probe. Writes rungs.png and
the recorded reports (rungs-records.json, beside the run folders).
"""

from __future__ import annotations

import json

import numpy as np

from bench.common import OUT, RESULTS, ROOT

SEEDS = (1, 2)
GRACE = (1.0, 1.5, 2.0)
RF = (3, 4, 5, 6, 8)
ORDERS = 400
RECORD = "search.asha={max_t: 3, grace_s: 1, reduction_factor: 1.35}"  # 8 rungs: 1 ... 8.2 s


def record(seed: int) -> list[dict]:
    """The 20 trials of this seed trained whole, in the order they started: their reports at every rung and
    epoch end (training seconds, val accuracy, epochs trained) and their seconds to 99%."""
    from ray.tune.schedulers import FIFOScheduler

    from raytrain.tuner import driver
    from raytrain.tuner.spec import load_spec

    spec = load_spec(ROOT / "search" / "mnist-speed.yaml", ["search.samples=20", f"search.seed={seed}",
                                                             "search.budget={}", "search.confirm=null", RECORD,
                                                             f"output={OUT}"])
    rows = driver.run(spec, scheduler=FIFOScheduler())["trials"]
    rows = [r for r in rows if r["history"] and not str(r["status"]).startswith(("error", "skipped", "diverged"))]
    rows.sort(key=lambda r: r["history"][0]["trial_started_mono"])
    return [{"t": [h["elapsed_s"] for h in r["history"]], "acc": [h["val_accuracy"] for h in r["history"]],
             "ep": [h["trained_epochs"] for h in r["history"]], "end": [not h["probe"] for h in r["history"]],
             "to_target_s": r["time_to_target_s"], "params": r["params"]} for r in rows]


def replay(trials: list[dict], order, grace: float, rf: float) -> tuple[float, float]:
    """Trial-epochs ASHA spends on `trials` arriving in `order`, and its best's seconds to target (inf: none)."""
    from ray.tune.experiment import Trial

    from raytrain.tuner import tuning
    from raytrain.tuner.spec import RungClock, SearchConfig

    s = SearchConfig(objective={"time_to_target": 0.99}, asha={"max_t": 3, "grace_s": grace, "reduction_factor": rf})
    sched, rungs = tuning.make_scheduler(s), s.asha.rung_seconds()
    spent, best = 0.0, np.inf
    for n, i in enumerate(order):
        x, trial, clock = trials[i], Trial("__fake", stub=True, trial_id=f"t{n}"), RungClock(s)  # as run_trial adds it
        sched.on_trial_add(None, trial)
        reports = sorted([(sec, float(np.interp(sec, x["t"], x["acc"])), float(np.interp(sec, x["t"], x["ep"])))
                          for sec in rungs if sec < x["t"][-1]]
                         + [(t, a, e) for t, a, e, end in zip(x["t"], x["acc"], x["ep"], x["end"]) if end])
        for sec, acc, ep in reports:
            if sched.on_trial_result(None, trial, clock.add({"elapsed_s": sec, "val_accuracy": acc})) == "STOP":
                spent += ep
                break
        else:
            sched.on_trial_complete(None, trial, clock.add({"elapsed_s": x["t"][-1], "val_accuracy": x["acc"][-1]}))
            spent += x["ep"][-1]
            best = min(best, x["to_target_s"] or np.inf)
    return spent, best


def run() -> dict:
    from raytrain import runtime

    with runtime.ray_session(num_cpus=2):
        recorded = {seed: record(seed) for seed in SEEDS}
    (OUT / "rungs-records.json").write_text(json.dumps(recorded))
    rng = np.random.default_rng(0)
    grid = {}
    for seed, trials in recorded.items():
        off = sum(x["ep"][-1] for x in trials)
        best_off = min(x["to_target_s"] or np.inf for x in trials)
        orders = [rng.permutation(len(trials)) for _ in range(ORDERS)]
        for g in GRACE:
            for rf in RF:
                drawn = replay(trials, range(len(trials)), g, rf)
                rand = np.array([replay(trials, o, g, rf) for o in orders])
                grid.setdefault(f"{g:g}x{rf}", {})[seed] = {
                    "drawn_order_ratio": drawn[0] / off, "drawn_order_best_kept": bool(drawn[1] <= 1.05 * best_off),
                    "mean_ratio": float(rand[:, 0].mean() / off), "p90_ratio": float(np.percentile(rand[:, 0], 90) / off),
                    "best_kept": float(np.mean(rand[:, 1] <= 1.05 * best_off))}
        recorded[seed] = {"off_trial_epochs": off, "best_to_target_s": best_off,
                          "reached": sum(x["to_target_s"] is not None for x in trials)}
    _plot(grid)
    return {"recorded": recorded, "grid": grid, "orders": ORDERS,
            "task": "20 configurations x 2 sampling seeds of search/mnist-speed.yaml, trained whole (FIFO), 2 CPUs; "
                    "Tune's ASHAScheduler replayed over their reports"}


def _mean(cell: dict, key: str) -> float:
    return float(np.mean([v[key] for v in cell.values()]))


def _plot(grid: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, key, title, cmap in ((axes[0], "mean_ratio", "trial-epochs vs ASHA off (mean of random orders)", "RdYlGn_r"),
                                 (axes[1], "best_kept", "best kept, or one within 5% (share of orders)", "RdYlGn")):
        m = np.array([[_mean(grid[f"{g:g}x{rf}"], key) for rf in RF] for g in GRACE])
        ax.imshow(m, cmap=cmap, vmin=0.2 if key == "mean_ratio" else 0.5, vmax=0.5 if key == "mean_ratio" else 1.0)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=9)
        ax.set_xticks(range(len(RF)), [str(r) for r in RF])
        ax.set_yticks(range(len(GRACE)), [f"{g:g} s" for g in GRACE])
        ax.set_xlabel("reduction factor")
        ax.set_ylabel("first rung")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS / "rungs.png", dpi=110)
    plt.close(fig)


def rows(r: dict) -> list[tuple[str, str, str]]:
    if not r or "grid" not in r:
        return []
    out = []
    for key, label in (("1.5x3", "the headline's rungs (1.5 s, rf 3)"), ("1.5x5", "the previous rungs (1.5 s, rf 5)"),
                       ("2x4", "the first rungs (2 s, rf 4)")):
        cell = r["grid"].get(key)
        if not cell:
            continue
        each = "; ".join(f"seed {s}: drawn order {c['drawn_order_ratio']:.0%}"
                         f"{'' if c['drawn_order_best_kept'] else ' (best lost)'}, random orders {c['mean_ratio']:.0%} "
                         f"(p90 {c['p90_ratio']:.0%}), best kept {c['best_kept']:.0%}" for s, c in cell.items())
        out.append((f"ASHA replayed over 2 x 20 recorded trials, {label}: trial-epochs vs ASHA off, best kept "
                    f"({r['orders']} random orders; rungs.png)", each, "— (a check of the choice, not a goal)"))
    return out
