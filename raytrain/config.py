"""The experiment YAML: typed, validated, the public contract.

Every key has a docstring (pydantic reads attribute docstrings into the schema, and docs/configuration.md
is generated from it: `make docs`); unknown keys and wrong types are rejected. Cross-field rules
that need more than one key live in `Experiment._check` (those of pipelines and elastic ranges beside their
section, in `raytrain.config_parallel`; the data section is `raytrain.config_data`). Reading files and `--set`
overrides: `raytrain.configio`.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, model_validator

from raytrain.config_data import DataConfig, Strict  # noqa: F401  (re-exported: the data section)
from raytrain.config_parallel import (  # noqa: F401  (re-exported: the parallel section)
    ParallelConfig, PipelineConfig, WorkerResources, check_elastic, check_pipeline)


class ModelConfig(Strict):
    name: str = "cnn"
    """cnn | cnn_bn | mlp | resnet | mobilenet | efficientnet | vit; "package.module:function" returning an nn.Module
    given (in_shape, num_classes), or a constructor taking num_classes= (torchvision style) or num_classes= and
    in_chans= (timm style), imported from the launch directory (or PYTHONPATH) on the driver and workers;
    "timm:NAME" (timm.create_model) or "torchvision:NAME" (torchvision.models.NAME; 1-channel data is repeated
    to the 3 channels they take)."""
    width: float = Field(1.0, gt=0.0, le=8.0)
    """Channel/hidden-size multiplier of the zoo models (channels rounded to multiples of 8)."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further keyword arguments for the model's builder or constructor, e.g. {depth: 6} for vit or
    {drop_rate: 0.1} for a timm model (num_classes and in_chans come from the data)."""
    dropout: Optional[float] = Field(None, ge=0.0, lt=1.0)
    """cnn only: one dropout rate for both dropout layers (null: the classic example's 0.25 and 0.5)."""

    @model_validator(mode="after")
    def _dropout_for_cnn(self) -> "ModelConfig":
        if self.dropout is not None and self.name != "cnn":
            raise ValueError(f"model.dropout applies to cnn only, not {self.name}")
        return self


class OptimizerConfig(Strict):
    name: Literal["sgd", "adamw", "adadelta"] = "sgd"
    """sgd | adamw | adadelta (torch.optim)."""
    lr: float = Field(0.1, gt=0.0)
    """Peak learning rate."""
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    """SGD momentum (ignored by adamw/adadelta)."""
    weight_decay: float = Field(5.0e-4, ge=0.0)
    """L2 / decoupled weight decay."""


class ScheduleConfig(Strict):
    name: Literal["constant", "step", "cosine", "onecycle"] = "constant"
    """constant | step | cosine | onecycle, from torch.optim.lr_scheduler, stepped per batch."""
    warmup_epochs: float = Field(0.0, ge=0.0)
    """Linear warmup (LinearLR + SequentialLR); must be shorter than training (onecycle has its own ramp)."""
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
    """Passes over the training set."""
    batch_size: int = Field(128, ge=1)
    """Global batch, split evenly across data-parallel workers (must divide)."""
    optimizer: OptimizerConfig = OptimizerConfig()
    """Optimizer settings."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 where the device has native bf16, fp16+GradScaler on older GPUs, else fp32. fp16 on a CPU
    worker is refused (far slower than fp32 there). The run records what it used."""
    channels_last: Union[Literal["auto"], bool] = "auto"
    """NHWC memory format (auto: on for models with 2-D convolutions)."""
    compile: bool = False
    """torch.compile the (DDP) model (off by default: compile time dominates short runs)."""
    keep_freed_memory: bool = True
    """Keep freed memory mapped (glibc mallopt) so steps stop re-faulting their buffers' pages."""
    schedule: ScheduleConfig = ScheduleConfig()
    """Learning-rate schedule."""
    early_stopping: Optional[EarlyStoppingConfig] = None
    """`{metric, mode, patience, min_delta, target}`: stop on a plateau or once `target` is reached
    (time-to-target is recorded); null: never."""
    max_grad_norm: Optional[float] = Field(None, gt=0.0)
    """Clip gradients to this global norm (null: no clipping)."""


class PruningConfig(Strict):
    method: Literal["none", "magnitude", "structured"] = "none"
    """magnitude: global unstructured L1 (torch.nn.utils.prune, masks kept through training, made permanent
    at the end). structured: removes channels (torch-pruning; the model really gets smaller)."""
    ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Fraction of weights (magnitude) or channels (structured) removed."""
    schedule: Literal["oneshot", "gradual"] = "oneshot"
    """oneshot: prune once at `start_epoch`; gradual: reach `ratio` over start_epoch..end_epoch (cubic for
    magnitude, linear steps for structured)."""
    start_epoch: int = Field(0, ge=0)
    """Epoch (0-based) at whose start pruning begins."""
    end_epoch: Optional[int] = Field(None, ge=0)
    """gradual: epoch at whose start the final ratio is reached (default: start_epoch + 2)."""


class CheckpointConfig(Strict):
    every_epochs: Optional[int] = Field(1, ge=1)
    """Checkpoint every N epochs (and at the last); null: only at the last (and at `every_steps`)."""
    every_steps: Optional[int] = Field(None, ge=1)
    """Also checkpoint every N optimizer steps inside an epoch: a resume continues at the next step (a lost node
    costs at most N steps, plus the steps of the ≤0.5 s in which Ray Train's controller polls a report, if
    the node dies inside them). Each epoch's metrics row says what they cost (`step_checkpoint_s`, of
    `epoch_s`): pick N so that stays a few percent. Not in search trials (Tune restores trials at epoch ends)."""
    notice_every_steps: int = Field(10, ge=1)
    """In a worker group, ask Ray every N steps whether a node is being drained (a barrier across workers); a
    notice makes the group checkpoint at that step, train on while a step and a checkpoint fit before the drain's
    deadline, checkpoint again and wait for Ray Train's restart there: at most one step is lost."""
    keep: int = Field(2, ge=1)
    """Newest checkpoints kept."""


class CallbackSpec(Strict):
    name: str
    """An importable `raytrain.Callback` subclass, "module:Name"."""
    args: dict = {}
    """Keyword arguments of its constructor."""


class Experiment(Strict):
    """One experiment: what to train on which data, how, where, and with which speed techniques. Every key is
    documented in docs/configuration.md (generated); unknown keys and wrong types are refused."""
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
    """Root of runs: a local path or a URI (`s3://bucket/prefix`, `gs://...`); a run never overwrites another."""
    output_shared: bool = False
    """Declare a local `output` path mounted by every node (NFS), so multi-node clusters accept it."""
    callbacks: list[Union[str, CallbackSpec]] = []
    """Callbacks at the loop's events, each "module:Name" or {name, args}: e.g. raytrain.integrations:TensorBoard,
    raytrain.integrations:MLflow (see docs/callbacks.md)."""

    @model_validator(mode="after")
    def _check(self) -> "Experiment":
        t, p, par = self.train, self.pruning, self.parallel
        if par.pipeline.stages > 1:
            check_pipeline(self)
        elif not par.elastic and t.batch_size % par.workers:
            raise ValueError(f"train.batch_size {t.batch_size} must be divisible by parallel.workers {par.workers}")
        elif par.elastic:
            check_elastic(self)
        if t.schedule.warmup_epochs >= t.epochs and t.schedule.warmup_epochs > 0:
            raise ValueError(
                f"train.schedule.warmup_epochs {t.schedule.warmup_epochs} must be shorter than train.epochs {t.epochs}")
        if t.precision == "fp16" and not par.use_gpu:
            raise ValueError("train.precision fp16 on a CPU worker is 2-24x slower than fp32; use bf16 (or auto)")
        if par.use_gpu and par.gpus_per_worker < 1 and par.max_workers > 1:
            raise ValueError(f"parallel.gpus_per_worker {par.gpus_per_worker:g} with {par.max_workers} workers: NCCL cannot "
                             "put two ranks of one group on one GPU; use whole GPUs (fractions pack trials or one worker)")
        if par.use_gpu and par.gpus_per_worker > 1 and not float(par.gpus_per_worker).is_integer():
            raise ValueError(f"parallel.gpus_per_worker {par.gpus_per_worker:g}: above 1 it must be a whole number")
        if self.data.dataset in ("parquet", "images") and not self.data.path:
            raise ValueError(f"data.path is required for dataset {self.data.dataset}")
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
        """Rows per step of one data-parallel replica (a whole pipeline group counts as one) at full size."""
        return self.train.batch_size // self.parallel.dp

