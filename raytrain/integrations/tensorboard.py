"""`TensorBoard`: a run's per-epoch scalars as TensorBoard event files (searches get Tune's own as well)."""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path
from typing import Optional

from raytrain import storage
from raytrain.callbacks import Callback
from raytrain.integrations.common import scalars, trial_folder, upload_tree
from raytrain.storage import Location

log = logging.getLogger("raytrain")
FOLDER = "tensorboard"
_FILES = itertools.count()  # event file names are unique within a second only with this


class TensorBoard(Callback):
    """Every number of each epoch's metrics.jsonl row (losses, accuracies, lr, throughput, what other
    callbacks add), at step = the row's `epoch`, written by rank 0 once the row is written (in a search
    trial at the epoch's end, before its report: Tune may end a trial inside its report).

    log_dir: a local folder or a URI. Default: <run folder>/tensorboard; in a search trial, a `tensorboard`
    folder in the trial's own folder (so `tensorboard --logdir <search>/tune` shows them beside Tune's).
    Where the folder is on an object store (`s3://...`, `gs://...`) the events are written under the output's
    local cache and uploaded after every epoch through raytrain's storage (the run's endpoint options and
    credentials; tensorboardX's own S3 writer reads neither); one line says where.
    A resumed run appends to the same folder; steps past the checkpoint it resumed from are purged.
    """

    def __init__(self, log_dir: Optional[str] = None):
        self.log_dir = None if log_dir is None else str(log_dir)
        self._writer = None
        self._upload: Optional[Location] = None
        self._local: Optional[Path] = None
        self._step, self._written = None, set()

    def folders(self, ctx) -> tuple[Optional[Path], Optional[Location]]:
        """(local folder the writer writes, the storage folder it is uploaded to or None); (None, None) where
        the run has no folder of its own to put it in."""
        target = storage.resolve(self.log_dir, "TensorBoard log_dir") if self.log_dir else None
        if target is None and ctx.run_dir:
            target = storage.resolve(ctx.run_dir) / FOLDER
        if target is None:
            trial = trial_folder(ctx)
            target = trial / FOLDER if trial is not None else None
        if target is None:
            return None, None
        if not target.remote:
            return Path(target.path), None
        cache = storage.local_cache_root(ctx.exp.output) / FOLDER
        return cache.joinpath(*target.path.strip("/").split("/")[-3:]), target

    def on_fit_start(self, ctx) -> None:
        if ctx.rank != 0:
            return
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        self.close()
        self._step, self._written = None, set()
        self._local, self._upload = self.folders(ctx)
        if self._local is None:
            log.warning("TensorBoard: this run has no folder to write to (give log_dir); no events are written")
            return
        if self._upload is not None:
            log.info(f"TensorBoard: events written in {self._local}, uploaded to {self._upload.uri} after each epoch")
        # tensorboardX's synchronous writer (its SummaryWriter queues events to a thread, and its flush does not
        # wait for them): an epoch is in the file, and uploaded, once the epoch's events are written.
        self._local.mkdir(parents=True, exist_ok=True)
        self._writer = EventsWriter(str(self._local / "events"), f".{os.getpid()}.{next(_FILES)}")
        if ctx.state.epoch >= 0:  # resumed: a new event file beside the old ones, and the steps after the
            # checkpoint it resumed from (lost, trained again) purged, so that they do not show twice
            self._writer.write_event(Event(wall_time=time.time(), step=ctx.state.epoch + 2,
                                           session_log=SessionLog(status=SessionLog.START)))

    def on_epoch_end(self, ctx, record) -> None:
        if ctx.plan.report_may_end:  # Tune may end a trial inside its report: write before it
            self._write(record, record.epoch)

    def on_fit_end(self, ctx, record) -> None:
        if ctx.plan.report_may_end:
            self._write(record, record.epoch)
            self.close()

    def on_report(self, ctx, record, checkpoint) -> None:
        if not ctx.plan.report_may_end:  # after the row is written: every number of it, other callbacks' included
            self._write(record, record.epoch)
            if record.final:
                self.close()

    def on_exception(self, ctx, error: BaseException) -> None:
        self.close()

    def _write(self, record, step: int) -> None:
        """The record's numbers not yet written at `step` (a trial's final epoch is written twice: at its
        end, then with its test split), flushed, and uploaded where the folder is remote."""
        if self._writer is None:
            return
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        if step != self._step:
            self._step, self._written = step, set()
        now = time.time()
        for key, value in scalars(record).items():
            if key not in self._written:
                self._writer.write_event(Event(wall_time=now, step=step, summary=scalar(key, value)))
                self._written.add(key)
        self._writer.flush()
        if self._upload is not None:
            upload_tree(self._local, self._upload)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __getstate__(self):  # pickled to Ray's workers before the run: never with an open writer
        return {**self.__dict__, "_writer": None}
