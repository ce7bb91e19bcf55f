"""The three splits and where each comes from, said in words every summary repeats (result.json, evaluate).

train and validation are what a run (and every search trial, and early stopping) learns and decides on; the
test set, where a dataset has one, is read once at the end of a run and touches no decision. Validation is a
seeded hold-out of the training data (`data.val_fraction`: the same rows for the same seed, on every path that
prepares the data, `raytrain evaluate` included), or a set of its own (`data.val_path`, an ImageFolder tree's
`val/`). The test set is MNIST's official 10,000 images, `data.test_path`, or an ImageFolder tree's `test/`;
digits, and Parquet without `data.test_path`, have none.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from raytrain.config import DataConfig
from raytrain.errors import UserError


def hold_out(n: int, val_fraction: float, seed: int, what: str = "examples") -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into `n` examples: `round(n * val_fraction)` (at least 1) of a seeded permutation
    held out, the rest trained on; disjoint, together all of them, stratified by nothing."""
    n_val = max(1, int(round(n * val_fraction)))
    if n - n_val < 1:
        raise UserError(f"data.val_fraction {val_fraction} leaves no training {what} out of {n}")
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_val:], perm[:n_val]


def describe_val(cfg: DataConfig, seed: int, n_val: int, folder: Optional[str] = None,
               files: Optional[tuple[int, int]] = None) -> str:
    """Where the validation split comes from. `folder`: an ImageFolder tree's own val/ folder; `files`:
    (held out, of) whole files of a streamed Parquet dataset."""
    if cfg.val_path:
        return f"data.val_path {cfg.val_path} ({n_val:,})"
    if folder:
        return f"{folder} ({n_val:,})"
    if files:
        return f"{n_val:,} in {files[0]} of the {files[1]} files of data.path {cfg.path}, held out (seed {seed})"
    of = {"mnist": "MNIST train", "digits": "sklearn digits"}.get(cfg.dataset, f"data.path {cfg.path}")
    return f"{n_val:,} held out of {of} (seed {seed})"


def describe_test(cfg: DataConfig, n_test: int, folder: Optional[str] = None) -> str:
    """Where the test split comes from, or why there is none."""
    if cfg.dataset == "mnist":
        return f"MNIST official test set ({n_test:,})"
    if cfg.test_path:
        return f"data.test_path {cfg.test_path} ({n_test:,})"
    if folder:
        return f"{folder} ({n_test:,})"
    if cfg.dataset == "digits":
        return "none: sklearn digits has no test set"
    return "none: no data.test_path"
