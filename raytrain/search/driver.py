"""`raytrain search`: run (or resume) a Tune search and leave results a person can read."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from raytrain.config import apply_overrides, to_yaml, validate_experiment
from raytrain.errors import UserError
from raytrain.search import tuning
from raytrain.search.spec import SearchSpec


def new_search_dir(spec: SearchSpec) -> Path:
    from raytrain.trainer import new_run_dir

    return new_run_dir(spec.base.model_copy(update={"name": f"{spec.base.name}-search"}))


def run(spec: SearchSpec, resume: Path | None = None) -> dict:
    t0 = time.time()
    if resume is not None:
        run_dir = resume.resolve()
        if not (run_dir / tuning.TUNE_DIR).is_dir():
            raise UserError(f"--resume {resume}: not a raytrain search folder (no {tuning.TUNE_DIR}/ inside)")
    tuning.require_state_api()
    if resume is None:
        tuning.max_concurrent(spec)  # refuse an impossible trial before creating anything
        run_dir = new_search_dir(spec)
        (run_dir / "spec.yaml").write_text(to_yaml(spec.base))
    for note in spec.notes:
        print(f"[raytrain] note: {note}", flush=True)
    print(f"[raytrain] search {run_dir}: {spec.n_trials()} trial(s), ASHA max_t={spec.search.asha.max_t} "
          f"grace={spec.search.asha.grace_period} rf={spec.search.asha.reduction_factor:g}, "
          f"{tuning.max_concurrent(spec)} at a time", flush=True)
    grid = tuning.build_tuner(spec, run_dir, resume=resume is not None).fit()
    rows = tuning.collect(spec, grid)
    summary = {"run_dir": str(run_dir), "wall_s": time.time() - t0, "trials": rows,
               "trial_epochs": tuning.trial_epochs(rows), "max_t": spec.search.asha.max_t,
               "grace_period": spec.search.asha.grace_period, "reduction_factor": spec.search.asha.reduction_factor,
               "objective": spec.search.objective.model_dump(), "notes": spec.notes}
    (run_dir / "search.json").write_text(json.dumps(summary, indent=2, default=str))
    best = next((r for r in rows if not str(r["status"]).startswith(("error", "skipped", "diverged"))), None)
    if best is not None:
        write_best(spec, best, run_dir / "best.yaml")
        summary["best_yaml"] = str(run_dir / "best.yaml")
    return summary


def write_best(spec: SearchSpec, best: dict, path: Path) -> None:
    """A ready-to-run experiment: the base experiment with the winner's values and the full budget."""
    raw = copy.deepcopy(spec.raw)
    overrides = [f"train.epochs={spec.search.asha.max_t}", f"name={spec.base.name}-best"]
    overrides += [f"{k}={json.dumps(v)}" for k, v in best["params"].items()]
    exp = validate_experiment(apply_overrides(raw, overrides), str(path))
    path.write_text(f"# best trial {best['trial_id']} of {spec.source}: {best['status']}\n" + to_yaml(exp))


def table(summary: dict) -> str:
    rows = summary["trials"]
    keys = sorted({k for r in rows for k in r["params"]})
    head = ["rank", *keys, "epochs", "val_acc", "to_target_s", "train_s", "status"]
    lines = [head]
    for r in rows:
        fmt = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append([str(r["rank"]), *[fmt(r["params"].get(k)) for k in keys], str(r["epochs"]), fmt(r["val_accuracy"]),
                      fmt(r["time_to_target_s"]), fmt(r["elapsed_s"]), str(r["status"])[:48]])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
