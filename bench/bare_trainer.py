"""The floor under a worker group's start-up: a bare Ray Train V2 TorchTrainer (an empty function, no raytrain
code, no data) from process start to the function's first line.

    python -m bench.bare_trainer [--workers 2] [--gpu]      # prints one JSON line
"""

import json
import sys
import tempfile
import time

T0 = time.time()

import ray  # noqa: E402
from ray.train import RunConfig, ScalingConfig  # noqa: E402
from ray.train.torch import TorchTrainer  # noqa: E402


def reached(config: dict) -> None:
    import ray.train

    if ray.train.get_context().get_world_rank() == 0:
        with open(config["out"], "w") as f:
            f.write(str(time.time() - config["t0"]))


def main() -> None:
    workers = int(sys.argv[sys.argv.index("--workers") + 1]) if "--workers" in sys.argv else 2
    gpu = "--gpu" in sys.argv
    ray.init(num_cpus=None if gpu else 2, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="ERROR")
    init_s = time.time() - T0
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/reached"
        TorchTrainer(reached, train_loop_config={"t0": T0, "out": out},
                     scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu),
                     run_config=RunConfig(storage_path=tmp)).fit()
        with open(out) as f:
            reached_s = float(f.read())
    ray.shutdown()
    print(json.dumps({"imports_and_ray_init_s": init_s, "function_reached_s": reached_s}))


if __name__ == "__main__":
    main()
