"""`SyncsPerStep`: a raytrain callback that counts the host-device synchronisations of the training steps, with
torch's own detector (`torch.cuda.set_sync_debug_mode`), on a CUDA worker.

The window is the first epoch from the end of step 2 to the end of its last step: every step in it is whole
(step 1's deliberate synchronize, which times the first step, and the epoch's end are outside it), and the
callbacks of those steps (progress, time marks) are counted too, as they run every step. The count goes into
that epoch's row as `syncs_per_step`, with the source lines that synchronised (`sync_sites`).

    callbacks: [bench.syncs:SyncsPerStep]                               # count (debug mode "warn")
    callbacks: [{name: bench.syncs:SyncsPerStep, args: {strict: true}}] # also fail the step that synchronises

"warn" sees the synchronisations made from Python's thread (the forward, the optimizer, the metric sums);
"error" (`strict`) also stops one made in autograd's backward thread, whose warning never reaches Python.
On a CPU worker it records nothing (there is no device to wait for).
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Optional

import torch

from raytrain.callbacks import Callback

FIRST = 2  # the window opens after this step


class SyncsPerStep(Callback):
    def __init__(self, strict: bool = False):
        self.strict = strict
        self._catch: Optional[warnings.catch_warnings] = None
        self._seen: list = []
        self.counted = 0  # synchronisations between the end of step FIRST and the end of `last_step`
        self.last_step = 0
        self.finished = False

    def on_step_end(self, ctx, epoch: int, step: int, clock) -> None:
        if self.finished or not _cuda(ctx):
            return
        if self._catch is None:
            if step == FIRST:
                self._catch = warnings.catch_warnings(record=True)
                self._seen = self._catch.__enter__()
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("error" if self.strict else "warn")
            return
        self.counted, self.last_step = len(self._syncs()), step
        if ctx.steps_per_epoch and step >= ctx.steps_per_epoch:
            self._close()  # before the epoch's end synchronises on purpose

    def on_epoch_end(self, ctx, record) -> None:
        if self.finished:
            return
        self._close()
        self.finished = True
        steps = self.last_step - FIRST
        if steps <= 0:
            return
        syncs = self._syncs()[:self.counted]
        sites = Counter(f"{w.filename}:{w.lineno}" for w in syncs)
        record.extra.update(syncs_per_step=len(syncs) / steps, syncs_steps_counted=steps,
                            sync_mode="error" if self.strict else "warn",
                            sync_sites=[f"{site} x{n}" for site, n in sites.most_common(5)])

    def on_fit_end(self, ctx, record) -> None:
        self._close()

    def _syncs(self) -> list:
        return [w for w in self._seen if "synchroniz" in str(w.message)]

    def _close(self) -> None:
        if self._catch is not None:
            torch.cuda.set_sync_debug_mode("default")
            self._catch.__exit__(None, None, None)
            self._catch = None


def _cuda(ctx) -> bool:
    try:
        return next(ctx.state.model.parameters()).device.type == "cuda"
    except (AttributeError, StopIteration):
        return False
