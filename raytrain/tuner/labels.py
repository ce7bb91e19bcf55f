"""How a search names its trials, their parameters and their ends, alike on the console, in the ranked table
and in report.html (no Ray imported: `raytrain report` needs none)."""

from __future__ import annotations

from typing import Optional

WIDTH = 160 - len("[raytrain] ")  # a console line stays within 160 characters


def trial_name(trial_id: Optional[str]) -> str:
    """"trial 3" for Tune's trial 0723a_00002 (its number in the search, from 1); the id itself otherwise. The
    console, the ranked table and report.html name trials alike."""
    tail = str(trial_id or "").rsplit("_", 1)[-1]
    return f"trial {int(tail) + 1}" if tail.isdigit() else f"trial {trial_id}"


def params_text(params: dict, sep: str = "  ") -> str:
    """Full dotted keys: `pruning.ratio=0.5  train.schedule.name=cosine` (the last part alone is ambiguous)."""
    return sep.join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def status(m: dict, epochs: int, max_t: int) -> str:
    """How a trial ended, from its last report: its own stop reason, else where ASHA stopped it."""
    if m.get("stop_reason"):
        return str(m["stop_reason"])
    if m.get("probe"):
        trained = float(m.get("trained_epochs") or 0.0)
        return f"stopped by ASHA at {m['elapsed_s']:.1f} s of training ({trained:.2f} epochs)"
    if epochs < max_t:
        return f"stopped by ASHA after epoch {epochs}"
    return "completed"


def fit(line: str) -> str:
    """A console line cut to WIDTH, its cut marked."""
    return line if len(line) <= WIDTH else line[:WIDTH - 1] + "…"
