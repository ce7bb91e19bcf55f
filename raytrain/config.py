"""The experiment YAML: typed, validated, the public contract.

Every key has a docstring (pydantic reads attribute docstrings into the schema, and docs/configuration.md
is generated from it: `make docs`); unknown keys and wrong types are rejected. Cross-field rules
that need more than one key live in `Experiment._check`. Reading files and `--set` overrides:
`raytrain.configio`.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from raytrain.config_data import DataConfig, Strict  # noqa: F401  (re-exported: the data section)


class ModelConfig(Strict):
    name: str = "cnn"
    """cnn | mlp | resnet | mobilenet | efficientnet | vit; "package.module:function" returning an nn.Module
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


class PipelineConfig(Strict):
    stages: int = Field(1, ge=1)
    """Pipeline stages per group; 1 = plain data parallelism. DP degree = workers / stages."""
    microbatches: int = Field(4, ge=1)
    """Micro-batches per step per group; the bubble is (stages-1)/(microbatches+stages-1)."""
    schedule: Literal["gpipe", "1f1b", "interleaved_1f1b"] = "1f1b"
    """gpipe | 1f1b | interleaved_1f1b (two virtual stages per rank: smaller bubble, more messages)."""
    split: Union[Literal["auto"], list[str]] = "auto"
    """auto balances parameter counts over the model's top-level blocks; or the block names where stages
    2..K (2..2K for interleaved) begin."""


class WorkerResources(Strict):
    """What each worker reserves; `bundle()` is the one place the resource dict is built."""
    workers: int = Field(2, ge=1)
    """Workers (Ray Train workers, or one process for a single in-process worker)."""
    cpus_per_worker: float = Field(1.0, gt=0.0)
    """CPUs reserved per worker; torch intra-op threads are set to max(1, floor(cpus))."""
    use_gpu: bool = False
    """One GPU (or `gpus_per_worker` of one) per worker; nccl backend, gloo on CPU."""
    gpus_per_worker: float = Field(1.0, gt=0.0)
    """With use_gpu: a fraction packs several single-rank workers (trials, one-worker runs) on one GPU."""
    worker_resources: dict[str, float] = Field(default_factory=dict)
    """Extra Ray resources per worker, e.g. {pool_gpu_8x: 1} to pin workers to a node pool of clusters/."""

    def bundle(self) -> dict[str, float]:
        """The Ray resource request of one worker."""
        gpu = {"GPU": float(self.gpus_per_worker)} if self.use_gpu else {}
        return {"CPU": float(self.cpus_per_worker), **gpu, **self.worker_resources}

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.cpus_per_worker))


class ParallelConfig(WorkerResources):
    workers: Union[int, tuple[int, int]] = 2
    """Workers (Ray Train workers, or one process for a single in-process worker); [min, max]: an elastic
    group, started once `min` fit, going on with fewer after a node is lost and growing back when nodes return
    (each resize restarts the group from the newest checkpoint, the data re-split for the new world size).
    train.batch_size stays the global batch whatever the world size: a rank whose share exceeds
    batch_size / max accumulates gradients over micro-batches of at most that size."""
    resize_check_s: float = Field(60.0, gt=0.0)
    """workers: [min, max]: how often a running group checks whether more workers now fit (a grow restarts it
    from the newest checkpoint: set checkpoint.every_steps to bound the steps redone)."""
    max_failures: int = Field(2, ge=0)
    """Failures survived by restarting from the latest checkpoint (worker group or in-process loop)."""
    isolate: bool = False
    """Run even a single worker in a Ray Train worker group (Ray's restarts, its own process) instead of
    in the calling process."""
    pipeline: PipelineConfig = PipelineConfig()
    """Pipeline-sharded model parallelism (torch.distributed.pipelining), combinable with data parallelism."""

    @field_validator("workers", mode="before")
    @classmethod
    def _range(cls, v):
        if isinstance(v, (list, tuple)) and (len(v) != 2 or not all(isinstance(x, int) for x in v)):
            raise ValueError("a number of workers, or [min, max] for an elastic group")
        return v

    @field_validator("workers")
    @classmethod
    def _ordered(cls, v):
        lo, hi = (v, v) if isinstance(v, int) else v
        if lo < 1:
            raise ValueError("at least 1 worker")
        if lo > hi:
            raise ValueError("[min, max] needs min <= max")
        return lo if lo == hi else (lo, hi)

    @property
    def min_workers(self) -> int:
        return self.workers if isinstance(self.workers, int) else self.workers[0]

    @property
    def max_workers(self) -> int:
        return self.workers if isinstance(self.workers, int) else self.workers[1]

    @property
    def elastic(self) -> bool:
        return self.min_workers < self.max_workers

    @property
    def world_sizes(self) -> range:
        """Every world size an elastic group may train at (one, for a fixed `workers`)."""
        return range(self.min_workers, self.max_workers + 1)

    @property
    def dp(self) -> int:
        """Data-parallel degree at full size: replicas of each pipeline stage."""
        return self.max_workers // self.pipeline.stages


class CheckpointConfig(Strict):
    every_epochs: Optional[int] = Field(1, ge=1)
    """Checkpoint every N epochs (and at the last); null: only at the last (and at `every_steps`)."""
    every_steps: Optional[int] = Field(None, ge=1)
    """Also checkpoint every N optimizer steps inside an epoch: a resume continues at the next step (a lost node
    costs at most N steps). Not in search trials (Tune restores trials at epoch ends)."""
    notice_every_steps: int = Field(10, ge=1)
    """In a worker group, ask Ray every N steps whether a node is being drained (a barrier across workers); a
    notice makes the group checkpoint at that step and stop, to resume elsewhere."""
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
            _check_pipeline(self)
        elif not par.elastic and t.batch_size % par.workers:
            raise ValueError(f"train.batch_size {t.batch_size} must be divisible by parallel.workers {par.workers}")
        elif par.elastic:
            _check_elastic(self)
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
        """Rows per step of one data-parallel replica (a whole pipeline group counts as one)."""
        return self.train.batch_size // self.parallel.dp


def _check_elastic(exp: "Experiment") -> None:
    """Every world size of the range splits the global batch into equal shares, so the batch (and the learning
    curve) does not depend on how many nodes are alive."""
    import math

    b, par = exp.train.batch_size, exp.parallel
    bad = [w for w in par.world_sizes if b % w]
    if bad:
        lcm = math.lcm(*par.world_sizes)
        raise ValueError(f"train.batch_size {b} with parallel.workers {list(par.workers)}: a group of "
                         f"{', '.join(map(str, bad))} worker(s) cannot split it into equal shares; use a multiple of "
                         f"{lcm} (e.g. {lcm * max(1, round(b / lcm))}) or narrow the range")


def _check_pipeline(exp: "Experiment") -> None:
    """Pipeline settings that would fail (or hang one stage) at run time, refused up front."""
    t, par, pp = exp.train, exp.parallel, exp.parallel.pipeline
    if par.elastic:  # each pipeline mode step is sized by parallel.workers, not by the group's world size
        raise ValueError(f"parallel.workers {list(par.workers)}: an elastic range is not supported with "
                         "parallel.pipeline yet; give a fixed number of workers")
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
    # Techniques that do not carry over to stages (docs/pipeline.md says why).
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
    if exp.data.ingest == "stream" and par.dp > 1:
        raise ValueError("data.ingest stream with parallel.pipeline needs data-parallel degree 1 (pipeline groups "
                         "share one batch order, which a stream does not repeat); use materialize")
