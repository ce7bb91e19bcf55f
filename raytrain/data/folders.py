"""ImageFolder trees (`data.dataset: images`), as torchvision and Hugging Face lay them out:
`<path>/train/<class>/<image>` with validation in `<path>/val/` (or `valid/`, `validation/`) or
`data.val_path`, else `data.val_fraction` of the training images held out (seeded, per image: the same
split materialised or streamed), and a test set in `<path>/test/` or `data.test_path` (none otherwise);
or `<path>/<class>/<image>` directly. A class is the first folder below
the split's root (images may sit deeper inside it); classes are the training root's class folders,
sorted, recorded in the run (DataInfo.classes); a validation class the training set lacks is refused.
Local folders or URIs, read through `raytrain.storage`.

Materialised: decoded once on the driver into the cache (`read`, a thread pool reading and decoding).
Streamed: Ray Data reads the files (`read_binary_files`, with their paths) and decodes them in its map
tasks with the same decoder as the driver (`images.decode_many`), to the channels and size the driver
found on a sample (`inspect`). Not `read_images`: a truncated file fails there with PIL's error alone,
not naming the file, and its resize-before-convert would give other pixels than the materialised path.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pyarrow as pa

from raytrain import storage
from raytrain.config import DataConfig
from raytrain.data import images, labels, splits
from raytrain.data.parquet import StreamSource
from raytrain.errors import UserError

VAL_NAMES = ("val", "valid", "validation")
LAYOUT = "ImageFolder layout is <path>/train/<class>/<image> (with val/) or <path>/<class>/<image>"
STREAM_STATS_SAMPLE = 64


@dataclass
class Tree:
    """A tree's images split into training, validation and test: paths on `fs`, class ids, and the roots the
    class folders sit under (a streamed file's class is read off its path)."""
    fs: object
    train: list[str]
    y_train: np.ndarray
    val: list[str]
    y_val: np.ndarray
    classes: list[str]
    roots: list[str]
    test: list[str] = field(default_factory=list)  # empty: no test set
    y_test: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    val_from: Optional[str] = None  # the folder validation came from (None: held out of the training images)
    test_from: Optional[str] = None


def scan(cfg: DataConfig, seed: int) -> Tree:
    """List the tree (file names only, nothing read) and split it."""
    loc = storage.resolve(cfg.path, "data.path")
    storage.check_reachable(loc, "data.path")
    if not loc.is_dir():
        raise UserError(f"data.path {cfg.path}: {'not a folder' if loc.exists() else 'no such folder'}; {LAYOUT}")
    train_loc, val_loc, val_key = loc, None, "data.val_path"
    if (loc / "train").is_dir():
        train_loc = loc / "train"
        val_loc = next((loc / n for n in VAL_NAMES if (loc / n).is_dir()), None)
    if cfg.val_path:
        val_loc = storage.resolve(cfg.val_path, "data.val_path")
        storage.check_reachable(val_loc, "data.val_path")
        if not val_loc.is_dir():
            raise UserError(f"data.val_path {cfg.val_path}: no such folder; {LAYOUT}")
    elif val_loc is not None:
        val_key = "data.path"
    test_loc, test_key = (loc / "test", "data.path") if train_loc is not loc and (loc / "test").is_dir() else (None, "")
    if cfg.test_path:
        test_loc, test_key = storage.resolve(cfg.test_path, "data.test_path"), "data.test_path"
        storage.check_reachable(test_loc, "data.test_path")
        if not test_loc.is_dir():
            raise UserError(f"data.test_path {cfg.test_path}: no such folder; {LAYOUT}")
    train = _listing(train_loc, "data.path", cfg.path)
    classes = sorted(train)
    if len(classes) < 2:
        raise UserError(f"data.path {cfg.path}: {len(classes)} class folder(s) with images ({', '.join(classes)}); "
                        f"a classifier needs at least 2; {LAYOUT}")
    labels.class_count(cfg, classes, cfg.path)
    ids = {c: i for i, c in enumerate(classes)}
    paths = [p for c in classes for p in train[c]]
    y = np.array([ids[c] for c in classes for _ in train[c]], np.int64)
    test = {} if test_loc is None else dict(zip(("test", "y_test"), _labelled(test_loc, test_key, ids)),
                                            test_from=test_loc.uri)
    extra_roots = [test_loc.path] if test_loc is not None else []
    if val_loc is None:
        tr, va = (np.sort(i) for i in splits.hold_out(len(paths), cfg.val_fraction, seed, "images"))
        return Tree(loc.fs, [paths[i] for i in tr], y[tr], [paths[i] for i in va], y[va], classes,
                    [train_loc.path] + extra_roots, **test)
    val, y_val = _labelled(val_loc, val_key, ids)
    return Tree(loc.fs, paths, y, val, y_val, classes, [train_loc.path, val_loc.path] + extra_roots, **test,
                val_from=val_loc.uri if val_key == "data.path" else None)


def _labelled(loc: storage.Location, key: str, ids: dict) -> tuple[list[str], np.ndarray]:
    """A validation or test tree's images and class ids (its classes must be the training set's)."""
    found = _listing(loc, key, loc.uri)
    extra = sorted(set(found) - set(ids))
    if extra:
        raise UserError(f"{key} {loc.uri}: class folder(s) {', '.join(extra[:5])} are not among the training "
                        f"set's {len(ids)} classes; rename or remove them, or add training images")
    if not found:
        raise UserError(f"{key} {loc.uri}: no images in class folders; {LAYOUT}")
    return [p for c in sorted(found) for p in found[c]], np.array([ids[c] for c in sorted(found) for _ in found[c]],
                                                                  np.int64)


def _listing(loc: storage.Location, key: str, shown: str) -> dict[str, list[str]]:
    """class folder -> its images (sorted paths); hidden files and folders and other files are skipped."""
    sel = storage.pafs.FileSelector(loc.path, recursive=True)
    root = loc.path.rstrip("/") + "/"
    found: dict[str, list[str]] = {}
    for info in loc.fs.get_file_info(sel):
        rel = info.path[len(root):].split("/")
        if info.type == storage.pafs.FileType.Directory:
            if len(rel) == 1 and not rel[0].startswith("."):
                found.setdefault(rel[0], [])
            continue
        if any(part.startswith(".") for part in rel) or not info.path.lower().endswith(images.EXTENSIONS):
            continue
        if len(rel) == 1:
            raise UserError(f"{key} {shown}: image {rel[0]!r} is not inside a class folder; {LAYOUT}")
        found.setdefault(rel[0], []).append(info.path)
    empty = sorted(c for c, v in found.items() if not v)
    if empty and key == "data.path" and len(found) > len(empty):
        raise UserError(f"{key} {shown}: class folder {empty[0]!r} holds no images ({', '.join(images.EXTENSIONS)}); "
                        "add images or remove the folder")
    return {c: sorted(v) for c, v in found.items() if v}


def read(cfg: DataConfig, seed: int):
    """Materialise: ((x_train, y_train), (x_val, y_val), (x_test, y_test) or None, the Tree), pixels uint8
    (N, C, H, W)."""
    tree = scan(cfg, seed)
    size = images.hw(cfg.image_size)
    xt = decode_files(tree.fs, tree.train, size, cfg.channels, None, images.driver_threads())
    xv = decode_files(tree.fs, tree.val, size, xt.shape[1], xt.shape[2:], images.driver_threads())
    test = None
    if tree.test:
        test = decode_files(tree.fs, tree.test, size, xt.shape[1], xt.shape[2:], images.driver_threads()), tree.y_test
    return (xt, tree.y_train), (xv, tree.y_val), test, tree


def decode_files(fs, paths: list[str], size, channels, expect, threads: int = 1) -> np.ndarray:
    """uint8 (N, C, H, W) from image files; an unusable file is named in one line."""
    def get(i: int) -> bytes:
        try:
            with fs.open_input_file(paths[i]) as f:
                return f.read()
        except OSError as e:
            raise images.BadImage(i, f"cannot be read ({str(e).splitlines()[0][:120]})") from None
    try:
        return images.decode_many(len(paths), get, size, channels, expect, threads)
    except images.BadImage as e:
        raise UserError(f"data.path: {paths[e.index]} {e.reason}") from None


def size_bytes(cfg: DataConfig, seed: int) -> int:
    """What the training images take decoded: their count x the first one's decoded size."""
    tree = scan(cfg, seed)
    one = decode_files(tree.fs, tree.train[:1], images.hw(cfg.image_size), cfg.channels, None)
    return len(tree.train) * one[0].nbytes


def inspect(cfg: DataConfig, seed: int) -> StreamSource:
    """Streaming: the tree listed and split, and STREAM_STATS_SAMPLE training images (seeded) decoded for the
    channels, size, mean and std every Ray Data task then decodes to."""
    tree = scan(cfg, seed)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(tree.train), min(len(tree.train), STREAM_STATS_SAMPLE), replace=False))
    first = decode_files(tree.fs, tree.train[:1], images.hw(cfg.image_size), cfg.channels, None)
    x = decode_files(tree.fs, [tree.train[i] for i in pick], images.hw(cfg.image_size), first.shape[1],
                     first.shape[2:], images.driver_threads())
    kw = {"roots": tree.roots, "classes": tree.classes, "image_size": cfg.image_size, "channels": int(x.shape[1]),
          "expect": tuple(int(s) for s in x.shape[2:])}
    return StreamSource(tree.fs, tree.train, tree.val, None, None, tuple(int(s) for s in x.shape[1:]),
                        len(tree.classes), len(tree.train), len(tree.val), len(tree.train) * x[0].nbytes,
                        norm=images.stats(x, seed), classes=tree.classes, decode_kw=kw, kind="folder",
                        test=tree.test, n_test=len(tree.test),
                        val_source=splits.describe_val(cfg, seed, len(tree.val), tree.val_from),
                        test_source=splits.describe_test(cfg, len(tree.test), tree.test_from))


def read_stream(paths: list[str], src: StreamSource, cpus: float, concurrency: int, order):
    """A Ray Dataset of {x, y} for `paths`: files read and decoded by Ray Data tasks."""
    import ray.data

    ds = ray.data.read_binary_files(paths, filesystem=src.fs, include_paths=True, num_cpus=cpus,
                                    concurrency=concurrency, shuffle=order, file_extensions=None)
    return ds.map_batches(decode_batch, batch_format="pyarrow", num_cpus=cpus, concurrency=concurrency,
                          fn_kwargs=src.decode_kw)


def decode_batch(table: pa.Table, roots: list[str], classes: list[str], image_size, channels: int,
                 expect: tuple) -> dict:
    """Ray Data map task: {"bytes", "path"} rows -> {"x": uint8 (N, C, H, W), "y": class ids from the paths}."""
    paths = table.column("path").to_pylist()
    blobs = table.column("bytes").to_pylist()
    ids = {c: i for i, c in enumerate(classes)}
    y = np.empty(len(paths), np.int64)
    for i, p in enumerate(paths):
        root = max((r for r in roots if p.startswith(r.rstrip("/") + "/")), key=len, default=None)
        name = p[len(root.rstrip("/")) + 1:].split("/")[0] if root else None
        if name not in ids:
            raise UserError(f"data.path: {p} is not under a class folder of {', '.join(roots)}")
        y[i] = ids[name]
    try:
        x = images.decode_many(len(blobs), blobs.__getitem__, images.hw(image_size), channels, expect)
    except images.BadImage as e:
        raise UserError(f"data.path: {paths[e.index]} {e.reason}") from None
    return {"x": x, "y": y}
