"""Time to 99.0% MNIST accuracy, from each command's start to its exit (what the user waits for): PyTorch's
plain example recipe (bench/plain_mnist.py, 2 threads; it has no validation split, so its 99.0% is on the test
set) vs `raytrain train experiments/mnist-fast.yaml` (whose stop reads 99.0% on validation held out of the
training images; its test accuracy, read once at the end, beside), and the classic recipe through raytrain
(BENCH_MNIST_CLASSIC=0 leaves it out), in one run. Inner figures (training seconds to the target, start-up)
are reported beside, each named."""

from __future__ import annotations

import os

from bench.common import OUT, ROOT, cli, module


def _raytrain(yaml_file: str) -> dict:
    r = cli("train", str(ROOT / "experiments" / yaml_file), "--set", f"output={OUT}")
    s, f = r["summary"], r["summary"].get("final", {})
    return {"process_wall_s": r["process_wall_s"], "to_target_since_launch_s": f.get("time_to_target_since_launch_s"),
            "train_s_to_target": f.get("time_to_target_s"), "epochs_to_target": f.get("time_to_target_epochs"),
            "val_accuracy": f.get("val_accuracy"), "test_accuracy": f.get("test_accuracy"), "first_step_s": s.get("first_step_s"), "startup": s.get("startup"),
            "samples_per_s": f.get("samples_per_s"), "status": s.get("status"), "mode": s.get("mode")}


def run(classic: bool = os.environ.get("BENCH_MNIST_CLASSIC", "1") != "0") -> dict:
    plain, plain_wall = module("plain_mnist", "--target", "0.99")
    fast = _raytrain("mnist-fast.yaml")
    out = {"plain": {**plain, "process_wall_s": plain_wall}, "fast": fast}
    if classic:
        out["classic"] = _raytrain("mnist-classic.yaml")
    if plain["reached"] and fast["to_target_since_launch_s"]:
        out["speedup_process"] = plain_wall / fast["process_wall_s"]
        out["speedup_train_s"] = plain["train_s"] / fast["train_s_to_target"]
    out["task"] = "MNIST to 99.0% test accuracy on this machine's 2 CPUs, each command from its start to its exit"
    return out


def rows(m: dict) -> list[tuple[str, str, str]]:
    if not m or "speedup_process" not in m:
        return []
    p, f = m["plain"], m["fast"]
    out = [(
        "time to 99.0% MNIST accuracy **from command start to exit**: PyTorch's plain example (2 threads; test set) "
        "vs `raytrain train experiments/mnist-fast.yaml` (validation held out of train; test read once, at the end)",
        f"{p['process_wall_s']:.0f} s ({len(p['epochs'])} ep, test {p['epochs'][-1]['test_accuracy']:.2%}) vs "
        f"**{f['process_wall_s']:.1f} s** ({f['epochs_to_target']} ep, {_acc(f)}; first step at "
        f"{f['first_step_s']:.1f} s, target reached at {f['to_target_since_launch_s']:.1f} s, {f['mode']}) = "
        f"**{m['speedup_process']:.1f}×**", "≥10×"),
        ("time to 99.0%, training seconds only (same two runs)",
         f"{p['train_s']:.0f} s vs {f['train_s_to_target']:.1f} s = {m['speedup_train_s']:.1f}×", "(inner figure)")]
    c = m.get("classic")
    if c and c.get("process_wall_s"):
        out.append(("the classic recipe through `raytrain train experiments/mnist-classic.yaml` (same run)",
                    f"{c['process_wall_s']:.0f} s to exit ({c['epochs_to_target']} ep, {_acc(c)})",
                    "(reference)"))
    return out


def _acc(r: dict) -> str:
    """Validation and test accuracy (results taken before the test split was read had the validation only)."""
    if r.get("val_accuracy") is None:
        return f"{r['test_accuracy']:.2%} validation, taken as the test set then"
    return f"validation {r['val_accuracy']:.2%}, test {r['test_accuracy']:.2%}"
