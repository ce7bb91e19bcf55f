"""Encoded images: Parquet image columns (Hugging Face `{bytes, path}` structs and binary columns, PNG and
JPEG), ImageFolder trees, string labels, `data.image_size`, corrupt images named; materialised (no Ray)
and streamed (Ray Data tasks decode)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from helpers import make_exp
from raytrain.config import DataConfig
from raytrain.data.prepare import DataInfo, prepare, stream_source
from raytrain.errors import UserError

NAMES = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])


@pytest.fixture(scope="module")
def digits():
    """sklearn's digits as 8-bit grayscale pixels (N, 8, 8) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * 255 / 16).round().astype(np.uint8), d.target.astype(np.int64)


def _encode(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _cached(info: DataInfo, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    t = pq.read_table(info.train_path if split == "train" else info.val_path)
    x = np.stack(t.column("x").to_numpy(zero_copy_only=False)).reshape(t.num_rows, *info.in_shape)
    return x, t.column("y").to_numpy()


def _hf(x, y, path: Path) -> Path:
    """A Hugging Face `datasets`-style Parquet: image = struct{bytes: PNG, path}, label = int."""
    images = pa.StructArray.from_arrays([pa.array([_encode(a) for a in x], pa.binary()),
                                         pa.array([f"{i}.png" for i in range(len(x))])], ["bytes", "path"])
    pq.write_table(pa.table({"image": images, "label": pa.array(y)}), path)
    return path


def _tree(x, y, root: Path, split: str | None = "train", fmt: str = "png") -> Path:
    """An ImageFolder tree: <root>/<split>/<class name>/<i>.<fmt>."""
    base = root / split if split else root
    for i, (a, label) in enumerate(zip(x, y)):
        f = base / str(NAMES[label]) / f"{i}.{fmt}"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(_encode(a, "JPEG" if fmt == "jpg" else "PNG"))
    return root


def test_hf_struct_parquet_decodes_to_the_exact_pixels_as_uint8(digits, tmp_path):
    """PNG is lossless: every cached example is the original pixels, uint8 (C, H, W); model input is x/255
    normalised by the training images' mean and std."""
    x, y = digits
    info = prepare(DataConfig(dataset="parquet", path=str(_hf(x, y, tmp_path / "hf.parquet"))), 0, tmp_path / "c")
    assert info.in_shape == (1, 8, 8) and info.num_classes == 10 and info.classes is None
    assert (info.n_train, info.n_val) == (1617, 180)
    xt, yt = _cached(info)
    assert xt.dtype == np.uint8 and xt.shape == (1617, 1, 8, 8)
    originals = {a.tobytes(): label for a, label in zip(x, y)}
    assert all(originals[a[0].tobytes()] == label for a, label in zip(xt, yt))
    assert info.scale == pytest.approx(1 / 255) and info.mean == pytest.approx(x.mean() / 255, abs=0.02)
    assert info.std == pytest.approx((x / 255).std(), abs=0.02)


def test_binary_jpeg_column_string_labels_and_channels(digits, tmp_path):
    """A binary column of RGB JPEGs with dictionary-encoded class names: 3 channels from the first image, ids
    in the names' sorted order (recorded), pixels within JPEG's error; data.channels 1 makes them grayscale."""
    x, y = digits
    rgb = np.repeat(x[:400, :, :, None], 3, axis=3)
    path = tmp_path / "jpeg.parquet"
    pq.write_table(pa.table({"img": pa.array([_encode(a, "JPEG") for a in rgb], pa.binary()),
                             "name": pa.array(NAMES[y[:400]]).dictionary_encode()}), path)
    cfg = DataConfig(dataset="parquet", path=str(path), features="img", label="name")
    info = prepare(cfg, 0, tmp_path / "c")
    assert info.in_shape == (3, 8, 8) and info.classes == sorted(NAMES.tolist()) and info.num_classes == 10
    xt, yt = _cached(info)
    for a, label in zip(xt[:20].astype(int), yt[:20]):  # each cached image is its original's JPEG, with its name
        nearest = np.abs(rgb[:, :, :, 0].astype(int) - a.mean(0)).sum((1, 2)).argmin()
        assert np.abs(rgb[nearest].transpose(2, 0, 1) - a).mean() < 8 and NAMES[y[nearest]] == info.classes[label]
    gray_info = prepare(cfg.model_copy(update={"channels": 1}), 0, tmp_path / "c")
    assert gray_info.in_shape == (1, 8, 8)
    assert DataInfo.from_json(info.to_json()) == info
    assert json.loads((Path(info.train_path).parent / "info.json").read_text())["classes"] == info.classes


def test_image_size_resizes_with_bilinear(digits, tmp_path):
    """data.image_size resizes as PIL's bilinear resize does (int: square, [h, w]: as given)."""
    x, y = digits
    path = _hf(x[:200], y[:200], tmp_path / "hf.parquet")
    square = prepare(DataConfig(dataset="parquet", path=str(path), image_size=16, val_fraction=0.5), 0, tmp_path / "c")
    assert square.in_shape == (1, 16, 16)
    xt, _ = _cached(square)
    resized = {np.asarray(Image.fromarray(a).resize((16, 16), Image.BILINEAR)).tobytes() for a in x[:200]}
    assert all(a[0].tobytes() in resized for a in xt)
    oblong = prepare(DataConfig(dataset="parquet", path=str(path), image_size=[12, 20]), 0, tmp_path / "c")
    assert oblong.in_shape == (1, 12, 20)


def test_imagefolder_layouts_classes_and_split(digits, tmp_path):
    """train/ + val/ trees: classes are the folder names sorted, val read from val/; a bare <class>/<image>
    tree holds out val_fraction; both record the class list and round-trip it through info.json."""
    x, y = digits
    root = _tree(x[:200], y[:200], tmp_path / "split")
    _tree(x[200:260], y[200:260], root, "val")
    info = prepare(DataConfig(dataset="images", path=str(root)), 0, tmp_path / "c")
    assert info.classes == sorted(NAMES.tolist()) and info.num_classes == 10
    assert (info.n_train, info.n_val, info.in_shape) == (200, 60, (1, 8, 8))
    xv, yv = _cached(info, "val")
    truth = {a.tobytes(): NAMES[label] for a, label in zip(x, y)}
    assert all(truth[a[0].tobytes()] == info.classes[label] for a, label in zip(xv, yv))
    bare = prepare(DataConfig(dataset="images", path=str(_tree(x[:100], y[:100], tmp_path / "bare", None)),
                              val_fraction=0.2), 0, tmp_path / "c")
    assert (bare.n_train, bare.n_val) == (80, 20)
    reread = prepare(DataConfig(dataset="images", path=str(root)), 0, tmp_path / "c")  # from the cache
    assert reread == info
    (root / "val" / "ten").mkdir()
    (root / "val" / "ten" / "x.png").write_bytes(_encode(x[0]))
    with pytest.raises(UserError, match=r"class folder\(s\) ten are not among the training set's 10 classes"):
        prepare(DataConfig(dataset="images", path=str(root)), 0, tmp_path / "c")


def test_sizes_must_agree_unless_resized(digits, tmp_path):
    x, y = digits
    root = _tree(x[:30], y[:30], tmp_path / "t")
    odd = root / "train" / "zero" / "big.png"
    odd.write_bytes(_encode(np.zeros((10, 12), np.uint8)))
    with pytest.raises(UserError, match=rf"{odd} is 12x10 \(width x height\) but the first image is 8x8; set "
                                        "data.image_size"):
        prepare(DataConfig(dataset="images", path=str(root)), 0, tmp_path / "c")
    assert prepare(DataConfig(dataset="images", path=str(root), image_size=8), 0, tmp_path / "c").n_train == 28


def test_corrupt_images_name_their_file_or_row(digits, tmp_path):
    """A truncated PNG in a tree names its file; garbage in a Parquet folder names the file and the row."""
    x, y = digits
    root = _tree(x[:40], y[:40], tmp_path / "t")
    bad = sorted((root / "train" / "three").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(UserError, match=rf"^data.path: {bad} not a readable image \(.*\); replace or remove it$"):
        prepare(DataConfig(dataset="images", path=str(root)), 0, tmp_path / "c")
    folder = tmp_path / "parts"
    folder.mkdir()
    _hf(x[:10], y[:10], folder / "part-0.parquet")
    table = pq.read_table(_hf(x[10:20], y[10:20], tmp_path / "one.parquet"))
    blobs = table.column("image").combine_chunks().field("bytes").to_pylist()
    blobs[3] = b"not an image"
    images = pa.StructArray.from_arrays([pa.array(blobs, pa.binary()), pa.array(["a.png"] * 10)], ["bytes", "path"])
    pq.write_table(table.set_column(0, "image", images), folder / "part-1.parquet")
    with pytest.raises(UserError, match=rf"data.features: column 'image', row 3 of {folder / 'part-1.parquet'} "
                                        r"\(stored path 'a.png'\): not a readable image"):
        prepare(DataConfig(dataset="parquet", path=str(folder)), 0, tmp_path / "c")


def test_string_label_outside_the_training_set_is_refused(digits, tmp_path):
    x, y = digits
    train, val = tmp_path / "train.parquet", tmp_path / "val.parquet"
    for path, names in ((train, NAMES[y[:50]]), (val, np.where(y[50:60] == 3, "drei", NAMES[y[50:60]]))):
        pq.write_table(pa.table({"image": pa.array([_encode(a) for a in x[:len(names)]], pa.binary()),
                                 "label": pa.array(names)}), path)
    with pytest.raises(UserError, match="data.label: column 'label' holds 'drei', not among the training set's 10"):
        prepare(DataConfig(dataset="parquet", path=str(train), val_path=str(val)), 0, tmp_path / "c")
    with pytest.raises(UserError, match=rf"data.label: {val} holds 'drei', not among"):
        stream_source(DataConfig(dataset="parquet", path=str(train), val_path=str(val), ingest="stream"), 0, tmp_path)
    with pytest.raises(UserError, match=r"data.num_classes 12: .* has 10 classes \(eight, five"):
        prepare(DataConfig(dataset="parquet", path=str(train), num_classes=12), 0, tmp_path / "c")


def test_stream_sources_carry_what_every_task_decodes_with(digits, tmp_path):
    """Streaming (no Ray here): the driver lists and samples, and hands every task the class list, channels and
    size; a task's decode of an ImageFolder batch takes each class from the file's path."""
    from raytrain.data import folders

    x, y = digits
    root = _tree(x[:120], y[:120], tmp_path / "t")
    info, src = stream_source(DataConfig(dataset="images", path=str(root), image_size=[8, 10], ingest="stream"), 0,
                              tmp_path / "c")
    assert info.ingest == "stream" and info.in_shape == (1, 8, 10) and info.classes == sorted(NAMES.tolist())
    assert (info.n_train, info.n_val) == (108, 12) and 0 < info.mean < 1 and src.kind == "folder"
    paths = src.train[:5]
    out = folders.decode_batch(pa.table({"bytes": [Path(p).read_bytes() for p in paths], "path": paths}),
                               **src.decode_kw)
    assert out["x"].shape == (5, 1, 8, 10) and [info.classes[i] for i in out["y"]] == [Path(p).parent.name for p in paths]
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(3):
        pq.write_table(pa.table({"image": pa.array([_encode(a) for a in x[i * 40:(i + 1) * 40]], pa.binary()),
                                 "label": pa.array(NAMES[y[i * 40:(i + 1) * 40]])}), parts / f"p{i}.parquet")
    info, src = stream_source(DataConfig(dataset="parquet", path=str(parts), ingest="stream"), 0, tmp_path / "c")
    assert info.classes == sorted(NAMES.tolist()) and info.in_shape == (1, 8, 8) and src.paths
    assert src.decode_kw == {"classes": info.classes, "image_size": None, "channels": 1, "expect": (8, 8)}


def test_auto_ingest_counts_images_decoded(digits, tmp_path):
    """data.ingest auto weighs encoded images by their decoded size (what the driver would hold), not their
    bytes on disk: 1,797 PNGs of 1x32x32 are 1.8 MB decoded, ~0.2 MB encoded."""
    from raytrain.data.prepare import ingest_mode

    x, y = digits
    path = _hf(x, y, tmp_path / "hf.parquet")
    tree = _tree(x[:100], y[:100], tmp_path / "t")
    for cfg, decoded in ((DataConfig(dataset="parquet", path=str(path), image_size=32), 1797 * 32 * 32),
                         (DataConfig(dataset="images", path=str(tree), image_size=32), 90 * 32 * 32)):
        assert ingest_mode(cfg.model_copy(update={"materialize_max_mb": decoded * 1.1 / 2**20})) == "materialize"
        assert ingest_mode(cfg.model_copy(update={"materialize_max_mb": decoded * 0.9 / 2**20})) == "stream"


def test_validate_prints_the_shape_and_bad_trees_exit_2(digits, tmp_path, capsys):
    from raytrain.cli import main

    x, y = digits
    root = _tree(x[:60], y[:60], tmp_path / "t")
    exp = {"name": "v", "data": {"dataset": "images", "path": str(root), "image_size": 16}, "model": {"name": "cnn"},
           "output": str(tmp_path / "runs")}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    assert main(["validate", str(tmp_path / "exp.yaml")]) == 0
    out = capsys.readouterr().out
    assert "54 train / 6 val / no test examples, shape (1, 16, 16), 10 classes" in out
    (root / "train" / "loose.png").write_bytes(_encode(x[0]))
    assert main(["validate", str(tmp_path / "exp.yaml")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "image 'loose.png' is not inside a class folder; ImageFolder layout is" in err[0], err


def test_train_on_an_imagefolder_records_its_classes(digits, tmp_path, capsys):
    """`raytrain train` on an ImageFolder of digits upscaled to 16x16 (one worker, one epoch): it learns, and
    the run's checkpoint carries the class list."""
    import torch

    from raytrain.cli import main

    x, y = digits
    root = _tree(x, y, tmp_path / "t", fmt="png")
    exp = {"name": "f", "seed": 0, "data": {"dataset": "images", "path": str(root), "image_size": 16},
           "model": {"name": "mlp", "width": 0.5}, "output": str(tmp_path / "runs"), "parallel": {"workers": 1},
           "train": {"epochs": 1, "batch_size": 64, "precision": "fp32", "optimizer": {"name": "adamw", "lr": 0.005}}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    assert main(["train", str(tmp_path / "exp.yaml"), "--summary-json", str(tmp_path / "s.json")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["status"] == "completed" and summary["final"]["val_accuracy"] > 0.8, summary["final"]
    state = torch.load(next(Path(summary["run_dir"]).glob("train/checkpoint_*/*.pt")), weights_only=True)
    info = DataInfo.from_json(state["data"])
    assert info.classes == sorted(NAMES.tolist()) and info.in_shape == (1, 16, 16)


@pytest.mark.parametrize("layout", ["parquet", "images"])
def test_streamed_images_train(ray_local, exp_dict, digits, tmp_path, layout):
    """Streamed: Ray Data tasks decode PNG (Parquet files, or an ImageFolder tree's files) while training."""
    from raytrain import driver

    x, y = digits
    if layout == "parquet":
        parts = tmp_path / "parts"
        parts.mkdir()
        for i, idx in enumerate(np.array_split(np.arange(len(y)), 4)):
            _hf(x[idx], y[idx], parts / f"part-{i}.parquet")
        data = {"dataset": "parquet", "path": str(parts), "val_fraction": 0.25}
    else:
        data = {"dataset": "images", "path": str(_tree(x, y, tmp_path / "t"))}
    exp = make_exp(exp_dict, data={**data, "ingest": "stream"}, train__epochs=1,
                   train__optimizer={"name": "adamw", "lr": 0.005}, model__name="mlp")
    s = driver.run(exp)
    assert s.status == "completed" and s.ingest == "stream", s
    assert s.final["val_accuracy"] > 0.8, s.final
