"""`MLflow`: a run as one MLflow run: the experiment's settings as params, each epoch's numbers as metrics, the
final checkpoint as artifacts. Talks to the tracking server through `MlflowClient` only (never MLflow's
global active run, which belongs to the caller's process)."""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from raytrain import storage
from raytrain.callbacks import Callback
from raytrain.errors import UserError
from raytrain.integrations.common import copy_tree, scalars

log = logging.getLogger("raytrain")
PARAM_CHARS = 500  # the smallest limit MLflow servers have had on a param value (6000 since MLflow 2.x)
BATCH = 100  # params or tags per log_batch call (MLflow's limit)
CONNECT_TIMEOUT_S = 5.0


class MLflow(Callback):
    """Rank 0 logs, in one MLflow run per raytrain run:
      * at the start: params = the experiment's settings as dotted keys (`train.optimizer.lr`), as strings;
      * each epoch: every number of the metrics.jsonl row as a metric, at step = its `epoch`;
      * at the end: the final checkpoint folder as artifacts under `checkpoint/` (a search trial's
        checkpoints stay with Tune, in the search folder), and the run ends FINISHED (tag `raytrain.stop_reason`
        says how the run stopped: completed, an early-stopping reason, diverged).
    In a search trial (one MLflow run per trial, its hyperparameters among the params) each epoch is logged at
    its end and the MLflow run ended FINISHED until the next epoch starts: Tune ends a trial it stops inside
    the trial's report, with no event after it. The MLflow run id is kept in raytrain's checkpoints, so `--resume` continues the same MLflow run (settings
    that changed are logged as tags `resumed.<key>`: MLflow params cannot change).

    tracking_uri: default MLflow's own MLFLOW_TRACKING_URI, read where the callback is built (an instance
        passed to `train` carries it to Ray's workers; each worker builds the YAML's itself, so there the
        workers need it too); one of the two is required. An http(s) server that does not answer is refused
        at once. experiment: default the experiment's `name`.
    run_name: default the run folder's name (MLflow picks one in a search trial).
    """

    def __init__(self, tracking_uri: Optional[str] = None, experiment: Optional[str] = None,
                 run_name: Optional[str] = None):
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise UserError("MLflow callback: mlflow is not installed here; pip install mlflow-skinny (the "
                            "client; or mlflow)") from None
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not self.tracking_uri:
            raise UserError("MLflow callback: no tracking server; set MLFLOW_TRACKING_URI or give args: "
                            "{tracking_uri: http://host:5000}")
        check_reachable(self.tracking_uri)
        self.experiment, self.run_name = experiment, run_name
        self.run_id: Optional[str] = None
        self._client = None
        self._ended, self._step, self._logged = False, None, set()

    def on_fit_start(self, ctx) -> None:
        if ctx.rank != 0:
            return
        from mlflow import MlflowClient

        self._client = c = MlflowClient(tracking_uri=self.tracking_uri)
        self._ended, self._step, self._logged = False, None, set()
        params = flatten(ctx.exp.model_dump(mode="json"))
        run = self._existing(c)
        if run is None:
            tags = {"raytrain.run_dir": ctx.run_dir or "", "raytrain.mode": ctx.plan.mode}
            name = self.run_name or (storage.resolve(ctx.run_dir).name if ctx.run_dir else None)
            run = c.create_run(experiment_id(c, self.experiment or ctx.exp.name), run_name=name, tags=tags)
            self.run_id = run.info.run_id
            self._batch(params=params)
            log.info(f"MLflow: run {self.run_id} at {self.tracking_uri}")
            return
        self._ended = True  # set running again by the first epoch (a resume with no epoch left leaves it as it was)
        logged = run.data.params
        changed = {f"resumed.{k}": v for k, v in params.items() if k in logged and logged[k] != v}
        self._batch(params={k: v for k, v in params.items() if k not in logged},
                    tags={**changed, "raytrain.resumed_after_epoch": str(ctx.state.epoch + 1)})
        log.info(f"MLflow: continuing run {self.run_id} at {self.tracking_uri}")

    def _existing(self, c):
        """The MLflow run this run's checkpoint names, or None (a new run, or one the server does not know:
        resumed against another tracking server, say so and start a new one)."""
        if self.run_id is None:
            return None
        from mlflow.exceptions import MlflowException

        try:
            return c.get_run(self.run_id)
        except MlflowException as e:
            log.warning(f"MLflow: run {self.run_id} not found at {self.tracking_uri} ({e.error_code}); starting a new one")
            self.run_id = None
            return None

    def on_epoch_start(self, ctx, epoch: int) -> None:
        if self._ended and self._client is not None:  # resumed, or a trial's run ended at its last epoch's end
            self._client.update_run(self.run_id, status="RUNNING")
            self._ended = False

    def on_epoch_end(self, ctx, record) -> None:
        """In a search trial: Tune may end the trial inside its report (ASHA stops most trials there), so each
        epoch is logged here and the MLflow run ended FINISHED; the next epoch sets it running again."""
        if ctx.plan.report_may_end and self._client is not None:
            self._log(record)
            self._client.set_terminated(self.run_id, status="FINISHED")
            self._ended = True

    def on_fit_end(self, ctx, record) -> None:
        if ctx.plan.report_may_end and self._client is not None:
            self._log(record)  # the test split's numbers, read at the end
            self._finish(record, None)

    def on_report(self, ctx, record, checkpoint: Optional[str]) -> None:
        if ctx.plan.report_may_end or self._client is None:
            return
        self._log(record)
        if record.final:
            self._finish(record, checkpoint)

    def on_exception(self, ctx, error: BaseException) -> None:
        """The run ended by an exception: FAILED (a `--resume` sets it running again), or FINISHED where Tune
        ended a trial inside its report (SystemExit(0))."""
        if self._client is not None:
            stopped = isinstance(error, SystemExit) and not error.code
            self._client.set_terminated(self.run_id, status="FINISHED" if stopped else "FAILED")
            self._client = None

    def _log(self, record) -> None:
        """The record's numbers not yet logged at its step (a trial's final epoch is logged twice: at its end,
        then with its test split)."""
        if record.epoch != self._step:
            self._step, self._logged = record.epoch, set()
        fresh = {k: v for k, v in scalars(record).items() if k not in self._logged}
        self._batch(metrics=fresh, step=record.epoch)
        self._logged |= set(fresh)

    def _finish(self, record, checkpoint: Optional[str]) -> None:
        if checkpoint:
            with tempfile.TemporaryDirectory(prefix="raytrain-mlflow-") as tmp:
                copy_tree(storage.resolve(checkpoint), Path(tmp))
                self._client.log_artifacts(self.run_id, tmp, artifact_path="checkpoint")
        self._batch(tags={"raytrain.stop_reason": record.stop_reason or "completed",
                          "raytrain.checkpoint": checkpoint or "kept by Tune in the search folder"})
        self._client.set_terminated(self.run_id, status="FINISHED")
        self._client, self.run_id = None, None  # this instance may start another run; a resume reads the checkpoint

    def _batch(self, params: Optional[dict] = None, tags: Optional[dict] = None, metrics: Optional[dict] = None,
               step: int = 0) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        ps = [Param(k, v) for k, v in (params or {}).items()]
        ts = [RunTag(k, v) for k, v in (tags or {}).items()]
        for i in range(0, len(ps), BATCH):
            self._client.log_batch(self.run_id, params=ps[i:i + BATCH])
        for i in range(0, len(ts), BATCH):
            self._client.log_batch(self.run_id, tags=ts[i:i + BATCH])
        if metrics:
            self._client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def state_dict(self) -> dict:
        return {"run_id": self.run_id} if self.run_id else {}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state.get("run_id") or None

    def __getstate__(self):  # pickled to Ray's workers before the run: the client stays behind
        return {**self.__dict__, "_client": None}


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """{"train": {"optimizer": {"lr": 0.1}}} -> {"train.optimizer.lr": "0.1"}; lists as JSON; each value cut
    to PARAM_CHARS (ending in "...")."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{key}."))
            continue
        text = v if isinstance(v, str) else json.dumps(v)
        out[key] = text if len(text) <= PARAM_CHARS else text[:PARAM_CHARS - 3] + "..."
    return out


def experiment_id(client, name: str) -> str:
    """The MLflow experiment called `name`, created if missing (two trials may create it at once)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def check_reachable(uri: str) -> None:
    """An http(s) tracking server that does not answer is one line before the run starts, not minutes of
    MLflow's retries after it (other schemes, e.g. databricks or a local store, are MLflow's to check)."""
    u = urlparse(uri)
    if u.scheme not in ("http", "https"):
        return
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((u.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise UserError(f"MLflow tracking_uri {uri}: unreachable ({e.strerror or e}); start the server or fix the "
                        "URI (MLFLOW_TRACKING_URI or args.tracking_uri)") from None
