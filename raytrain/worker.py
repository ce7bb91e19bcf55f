"""The Ray Train worker entry point: `TorchTrainer(train_loop_per_worker, train_loop_config=...)`."""

from __future__ import annotations

import logging
import time

from raytrain import _ray_compat, console, loop
from raytrain.hosts import TrainHost
from raytrain.plan import RunPlan


def train_loop_per_worker(config: dict) -> None:
    entered = time.time()
    _ray_compat.quiet_train_report_log()
    console.attach()  # this worker process's raytrain lines reach the driver's log
    plan = RunPlan.from_json(config["plan"])
    if not plan.console_lines and not console.is_verbose():  # the caller says one line per event itself
        console.LOGGER.setLevel(logging.WARNING)
    loop.run(TrainHost(plan), plan, config.get("model_factory"), entered, config.get("callbacks") or ())
