"""A search's console: one line per trial event (started, an epoch or a rung reported, the target reached,
stopped by ASHA, finished, failed), in place of Tune's status tables (those come with --verbose)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Optional

from ray import tune

from raytrain.tuner.labels import fit, params_text, status, trial_name

log = logging.getLogger("raytrain")


def _acc(m: dict) -> str:
    v = m.get("val_accuracy")
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


class EventLines(tune.Callback):
    """Tune calls these on the driver as trials go; each says one line through the `raytrain` logger."""

    def __init__(self, max_t: int, target: Optional[float] = None):
        self.max_t, self.target = max_t, target
        self.reached: set = set()  # trials whose reaching the target was said

    def on_trial_start(self, iteration, trials, trial, **info):
        log.info(fit(f"{trial_name(trial.trial_id)} started: {params_text(trial.config)}"))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        name = trial_name(trial.trial_id)
        if result.get("time_to_target_s") is not None and trial.trial_id not in self.reached:
            self.reached.add(trial.trial_id)
            target = f"{self.target:.2%}" if self.target else "the target"
            log.info(fit(f"{name} reached {target} in {result['time_to_target_s']:.1f} s of training "
                         f"(epoch {result.get('time_to_target_epochs', result.get('epoch'))})"))
        if result.get("stop_reason") or result.get("done"):
            return  # its last report: said with how it ended (`on_trial_complete`)
        log.info(fit(f"{name} {self._report(result)}"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        m = trial.last_result or {}
        how = status(m, int(m.get("epoch") or 0), self.max_t)
        name = trial_name(trial.trial_id)
        if how.startswith("skipped"):
            log.info(fit(f"{name} {how}"))
        elif m.get("probe"):
            log.info(fit(f"{name} {how}: val_acc {_acc(m)}"))
        elif how.startswith("stopped by ASHA"):
            log.info(fit(f"{name} stopped by ASHA at {self._report(m)}"))
        else:
            log.info(fit(f"{name} finished at {self._report(m)} ({how})"))

    def _report(self, m: dict) -> str:
        if m.get("probe"):  # a rung on training seconds, mid-epoch
            return (f"rung at {m['elapsed_s']:.1f} s of training: val_acc {_acc(m)}"
                    + (f" (best {m['best_val_accuracy']:.4f})" if m.get("best_val_accuracy") is not None else ""))
        loss = float(m.get("val_loss") or math.nan)
        return (f"epoch {m.get('epoch')}/{self.max_t}: val_acc {_acc(m)}  val_loss {loss:.4f}  "
                f"{float(m.get('elapsed_s') or 0.0):.1f} s of training")

    def on_trial_error(self, iteration, trials, trial, **info):
        """The cause: the last line of the error Tune has just written beside the trial (storage gets it later)."""
        local = trial.error_file
        text = Path(local).read_text() if local and os.path.exists(local) else str(trial.get_error() or "")
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        log.warning(fit(f"{trial_name(trial.trial_id)} failed: {lines[-1] if lines else 'unknown error'}"))
