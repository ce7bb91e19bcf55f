"""Run folder layout, checkpoint files, their integrity, and finding the newest readable one.

    <output>/<name>/<timestamp>/
        config.yaml  metrics.jsonl  result.json  [model.pt]
        train/checkpoint_<time>/state.pt + state.pt.sha256      (pipelines: stage_<k>.pt + .sha256 each)

Integrity is a content checksum written beside each state file and verified on load, on whatever
filesystem the checkpoint lives: Ray Train and Tune copy a checkpoint folder file by file (not
atomically), so a worker killed mid-copy leaves a folder whose checksum does not match, or has no
checksum yet. Payloads hold only tensors, numbers, strings and containers of them, so they load with
`torch.load(weights_only=True)`: a checkpoint carrying a pickled object is refused, not executed.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

import torch

from raytrain.errors import UserError
from raytrain.storage import Location

STATE_FILE = "state.pt"
RUN_STORAGE = "train"  # Ray Train's run name inside a run folder, and where in-process runs put checkpoints
CONFIG, METRICS, RESULT, EXPORT = "config.yaml", "metrics.jsonl", "result.json", "model.pt"


class CheckpointError(Exception):
    """A checkpoint file that is missing, torn, tampered with, or not weights-only."""


def stage_file(stage: int) -> str:
    return f"stage_{stage}.pt"


def new_dir_name() -> str:
    """The same `checkpoint_<time>` form Ray Train uses, so names sort by time in every mode."""
    return "checkpoint_" + datetime.now(timezone.utc).strftime("%Y-%m-%d_%H-%M-%S.%f")


def encode(state: dict, name: str = STATE_FILE) -> dict[str, bytes]:
    """The files of one state: `name` and `name.sha256` (the checksum written and read last)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    return {name: data, f"{name}.sha256": hashlib.sha256(data).hexdigest().encode()}


def write_files(directory: str | Path | Location, files: dict[str, bytes]) -> None:
    """Write encoded files into a checkpoint folder (a local path, or a Location on any storage), each
    checksum after every state file: a folder cut short by a crash never verifies."""
    from raytrain.storage import resolve

    loc = directory if isinstance(directory, Location) else resolve(str(directory))
    loc.makedirs()
    for name in sorted(files, key=lambda n: n.endswith(".sha256")):
        (loc / name).write_bytes(files[name])


def complete(loc: Location) -> bool:
    """Every state file in the folder has its checksum beside it (the copy finished; content unverified)."""
    names = {c.name for c in loc.children()}
    states = [n for n in names if n.endswith(".pt")]
    return bool(states) and all(f"{n}.sha256" in names for n in states)


def save_local(directory: str | Path, state: dict, name: str = STATE_FILE) -> None:
    """Write one state into a local checkpoint folder."""
    write_files(directory, encode(state, name))


def load_local(directory: str | Path, name: str = STATE_FILE) -> dict:
    """The verified state in a local checkpoint folder."""
    from raytrain.storage import resolve

    return load(resolve(str(directory)), name)


def decode(data: bytes, digest: Optional[str], where: str) -> dict:
    if digest is None:
        raise CheckpointError(f"{where}: no checksum (the write never finished)")
    if hashlib.sha256(data).hexdigest() != digest.strip():
        raise CheckpointError(f"{where}: checksum mismatch (torn or modified)")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # pickled objects, truncated archives: never executed, never trusted
        raise CheckpointError(f"{where}: unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None


def load(loc: Location, name: str = STATE_FILE) -> dict:
    """The verified state in checkpoint folder `loc` (CheckpointError if it cannot be trusted)."""
    try:
        data = (loc / name).read_bytes()
    except UserError as e:
        raise CheckpointError(f"{loc.uri}/{name}: missing ({str(e)[-80:]})") from None
    try:
        digest = (loc / f"{name}.sha256").read_text()
    except UserError:
        digest = None
    return decode(data, digest, f"{loc.uri}/{name}")


def checkpoint_dirs(storage: Location) -> list[Location]:
    """Checkpoint folders under a run's checkpoint storage (any filesystem), newest first, by listing it."""
    dirs = [c for c in storage.children(dirs_only=True) if c.name.startswith("checkpoint_")]
    return sorted(dirs, key=lambda c: c.name, reverse=True)


def in_storage(store: Location, ray_checkpoint) -> Location:
    """A checkpoint Ray or Tune reports, as the same-named folder of `store` (keeping its scheme and options)."""
    return store / PurePosixPath(ray_checkpoint.path).name


def candidates(registered: Optional[Location], storage: Optional[Location]) -> list[Location]:
    """Where to resume from, in order: the checkpoint Ray or Tune registered (if any), then the older
    ones found by listing its storage. Folders newer than the registered one were never registered (a
    copy interrupted by a crash) and are skipped."""
    if storage is None and registered is not None:
        storage = registered.parent
    listed = checkpoint_dirs(storage) if storage is not None else []
    if registered is None:
        return listed
    return [registered] + [c for c in listed if c.name < registered.name]


def load_first(cands: list[Location], name: str, agree: Callable[[bool], bool] = lambda ok: ok
               ) -> tuple[Optional[dict], Optional[Location]]:
    """The newest candidate whose `name` verifies, agreed by every rank (`agree` is an all-ranks AND,
    so pipeline stages never resume from different epochs); warns about each one skipped."""
    for c in cands:
        try:
            state, err = load(c, name), None
        except CheckpointError as e:
            state, err = None, e
        if agree(state is not None):
            return state, c
        if err is not None:
            warnings.warn(f"checkpoint {err}; trying the previous one")
    return None, None


def merged_model_state(loc: Location) -> tuple[dict, dict]:
    """(full-model state_dict, one stage's or the single state) from a checkpoint folder: pipeline
    stage shards are merged back into one ordinary state_dict."""
    names = {c.name for c in loc.children()}
    if STATE_FILE in names:
        state = load(loc)
        return dict(state["model"]), state
    first = load(loc, stage_file(0))
    model = {}
    for k in range(int(first["stages"])):
        model.update(load(loc, stage_file(k))["model"])
    return model, first
