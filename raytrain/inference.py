"""`raytrain evaluate` and `raytrain predict`: a trained run on data, with plain torch and pyarrow (no Ray).

The model is `modelfile.load_model(RUN_DIR)` (the newest readable checkpoint, pruned structure included, with
its input normalisation), so it takes features exactly as the data layer stores them: the same decoders
(`raytrain.data.parquet.decode`, `raytrain.data.folders`), the run's column names, shape, image size and
channels, and its class list for string labels. Data is read and scored in batches of BATCH rows, file by
file, so a large Parquet folder is never held whole.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raytrain import storage
from raytrain.config import DataConfig, Experiment
from raytrain.configio import apply_overrides
from raytrain.errors import UserError

BATCH = 512
OUT_FORMATS = (".parquet", ".csv")


@dataclass
class Evaluation:
    """What `evaluate` returns."""
    accuracy: float
    loss: float
    """Mean cross-entropy."""
    count: int
    """Examples scored."""
    data: str
    """What was scored: the run's validation or test split (and where it comes from), or the dataset given."""
    checkpoint: str
    """The checkpoint the weights came from."""


def _run(run_dir: str, model: Optional[Callable]):
    from raytrain.modelfile import load_model

    clf = load_model(str(run_dir), model)
    exp = Experiment.model_validate_json(clf.meta["experiment"])
    return clf, exp


def _data_cfg(exp: Experiment, overrides: Optional[list[str]]) -> DataConfig:
    """The run's data block with `data.KEY=VALUE` overrides, validated like `--set`."""
    if not overrides:
        return exp.data
    bad = [o for o in overrides if not o.strip().startswith("data.")]
    if bad:
        raise UserError(f"--set {bad[0]}: evaluate and predict take data.* keys only (the model is the run's)")
    from raytrain.configio import validate_experiment

    raw = exp.model_dump(mode="json")
    return validate_experiment(apply_overrides(raw, list(overrides)), "the run's config (with --set)").data


def _is_images(loc: storage.Location) -> bool:
    """A folder holding image files and no Parquet: an image folder."""
    from raytrain.data import images

    if not loc.is_dir():
        return False
    sel = storage.pafs.FileSelector(loc.path, recursive=True)
    names = [i.path.lower() for i in loc.fs.get_file_info(sel) if i.type == storage.pafs.FileType.File]
    return not any(n.endswith(".parquet") for n in names) and any(n.endswith(images.EXTENSIONS) for n in names)


def _decode_kw(cfg: DataConfig, clf) -> dict:
    """How the run's images were decoded (channels and size as trained); numeric columns ignore it."""
    shape = clf.in_shape
    if len(shape) != 3:
        return {"image_size": cfg.image_size}
    return {"image_size": cfg.image_size, "channels": int(shape[0]), "expect": tuple(int(s) for s in shape[1:])}


def parquet_batches(path: str, cfg: DataConfig, clf, labelled: bool) -> Iterator[tuple[np.ndarray, Optional[np.ndarray]]]:
    """(x, y or None) in batches from every row of a Parquet file or folder, decoded as the run's data was."""
    import ray.data  # noqa: F401  Ray's tensor column type (registering it starts nothing)

    from raytrain.data import parquet

    loc = storage.resolve(path, "data.path")
    for f in parquet.files(loc, "data.path"):
        with loc.fs.open_input_file(f) as handle:
            pf = pq.ParquetFile(handle)
            names = pf.schema_arrow.names
            if cfg.features not in names or (labelled and cfg.label not in names):
                key, missing = ("data.features", cfg.features) if cfg.features not in names else ("data.label", cfg.label)
                raise UserError(f"{key}: column {missing!r} not in {f} (columns: {', '.join(names)}); name it with "
                                f"--set {key}=COLUMN")
            start = 0
            for batch in pf.iter_batches(batch_size=BATCH, columns=[cfg.features] + ([cfg.label] if labelled else [])):
                table = pa.Table.from_batches([batch])
                if not labelled:  # the decoder reads a label column: predict's input needs none
                    table = table.append_column("__label", pa.array(np.zeros(len(table), np.int64)))
                out = parquet.decode(table, cfg.features, cfg.label if labelled else "__label", cfg.shape,
                                     classes=clf.classes if labelled else None,
                                     rows=lambda i, s=start: f"row {s + i} of {f}", **_decode_kw(cfg, clf))
                start += len(table)
                yield out["x"], out["y"] if labelled else None


def image_batches(paths: list[str], fs, ys: Optional[np.ndarray], cfg: DataConfig, clf):
    """(x, y) in batches from image files, decoded to the run's channels and size."""
    from raytrain.data import folders, images

    kw = _decode_kw(cfg, clf)
    for lo in range(0, len(paths), BATCH):
        x = folders.decode_files(fs, paths[lo:lo + BATCH], images.hw(kw["image_size"]), kw.get("channels"),
                                 kw.get("expect"), images.driver_threads())
        yield x, None if ys is None else ys[lo:lo + BATCH]


def cache_batches(path: str, in_shape: tuple):
    """(x, y) in batches from a split of the data cache (x: Ray's tensor column, read as its storage)."""
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=BATCH):
        col = batch.column("x")
        flat = getattr(col, "storage", col).flatten().to_numpy(zero_copy_only=False)
        yield flat.reshape(len(batch), *in_shape), batch.column("y").to_numpy()


def run_split(run_dir: str, exp: Experiment, cfg: DataConfig, clf, split: str = "val"):
    """(batches, what) of the run's `split` ("val" or "test") of `cfg` (the run's data unless overridden):
    validation held out exactly as training held it out (the same preparation, with the run's seed); decoded
    data is cached where training cached it (beside `<output>`, the run folder's grandparent), wherever this
    runs."""
    from raytrain.data import prepare as data
    from raytrain.data import splits

    output = str(Path(run_dir).resolve().parent.parent) if not storage.is_uri(run_dir) else exp.output
    cache = storage.local_cache_root(output) / "data"
    val = split == "val"
    if cfg.dataset not in ("parquet", "images") or data.ingest_mode(cfg) == "materialize":  # built-ins: the cache
        info = data.prepare(cfg, exp.seed, cache)
        path, source = (info.val_path, info.val_source) if val else (info.test_path, info.test_source)
        batches = cache_batches(path, info.in_shape) if path else None
    elif cfg.dataset == "images":
        from raytrain.data import folders

        tree = folders.scan(cfg, exp.seed)
        if val:
            source = splits.describe_val(cfg, exp.seed, len(tree.val), tree.val_from)
        else:
            source = splits.describe_test(cfg, len(tree.test), tree.test_from)
        paths, ys = (tree.val, tree.y_val) if val else (tree.test, tree.y_test)
        batches = image_batches(paths, tree.fs, ys, cfg, clf) if paths else None
    else:
        from raytrain.data import parquet

        src = parquet.inspect(cfg, exp.seed)
        files, source = (src.val, src.val_source) if val else (src.test, src.test_source)
        batches = (b for f in files for b in parquet_batches(f, cfg, clf, labelled=True)) if files else None
    if batches is None:
        how = "set one with --set data.test_path=PATH, or " if cfg.dataset in ("parquet", "images") else ""
        raise UserError(f"--split test: {_describe(cfg)} has no test set ({source}); {how}score other data with "
                        "--data PATH")
    return batches, f"the {'validation' if val else 'test'} split, {source}"


def _describe(cfg: DataConfig) -> str:
    return cfg.dataset + (f" {cfg.path}" if cfg.path else "")


def _folder(path: str, cfg: DataConfig, clf, labelled: bool):
    """Images under `path`: labelled, `<class>/<image>` (classes the run's); else every image, sorted."""
    from raytrain.data import images

    loc = storage.resolve(path, "--data")
    sel = storage.pafs.FileSelector(loc.path, recursive=True)
    found = sorted(i.path for i in loc.fs.get_file_info(sel) if i.type == storage.pafs.FileType.File
                   and i.path.lower().endswith(images.EXTENSIONS) and "/." not in i.path[len(loc.path):])
    if not labelled:
        return found, image_batches(found, loc.fs, None, cfg, clf)
    if not clf.classes:
        raise UserError(f"--data {path}: an image folder's labels are class folder names, and this run recorded no "
                        "class list; give a Parquet with a label column")
    ids = {c: i for i, c in enumerate(clf.classes)}
    root = loc.path.rstrip("/") + "/"
    ys = []
    for p in found:
        name = p[len(root):].split("/")[0]
        if name not in ids:
            raise UserError(f"--data {path}: {p} is not in a class folder of the run's classes "
                            f"({', '.join(clf.classes[:8])}{', ...' if len(clf.classes) > 8 else ''})")
        ys.append(ids[name])
    return found, image_batches(found, loc.fs, np.array(ys, np.int64), cfg, clf)


def _scores(clf, x: np.ndarray) -> torch.Tensor:
    x = np.ascontiguousarray(x)
    x = torch.from_numpy(x if x.flags.writeable else x.copy())  # pyarrow's zero-copy arrays are read-only
    if tuple(x.shape[1:]) != clf.in_shape:
        if x[0].numel() != int(np.prod(clf.in_shape)):
            raise UserError(f"data: examples of shape {tuple(x.shape[1:])}, the model takes {clf.in_shape}; set "
                            "data.shape, data.image_size or data.channels with --set")
        x = x.reshape(len(x), *clf.in_shape)
    with torch.inference_mode():
        return clf(x)


def evaluate(run_dir: str, data: Optional[str] = None, overrides: Optional[list[str]] = None,
             model: Optional[Callable] = None, split: Optional[str] = None) -> Evaluation:
    """Accuracy and loss of a run's newest checkpoint on its validation split, or its test split
    (`split="test"`) (`overrides`: `data.KEY=VALUE` changes to the run's data block first), or on every row
    of `data` (a Parquet file/folder/URI with the run's feature and label columns, or an image folder
    `<class>/<image>`)."""
    if split not in (None, "val", "test"):
        raise UserError(f"--split {split}: give val or test")
    if split is not None and data is not None:
        raise UserError(f"--split {split} and --data {data}: give one (--split scores one of the run's splits, "
                        "--data other data)")
    clf, exp = _run(run_dir, model)
    cfg = _data_cfg(exp, overrides)
    if data is None:
        batches, what = run_split(str(run_dir), exp, cfg, clf, split or "val")
    elif _is_images(storage.resolve(data, "--data")):
        _, batches = _folder(data, cfg, clf, labelled=True)
        what = data
    else:
        batches, what = parquet_batches(data, cfg, clf, labelled=True), data
    correct = count = 0
    loss = 0.0
    for x, y in batches:
        y = torch.as_tensor(np.array(y, np.int64))
        if len(y) and (int(y.max()) >= clf.num_classes or int(y.min()) < 0):
            raise UserError(f"data.label: class id {int(y.max())} in {what}, the model has {clf.num_classes} classes")
        logits = _scores(clf, x)
        loss += float(torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        count += len(y)
    if count == 0:
        raise UserError(f"{what}: no examples to evaluate")
    return Evaluation(correct / count, loss / count, count, what, clf.meta["checkpoint"])


def predict(run_dir: str, inputs: str, out: str, overrides: Optional[list[str]] = None,
            model: Optional[Callable] = None) -> tuple[str, int]:
    """Write one row per example of `inputs` (a Parquet file/folder/URI with the run's feature column, or a
    folder of images) to `out` (.parquet or .csv, never overwritten): row, class_id, class_name (when the run
    recorded class names), probability (softmax of the predicted class), and path for images. Returns
    (out, rows)."""
    from raytrain.modelfile import write_new

    target = storage.resolve(out, "--out")
    suffix = Path(target.path).suffix.lower()
    if suffix not in OUT_FORMATS:
        raise UserError(f"--out {out}: give a .parquet or .csv file")
    if target.exists():
        raise UserError(f"--out {target.uri}: already exists (never overwritten; pick another path)")
    clf, exp = _run(run_dir, model)
    cfg = _data_cfg(exp, overrides)
    src = storage.resolve(inputs, "INPUT")
    storage.check_reachable(src, "INPUT")
    if not src.exists():
        raise UserError(f"INPUT {inputs}: no such file or folder")
    paths = None
    if _is_images(src):
        paths, batches = _folder(inputs, cfg, clf, labelled=False)
    else:
        batches = parquet_batches(inputs, cfg, clf, labelled=False)
    ids, probs = [], []
    for x, _ in batches:
        p = torch.softmax(_scores(clf, x).float(), 1)
        best = p.max(1)
        ids.append(best.indices.numpy())
        probs.append(best.values.numpy())
    cls = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    cols = {"row": pa.array(np.arange(len(cls), dtype=np.int64)), "class_id": pa.array(cls.astype(np.int64))}
    if clf.classes:
        cols["class_name"] = pa.array([str(clf.classes[i]) for i in cls], pa.string())
    cols["probability"] = pa.array(np.concatenate(probs) if probs else np.zeros(0, np.float32))
    if paths is not None:
        cols["path"] = pa.array(paths, pa.string())
    table = pa.table(cols)
    buf = io.BytesIO()
    if suffix == ".parquet":
        pq.write_table(table, buf)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, buf)
    write_new(target, buf.getvalue(), "--out")
    return target.uri, len(cls)
