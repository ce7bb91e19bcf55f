"""Datasets: digits, MNIST IDX (read and download), user Parquet with its bad inputs."""

from __future__ import annotations

import gzip
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytrain.config import DataConfig
from raytrain.data.prepare import MNIST_FILES, load_mnist, prepare
from raytrain.errors import UserError


def _rows(path: str) -> list[tuple]:
    """Each example as (its pixels' bytes, its label), in file order."""
    t = pq.read_table(path)
    x = np.stack(t.column("x").to_numpy(zero_copy_only=False)).reshape(t.num_rows, -1)
    return [(row.tobytes(), label) for row, label in zip(x, t.column("y").to_pylist())]


def test_digits_split_is_seeded_and_complete(tmp_path):
    a = prepare(DataConfig(dataset="digits"), 0, tmp_path / "one")
    b = prepare(DataConfig(dataset="digits"), 0, tmp_path / "two")  # prepared again, from scratch, elsewhere
    assert a.n_train + a.n_val == 1797 and a.in_shape == (1, 8, 8) and a.num_classes == 10
    assert _rows(a.train_path) == _rows(b.train_path) and _rows(a.val_path) == _rows(b.val_path)
    t = pq.read_table(a.train_path)
    assert t.num_rows == a.n_train and set(t.column_names) == {"x", "y"}
    other = prepare(DataConfig(dataset="digits"), 1, tmp_path / "one")  # another seed: other rows held out
    assert _rows(other.val_path) != _rows(a.val_path)
    assert sorted(_rows(other.train_path) + _rows(other.val_path)) == sorted(_rows(a.train_path) + _rows(a.val_path))
    up = prepare(DataConfig(dataset="digits", upscale=4), 0, tmp_path)
    assert up.in_shape == (1, 32, 32)


def _idx(images: np.ndarray | None = None, labels: np.ndarray | None = None) -> bytes:
    if images is not None:
        return struct.pack(">IIII", 2051, *images.shape) + images.astype(np.uint8).tobytes()
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def _fake_mnist(root: Path, n_train=20, n_test=10, gz=True) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    blobs = {
        "train_images": _idx(rng.integers(0, 255, (n_train, 28, 28))), "train_labels": _idx(labels=np.arange(n_train) % 10),
        "test_images": _idx(rng.integers(0, 255, (n_test, 28, 28))), "test_labels": _idx(labels=np.arange(n_test) % 10),
    }
    for key, name in MNIST_FILES.items():
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(blobs[key]))
        else:
            (root / name).write_bytes(blobs[key])


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx(tmp_path, gz):
    _fake_mnist(tmp_path / "m", gz=gz)
    (xt, yt), (xv, yv) = load_mnist(tmp_path / "m")
    assert xt.shape == (20, 1, 28, 28) and xv.shape == (10, 1, 28, 28) and yt.tolist()[:3] == [0, 1, 2]
    info = prepare(DataConfig(dataset="mnist", path=str(tmp_path / "m")), 0, tmp_path / "cache")
    assert (info.n_train, info.n_val, info.n_test, info.in_shape) == (18, 2, 10, (1, 28, 28))  # val: 10% of train


def test_mnist_truncated_file_is_refused(tmp_path):
    _fake_mnist(tmp_path / "m", gz=False)
    f = tmp_path / "m" / MNIST_FILES["train_images"]
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated"):
        load_mnist(tmp_path / "m")


def test_mnist_downloads_missing_files(tmp_path, monkeypatch):
    _fake_mnist(tmp_path / "mirror")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "mirror"), **k)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("RAYTRAIN_MNIST_MIRROR", f"http://127.0.0.1:{server.server_address[1]}/")
        (xt, _), _ = load_mnist(tmp_path / "empty")
        assert xt.shape == (20, 1, 28, 28)
        assert (tmp_path / "empty" / "train-images-idx3-ubyte.gz").is_file()
    finally:
        server.shutdown()


def test_mnist_download_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYTRAIN_MNIST_MIRROR", "http://127.0.0.1:9/")
    with pytest.raises(UserError, match="missing and download failed"):
        load_mnist(tmp_path / "empty")


def _user_parquet(path: Path, n=40, feat="pixels", label="digit", shape=(1, 4, 4)) -> Path:
    rng = np.random.default_rng(1)
    x = rng.random((n, *shape), dtype=np.float32)
    col = pa.array([row.reshape(-1).tolist() for row in x], type=pa.list_(pa.float32()))
    pq.write_table(pa.table({feat: col, label: pa.array(np.arange(n) % 3)}), path)
    return path


def test_user_parquet_flat_list_with_shape(tmp_path):
    p = _user_parquet(tmp_path / "u.parquet")
    info = prepare(DataConfig(dataset="parquet", path=str(p), features="pixels", label="digit", shape=[1, 4, 4]), 0, tmp_path)
    assert info.in_shape == (1, 4, 4) and info.num_classes == 3 and info.n_train + info.n_val == 40
    flat = prepare(DataConfig(dataset="parquet", path=str(p), features="pixels", label="digit"), 0, tmp_path)
    assert flat.in_shape == (16,)


def test_user_parquet_nested_lists_keep_shape(tmp_path):
    x = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    col = pa.array([r.tolist() for r in np.concatenate([x] * 5)], type=pa.list_(pa.list_(pa.float32())))
    pq.write_table(pa.table({"image": col, "label": pa.array(np.arange(10) % 2)}), tmp_path / "n.parquet")
    info = prepare(DataConfig(dataset="parquet", path=str(tmp_path / "n.parquet")), 0, tmp_path)
    assert info.in_shape == (3, 2)


def _table(tmp_path, name, **cols):
    p = tmp_path / name
    pq.write_table(pa.table(cols), p)
    return p


@pytest.mark.parametrize("make,msg", [
    (lambda t: _table(t, "a.parquet", image=pa.array([[1.0]] * 4), lbl=pa.array([0, 1, 0, 1])), "data.label: column 'label' not in"),
    (lambda t: _table(t, "b.parquet", img=pa.array([[1.0]] * 4), label=pa.array([0, 1, 0, 1])), "data.features: column 'image' not in"),
    (lambda t: _table(t, "c.parquet", image=pa.array(["a", "b"]), label=pa.array([0, 1])), "must hold arrays or lists of numbers"),
    (lambda t: _table(t, "d.parquet", image=pa.array([["a"], ["b"]]), label=pa.array([0, 1])), "is not numeric"),
    (lambda t: _table(t, "e.parquet", image=pa.array([[1.0], [1.0, 2.0]]), label=pa.array([0, 1])), "is ragged"),
    (lambda t: _table(t, "f.parquet", image=pa.array([], pa.list_(pa.float32())), label=pa.array([], pa.int64())), "dataset is empty"),
    (lambda t: _table(t, "g.parquet", image=pa.array([[1.0]] * 2), label=pa.array([[0], [1]])), "must hold integer class ids or class names"),
    (lambda t: _table(t, "h.parquet", image=pa.array([[1.0]] * 2), label=pa.array([0.5, 1.0])), "non-integer"),
    (lambda t: (t / "i.parquet").write_text("not parquet") and t / "i.parquet", "not a readable Parquet file"),
    (lambda t: t / "missing.parquet", "no such file or directory"),
])
def test_bad_user_parquet(tmp_path, make, msg):
    path = make(tmp_path)
    with pytest.raises(UserError, match=msg):
        prepare(DataConfig(dataset="parquet", path=str(path)), 0, tmp_path / "cache")
