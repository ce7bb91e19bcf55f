"""Typed records of what crosses a boundary: an epoch's sums (mode -> loop), an epoch's record (loop ->
callbacks -> host -> metrics.jsonl / Ray / Tune), and what a run returns (driver -> API / CLI).

A report to Ray or a metrics.jsonl row is a flat dict; it is built here from the fields of `EpochRecord`
and read back with `EpochRecord.from_row`, so a renamed field fails at both ends of the same line of code,
not inside a Ray worker.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional


@dataclass
class TrainSums:
    """One rank's sums over one epoch's training steps (reduced across ranks exactly: sums, not means)."""
    loss_sum: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    steps: float = 0.0
    skipped_steps: float = 0.0
    wait_seconds: float = 0.0  # blocked waiting for the next batch
    paused_seconds: float = 0.0  # spent by callbacks inside the epoch that is not training (a mid-epoch evaluation)

    def add(self, other: "TrainSums") -> "TrainSums":
        return TrainSums(**{k: getattr(self, k) + getattr(other, k) for k in self.keys()})

    @staticmethod
    def keys() -> list[str]:
        return [f.name for f in fields(TrainSums)]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class EvalSums:
    loss_sum: float = 0.0
    correct: float = 0.0
    count: float = 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.count, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.count, 1)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class EpochRecord:
    """One epoch as reported. `extra` holds what callbacks add (time to target, start-up marks, a search's
    rung signal); its keys may not shadow a field."""
    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    samples_per_s: float
    epoch_s: float
    elapsed_s: float  # training seconds so far, across resumes (the clock time to target reads)
    trained_epochs: float
    step_ms: float
    input_wait_s: float
    lr: float
    skipped_steps: int
    step_checkpoint_s: float = 0.0  # of epoch_s, this attempt's step checkpoints (gather, encode, write): their cost
    final: bool = False
    stop_reason: Optional[str] = None
    test_loss: Optional[float] = None  # the test split, read once, at the final epoch
    test_accuracy: Optional[float] = None
    labels: dict = field(default_factory=dict)  # the mode's settings (precision, channels_last, ...)
    stats: dict = field(default_factory=dict)  # the final model's statistics (parameters, sparsity, FLOPs)
    extra: dict = field(default_factory=dict)

    def metrics(self) -> dict:
        """The flat row reported to Ray / Tune and written to metrics.jsonl."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("labels", "stats", "extra", "final")}
        if not self.final:
            for k in ("stop_reason", "test_loss", "test_accuracy"):
                row.pop(k)
        elif row["test_accuracy"] is None:
            row.pop("test_loss"), row.pop("test_accuracy")
        clash = set(row) & (set(self.extra) | set(self.labels) | set(self.stats))
        if clash:
            raise ValueError(f"epoch record: {sorted(clash)} set twice (a callback's extra shadows a field)")
        return {**row, **self.labels, **self.stats, **self.extra}

    @classmethod
    def from_row(cls, row: dict) -> "EpochRecord":
        """A metrics.jsonl row back as a record (its non-field keys in `extra`)."""
        names = {f.name for f in fields(cls)} - {"labels", "stats", "extra", "final"}
        known = {k: row[k] for k in names if k in row}
        return cls(**known, final="stop_reason" in row, extra={k: v for k, v in row.items() if k not in names})


@dataclass
class RunSummary:
    """What one run returns and writes as result.json."""
    run_dir: str
    status: str  # completed, an early-stop reason, diverged, interrupted, or failed
    error: Optional[str]
    wall_s: float
    final: dict  # the last epoch's metrics row
    mode: str  # in-process | worker-group
    ingest: str
    checkpoint: Optional[str]
    metrics_log: str
    config: dict
    first_step_s: Optional[float]
    ray: str
    classes: Optional[list]
    startup: dict
    startup_side_by_side: dict
    driver_peak_rss_mb: float
    splits: dict = field(default_factory=dict)  # split -> {examples, source}: every number names its split

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
