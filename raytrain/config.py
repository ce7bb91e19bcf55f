"""The experiment YAML: typed, validated, the public contract.

Every key has a docstring (pydantic reads attribute docstrings into the schema); unknown
keys and wrong types are rejected. Cross-field rules that need more than one key live in
`Experiment._check`. Dotted `--set` overrides are applied to the raw mapping before
validation, so they are validated exactly like the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raytrain.errors import UserError, format_validation_error


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class DataConfig(Strict):
    dataset: Literal["digits", "mnist", "parquet"] = "digits"
    """digits: sklearn's bundled 8x8 digits (offline). mnist: IDX files in `path` (downloaded when
    missing). parquet: a user Parquet file or directory at `path`."""
    path: Optional[str] = None
    """Data directory (mnist) or Parquet file/directory (parquet)."""
    features: str = "image"
    """Parquet: feature column (fixed-shape arrays or flat lists of numbers)."""
    label: str = "label"
    """Parquet: integer class-label column."""
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    """Fraction held out for validation (mnist uses its official test set instead)."""
    shape: Optional[list[int]] = None
    """Parquet: reshape flat feature lists to this per-example shape, e.g. [1, 28, 28] (default: as stored)."""
    upscale: int = Field(1, ge=1, le=8)
    """digits only: repeat each pixel this many times per side (8x8 -> 32x32 at 4), a heavier benchmark task."""


class ModelConfig(Strict):
    name: str = "cnn"
    """cnn | mlp | resnet | mobilenet | vit, or "package.module:function" returning an nn.Module given
    (in_shape, num_classes)."""
    width: float = Field(1.0, gt=0.0, le=8.0)
    """Channel/hidden-size multiplier."""
    dropout: Optional[float] = Field(None, ge=0.0, lt=1.0)
    """cnn only: one dropout rate for both dropout layers (null: the classic example's 0.25 and 0.5)."""

    @model_validator(mode="after")
    def _dropout_for_cnn(self) -> "ModelConfig":
        if self.dropout is not None and self.name != "cnn":
            raise ValueError(f"model.dropout applies to cnn only, not {self.name}")
        return self


class OptimizerConfig(Strict):
    name: Literal["sgd", "adamw", "adadelta"] = "sgd"
    """Optimizer from torch.optim."""
    lr: float = Field(0.1, gt=0.0)
    """Peak learning rate."""
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    """SGD momentum (ignored by adamw/adadelta)."""
    weight_decay: float = Field(5.0e-4, ge=0.0)
    """L2 / decoupled weight decay."""


class ScheduleConfig(Strict):
    name: Literal["constant", "step", "cosine", "onecycle"] = "constant"
    """LR schedule built from torch.optim.lr_scheduler."""
    warmup_epochs: float = Field(0.0, ge=0.0)
    """Linear warmup from `warmup_start_factor`*lr (constant/step/cosine; onecycle has its own ramp)."""
    warmup_start_factor: float = Field(0.1, gt=0.0, le=1.0)
    """Warmup starts at this fraction of lr."""
    step_size: int = Field(1, ge=1)
    """step: epochs between decays."""
    gamma: float = Field(0.7, gt=0.0, le=1.0)
    """step: multiplicative decay."""
    min_lr_factor: float = Field(0.0, ge=0.0, lt=1.0)
    """cosine: final lr as a fraction of lr."""
    pct_start: float = Field(0.25, gt=0.0, lt=1.0)
    """onecycle: fraction of training spent increasing the lr."""


class EarlyStoppingConfig(Strict):
    metric: str = "val_accuracy"
    """Reported metric to watch."""
    mode: Literal["max", "min"] = "max"
    """Whether larger or smaller is better."""
    patience: int = Field(3, ge=1)
    """Stop after this many epochs without an improvement larger than `min_delta`."""
    min_delta: float = Field(0.0, ge=0.0)
    """Smallest change that counts as an improvement."""
    target: Optional[float] = None
    """Stop as soon as the metric reaches this value (time-to-target is recorded)."""


class TrainConfig(Strict):
    epochs: int = Field(5, ge=1)
    """Number of passes over the training set."""
    batch_size: int = Field(128, ge=1)
    """Global batch, split evenly across data-parallel workers."""
    optimizer: OptimizerConfig = OptimizerConfig()
    """Optimizer settings."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto picks bf16 where the device supports it natively, fp16+GradScaler on older GPUs, else fp32."""
    channels_last: Union[Literal["auto"], bool] = "auto"
    """Memory format for conv nets (auto: on for models with 2-D convolutions)."""
    compile: bool = False
    """torch.compile the model (off by default: compile time dominates short runs)."""
    keep_freed_memory: bool = True
    """Keep freed memory mapped (glibc mallopt) so steps stop re-faulting their buffers' pages."""
    schedule: ScheduleConfig = ScheduleConfig()
    """Learning-rate schedule."""
    early_stopping: Optional[EarlyStoppingConfig] = None
    """Stop on a plateau or once a target is reached (null: never)."""
    max_grad_norm: Optional[float] = Field(None, gt=0.0)
    """Clip gradients to this global norm (null: no clipping)."""


class PruningConfig(Strict):
    method: Literal["none", "magnitude", "structured"] = "none"
    """magnitude: global unstructured L1 (torch.nn.utils.prune); structured: removes channels (torch-pruning)."""
    ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Fraction of weights (magnitude) or channels (structured) removed."""
    schedule: Literal["oneshot", "gradual"] = "oneshot"
    """oneshot: prune once at `start_epoch`; gradual: reach `ratio` over start_epoch..end_epoch."""
    start_epoch: int = Field(0, ge=0)
    """Epoch (0-based) at whose start pruning begins."""
    end_epoch: Optional[int] = Field(None, ge=0)
    """gradual: epoch at whose start the final ratio is reached (default: start_epoch + 2)."""


class PipelineConfig(Strict):
    stages: int = Field(1, ge=1)
    """Pipeline stages (ranks per pipeline group); 1 = plain data parallelism. DP degree = workers / stages."""
    microbatches: int = Field(4, ge=1)
    """Micro-batches per step in each pipeline group; the bubble is (stages-1)/(microbatches+stages-1)."""
    schedule: Literal["gpipe", "1f1b", "interleaved_1f1b"] = "1f1b"
    """gpipe: all forwards then all backwards; 1f1b: bounded in-flight activations; interleaved_1f1b: two
    virtual stages per rank (smaller bubble, more messages)."""
    split: Union[Literal["auto"], list[str]] = "auto"
    """auto balances parameter counts over the model's top-level blocks; or the block names where stages
    2..K (2..2K for interleaved) begin."""


class ParallelConfig(Strict):
    workers: int = Field(2, ge=1)
    """Ray Train workers (= data-parallel degree x pipeline stages)."""
    use_gpu: bool = False
    """One GPU per worker, nccl backend; gloo on CPU."""
    cpus_per_worker: int = Field(1, ge=1)
    """CPUs reserved per worker; torch intra-op threads are set to this."""
    worker_resources: dict[str, float] = Field(default_factory=dict)
    """Extra Ray resources per worker, e.g. {pool_gpu_8x: 1} to pin workers to a node pool of clusters/."""
    max_failures: int = Field(2, ge=0)
    """Worker-group failures survived by restarting from the latest checkpoint."""
    pipeline: PipelineConfig = PipelineConfig()
    """Pipeline-sharded model parallelism (torch.distributed.pipelining), combinable with data parallelism."""

    @property
    def dp(self) -> int:
        """Data-parallel degree: replicas of each pipeline stage."""
        return self.workers // self.pipeline.stages


class CheckpointConfig(Strict):
    every_epochs: int = Field(1, ge=1)
    """Checkpoint every N epochs (and at the last epoch)."""
    keep: int = Field(2, ge=1)
    """Newest checkpoints kept."""


class Experiment(Strict):
    name: str = Field("experiment", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Run name; runs land in <output>/<name>/<timestamp>/."""
    seed: int = 0
    """Seeds torch, numpy and the data split."""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    pruning: PruningConfig = PruningConfig()
    parallel: ParallelConfig = ParallelConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    output: str = "runs"
    """Root directory of runs; a run never overwrites another."""

    @model_validator(mode="after")
    def _check(self) -> "Experiment":
        t, p, par = self.train, self.pruning, self.parallel
        if par.pipeline.stages > 1:
            _check_pipeline(self)
        elif t.batch_size % par.workers:
            raise ValueError(f"train.batch_size {t.batch_size} must be divisible by parallel.workers {par.workers}")
        if t.schedule.warmup_epochs >= t.epochs and t.schedule.warmup_epochs > 0:
            raise ValueError(
                f"train.schedule.warmup_epochs {t.schedule.warmup_epochs} must be shorter than train.epochs {t.epochs}")
        if t.precision == "fp16" and not par.use_gpu:
            raise ValueError("train.precision fp16 on a CPU worker is 2-24x slower than fp32; use bf16 (or auto)")
        if self.data.dataset == "parquet" and not self.data.path:
            raise ValueError("data.path is required for dataset parquet")
        if p.method != "none":
            end = self.pruning_end_epoch
            if end < p.start_epoch:
                raise ValueError(f"pruning.end_epoch {end} is before pruning.start_epoch {p.start_epoch}")
            if end >= t.epochs:
                raise ValueError(f"pruning ends at epoch {end} but train.epochs is {t.epochs}: leave epochs to fine-tune")
        return self

    @property
    def pruning_end_epoch(self) -> int:
        p = self.pruning
        if p.schedule == "oneshot":
            return p.start_epoch
        return p.end_epoch if p.end_epoch is not None else p.start_epoch + 2

    @property
    def per_worker_batch(self) -> int:
        """Rows per step of one data-parallel replica (a whole pipeline group counts as one)."""
        return self.train.batch_size // self.parallel.dp


def _check_pipeline(exp: "Experiment") -> None:
    """Pipeline settings that would fail (or hang one stage) at run time, refused up front."""
    t, par, pp = exp.train, exp.parallel, exp.parallel.pipeline
    if par.workers % pp.stages:
        raise ValueError(f"parallel.workers {par.workers} must be divisible by parallel.pipeline.stages {pp.stages}")
    if t.batch_size % (par.dp * pp.microbatches):
        raise ValueError(f"train.batch_size {t.batch_size} must be divisible by data-parallel degree {par.dp} x "
                         f"parallel.pipeline.microbatches {pp.microbatches}")
    if pp.schedule != "gpipe" and pp.microbatches < pp.stages:
        raise ValueError(f"parallel.pipeline.microbatches {pp.microbatches} must be >= stages {pp.stages} "
                         f"for {pp.schedule}")
    if pp.schedule == "interleaved_1f1b" and pp.microbatches % pp.stages:
        raise ValueError(f"parallel.pipeline.microbatches {pp.microbatches} must be a multiple of stages "
                         f"{pp.stages} for interleaved_1f1b")
    # Techniques that do not carry over to stages (README "Pipeline parallelism" says why).
    if t.precision == "fp16":
        raise ValueError("train.precision fp16 is not supported with parallel.pipeline (GradScaler's skip decision "
                         "would differ per stage); use bf16 or fp32")
    if exp.pruning.method != "none":
        raise ValueError("pruning.method must be none with parallel.pipeline (structured pruning changes the "
                         "tensors sent between stages)")
    if t.compile:
        raise ValueError("train.compile is not supported with parallel.pipeline")
    if t.channels_last is True:
        raise ValueError("train.channels_last true is not supported with parallel.pipeline (use auto: off)")


# --------------------------------------------------------------------------- loading

def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: top level must be a mapping of keys")
    return raw


def set_dotted(raw: dict, key: str, value: Any, origin: str | None = None) -> dict:
    """Set `a.b.c` in a nested mapping (creating mappings on the way); `origin` names the culprit in errors."""
    node = raw
    parts = key.strip().split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"{origin or key}: {'.'.join(parts[: i + 1])} is not a mapping")
        node = child
    node[parts[-1]] = value
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `key.path=value` overrides (values parsed as YAML) to a nested mapping, in order."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item}: expected key.path=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise UserError(f"--set {item}: value is not valid YAML") from None
        set_dotted(raw, key, value, origin=f"--set {item}")
    return raw


def validate_experiment(raw: dict, source: str) -> Experiment:
    try:
        return Experiment.model_validate(raw)
    except ValidationError as e:
        raise UserError(format_validation_error(e, source)) from None


def load_experiment(path: str | Path, overrides: list[str] | None = None, extra_keys: tuple = ()) -> Experiment:
    """Read, override and validate an experiment YAML. `extra_keys` are top-level keys owned by
    another layer (e.g. `search`) and ignored here."""
    path = Path(path)
    raw = _read_yaml(path)
    raw = {k: v for k, v in raw.items() if k not in extra_keys}
    source = f"{path}" + (" (with --set)" if overrides else "")
    return validate_experiment(apply_overrides(raw, list(overrides or [])), source)


def to_yaml(exp: Experiment) -> str:
    return yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False)

