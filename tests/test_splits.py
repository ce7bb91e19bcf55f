"""Three splits: validation held out of the training data (seeded, disjoint), a test set where the dataset has
one (MNIST's official file, `data.test_path`, an ImageFolder tree's test/), read once at a run's end, and every
summary naming where each split came from. No Ray, except the one ingest test."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import make_exp, run_cli, write_yaml
from raytrain.config import DataConfig
from raytrain.data.memory import read_cache
from raytrain.data.prepare import DataInfo, _cache_key, prepare, stream_source
from raytrain.data.splits import hold_out
from raytrain.errors import UserError

MNIST_DIR = Path(os.environ.get("RAYTRAIN_DATA", "/work/shared/data")) / "mnist"


def _rows(path: str, in_shape: tuple) -> list[tuple]:
    """Each example of a cache split as (its pixels' bytes, its label), in file order."""
    a = read_cache(path, in_shape)
    return [(x.tobytes(), int(y)) for x, y in zip(a.x.reshape(len(a), -1), a.y)]


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.reshape(-1, 64).astype(np.float32) / 16, d.target.astype(np.int64)


def _parquet(x, y, path: Path) -> Path:
    pq.write_table(pa.table({"pixels": pa.array(x.tolist(), pa.list_(pa.float32())), "digit": pa.array(y)}), path)
    return path


def _cfg(train: Path, test: Path | None = None, **kw) -> DataConfig:
    return DataConfig(dataset="parquet", path=str(train), test_path=str(test) if test else None, features="pixels",
                      label="digit", shape=[1, 8, 8], **kw)


def test_hold_out_is_seeded_disjoint_and_complete():
    tr, va = hold_out(1000, 0.1, 7)
    assert len(va) == 100 and not set(tr) & set(va) and sorted(np.concatenate([tr, va])) == list(range(1000))
    again, other = hold_out(1000, 0.1, 7), hold_out(1000, 0.1, 8)
    assert (again[1] == va).all() and set(other[1]) != set(va)
    with pytest.raises(UserError, match="data.val_fraction 0.9 leaves no training examples out of 1"):
        hold_out(1, 0.9, 0)


def test_prepared_validation_holds_rows_out_of_train_only(tmp_path):
    """Every row unique (its index in every pixel): no row of val is in train, together they are the file."""
    n = 300
    x = np.repeat(np.arange(n, dtype=np.float32)[:, None], 64, axis=1)
    data = _parquet(x, np.arange(n) % 10, tmp_path / "d.parquet")
    info = prepare(_cfg(data, val_fraction=0.2), 3, tmp_path / "c")
    train, val = _rows(info.train_path, info.in_shape), _rows(info.val_path, info.in_shape)
    assert (info.n_train, info.n_val, info.test_path, info.n_test) == (240, 60, None, 0)
    assert not set(train) & set(val) and sorted(train + val) == sorted(_rows_of(x, np.arange(n) % 10))
    assert info.val_source == f"60 held out of data.path {data} (seed 3)"
    assert info.test_source == "none: no data.test_path"


def _rows_of(x: np.ndarray, y: np.ndarray) -> list[tuple]:
    return [(a.tobytes(), int(b)) for a, b in zip(x.reshape(len(x), -1), y)]


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"no MNIST IDX files at {MNIST_DIR} (set RAYTRAIN_DATA)")
def test_mnist_validation_is_held_out_of_train_and_test_is_the_official_set(tmp_path):
    from raytrain.data.mnist import load_mnist

    (x, y), (xt, yt) = load_mnist(MNIST_DIR)
    info = prepare(DataConfig(dataset="mnist", path=str(MNIST_DIR)), 1, tmp_path / "c")
    assert (info.n_train, info.n_val, info.n_test) == (54000, 6000, 10000)
    test = read_cache(info.test_path, info.in_shape)
    assert np.array_equal(test.x, xt) and np.array_equal(test.y, yt)  # the official file, in its order
    train, val = _rows(info.train_path, info.in_shape), _rows(info.val_path, info.in_shape)
    assert not set(train) & set(val)  # MNIST's 60,000 training images are all distinct
    assert Counter(train) + Counter(val) == Counter(_rows_of(x, y))
    assert (info.val_source, info.test_source) == ("6,000 held out of MNIST train (seed 1)",
                                                   "MNIST official test set (10,000)")


def test_parquet_test_path_materialised_and_streamed(digits, tmp_path):
    x, y = digits
    (tmp_path / "train").mkdir()
    _parquet(x[:700], y[:700], tmp_path / "train" / "a.parquet")
    _parquet(x[700:1400], y[700:1400], tmp_path / "train" / "b.parquet")
    test = _parquet(x[1400:], y[1400:], tmp_path / "test.parquet")
    info = prepare(_cfg(tmp_path / "train", test), 0, tmp_path / "c")
    assert (info.n_train, info.n_val, info.n_test) == (1260, 140, 397)
    assert _rows(info.test_path, info.in_shape) == _rows_of(x[1400:], y[1400:])  # the file, exactly, in order
    test_only = set(_rows_of(x[1400:], y[1400:])) - set(_rows_of(x[:1400], y[:1400]))  # digits repeats a few images
    assert not set(_rows(info.val_path, info.in_shape)) & test_only  # validation is held out of data.path alone
    assert info.test_source == f"data.test_path {test} (397)"
    assert DataInfo.from_json(info.to_json()) == info
    streamed, src = stream_source(_cfg(tmp_path / "train", test, ingest="stream"), 0, tmp_path / "c")
    assert src.test == [str(test)] and (src.n_test, streamed.n_test, streamed.test_path) == (397, 397, str(test))
    assert streamed.val_source == f"700 in 1 of the 2 files of data.path {tmp_path / 'train'}, held out (seed 0)"
    with pytest.raises(UserError, match=r"^data.test_path .*nope.parquet: no such file or directory"):
        prepare(_cfg(tmp_path / "train", tmp_path / "nope.parquet"), 0, tmp_path / "c")


def test_a_test_path_where_it_cannot_be_used_is_one_line_naming_the_key(exp_dict):
    for dataset in ("digits", "mnist"):
        with pytest.raises(UserError, match=rf"data.test_path: parquet and images datasets only \({dataset}: .*; "
                                            r"remove data.test_path"):
            make_exp(exp_dict, data__dataset=dataset, data__test_path="t.parquet")


def test_old_caches_load_and_a_new_split_is_a_new_cache(digits, tmp_path):
    old = {"train_path": "t", "val_path": "v", "in_shape": [1, 8, 8], "num_classes": 10, "n_train": 9, "n_val": 1}
    info = DataInfo.from_json(json.dumps(old))  # an info.json written before test splits
    assert (info.test_path, info.n_test, info.val_source) == (None, 0, "")
    x, y = digits
    data, test = _parquet(x[:100], y[:100], tmp_path / "d.parquet"), _parquet(x[100:150], y[100:150],
                                                                             tmp_path / "t.parquet")
    assert _cache_key(_cfg(data), 0) != _cache_key(_cfg(data, test), 0)
    mnist = DataConfig(dataset="mnist")
    assert _cache_key(mnist, 0) != _cache_key(mnist, 1)  # its validation is held out by the seed now


def test_imagefolder_test_folder_or_test_path(tmp_path):
    from PIL import Image

    def tree(root: Path, n: int, offset: int) -> Path:
        for i in range(n):
            f = root / f"c{i % 3}" / f"{i}.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4), offset + i, np.uint8)).save(f)
        return root

    root = tmp_path / "tree"
    tree(root / "train", 60, 0)
    tree(root / "test", 12, 100)
    info = prepare(DataConfig(dataset="images", path=str(root)), 0, tmp_path / "c")
    assert (info.n_train, info.n_val, info.n_test) == (54, 6, 12) and info.test_source == f"{root / 'test'} (12)"
    pixels = sorted(int(a[0, 0, 0]) for a in read_cache(info.test_path, info.in_shape).x)
    assert pixels == list(range(100, 112))
    other = tree(tmp_path / "other", 9, 200)
    info = prepare(DataConfig(dataset="images", path=str(root / "train"), test_path=str(other)), 0, tmp_path / "c")
    assert info.n_test == 9 and info.test_source == f"data.test_path {other} (9)"
    _, src = stream_source(DataConfig(dataset="images", path=str(root), ingest="stream"), 0, tmp_path / "c")
    assert len(src.test) == 12 and src.test_source == f"{root / 'test'} (12)"
    tree(tmp_path / "bad" / "c9", 1, 0)
    with pytest.raises(UserError, match=r"^data.test_path .*bad: class folder\(s\) c9 are not among"):
        prepare(DataConfig(dataset="images", path=str(root / "train"), test_path=str(tmp_path / "bad")), 0,
                tmp_path / "c")


def test_batches_evaluate_any_split_by_name(exp_dict):
    from raytrain.data.batches import Batches
    from raytrain.data.memory import Arrays

    import torch

    def arrays(n: int, start: int) -> Arrays:
        return Arrays(np.arange(start, start + n, dtype=np.float32).repeat(64).reshape(n, 1, 8, 8), np.arange(n) % 10)

    exp = make_exp(exp_dict)
    info = DataInfo("", "", (1, 8, 8), 10, 100, 20, test_path="", n_test=30)
    b = Batches(exp, info, {"train": arrays(100, 0), "val": arrays(20, 1000), "test": arrays(30, 2000)}, 0, 1,
                torch.device("cpu"))
    firsts = [float(x) for batch in b.eval("test") for x in batch["x"][:, 0, 0, 0]]
    assert firsts == [2000.0 + i for i in range(30)]
    assert [float(x) for batch in b.val() for x in batch["x"][:, 0, 0, 0]] == [1000.0 + i for i in range(20)]
    with pytest.raises(KeyError, match="no 'nope' split"):
        b.eval("nope")


def test_evaluate_holds_out_what_training_held_out(digits, tmp_path, exp_dict):
    """`raytrain evaluate` prepares the run's data again where no cache is: the same validation rows."""
    from raytrain.inference import run_split

    x, y = digits
    data, test = _parquet(x[:500], y[:500], tmp_path / "d.parquet"), _parquet(x[500:600], y[500:600],
                                                                             tmp_path / "t.parquet")
    exp = make_exp(exp_dict, seed=5, data=_cfg(data, test).model_dump(mode="json"))
    trained = prepare(exp.data, exp.seed, tmp_path / "train-cache")
    elsewhere = tmp_path / "elsewhere" / "name" / "run"  # its cache: <output>/.cache, empty
    for split, path in (("val", trained.val_path), ("test", trained.test_path)):
        batches, what = run_split(str(elsewhere), exp, exp.data, None, split)
        got = [(a.tobytes(), int(b)) for bx, by in batches for a, b in zip(bx.reshape(len(bx), -1), by)]
        assert got == _rows(path, trained.in_shape), split
    assert what == f"the test split, data.test_path {test} (100)"
    plain = make_exp(exp_dict)
    with pytest.raises(UserError, match=r"^--split test: digits has no test set \(none: sklearn digits has no test "
                                        r"set\); score other data with --data PATH$"):
        run_split(str(elsewhere), plain, plain.data, None, "test")


def test_a_run_reports_test_accuracy_once_and_names_its_splits(digits, tmp_path, exp_dict):
    """No Ray: Parquet with data.test_path; test_accuracy only in the final row, equal to `evaluate --split
    test` on the final checkpoint; result.json names each split's source."""
    from raytrain import api
    from helpers import metric_rows

    x, y = digits
    data, test = _parquet(x[:1400], y[:1400], tmp_path / "d.parquet"), _parquet(x[1400:], y[1400:],
                                                                               tmp_path / "t.parquet")
    exp_dict["data"] = _cfg(data, test).model_dump(mode="json", exclude_defaults=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = run_cli([sys.executable, "-m", "raytrain", "train", str(write_yaml(tmp_path / "e.yaml", exp_dict)),
                 "--summary-json", str(tmp_path / "s.json")], timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"on data.test_path {test} (397), read once at the end" in r.stdout
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["ray"] == "none" and s["splits"] == {
        "train": {"examples": 1260}, "val": {"examples": 140, "source": f"140 held out of data.path {data} (seed 0)"},
        "test": {"examples": 397, "source": f"data.test_path {test} (397)"}}
    rows = metric_rows(s["run_dir"])
    assert ["test_accuracy" in row for row in rows] == [False, True]
    ev = api.evaluate(s["run_dir"], split="test")
    assert (ev.count, ev.accuracy) == (397, rows[-1]["test_accuracy"]) == (397, s["final"]["test_accuracy"])
    assert api.evaluate(s["run_dir"]).accuracy == rows[-1]["val_accuracy"]


def test_ingest_cuts_the_test_split_per_rank_like_validation(ray_local, digits, tmp_path, exp_dict):
    """Two ranks: materialised, every rank gets the whole test file and keeps its consecutive part for the group's
    world size when it starts (an elastic group's varies), every row read once; streamed, one "test" dataset that
    Ray Train splits across ranks like "val"."""
    import torch

    from raytrain.data.batches import Batches
    from raytrain.data.ingest import build

    x, y = digits
    data, test = _parquet(x[:400], y[:400], tmp_path / "d.parquet"), _parquet(x[400:501], y[400:501],
                                                                             tmp_path / "t.parquet")
    exp = make_exp(exp_dict, data=_cfg(data, test).model_dump(mode="json"), parallel__workers=2)
    info = prepare(exp.data, exp.seed, tmp_path / "c")
    ingest = build(exp, info)
    assert ingest.shards["test"] == ["test", "test"] and ingest.shards["val"] == ["val", "val"] and not ingest.split
    parts = [[int(v) for b in Batches(exp, info, {s: ingest.datasets[s] for s in ingest.shards}, rank, 2,
                                      torch.device("cpu")).eval("test") for v in b["y"]] for rank in (0, 1)]
    assert parts == [y[400:450].tolist(), y[450:501].tolist()]  # 101 rows: all of them, once
    val = _parquet(x[501:600], y[501:600], tmp_path / "v.parquet")
    stream = make_exp(exp_dict, data=_cfg(data, test, ingest="stream", val_path=str(val)).model_dump(mode="json"),
                      parallel__workers=2)
    sinfo, src = stream_source(stream.data, stream.seed, tmp_path / "c")
    streamed = build(stream, sinfo, src)
    assert streamed.shards["test"] == ["test", "test"] and set(streamed.split) == {"train", "val", "test"}
    assert streamed.datasets["test"].count() == 101
    import ray.data

    from raytrain.data.ingest import from_user

    # in-memory Datasets (as tests/test_api.py gives): from_user's checks and decoding run as on read_parquet's,
    # without a read task per look at each split
    given = {k: ray.data.from_arrow(pq.read_table(p)) for k, p in (("train", data), ("val", val), ("test", test))}
    info, ingest, _ = from_user(given, exp, exp.seed)  # the Python API's own Ray Datasets
    assert (info.n_test, info.test_source) == (101, "datasets['test'] (101)")
    assert ingest.shards["test"] == ["test", "test"] and ingest.datasets["test"].count() == 101
    with pytest.raises(UserError, match="datasets: unknown entry 'tests'; give 'train', 'val' and optionally 'test'"):
        from_user({**given, "tests": given["test"]}, exp, exp.seed)
