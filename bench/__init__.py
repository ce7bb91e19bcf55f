"""Benchmarks, measured side by side in one run: `make bench` or `python -m bench --only SECTION,...`.

One module per section (foundation, startup, ablation, asha, mnist, search, storage, streaming, pipeline,
gpu); each has `run() -> dict` (written to bench/results/<section>.json) and `rows(result) -> [(benchmark,
measured, goal)]` (bench/README.md's results table, rebuilt from every results file). Figures, not
assertions.
The narrative, and how to read each figure, is in bench/README.md.
"""
