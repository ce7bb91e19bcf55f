"""`raytrain search`: run (or resume) a Tune search and leave results a person can read, on any storage."""

from __future__ import annotations

import json
import logging
import time
from typing import Optional

from raytrain import console, runtime, storage
from raytrain.configio import to_yaml, validate_experiment
from raytrain.errors import UserError
from raytrain.tuner import confirm, labels, tuning
from raytrain.tuner.finalists import worst_text
from raytrain.tuner.spec import RungClock, SearchSpec

log = logging.getLogger("raytrain")


def run(spec: SearchSpec, resume: Optional[str] = None, scheduler=None) -> dict:
    """`scheduler`: a Tune scheduler instead of the spec's ASHA (bench/rungs.py records whole trials with FIFO)."""
    t0 = time.time()
    out = storage.resolve(spec.base.output)
    storage.check_reachable(out, "output")
    if resume is not None:
        run_dir = storage.resolve(resume, "--resume")
        storage.check_reachable(run_dir, "--resume")
        if not (run_dir / tuning.TUNE_DIR).is_dir():
            raise UserError(f"--resume {resume}: not a raytrain search folder (no {tuning.TUNE_DIR}/ inside)")
    from raytrain.callbacks import from_names

    from_names(spec.base.callbacks)  # a callback that cannot be built would skip every trial: refused here
    concurrent = tuning.max_concurrent(spec)  # refuse an impossible trial before creating anything
    runtime.check_shared_output(spec.base.output, spec.base.output_shared)
    if not spec.search.trial.in_trial:
        tuning.require_state_api()
    if resume is None:
        run_dir = storage.new_run_dir(out, f"{spec.base.name}-search")
        (run_dir / "spec.yaml").write_text(to_yaml(spec.base))
    for note in spec.notes:
        log.info(f"note: {note}")
    a = spec.search.asha
    grace = f"grace={a.grace_period}" if a.grace_s is None else f"rungs at {a.grace_s:g} s x rf^k"
    log.info(f"search {console.shown(run_dir.uri)}: {spec.n_trials()} trial(s), ASHA max_t={a.max_t} {grace} rf={a.reduction_factor:g}, "
             f"{concurrent} at a time, {'in the trial processes' if spec.search.trial.in_trial else 'Ray Train per trial'}")
    grid = tuning.build_tuner(spec, run_dir, concurrent, resume=resume is not None, scheduler=scheduler).fit()
    rows = tuning.collect(spec, grid)
    conf = confirm.run(spec, run_dir, rows, concurrent, resume is not None) if spec.search.confirm else None
    summary = {"run_dir": run_dir.uri, "wall_s": time.time() - t0, "trials": rows,
               "trial_epochs": tuning.trial_epochs(rows), "max_t": a.max_t, "grace_period": a.grace_period,
               "reduction_factor": a.reduction_factor, "rung_seconds": a.rung_seconds(), "rung_signal": rung_signal(spec),
               "objective": spec.search.objective.model_dump(), "notes": spec.notes, "planned_trials": spec.n_trials(),
               "budget": spec.search.budget.model_dump(), "budget_note": budget_note(spec, rows, time.time() - t0, conf)}
    best, header = tuning.best(rows), None
    if conf is not None:
        summary["confirmation"] = conf
        best, header = confirmed_best(spec, conf)
    if best is not None:
        write_best(spec, best, run_dir / "best.yaml", header)
        summary["best_yaml"] = (run_dir / "best.yaml").uri
    (run_dir / "search.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def rung_signal(spec: SearchSpec) -> str:
    """What ASHA's rungs compare (said in search.json and the report)."""
    target = spec.search.objective.time_to_target
    if target is None:
        return f"{spec.search.objective.metric} at equal epochs"
    if spec.search.asha.grace_s is not None:
        return ("best val accuracy by equal training seconds (each trial evaluated as its clock passed the rung, "
                "and at its epochs' ends)")
    return f"seconds to {RungClock(spec.search).accuracy:.2%} val accuracy, at equal epochs"


def budget_note(spec: SearchSpec, rows: list[dict], wall_s: float, conf: Optional[dict] = None) -> Optional[str]:
    """What the search spent against its budget (the confirmation included), and whether the budget cut it short."""
    b = spec.search.budget
    if b.wall_s is None and b.trial_epochs is None:
        return None
    epochs = f"{tuning.trial_epochs(rows)}" + (f" + {conf['trial_epochs']} (confirmation)" if conf else "")
    spent = f"spent {wall_s:.0f} s" + (f" of {b.wall_s:g} s" if b.wall_s else "") + f", {epochs}" \
            + (f" of {b.trial_epochs}" if b.trial_epochs else "") + " trial-epochs"
    if conf:
        spent += f" ({conf['wall_s']:.0f} s of it the confirmation)"
    if len(rows) < spec.n_trials():
        return f"{spent}; admitted {len(rows)} of {spec.n_trials()} trials"
    return f"{spent}; every trial admitted"


def confirmed_best(spec: SearchSpec, conf: dict) -> tuple[Optional[dict], str]:
    """The confirmation's winner as the row write_best takes, and best.yaml's first line naming the confirmation."""
    w = conf.get("winner")
    if w is None:
        return None, ""
    f = next(f for f in conf["finalists"] if f["search_trial_id"] == w["search_trial_id"])
    how = worst_text(f, spec.search.objective.model_dump())
    return ({"params": w["params"], "trial_id": w["search_trial_id"], "status": how},
            f"# confirmed winner of {spec.source}: {labels.trial_name(w['search_trial_id'])} ({w['search_trial_id']}, "
            f"search rank {w['search_rank']}), the best of {len(conf['finalists'])} finalists retrained on seeds "
            f"{conf['seeds']}: {how}\n# ranked by {conf['ranked_by']}\n"
            f"# trains on seed {conf['search_seed']}, the one the search trained with\n")


def write_best(spec: SearchSpec, best: dict, path: storage.Location, header: Optional[str] = None) -> None:
    """A ready-to-run experiment that trains like the winning trial did: its values, its resources (so its
    time to target means the same on `raytrain train`), the full epoch budget and the stop at the target."""
    raw = spec.trial_raw(best["params"])
    raw["name"] = f"{spec.base.name}-best"
    own = (spec.raw.get("parallel") or {}).get("max_failures")  # the experiment's own, not the trials' 0
    if own is None:
        raw["parallel"].pop("max_failures", None)
    else:
        raw["parallel"]["max_failures"] = own
    exp = validate_experiment(raw, path.uri)
    path.write_text((header or f"# best trial {best['trial_id']} of {spec.source}: {best['status']}\n") + to_yaml(exp))


def table(summary: dict) -> str:
    """The ranked trials, one line each (trial numbers as the console's event lines say them); val_acc is on
    the validation split; to_target_s for a time objective."""
    rows = summary["trials"]
    keys = sorted({k for r in rows for k in r["params"]})
    timed = bool((summary.get("objective") or {}).get("time_to_target"))
    head = ["rank", "trial", *keys, "epochs", "val_acc", *(["to_target_s"] if timed else []), "train_s", "status"]
    lines = [head]
    for r in rows:
        fmt = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
        lines.append([str(r["rank"]), labels.trial_name(r["trial_id"]).removeprefix("trial "),
                      *[fmt(r["params"].get(k)) for k in keys], str(r["epochs"]), fmt(r["val_accuracy"]),
                      *([fmt(r["time_to_target_s"])] if timed else []), fmt(r["elapsed_s"]), str(r["status"])[:48]])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
