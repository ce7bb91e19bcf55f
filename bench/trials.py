"""One-worker search trials in their own (reused) Tune trial process vs each trial starting a TorchTrainer:
`raytrain search search/digits-quick.yaml` as a user runs it, with `search.trial.isolate` false (the default)
and true, alternating, twice each; wall time from each command's start to its exit."""

from __future__ import annotations

from bench.common import OUT, ROOT, cli, median


def run() -> dict:
    runs = {"in_trial": [], "nested": []}
    for _ in range(2):
        for label, isolate in (("in_trial", "false"), ("nested", "true")):
            r = cli("search", str(ROOT / "search" / "digits-quick.yaml"), "--set", f"search.trial.isolate={isolate}",
                    "--set", f"output={OUT}")
            runs[label].append({"process_wall_s": r["process_wall_s"], "trials": len(r["summary"]["trials"]),
                                "trial_epochs": r["summary"]["trial_epochs"]})
    med = {k: median([x["process_wall_s"] for x in v]) for k, v in runs.items()}
    return {"runs": runs, "median_s": med, "ratio": med["in_trial"] / med["nested"]}


def rows(r: dict) -> list[tuple[str, str, str]]:
    if not r:
        return []
    m = r["median_s"]
    epochs = {k: "/".join(str(x["trial_epochs"]) for x in v) for k, v in r["runs"].items()}
    return [("`raytrain search search/digits-quick.yaml`, start to exit: trials in their Tune process vs a "
             "TorchTrainer per trial (same spec, alternating, medians of 2)",
             f"{m['in_trial']:.0f} s vs {m['nested']:.0f} s = **{r['ratio']:.2f}×** ({r['runs']['in_trial'][0]['trials']} "
             f"trials each; trial-epochs {epochs['in_trial']} vs {epochs['nested']}: ASHA's cuts depend on "
             "timing)", "≤0.5×")]
