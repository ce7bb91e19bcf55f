"""What both integrations need: an epoch's numbers, and where a run or a search trial keeps its files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from raytrain import storage
from raytrain.storage import Location


def scalars(record) -> dict[str, float]:
    """Every number of the epoch's metrics.jsonl row (`record.metrics()`), by its key, except `epoch` (the
    step every tool plots against): losses, accuracies, lr, throughput, what callbacks added, and the final
    model's statistics. Strings (labels) and lists are left out; so are booleans."""
    return {k: float(v) for k, v in record.metrics().items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def trial_folder(ctx) -> Optional[Location]:
    """A search trial's folder in the search's storage (the trial's loop has no run folder: `ctx.run_dir` is
    None there): Tune's own folder for the trial, beside Tune's TensorBoard and CSV logs, or a multi-worker
    trial's <search>/trials/<id>. None outside a trial (a run has its folder), or where Ray does not say."""
    if ctx.run_dir is not None:
        return None
    from raytrain import _ray_compat

    found = _ray_compat.trial_storage()
    return storage.from_fs(*found) if found is not None else None


def copy_tree(src: Location, dst: Path) -> int:
    """Every file under `src` (any storage) into the local folder `dst`; returns how many."""
    n = 0
    for child in src.children():
        if child.is_dir():
            n += copy_tree(child, dst / child.name)
        else:
            dst.mkdir(parents=True, exist_ok=True)
            (dst / child.name).write_bytes(child.read_bytes())
            n += 1
    return n


def upload_tree(src: Path, dst: Location) -> None:
    """Every file under the local folder `src` to `dst` (any storage), each as one complete object."""
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        (dst / path.relative_to(src).as_posix()).write_bytes(path.read_bytes())
