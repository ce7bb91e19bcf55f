"""The contract between the driver and every worker: decided once by the driver, passed (in Ray Train's
`train_loop_config`, or directly in-process), never re-derived on the other side."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional

from raytrain.config import Experiment
from raytrain.data.prepare import DataInfo


@dataclass
class RunPlan:
    experiment: str  # Experiment JSON
    data: str  # DataInfo JSON
    steps_per_epoch: int  # optimizer steps per epoch on every rank
    shards: dict[str, list[str]]  # "train"/"val" -> the dataset name rank r reads
    run_dir: Optional[str] = None  # URI of the run folder (metrics.jsonl); None in a search trial (Tune logs)
    checkpoints: Optional[str] = None  # URI of the folder holding this run's checkpoint_* (listed on resume)
    launch_time: Optional[float] = None  # when the user's command started (time-to-first-step)
    compile_cache: Optional[str] = None  # TORCHINDUCTOR_CACHE_DIR for train.compile
    mode: str = "worker-group"  # worker-group | in-process | trial: where it trains (the summary says which)
    # What the caller wants of the loop, declared here: the loop and the worker never ask who the caller is.
    console_lines: bool = True  # rank 0's progress bar, and a worker process's INFO lines (False: the caller
    #                             says one line per event itself, as a search does for its trials; verbose shows all)
    step_checkpoints: bool = True  # checkpoint.every_steps applies (False: the caller restores at epoch ends
    #                                only, as Tune does a trial; each of a trial's reports is a result for ASHA)
    report_may_end: bool = False  # the host's report may end the run inside it (Tune stops a trial there, as
    #                               ASHA does most): callbacks write an epoch's numbers before it, not after

    def exp(self) -> Experiment:
        return Experiment.model_validate_json(self.experiment)

    def info(self) -> DataInfo:
        return DataInfo.from_json(self.data)

    def shard(self, split: str, rank: int) -> str:
        return self.shards[split][rank]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "RunPlan":
        return RunPlan(**json.loads(text))
