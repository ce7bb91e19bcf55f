"""Class labels: integer class ids, or class names (strings, also dictionary-encoded), whose ids are their
sorted order over the training set (the list is recorded in the run as DataInfo.classes). A validation
label outside the training set's names is refused, never given a new id. Streaming string labels: the
driver reads the label column (only it) of every file up front (`stream_classes`), so every Ray Data task
maps names to the same ids.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raytrain.config import DataConfig
from raytrain.errors import UserError


def label_classes(col: pa.ChunkedArray, name: str) -> Optional[list]:
    """The sorted distinct names of a string label column (None for integer ids)."""
    import pyarrow.compute as pc  # imported when a label column is read (a run with no Ray skips it)

    col = plain(col)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return None
    classes = sorted(v for v in pc.unique(col).to_pylist() if v is not None)
    if len(classes) < 2:
        raise UserError(f"data.label: column {name!r} holds {len(classes)} class name(s) ({', '.join(classes)}); "
                        "a classifier needs at least 2 classes")
    return classes


def class_count(cfg: DataConfig, classes: Optional[list], where: str) -> Optional[int]:
    """len(classes), checked against data.num_classes when both are known."""
    if classes is None:
        return None
    if cfg.num_classes is not None and cfg.num_classes != len(classes):
        raise UserError(f"data.num_classes {cfg.num_classes}: {where} has {len(classes)} classes "
                        f"({', '.join(map(str, classes[:8]))}{', ...' if len(classes) > 8 else ''}); remove the key")
    return len(classes)


def stream_classes(fs, train: list[str], val: list[str], label: str) -> list:
    """The sorted names in the training files' label column (read alone, every file); a validation file
    holding another name is refused."""
    import pyarrow.compute as pc  # imported when a label column is read (a run with no Ray skips it)

    def names(path: str) -> set:
        with fs.open_input_file(path) as f:
            col = pq.read_table(f, columns=[label]).column(label)
        if col.null_count:
            raise UserError(f"data.label: column {label!r} has {col.null_count} null values in {path}")
        return set(pc.unique(plain(col)).to_pylist())

    with ThreadPoolExecutor(max_workers=16) as pool:
        found = list(pool.map(names, train + val))
    classes = sorted(set().union(*found[: len(train)]))
    if len(classes) < 2:
        raise UserError(f"data.label: column {label!r} holds {len(classes)} class name(s); a classifier needs at "
                        "least 2 classes")
    for path, seen in zip(val, found[len(train):]):
        if seen - set(classes):
            raise UserError(f"data.label: {path} holds {', '.join(map(repr, sorted(seen - set(classes))[:5]))}, not "
                            f"among the training set's {len(classes)} classes; add examples of it to the training "
                            "data or remove those rows")
    return classes


def plain(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A dictionary-encoded column as its values."""
    if pa.types.is_dictionary(col.type):
        return col.cast(col.type.value_type)
    return col


def labels(col: pa.ChunkedArray, name: str, classes: Optional[list] = None) -> np.ndarray:
    """int64 class ids: integer ids as they are (checked), names as their index in `classes`."""
    import pyarrow.compute as pc  # imported when a label column is read (a run with no Ray skips it)

    if col.null_count:
        raise UserError(f"data.label: column {name!r} has {col.null_count} null values")
    col = plain(col)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        if classes is None:
            raise UserError(f"data.label: column {name!r} holds class names but no class list is known here; map "
                            "them to integer ids first (or give the data as Parquet: raytrain maps them)")
        ids = pc.index_in(col, value_set=pa.array(classes, col.type))
        if ids.null_count:
            unknown = sorted(set(pc.filter(col, pc.is_null(ids)).to_pylist()))
            raise UserError(f"data.label: column {name!r} holds {', '.join(map(repr, unknown[:5]))}, not among the "
                            f"training set's {len(classes)} classes; add examples of it to the training data or "
                            "remove those rows")
        return ids.to_numpy().astype(np.int64)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise UserError(f"data.label: column {name!r} must hold integer class ids or class names (strings), not "
                        f"{col.type}")
    y = col.to_numpy()
    if pa.types.is_floating(col.type) and not np.all(np.mod(y, 1) == 0):
        raise UserError(f"data.label: column {name!r} holds non-integer values")
    if len(y) and y.min() < 0:
        raise UserError(f"data.label: column {name!r} holds negative class ids")
    return y.astype(np.int64)
