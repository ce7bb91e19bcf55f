"""Benchmarks, measured side by side in one run: `make bench` (or `python bench/run.py --only foundation`).

Writes bench/results/<section>.json, bench/results/ablation.png, and the README's results table
(between the `bench:start` / `bench:end` markers). Nothing here is a test: figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from raytrain.runtime import bound_ray_train_waits  # noqa: E402

bound_ray_train_waits()

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from raytrain import trainer  # noqa: E402
from raytrain.config import validate_experiment  # noqa: E402
from raytrain.data import prepare  # noqa: E402
from raytrain.loop import SchedulerStepper, StepEnv, train_epoch  # noqa: E402
from raytrain.models import build_model  # noqa: E402
from raytrain.optim import build_optimizer  # noqa: E402
from raytrain.techniques.schedule import build_scheduler  # noqa: E402

OUT = ROOT / "runs" / "bench"


def experiment(**patch) -> "Experiment":  # noqa: F821
    base = {
        "name": "bench", "seed": 0, "data": {"dataset": "digits", "upscale": 4},
        "model": {"name": "cnn"}, "output": str(OUT),
        "train": {"epochs": 4, "batch_size": 64, "precision": "fp32", "channels_last": False,
                  "optimizer": {"name": "sgd", "lr": 0.05}},
        "parallel": {"workers": 1, "cpus_per_worker": 1},
    }
    for dotted, value in patch.items():
        node = base
        *path, last = dotted.split("__")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return validate_experiment(base, "bench")


def rows(summary: dict) -> list[dict]:
    return [json.loads(l) for l in Path(summary["metrics_log"]).read_text().splitlines()]


def steady(values: list[float]) -> float:
    """Median over epochs after the first (the first pays for warm-up and lazy init)."""
    return statistics.median(values[1:] if len(values) > 1 else values)


def plain_pytorch_samples_per_s(exp, threads: int) -> float:
    """The same loop (raytrain.loop.train_epoch) on the same Parquet data, no Ray, `threads` threads."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    info = prepare(exp.data, exp.seed, Path(exp.output) / ".cache" / "data")
    t = pq.read_table(info.train_path)
    x = torch.from_numpy(np.stack(t.column("x").to_numpy(zero_copy_only=False)).astype(np.float32)).reshape(-1, *info.in_shape)
    y = torch.from_numpy(t.column("y").to_numpy())
    model = build_model(exp.model.name, info.in_shape, info.num_classes, exp.model.width)
    opt = build_optimizer(model, exp.train.optimizer)
    steps = -(-len(y) // exp.train.batch_size)
    stepper = SchedulerStepper(build_scheduler(opt, exp.train.schedule, exp.train.epochs, steps, exp.train.optimizer.lr),
                               exp.train.epochs * steps)
    env = StepEnv(torch.device("cpu"), "fp32", False, info.scale, info.mean, info.std)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    rates = []
    for epoch in range(exp.train.epochs):
        perm = torch.randperm(len(y))
        batches = ({"x": x[perm[i:i + exp.train.batch_size]], "y": y[perm[i:i + exp.train.batch_size]]}
                   for i in range(0, len(y), exp.train.batch_size))
        t0 = time.perf_counter()
        stats = train_epoch(model, batches, opt, stepper, scaler, env)
        rates.append(stats["count"] / (time.perf_counter() - t0))
    return steady(rates)


def foundation() -> dict:
    import ray

    exp1 = experiment()
    plain = plain_pytorch_samples_per_s(exp1, threads=1)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        one = rows(trainer.run(exp1))
        two = rows(trainer.run(experiment(parallel__workers=2)))
    finally:
        ray.shutdown()
    r1 = steady([r["samples_per_s"] for r in one])
    r2 = steady([r["samples_per_s"] for r in two])
    return {"task": "cnn on digits upscaled to 32x32, fp32, batch 64, 4 epochs (median of epochs 2-4)",
            "plain_pytorch_samples_per_s": plain, "ray_1worker_samples_per_s": r1, "ray_vs_plain": r1 / plain,
            "ray_2workers_samples_per_s": r2, "scaling_2_vs_1": r2 / r1, "startup": startup()}


def startup() -> dict:
    """`raytrain train` from the command's start (embedded Ray, dashboard) to the first finished step."""
    import subprocess

    cmd = [sys.executable, "-m", "raytrain", "train", str(ROOT / "experiments" / "digits-cnn.yaml"),
           "--set", "train.epochs=1", "--set", f"output={OUT}"]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    wall = time.time() - t0
    run_dir = next((ln.split()[2] for ln in out.stdout.splitlines() if ln.startswith("[raytrain] run ")), None)
    first = json.loads((Path(run_dir) / "metrics.jsonl").read_text().splitlines()[0]) if run_dir else {}
    return {"first_step_s": first.get("first_step_s"), "process_wall_s": wall, "exit_code": out.returncode}


ABLATION = {
    "fp32 dense": {},
    "bf16": {"train__precision": "bf16"},
    "channels_last": {"train__channels_last": True},
    "bf16+channels_last": {"train__precision": "bf16", "train__channels_last": True},
    "auto (default)": {"train__precision": "auto", "train__channels_last": "auto"},
    "resnet": {"model__name": "resnet"},
    "mobilenet": {"model__name": "mobilenet"},
    "magnitude 0.5": {"pruning": {"method": "magnitude", "ratio": 0.5}},
    "magnitude 0.9": {"pruning": {"method": "magnitude", "ratio": 0.9}},
    "structured 0.3": {"pruning": {"method": "structured", "ratio": 0.3}},
    "structured 0.5": {"pruning": {"method": "structured", "ratio": 0.5}},
    "structured 0.7": {"pruning": {"method": "structured", "ratio": 0.7}},
}


def ablation(epochs: int = 6) -> dict:
    """Train-step time vs fp32 dense, one worker with 2 CPUs, fixed budget of `epochs` epochs."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    out = {}
    try:
        for label, patch in ABLATION.items():
            s = trainer.run(experiment(train__epochs=epochs, parallel__cpus_per_worker=2,
                                       train__schedule={"name": "cosine", "warmup_epochs": 1}, **patch))
            r = rows(s)
            out[label] = {"step_ms": steady([x["step_ms"] for x in r]), "val_accuracy": s["final"]["val_accuracy"],
                          "params_nonzero": s["final"].get("params_nonzero"), "flops": s["final"].get("flops_per_sample"),
                          "precision": s["final"].get("precision"), "status": s["status"]}
    finally:
        ray.shutdown()
    base = out["fp32 dense"]["step_ms"]
    for v in out.values():
        v["step_ratio"] = v["step_ms"] / base
    plot_ablation(out)
    return {"task": f"digits upscaled to 32x32, 1 worker x 2 CPUs, {epochs} epochs, cosine+warmup", "configs": out}


def plot_ablation(out: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(out)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.barh(labels, [out[k]["step_ratio"] for k in labels], color="tab:blue")
    ax.axvline(1.0, color="grey", lw=1)
    for i, k in enumerate(labels):
        ax.text(out[k]["step_ratio"] + 0.02, i, f"{out[k]['step_ratio']:.2f}x  acc {out[k]['val_accuracy']:.3f}", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("train-step time relative to fp32 dense (lower is faster)")
    ax.set_title("raytrain speed techniques (CPU, this machine)")
    fig.tight_layout()
    fig.savefig(RESULTS / "ablation.png", dpi=110)


def render_table() -> str:
    lines = ["| benchmark | measured | goal |", "| --- | --- | --- |"]
    f = _load("foundation")
    if f:
        lines += [
            f"| Ray Train 1 worker vs plain PyTorch, samples/s | {f['ray_1worker_samples_per_s']:.0f} vs {f['plain_pytorch_samples_per_s']:.0f} = **{f['ray_vs_plain']:.2f}** | ≥0.95 |",
            f"| 2 workers × 1 CPU vs 1 × 1, samples/s | {f['ray_2workers_samples_per_s']:.0f} vs {f['ray_1worker_samples_per_s']:.0f} = **{f['scaling_2_vs_1']:.2f}×** | ≥1.8 |",
            f"| `raytrain train` start → first step | **{f['startup']['first_step_s']:.1f} s** (process {f['startup']['process_wall_s']:.0f} s for 1 epoch) | ≤15 s |",
        ]
    a = _load("ablation")
    if a:
        for label, v in a["configs"].items():
            note = " (no speed on dense kernels)" if label.startswith("magnitude") else ""
            lines.append(f"| step time {label}{note} | **{v['step_ratio']:.2f}×** ({v['step_ms']:.1f} ms), acc {v['val_accuracy']:.3f} | "
                         + {"bf16+channels_last": "≤0.35×", "auto (default)": "≤0.35×", "structured 0.5": "≤0.35×"}.get(label, "—") + " |")
    return "\n".join(lines)


def _load(name: str):
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def update_readme() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        readme.write_text(f"{head}{start}\n{render_table()}\n{end}{tail}")
    (RESULTS / "results.md").write_text(render_table() + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="foundation,ablation", help="comma-separated sections")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.only.split(","):
        t0 = time.time()
        result = {"foundation": foundation, "ablation": ablation}[name]()
        result.update(measured_at=time.strftime("%Y-%m-%d %H:%M"), seconds=time.time() - t0, cpus=os.cpu_count(),
                      torch=torch.__version__)
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    update_readme()


if __name__ == "__main__":
    main()
