"""A true shuffle: the same 6,000 MNIST training rows written as they come, sorted by label, and reshuffled, each
trained with `data.val_path` (2,000 test rows) on four seeds; val accuracy should not depend on the stored order
(before the fix, with a buffer shuffle: 0.931 as written, 0.633 sorted). The reshuffled copy shows how far two
random orders of the same rows differ anyway."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from bench.common import OUT, cli, mnist_available


def _parquet(path: Path, x: np.ndarray, y: np.ndarray) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": pa.array(list(x.reshape(len(x), -1))), "label": pa.array(y)}), path,
                   row_group_size=1000)
    return str(path)


def run(seeds: tuple = (1, 2, 3, 4)) -> dict:
    if not mnist_available():
        return {"skipped": "MNIST files not at $RAYTRAIN_DATA/mnist"}
    import yaml

    from raytrain.data.mnist import default_dir, load_mnist

    (xt, yt), (xv, yv) = load_mnist(default_dir())
    xt, yt, xv, yv = xt[:6000], yt[:6000], xv[:2000], yv[:2000]
    out = {"runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        val = _parquet(tmp / "val.parquet", xv, yv)
        order = np.argsort(yt, kind="stable")
        mixed = np.random.default_rng(0).permutation(len(yt))  # a third order: what two random orders differ by
        files = {"as written": _parquet(tmp / "as.parquet", xt, yt),
                 "sorted": _parquet(tmp / "sorted.parquet", xt[order], yt[order]),
                 "reshuffled": _parquet(tmp / "mixed.parquet", xt[mixed], yt[mixed])}
        for seed in seeds:
            for name, path in files.items():
                exp = {"name": "shuffle", "seed": seed, "output": str(OUT),
                       "data": {"dataset": "parquet", "path": path, "val_path": val, "shape": [1, 28, 28]},
                       "model": {"name": "cnn", "width": 0.5, "dropout": 0.0},
                       "train": {"epochs": 3, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 0.003}},
                       "parallel": {"workers": 1, "cpus_per_worker": 2}}
                cfg = tmp / f"{name.replace(' ', '_')}-{seed}.yaml"
                cfg.write_text(yaml.safe_dump(exp))
                r = cli("train", str(cfg))
                out["runs"].append({"order": name, "seed": seed, "process_wall_s": r["process_wall_s"],
                                    "val_accuracy": r["summary"]["final"]["val_accuracy"]})
    acc = {k: [r["val_accuracy"] for r in out["runs"] if r["order"] == k] for k in files}
    for other in ("sorted", "reshuffled"):
        gaps = [100 * (a - b) for a, b in zip(acc["as written"], acc[other])]
        out[f"gap_points_{other}"] = gaps
        out[f"mean_gap_points_{other}"] = sum(gaps) / len(gaps)
    out["gap_points"] = out["gap_points_sorted"]
    out["task"] = "6,000 MNIST rows (uint8 arrays in Parquet) as written vs sorted by label, cnn x0.5, 3 epochs"
    return out


def rows(m: dict) -> list[tuple[str, str, str]]:
    if not m or "gap_points" not in m:
        return []
    def gaps(k):
        return ", ".join(f"{g:+.2f}" for g in m[f"gap_points_{k}"]) + f" (mean **{m[f'mean_gap_points_{k}']:+.2f}**)"
    acc = {}
    for r in m["runs"]:
        acc.setdefault(r["order"], []).append(f"{r['val_accuracy']:.4f}")
    runs = "; ".join(f"{k} {', '.join(v)}" for k, v in acc.items())
    return [("the same 6,000 MNIST rows stored as written, sorted by label, or reshuffled (`data.val_path`), val "
             f"accuracy on seeds {', '.join(str(r['seed']) for r in m['runs'] if r['order'] == 'sorted')}",
             f"{runs}; as written − sorted: {gaps('sorted')} points; as written − reshuffled (two random orders): "
             f"{gaps('reshuffled')} points", "within 0.5 points")]
