"""Start -> first finished step of `raytrain train` as a user runs it (a fresh process): one worker (no Ray at all:
one worker, no RAY_ADDRESS) and two (a Ray Train worker group on an embedded Ray with its dashboard), beside the
floor under the latter: a bare TorchTrainer (2 workers, empty function, no raytrain code). Interleaved, `repeats` times each (this VM
drifts); medians reported, every run kept."""

from __future__ import annotations

from bench.common import OUT, ROOT, cli, median, module

ARGS = [str(ROOT / "experiments" / "digits-cnn.yaml"), "--set", "train.epochs=1", "--set", "train.schedule.warmup_epochs=0",
        "--set", f"output={OUT}"]


def _once(workers: int) -> dict:
    r = cli("train", *ARGS, "--set", f"parallel.workers={workers}")
    s = r["summary"]
    return {"first_step_s": s.get("first_step_s"), "process_wall_s": r["process_wall_s"], "mode": s.get("mode"),
            "breakdown_s": s.get("startup", {})}


def _pick(runs: list[dict]) -> dict:
    ok = sorted((r for r in runs if r.get("first_step_s")), key=lambda r: r["first_step_s"])
    return {**ok[len(ok) // 2], "all_s": [round(r["first_step_s"], 1) for r in ok]} if ok else {}


def run(repeats: int = 3) -> dict:
    one, two, bare = [], [], []
    for _ in range(repeats):
        one.append(_once(1))
        two.append(_once(2))
        bare.append(module("bare_trainer")[0])
    reached = [b["function_reached_s"] for b in bare]
    return {"one_worker": _pick(one), "two_workers": _pick(two),
            "bare_trainer": {"function_reached_s": median(reached), "all_s": [round(x, 1) for x in sorted(reached)]},
            "task": "digits cnn, 1 epoch (one worker: no Ray; two: embedded Ray with dashboard), median of "
                    f"{repeats} interleaved runs each"}


def rows(s: dict) -> list[tuple[str, str, str]]:
    if not s or not s.get("one_worker"):
        return []
    o, t, b = s["one_worker"], s["two_workers"], s["bare_trainer"]
    phases = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in o.get("breakdown_s", {}).items())
    return [
        ("one-worker `raytrain train` (in-process, no Ray): start → first step",
         f"**{o['first_step_s']:.1f} s** (median of {', '.join(map(str, o['all_s']))}); {phases}; process "
         f"{o['process_wall_s']:.1f} s to exit for 1 epoch", "≤7 s"),
        ("two-worker `raytrain train` (Ray Train worker group): start → first step, and the bare-TorchTrainer floor",
         f"{t['first_step_s']:.1f} s (median of {', '.join(map(str, t['all_s']))}); a bare TorchTrainer (2 workers, "
         f"empty function) reaches its function at {b['function_reached_s']:.1f} s (median of "
         f"{', '.join(map(str, b['all_s']))})", "(reference)"),
    ]
