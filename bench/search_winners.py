"""The headline search with its confirmation (issue 28), then its winner judged on seeds nobody chose it on.

(a) `raytrain search search/mnist-speed.yaml` (confirm: top 3 x 2 fresh seeds) from command start to exit, and
how many configurations reached the target on the validation split. (b) The confirmed winner (its best.yaml)
and experiments/mnist-fast.yaml retrained side by side on SEEDS held-out seeds (none the search or its
confirmation trained on), interleaved seed by seed (this VM drifts ±20% over minutes): time to the target from
each command's start (validation, as the stop reads it) and training seconds, and test accuracy at the end.
(c) For the record, the unconfirmed winner (the search's top trial, one seed) retrained on the same seeds, in
the same interleave: how often it misses the target on validation, and 99.0% on test. A seed changes the
initialisation, the batch order and the validation split held out of MNIST's training images (data.val_fraction
is seeded); the test set is MNIST's official 10,000 images for every seed.

Environment, for a quick end-to-end check of the wiring (its figures mean nothing): BENCH_SW_SPEC (a search
spec, default search/mnist-speed.yaml), BENCH_SW_SET (`;`-separated --set overrides for it), BENCH_SW_BASELINE
(the experiment to beat, default experiments/mnist-fast.yaml), BENCH_SW_SEEDS (held-out seeds, default 5)."""

from __future__ import annotations

import os
import statistics

from bench.common import OUT, ROOT, cli

SEEDS = 5
HELD_OUT = 2000  # held-out seeds: the experiment seed + HELD_OUT + i (the confirmation's are + 1000 + i)
FAILED = ("error", "skipped", "diverged")


def _train(path: str, seed: int) -> dict:
    r = cli("train", path, "--set", f"output={OUT}", "--set", f"seed={seed}", timeout=1200)
    s = r["summary"]
    f = s.get("final", {})
    return {"seed": seed, "process_wall_s": r["process_wall_s"], "status": s.get("status"),
            "to_target_since_launch_s": f.get("time_to_target_since_launch_s"),
            "train_s_to_target": f.get("time_to_target_s"), "epochs": f.get("epoch"),
            "val_accuracy": f.get("val_accuracy"), "test_accuracy": f.get("test_accuracy")}


def _median(runs: list[dict], key: str):
    """The median over the seeds, a miss counting as infinitely slow (None if half or more missed)."""
    m = statistics.median([r[key] if r[key] is not None else float("inf") for r in runs])
    return None if m == float("inf") else m


def _one_seed_yaml(spec_path: str, sets: list[str], row: dict) -> str:
    """The search's top trial as best.yaml would have been without the confirmation (the search's write_best)."""
    from raytrain import storage
    from raytrain.tuner.driver import write_best
    from raytrain.tuner.spec import load_spec

    spec = load_spec(spec_path, [*sets, f"output={OUT}"])
    path = OUT / "search-winners" / "one-seed-winner.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    write_best(spec, row, storage.resolve(str(path)))
    return str(path)


def run() -> dict:
    spec_path = os.environ.get("BENCH_SW_SPEC", str(ROOT / "search" / "mnist-speed.yaml"))
    sets = [s for s in os.environ.get("BENCH_SW_SET", "").split(";") if s.strip()]
    baseline = os.environ.get("BENCH_SW_BASELINE", str(ROOT / "experiments" / "mnist-fast.yaml"))
    n_seeds = int(os.environ.get("BENCH_SW_SEEDS", SEEDS))

    r = cli("search", spec_path, "--set", f"output={OUT}", *[a for s in sets for a in ("--set", s)], timeout=3600)
    s = r["summary"]
    c = s.get("confirmation")
    if not c or not c.get("winner") or not s.get("best_yaml"):
        raise RuntimeError(f"{spec_path}: no confirmed winner (confirmation: {c and c.get('winner')}); "
                           "the spec needs search.confirm and a finished search")
    target = s["objective"]["time_to_target"]
    reached = [t for t in s["trials"] if t.get("time_to_target_s") is not None]
    search = {"process_wall_s": r["process_wall_s"], "wall_s": s["wall_s"], "trials": len(s["trials"]),
              "planned_trials": s.get("planned_trials"), "trial_epochs": s["trial_epochs"],
              "reached_on_validation": len(reached), "budget_note": s.get("budget_note"), "run_dir": s["run_dir"],
              "confirmation": {k: c[k] for k in ("seeds", "search_seed", "top_k", "wall_s", "trial_epochs", "winner")},
              "finalists": [{k: f.get(k) for k in ("search_rank", "confirmed_rank", "params", "search_time_to_target_s",
                                                   "worst_time_to_target_s", "reached", "all_reached",
                                                   "worst_test_accuracy")} for f in c["finalists"]]}

    used = {c["search_seed"], *c["seeds"]}
    seeds = [c["search_seed"] + HELD_OUT + i for i in range(n_seeds)]
    assert not used & set(seeds), (used, seeds)
    top = next(t for t in s["trials"] if not str(t["status"]).startswith(FAILED))  # the one-seed winner
    same = top["params"] == c["winner"]["params"]
    arms = {"confirmed": s["best_yaml"], "baseline": baseline}
    if not same:
        arms["one_seed"] = _one_seed_yaml(spec_path, sets, top)
    runs = {k: [] for k in arms}
    for seed in seeds:  # interleaved: every arm once per seed, in turn
        for k, path in arms.items():
            runs[k].append(_train(path, seed))
    if same:
        runs["one_seed"] = runs["confirmed"]

    def arm(k: str) -> dict:
        rs = runs[k]
        tests = [x["test_accuracy"] for x in rs]
        return {"runs": rs, "median_to_target_since_launch_s": _median(rs, "to_target_since_launch_s"),
                "median_train_s_to_target": _median(rs, "train_s_to_target"),
                "missed_target_on_validation": sum(x["train_s_to_target"] is None for x in rs),
                "test_at_target": sum(t is not None and t >= target for t in tests) if any(tests) else None,
                "min_test_accuracy": min(tests) if all(t is not None for t in tests) else None}

    out = {k: arm(k) for k in ("confirmed", "baseline", "one_seed")}
    conf, base = out["confirmed"], out["baseline"]
    ratio = lambda key: (conf[key] / base[key] if conf[key] and base[key] else None)  # noqa: E731
    return {"search": search, "held_out_seeds": seeds, "target": target,
            "baseline_experiment": os.path.relpath(baseline, ROOT),
            "one_seed_winner": {"params": top["params"], "search_time_to_target_s": top.get("time_to_target_s"),
                                "same_as_confirmed": same}, **out,
            "ratio_since_launch": ratio("median_to_target_since_launch_s"),
            "ratio_train_s": ratio("median_train_s_to_target"),
            "spec": os.path.relpath(spec_path, ROOT), "overrides": sets,
            "task": f"{len(seeds)} held-out seeds, `raytrain train` 1 x 2 CPUs, interleaved"}


def rows(r: dict) -> list[tuple[str, str, str]]:
    if not r:
        return []
    s, conf, base, one, n = r["search"], r["confirmed"], r["baseline"], r["one_seed"], len(r["held_out_seeds"])
    target, c = r["target"], r["search"]["confirmation"]
    fmt = lambda v: f"{v:.1f} s" if v is not None else "missed"  # noqa: E731
    tests = ", ".join(f"{x['test_accuracy']:.2%}" if x["test_accuracy"] is not None else "-" for x in conf["runs"])
    test_ok = f"{conf['test_at_target']}/{n}" if conf["test_at_target"] is not None else "no test split"
    ratio = f"**{r['ratio_since_launch']:.2f}×**" if r["ratio_since_launch"] else "—"
    one_test = f"{n - one['test_at_target']}/{n}" if one["test_at_target"] is not None else "-"
    return [
        (f"headline search with its confirmation (`{r['spec']}`, top {c['top_k']} x {len(c['seeds'])} fresh seeds): "
         f"command start to exit; configurations reaching {target:.1%} on validation",
         f"**{s['process_wall_s']:.0f} s**, **{s['reached_on_validation']}** of {s['trials']} trials reached it "
         f"({s['budget_note']})", "≤15 min, ≥3"),
        (f"its confirmed winner on {n} held-out seeds: {target:.1%} test accuracy",
         f"**{test_ok}** ({tests})", f"{n}/{n}"),
        (f"confirmed winner vs `{r['baseline_experiment']}` side by side on the same {n} seeds (interleaved): median time to "
         f"{target:.1%} validation accuracy from command start",
         f"{fmt(conf['median_to_target_since_launch_s'])} vs {fmt(base['median_to_target_since_launch_s'])} = {ratio} "
         f"(training seconds {fmt(conf['median_train_s_to_target'])} vs {fmt(base['median_train_s_to_target'])}; "
         f"baseline test ≥{target:.1%} on {base['test_at_target'] if base['test_at_target'] is not None else '-'}/{n})",
         "≤1.0×"),
        (f"for the record: the unconfirmed one-seed winner (the search's top trial) on the same {n} seeds",
         ("the same configuration as the confirmed winner" if r["one_seed_winner"]["same_as_confirmed"] else
          f"missed {target:.1%} on validation on **{one['missed_target_on_validation']}/{n}**, below {target:.1%} "
          f"test on {one_test}; median {fmt(one['median_to_target_since_launch_s'])} from command start"),
         "(record)"),
    ]
