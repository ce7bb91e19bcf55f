"""The README's demo search (`raytrain search search/digits-quick.yaml`: 6 one-worker trials, 2 at a time, on an
embedded Ray) as a user runs it, `repeats` times: from the command's start to its exit, beside the search's own
wall (Tune's run, after imports and `ray.init`). Most of a search this small is start-up, so this is where a
per-trial cost shows (each trial process reads its data once: as arrays from the cache, not through Ray Data)."""

from __future__ import annotations

from bench.common import OUT, ROOT, cli, median


def run(repeats: int = 3) -> dict:
    runs = []
    for _ in range(repeats):
        r = cli("search", str(ROOT / "search" / "digits-quick.yaml"), "--set", f"output={OUT}")
        s = r["summary"]
        runs.append({"process_wall_s": round(r["process_wall_s"], 1), "search_wall_s": round(s.get("wall_s", 0.0), 1),
                     "trials": len(s.get("trials", [])), "exit_code": r["exit_code"],
                     "best_val_accuracy": (s.get("trials") or [{}])[0].get("val_accuracy")})
    return {"runs": runs, "process_wall_s": median([r["process_wall_s"] for r in runs]),
            "search_wall_s": median([r["search_wall_s"] for r in runs]),
            "task": f"search/digits-quick.yaml, embedded Ray with dashboard, {repeats} runs"}


def rows(s: dict) -> list[tuple[str, str, str]]:
    if not s or not s.get("runs"):
        return []
    walls = ", ".join(f"{r['process_wall_s']:.1f}" for r in s["runs"])
    return [("demo search (`raytrain search search/digits-quick.yaml`, 6 trials): start → exit",
             f"**{s['process_wall_s']:.1f} s** (median of {walls}); the search itself {s['search_wall_s']:.1f} s; "
             f"{s['runs'][0]['trials']} trials, best val accuracy {s['runs'][0]['best_val_accuracy'] or 0:.4f}", "≤25 s")]
