"""ASHA's pick against ASHA off's, side by side: the goal asks for "the same best configuration, or one within 5%
of its time to target", and the two searches `headline_asha` compares run an hour apart on a VM that drifts
(±20%) while one trial's reading is one draw. So for each seed it measured, the configuration ASHA ranked first,
off's first and off's second are retrained from their best.yaml (`raytrain train`, 1 worker x 2 CPUs like the
trials), alternating, REPEATS times each, in one run: the median training seconds to 99.0% (the search's
objective) and from each command's start."""

from __future__ import annotations

import statistics

from bench.common import OUT, ROOT, cli, load

REPEATS = 3


def _yaml(seed: str, label: str, params: dict) -> str:
    from raytrain import storage
    from raytrain.tuner.driver import write_best
    from raytrain.tuner.spec import load_spec

    spec = load_spec(ROOT / "search" / "mnist-speed.yaml", [f"search.seed={seed}", f"output={OUT}"])
    path = OUT / "asha-pick" / f"seed{seed}-{label}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_best(spec, {"params": params, "trial_id": label, "status": f"{label} of headline_asha seed {seed}"},
               storage.resolve(str(path)))
    return str(path)


def _train(path: str) -> dict:
    f = cli("train", path, "--set", f"output={OUT}")["summary"].get("final", {})
    return {"train_s": f.get("time_to_target_s"), "since_launch_s": f.get("time_to_target_since_launch_s"),
            "val_accuracy": f.get("val_accuracy"), "epochs": f.get("epoch")}


def _med(runs: list[dict], key: str):
    vals = [r[key] for r in runs]
    return statistics.median(vals) if all(v is not None for v in vals) else None  # None: missed 99% at least once


def _compare(seed: str, c: dict) -> dict:
    if not c["asha"]["best"] or len(c["off"]["reached_params"]) < 2:
        return {"skipped": "ASHA found no configuration reaching the target, or off fewer than two"}
    picks = {"asha_best": c["asha"]["best"]["params"], "off_best": c["off"]["reached_params"][0]["params"],
             "off_2nd": c["off"]["reached_params"][1]["params"]}
    paths = {k: _yaml(seed, k, p) for k, p in picks.items()}
    runs = {k: [] for k in picks}
    for _ in range(REPEATS):
        for k, p in paths.items():
            runs[k].append(_train(p))
    med = {k: {"train_s": _med(v, "train_s"), "since_launch_s": _med(v, "since_launch_s"),
               "reached": sum(r["train_s"] is not None for r in v)} for k, v in runs.items()}
    ratio = lambda key: (med["asha_best"][key] / med["off_best"][key]  # noqa: E731
                         if med["asha_best"][key] and med["off_best"][key] else None)
    return {"runs": runs, "median": med, "same_config": picks["asha_best"] == picks["off_best"],
            "ratio_train_s": ratio("train_s"), "ratio_since_launch_s": ratio("since_launch_s"),
            "headline_asha_measured_at": c["measured_at"]}


def run() -> dict:
    pairs = (load("headline_asha") or {}).get("seeds", {})
    if not pairs:
        raise RuntimeError("run `python -m bench --only headline_asha` first: this section retrains its picks")
    return {"seeds": {s: _compare(s, c) for s, c in sorted(pairs.items())}, "repeats": REPEATS,
            "task": "MNIST to 99.0%, `raytrain train` 1 x 2 CPUs, alternating"}


def rows(r: dict) -> list[tuple[str, str, str]]:
    if not r:
        return []
    out = []
    for seed, c in sorted(r["seeds"].items()):
        if "skipped" in c:
            out.append((f"ASHA's best vs ASHA off's best, seed {seed} of `headline_asha`", c["skipped"], "within 5%"))
            continue
        m = c["median"]
        fmt = lambda k: (f"{m[k]['train_s']:.2f} s" if m[k]["train_s"] else "missed") + \
            f" ({m[k]['reached']}/{r['repeats']} reached)"  # noqa: E731
        ratio = f"**{c['ratio_train_s']:.2f}×**" if c["ratio_train_s"] else "—"
        out.append((f"ASHA's best vs ASHA off's best (and 2nd), seed {seed} of `headline_asha`, retrained side by "
                    f"side ({r['repeats']} each, alternating): median training seconds to 99.0%",
                    f"{fmt('asha_best')} vs {fmt('off_best')} = {ratio} (off's 2nd {fmt('off_2nd')}); from command "
                    f"start {c['ratio_since_launch_s'] or float('nan'):.2f}×", "within 5% (≤1.05×)"))
    return out
