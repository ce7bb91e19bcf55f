"""`python -m bench [--only a,b]`: run sections, write bench/results/<section>.json, rebuild the results table
in bench/README.md (and bench/results/results.md)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time

from bench.common import RESULTS, ROOT, load

SECTIONS = ["startup", "quick_search", "no_ray_tax", "shuffle", "mnist", "foundation", "search", "search_winners", "headline_asha", "asha_pick", "rungs", "trials", "asha", "ablation", "storage",
            "streaming", "images", "pipeline", "gpu", "elastic", "step_checkpoints"]
DEFAULT = "startup,mnist,foundation"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def table() -> str:
    lines = ["| benchmark | measured (this machine unless a GPU is named) | goal |", "| --- | --- | --- |"]
    for name in SECTIONS:
        result = load(name)
        if result:
            lines += [f"| {b} | {m} | {g} |" for b, m, g in importlib.import_module(f"bench.{name}").rows(result)]
    return "\n".join(lines)


def update_readme() -> None:
    """Rewrite the table between bench/README.md's markers; the project README quotes a few headline rows."""
    readme = ROOT / "bench" / "README.md"
    text = readme.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        readme.write_text(f"{head}{START}\n{table()}\n{END}{rest.split(END, 1)[1]}")
    (RESULTS / "results.md").write_text(table() + "\n")


def main() -> None:
    import torch

    from raytrain.runtime import ray_env, scoped_env

    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--only", default=DEFAULT, help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    ap.add_argument("--table", action="store_true", help="only rebuild bench/README.md's table from bench/results")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with scoped_env(ray_env()):
        for name in [] if args.table else args.only.split(","):
            t0 = time.time()
            result = importlib.import_module(f"bench.{name}").run()
            result.update(measured_at=time.strftime("%Y-%m-%d %H:%M"), seconds=time.time() - t0, cpus=os.cpu_count(),
                          torch=torch.__version__)
            (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
            print(json.dumps(result, indent=2, default=str)[:4000], flush=True)
    update_readme()


if __name__ == "__main__":
    main()
