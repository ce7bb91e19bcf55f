"""Streaming: (1) a synthetic Parquet dataset of >= 2 GB (generated here under runs/bench, not committed)
streamed by 2 workers (0.5 CPU each, 1 CPU for Ray Data's reads): the driver's peak RSS from start to exit
against the dataset's size, beside the same command on 2 of its files (what does not grow with the data);
(2) samples/s streaming vs materialised on MNIST (fits either way), one worker, same run."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import OUT, ROOT, cli, mnist_available, rows_of

# 3x64x64 uint8 = 12 KiB a row: 120 files x 4400 rows = 6.5 GB. The driver holds ~0.5 GB whatever the data's
# size (Python, torch, Ray and Ray Data imported, an embedded Ray's driver), so the ratio is a fixed cost over
# the data: 23% of a 2.2 GB folder, under 10% from ~5 GB on; the 2-file row shows what grows.
SIDE, FILES, ROWS_PER_FILE = 64, 120, 4400


def make_dataset(root) -> int:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    total = 0
    for i in range(FILES):
        path = root / f"part-{i:03d}.parquet"
        if not path.is_file():
            x = rng.integers(0, 256, size=(ROWS_PER_FILE, 3 * SIDE * SIDE), dtype=np.uint8)
            y = (x[:, :8].sum(1) % 10).astype(np.int64)  # learnable from the first pixels
            col = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.uint8()), 3 * SIDE * SIDE)
            pq.write_table(pa.table({"image": col, "label": y}), path, row_group_size=1100, compression="none")
        total += path.stat().st_size
    return total


def _stream(path, name: str) -> dict:
    return cli("train", str(ROOT / "experiments" / "digits-cnn.yaml"), "--set", f"name={name}",
               "--set", f"data={{dataset: parquet, path: {path}, shape: [3, {SIDE}, {SIDE}], num_classes: 10, "
               "ingest: stream}", "--set", "model={name: mlp, width: 0.25}", "--set", "train.epochs=1",
               "--set", "train.batch_size=512", "--set", "train.schedule={name: constant}",
               "--set", "parallel={workers: 2, cpus_per_worker: 0.5}", "--set", f"output={OUT}")


def run() -> dict:
    big = OUT / "stream-big"
    size = make_dataset(big)
    # The same command on two of the files: what the driver holds whatever the data's size (Python, torch,
    # Ray, Ray Data's executor), so the growth with the data can be read beside the ratio.
    small = OUT / "stream-2files"
    small.mkdir(parents=True, exist_ok=True)
    for f in sorted(big.glob("*.parquet"))[:2]:
        if not (small / f.name).exists():
            (small / f.name).symlink_to(f)
    base = _stream(small, "stream-2files")
    streamed = _stream(big, "stream-big")
    s = streamed["summary"]
    # The watcher's figure: the run's own (ru_maxrss) is taken before shutdown and, for a child started with
    # vfork + exec, can include this bench process's peak.
    peak = streamed["peak_rss_mb"]
    out = {"dataset_bytes": size, "driver_peak_rss_mb": peak, "status": s["status"],
           "samples_per_s": s["final"].get("samples_per_s"), "rows": s["final"].get("epoch"),
           "rss_ratio": peak * 1024**2 / size, "process_wall_s": streamed["process_wall_s"],
           "small_bytes": sum(f.stat().st_size for f in small.glob("*.parquet")),
           "small_driver_peak_rss_mb": base["peak_rss_mb"], "run_own_peak_rss_mb": s["driver_peak_rss_mb"]}
    if mnist_available():
        rates = {}
        for ingest in ("materialize", "stream", "materialize", "stream"):
            r = cli("train", str(ROOT / "experiments" / "mnist-fast.yaml"), "--set", f"data.ingest={ingest}",
                    "--set", "train.early_stopping=null", "--set", "train.epochs=2",
                    "--set", "parallel.cpus_per_worker=1", "--set", f"output={OUT}")
            rates.setdefault(ingest, []).append(rows_of(r["summary"])[-1]["samples_per_s"])
        out["mnist"] = {k: max(v) for k, v in rates.items()}
        out["mnist"]["ratio"] = out["mnist"]["stream"] / out["mnist"]["materialize"]
    return {"big": out, "task": "2 workers x 0.5 CPU + 1 CPU for Ray Data on 2 cores"}


def rows(r: dict) -> list[tuple[str, str, str]]:
    if not r:
        return []
    b = r["big"]
    out = [(f"stream a {b['dataset_bytes'] / 1e9:.2f} GB Parquet folder with 2 workers: driver's peak RSS (start to "
            "exit) / dataset size",
            f"{b['driver_peak_rss_mb']:.0f} MB / {b['dataset_bytes'] / 1e6:.0f} MB = **{b['rss_ratio']:.1%}** "
            f"({b['status']}, {b['samples_per_s']:.0f} samples/s)", "≤10%")]
    if b.get("small_driver_peak_rss_mb"):
        grow = b["driver_peak_rss_mb"] - b["small_driver_peak_rss_mb"]
        out.append((f"driver's peak RSS, same command on 2 of the files ({b['small_bytes'] / 1e6:.0f} MB) vs all "
                    f"({b['dataset_bytes'] / 1e9:.2f} GB): what grows with the data",
                    f"{b['small_driver_peak_rss_mb']:.0f} MB vs {b['driver_peak_rss_mb']:.0f} MB: "
                    f"**{grow:+.0f} MB** ({grow * 1024**2 / b['dataset_bytes']:+.1%} of the data)", "(reading)"))
    if b.get("mnist"):
        m = b["mnist"]
        out.append(("samples/s streaming vs materialised (MNIST, 1 worker x 1 CPU, streaming adds 1 CPU of reads)",
                    f"{m['stream']:.0f} vs {m['materialize']:.0f} = **{m['ratio']:.2f}**", "≥0.9"))
    return out
