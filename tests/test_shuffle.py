"""A true shuffle: materialised data is a fresh seeded permutation of the whole training split every epoch,
whatever order it was stored in (sorted by label trained to 0.63 instead of 0.93 with a buffer shuffle), on
the path with no Ray and in a data-parallel worker group (that group is tests/test_storage.py's DDP run on S3,
which also survives a killed worker: one start-up for both); a stream stored sorted says so."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from helpers import make_exp
from raytrain.data.memory import Arrays, InMemory, epoch_order


def _digits_parquet(path: Path, order: str, rows: slice, row_group_size: int = 2048) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images / 16.0).astype(np.float32)[rows], d.target[rows]
    idx = np.argsort(y, kind="stable") if order == "sorted" else np.arange(len(y))
    pq.write_table(pa.table({"image": pa.array(list(x[idx].reshape(len(idx), -1))), "label": pa.array(y[idx])}),
                   path, row_group_size=row_group_size)
    return path


def _exp(tmp_path: Path, train: Path, val: Path, **parallel) -> dict:
    return {"name": train.stem, "seed": 0,
            "data": {"dataset": "parquet", "path": str(train), "val_path": str(val), "shape": [1, 8, 8]},
            "model": {"name": "mlp", "width": 0.5},
            "train": {"epochs": 3, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
                      "precision": "fp32"},
            "parallel": {"workers": 1, "cpus_per_worker": 1, **parallel}, "output": str(tmp_path / "runs")}


def test_every_epoch_is_a_fresh_permutation_of_the_whole_split_cut_per_rank():
    n, world, batch = 103, 2, 8
    mem = InMemory(Arrays(np.arange(n)[:, None], np.sort(np.arange(n) % 5)), torch.device("cpu"))
    orders = {}
    for epoch in (0, 1):
        ranks = [torch.cat([b["x"][:, 0] for b in mem.train(batch, seed=3, epoch=epoch, rank=r, world=world)])
                 for r in range(world)]
        assert [len(r) for r in ranks] == [n // world] * world  # equal steps on every rank
        seen = torch.cat(ranks)
        assert len(set(seen.tolist())) == len(seen)  # disjoint across ranks
        orders[epoch] = seen
        first = next(mem.train(batch, seed=3, epoch=epoch, rank=0, world=world))
        assert len(set(first["y"].tolist())) >= 3  # stored sorted by label, batches still mix the classes
    assert not torch.equal(orders[0], orders[1])  # a fresh order every epoch (and partition across ranks)
    again = torch.cat([b["x"][:, 0] for r in range(world) for b in mem.train(batch, seed=3, epoch=1, rank=r, world=world)])
    assert torch.equal(again, orders[1])  # the same seed and epoch, the same order (what resume relies on)
    assert torch.equal(torch.cat([b["x"][:, 0] for b in mem.in_order(10)]), torch.arange(n))  # evaluation: all, once
    # the rule: global step g trains the permutation's g-th global batch (batch x world examples), rank r taking
    # its r-th equal part, so a step means the same examples at any world size (elastic groups resume across sizes)
    order = epoch_order(n, 3, 1, torch.device("cpu"))[:n - n % world]
    steps = [[b["x"][:, 0] for b in mem.train(batch, seed=3, epoch=1, rank=r, world=world)] for r in range(world)]
    for g, parts in enumerate(zip(*steps)):
        assert torch.equal(torch.cat(parts), order[g * batch * world:(g + 1) * batch * world]), g


def test_sorted_data_trains_like_shuffled_data_with_no_ray(tmp_path):
    """The one-worker path with no Ray (the driver's, as the CLI takes it for such a run: that choice is
    tests/test_splits.py's CLI run): a copy sorted by label reaches the same accuracy as the copy as written
    (with a buffer shuffle the sorted copy trained on one class at a time). In this process, even with the
    session's Ray up: `ray="none"` is that path whatever runs beside it."""
    from raytrain import driver

    val = _digits_parquet(tmp_path / "val.parquet", "as-is", slice(1400, None))
    acc = {}
    for order in ("as-is", "sorted"):
        train = _digits_parquet(tmp_path / f"train-{order}.parquet", order, slice(0, 1400))
        s = driver.run(make_exp(_exp(tmp_path, train, val)), ray="none")
        assert s.status == "completed" and s.ray == "none" and s.mode == "in-process", s
        acc[order] = s.final["val_accuracy"]
    assert acc["as-is"] > 0.8 and abs(acc["sorted"] - acc["as-is"]) <= 0.03, acc


def test_a_stream_stored_sorted_by_label_is_reported(tmp_path, caplog):
    from raytrain.data import parquet
    from raytrain.data.ingest import warn_if_sorted

    folder = tmp_path / "stream"
    folder.mkdir()
    for order in ("sorted", "as-is"):
        sub = folder / order
        sub.mkdir()
        for i in range(2):
            _digits_parquet(sub / f"part-{i}.parquet", order, slice(i * 700, (i + 1) * 700), row_group_size=100)
        exp = make_exp(_exp(tmp_path, sub / "part-0.parquet", sub / "part-1.parquet"),
                       data__path=str(sub), data__val_path=None, data__ingest="stream", data__val_fraction=0.5)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="raytrain"):
            warn_if_sorted(parquet.inspect(exp.data, exp.seed), exp)
        said = [r.getMessage() for r in caplog.records if "sorted by 'label'" in r.getMessage()]
        assert bool(said) == (order == "sorted"), (order, said)
        assert all(str(sub) in line and "data.ingest: materialize" in line for line in said), said
