"""GPU rows (`make gpu-check` on a GPU host; every figure names the GPU it came from):

  * samples/s of `raytrain train` against a plain PyTorch loop with the same model, batch and precision and
    the data already on the GPU, for the classic cnn at batch 64 and the fast recipe at batch 128;
  * mnist-fast to 99.0% from the command's start, beside PyTorch's plain example on the same GPU;
  * start -> first step: one worker in-process, and a Ray Train worker group beside a bare TorchTrainer.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from bench.common import OUT, ROOT, cli, median, module, rows_of, steady
from raytrain.data.mnist import MNIST_MEAN, MNIST_STD

RECIPES = {"classic cnn, batch 64": "mnist-classic.yaml", "fast recipe, batch 128": "mnist-fast.yaml"}


def _plain_rate(yaml_file: str, epochs: int = 3) -> float:
    """The recipe's model, batch, optimizer and precision in a bare loop over MNIST held on the GPU."""
    from raytrain.configio import load_experiment
    from raytrain.data.mnist import default_dir, load_mnist
    from raytrain.models import build_model
    from raytrain.optim import build_optimizer
    from raytrain.techniques.precision import autocast, resolve_precision

    exp = load_experiment(ROOT / "experiments" / yaml_file)
    dev = torch.device("cuda")
    (xt, yt), _ = load_mnist(default_dir())
    x = ((torch.from_numpy(xt).float() / 255 - MNIST_MEAN) / MNIST_STD).to(dev)
    y = torch.from_numpy(yt).to(dev)
    model = build_model(exp.model.name, (1, 28, 28), 10, exp.model.width, exp.model.dropout).to(dev)
    if exp.train.channels_last is not False:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = build_optimizer(model, exp.train.optimizer)
    precision, bs, rates = resolve_precision(exp.train.precision, dev), exp.train.batch_size, []
    for _ in range(epochs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        perm = torch.randperm(len(y), device=dev)
        for i in range(0, len(y), bs):
            idx = perm[i:i + bs]
            with autocast(precision, dev):
                loss = F.cross_entropy(model(x[idx]).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        rates.append(len(y) / (time.perf_counter() - t0))
    return steady(rates)


def _raytrain_rate(yaml_file: str) -> dict:
    r = cli("train", str(ROOT / "experiments" / yaml_file), "--set", "parallel.use_gpu=true", "--set", "train.epochs=3",
            "--set", "train.early_stopping=null", "--set", f"output={OUT}")

    rows = rows_of(r["summary"])
    return {"samples_per_s": steady([x["samples_per_s"] for x in rows]), "device_cache": rows[-1].get("device_cache"),
            "precision": rows[-1].get("precision")}


def run() -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("bench gpu: no CUDA GPU here")
    gpu = torch.cuda.get_device_name(0)
    out = {"gpu": gpu, "throughput": {}}
    for label, yaml_file in RECIPES.items():
        ours, plain = _raytrain_rate(yaml_file), _plain_rate(yaml_file)
        out["throughput"][label] = {**ours, "plain_samples_per_s": plain, "ratio": ours["samples_per_s"] / plain}
    fast = cli("train", str(ROOT / "experiments" / "mnist-fast.yaml"), "--set", "parallel.use_gpu=true", "--set",
               f"output={OUT}")
    plain, plain_wall = module("plain_mnist", "--target", "0.99", "--device", "cuda")
    s = fast["summary"]
    out["mnist_fast"] = {"process_wall_s": fast["process_wall_s"], "first_step_s": s.get("first_step_s"),
                         "to_target_since_launch_s": s["final"].get("time_to_target_since_launch_s"),
                         "startup": s.get("startup"), "plain_example_process_wall_s": plain_wall,
                         "plain_example_to_target_s": plain["to_target_since_start_s"], "plain_epochs": len(plain["epochs"])}
    starts = {"in_process": [], "worker_group": [], "bare": []}
    for _ in range(3):
        args = [str(ROOT / "experiments" / "mnist-fast.yaml"), "--set", "parallel.use_gpu=true", "--set", "train.epochs=1",
                "--set", "train.early_stopping=null", "--set", f"output={OUT}"]
        starts["in_process"].append(cli("train", *args)["summary"]["first_step_s"])
        starts["worker_group"].append(cli("train", *args, "--set", "parallel.isolate=true")["summary"]["first_step_s"])
        starts["bare"].append(module("bare_trainer", "--workers", "1", "--gpu")[0]["function_reached_s"])
    out["startup"] = {k: {"median_s": median(v), "all_s": sorted(round(x, 1) for x in v)} for k, v in starts.items()}
    return out


def rows(g: dict) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    name = (g or {}).get("gpu")
    for label, t in (g or {}).get("throughput", {}).items():
        cache = "on" if t["device_cache"] else "off"
        out.append((f"[{name}] samples/s vs a plain PyTorch loop, data on the GPU: {label}",
                    f"{t['samples_per_s']:.0f} vs {t['plain_samples_per_s']:.0f} = **{t['ratio']:.2f}** "
                    f"({t['precision']}, device cache {cache})", "≥0.95"))
    if not out:
        return out
    m, s = g["mnist_fast"], g["startup"]
    out.append((f"[{name}] mnist-fast to 99.0% from command start (plain example on the same GPU)",
                f"target at {m['to_target_since_launch_s']:.1f} s, exit at {m['process_wall_s']:.1f} s (first step "
                f"{m['first_step_s']:.1f} s) vs the plain example's {m['plain_example_to_target_s']:.1f} s to target, "
                f"{m['plain_example_process_wall_s']:.1f} s to exit", "report"))
    out.append((f"[{name}] start → first step: in-process / worker group vs a bare TorchTrainer",
                f"{s['in_process']['median_s']:.1f} s / {s['worker_group']['median_s']:.1f} s vs "
                f"{s['bare']['median_s']:.1f} s (medians of 3)", "≤ bare + 3 s"))
    return out
