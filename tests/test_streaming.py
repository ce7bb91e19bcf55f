"""Data larger than the driver's memory: Parquet streamed by Ray Data (local folders and S3), the driver reading
only footers; the same results as materialising; configurations that could not make progress refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import make_exp, metric_rows
from raytrain import driver
from raytrain.errors import UserError


def _digits_parquet(root: Path, files: int = 8) -> tuple[Path, Path]:
    """sklearn's digits as user Parquet: `files` training files and one validation file (flat pixel lists)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    x, y = (d.data / 16.0).astype(np.float32)[order], d.target[order]
    train, val = root / "train", root / "val"
    train.mkdir(parents=True)
    val.mkdir()
    n_val = 180
    for i, idx in enumerate(np.array_split(np.arange(n_val, len(y)), files)):
        pq.write_table(pa.table({"pixels": pa.array(x[idx].tolist(), pa.list_(pa.float32())), "digit": pa.array(y[idx])}),
                       train / f"part-{i:03d}.parquet")
    pq.write_table(pa.table({"pixels": pa.array(x[:n_val].tolist(), pa.list_(pa.float32())), "digit": pa.array(y[:n_val])}),
                   val / "part-000.parquet")
    return train, val


def _data(train, val, **kw) -> dict:
    return {"dataset": "parquet", "path": str(train), "val_path": str(val), "features": "pixels", "label": "digit",
            "shape": [1, 8, 8], **kw}


@pytest.mark.slow
def test_two_workers_stream_a_folder_and_match_materialize(ray_local, exp_dict, tmp_path):
    """2 workers stream 8 files on a 2-CPU Ray (0.5 CPU each, 1 CPU for Ray Data's reads): same data, same seed,
    same epochs and global batch as materialising (in-process, one worker); the accuracies agree within the
    noise of a different shuffle."""
    train, val = _digits_parquet(tmp_path / "data")
    runs = {}
    for ingest, parallel, mode in (("stream", {"workers": 2, "cpus_per_worker": 0.5}, "worker-group"),
                                   ("materialize", {"workers": 1, "cpus_per_worker": 1}, "in-process")):
        exp = make_exp(exp_dict, data=_data(train, val, ingest=ingest), model__name="mlp", model__width=1.0,
                       parallel=parallel, train__epochs=2, train__optimizer={"name": "adamw", "lr": 0.01})
        s = driver.run(exp)
        assert s.status == "completed" and s.ingest == ingest and s.mode == mode, s
        runs[ingest] = s.final
    assert runs["stream"]["val_accuracy"] > 0.85
    assert abs(runs["stream"]["val_accuracy"] - runs["materialize"]["val_accuracy"]) < 0.05, runs


def test_auto_streams_past_the_budget_from_s3_and_resumes(ray_local, s3_server, exp_dict, tmp_path):
    """A dataset whose Parquet metadata says it is larger than data.materialize_max_mb is streamed (the run
    records it), straight from S3; stopped after 2 epochs, it resumes at epoch 3."""
    import boto3
    import os

    train, val = _digits_parquet(tmp_path / "data", files=4)
    bucket = s3_server()
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    for f in [*train.iterdir(), *val.iterdir()]:
        s3.upload_file(str(f), bucket, f"digits/{f.parent.name}/{f.name}")
    data = _data(f"s3://{bucket}/digits/train", f"s3://{bucket}/digits/val", materialize_max_mb=0.01)
    first = driver.run(make_exp(exp_dict, data=data, train__epochs=2, model__name="mlp", model__width=1.0,
                                 train__optimizer={"name": "adamw", "lr": 0.01}))
    assert first.status == "completed" and first.ingest == "stream" and first.mode == "in-process", first
    assert json.loads((Path(first.run_dir) / "result.json").read_text())["ingest"] == "stream"
    again = driver.run(make_exp(exp_dict, data=data, train__epochs=3, model__name="mlp", model__width=1.0,
                                 train__optimizer={"name": "adamw", "lr": 0.01}), resume=first.run_dir)
    assert again.status == "completed", again
    assert [r["epoch"] for r in metric_rows(first.run_dir)] == [1, 2, 3]
    assert again.final["val_accuracy"] > 0.85


def test_stream_that_could_not_make_progress_is_refused_not_hung(ray_local, exp_dict, tmp_path):
    """Two 1-CPU workers hold both CPUs: Ray Data's read tasks would wait for a CPU forever."""
    train, val = _digits_parquet(tmp_path / "data", files=2)
    with pytest.raises(UserError, match=r"2 worker\(s\) need 2 CPU \+ 1 for Ray Data \(data.stream_cpus\) but the "
                                        r"cluster has 2"):
        driver.run(make_exp(exp_dict, data=_data(train, val, ingest="stream"), parallel__workers=2))
    assert not list(Path(exp_dict["output"]).glob("t/*"))  # nothing created


def test_stream_metadata_comes_from_footers_and_a_sample(tmp_path):
    """Shape from a few rows (of the first file that has any), class count from the label column's
    statistics, counts from the footers; a single file without data.val_path is refused (streaming holds out
    whole files)."""
    from raytrain.config import DataConfig
    from raytrain.data import parquet

    train, val = _digits_parquet(tmp_path / "data", files=3)
    empty = pq.read_table(train / "part-000.parquet").slice(0, 0)
    pq.write_table(empty, train / "part-!empty.parquet")  # sorts first: an empty file is no sample
    src = parquet.inspect(DataConfig(**_data(train, val, ingest="stream")), 0)
    assert src.in_shape == (1, 8, 8) and src.num_classes == 10 and (src.n_train, src.n_val) == (1617, 180)
    assert len(src.train) == 4 and len(src.val) == 1 and src.train[0].endswith("part-!empty.parquet")
    (train / "part-!empty.parquet").unlink()
    held_out = parquet.inspect(DataConfig(**{**_data(train, None), "val_path": None}), 0)
    assert (len(held_out.train), len(held_out.val)) == (2, 1) and held_out.n_train + held_out.n_val == 1617
    with pytest.raises(UserError, match="this has one file; give data.val_path"):
        parquet.inspect(DataConfig(**{**_data(val, None), "val_path": None}), 0)
