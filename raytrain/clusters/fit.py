"""`raytrain clusters fit SPEC.yaml CLUSTER.yaml`: where a run's (or each search trial's) workers land.

A worker is a bundle {CPU, GPU, custom pool resources}; a node pool holds floor(have / need) of them
per node, times its maximum node count. Train packs a trial's workers onto as few nodes as it can but
may spread them, so trials at once = worker slots at max scale // workers per trial. An elastic run
(`parallel.workers: [min, max]`) fits once `min` workers do, and says how far it can grow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from raytrain.clusters.common import kind_of, load, quantity
from raytrain.clusters.kuberay import cluster_spec
from raytrain.errors import UserError


@dataclass
class Pool:
    name: str
    resources: dict[str, float]
    max_nodes: int


def launcher_pools(config: dict) -> list[Pool]:
    cap = int(config.get("max_workers", 2))
    head = config.get("head_node_type")
    pools = []
    for name, t in (config.get("available_node_types") or {}).items():
        n = 1 if name == head else min(int(t.get("max_workers", cap)), cap)
        pools.append(Pool(name + (" (head)" if name == head else ""), {k: float(v) for k, v in (t.get("resources") or {}).items()}, n))
    return pools


def _group_resources(group: dict) -> dict[str, float]:
    """What Ray on this pod advertises: rayStartParams first, else the container limits (as KubeRay does)."""
    import json

    params = group.get("rayStartParams") or {}
    containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    res = {"CPU": quantity(params.get("num-cpus", limits.get("cpu", 0))) or 0.0,
           "GPU": quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0))) or 0.0}
    custom = params.get("resources")
    if custom:
        text = str(custom).strip().strip('"').replace('\\"', '"')
        res.update({k: float(v) for k, v in json.loads(text).items()})
    return res


def kuberay_pools(doc: dict) -> list[Pool]:
    spec, _ = cluster_spec(doc)
    pools = [Pool("head", _group_resources(spec.get("headGroupSpec") or {}), 1)]
    for g in spec.get("workerGroupSpecs") or []:
        pools.append(Pool(g.get("groupName", "?"), _group_resources(g), int(g.get("maxReplicas", g.get("replicas", 0)))))
    return pools


def _need(workers_spec: str) -> tuple[tuple[int, int], dict[str, float], int, str]:
    """((fewest, most) workers per run, resources per worker, runs wanted, label) for an experiment or a search
    spec (a run's range is its `parallel.workers: [min, max]`; a trial's is its fixed count)."""
    from raytrain.configio import load_experiment

    path = Path(workers_spec)
    raw = load(path) if path.is_file() else None
    if isinstance(raw, dict) and "search" in raw:
        from raytrain.tuner.spec import load_spec

        spec = load_spec(path, [])
        t = spec.search.trial
        return (t.workers, t.workers), t.bundle(), spec.n_trials(), f"each of {spec.n_trials()} trials"
    p = load_experiment(path).parallel
    return (p.min_workers, p.max_workers), p.bundle(), 1, "the run"


def per_node(pool: Pool, need: dict[str, float]) -> tuple[int, Optional[str]]:
    """Workers one node of `pool` holds, and why none when 0."""
    counts = []
    for key, amount in need.items():
        if amount <= 0:
            continue
        have = pool.resources.get(key, 0.0)
        if have < amount:
            return 0, f"needs {key} {amount:g} per worker, a node has {have:g}"
        counts.append(int(have / amount + 1e-9))
    return (min(counts) if counts else 0), None


def fit(spec_path: Path, cluster_path: Path) -> tuple[bool, list[str]]:
    (workers, most), need, runs, label = _need(spec_path)
    doc = load(cluster_path)
    kind = kind_of(doc)
    if kind == "unknown":
        raise UserError(f"{cluster_path}: neither a cluster-launcher config nor a KubeRay manifest")
    pools = launcher_pools(doc) if kind == "launcher" else kuberay_pools(doc)
    bundle = ", ".join(f"{k} {v:g}" for k, v in need.items())
    count = f"{workers} to {most} (elastic)" if most > workers else f"{workers}"
    lines = [f"{spec_path}: {label} needs {count} worker(s) x {{{bundle}}}"]
    slots = 0
    for pool in pools:
        n, why = per_node(pool, need)
        if n:
            slots += n * pool.max_nodes
            lines.append(f"  {pool.name:<22} fits: {n} worker(s)/node x {pool.max_nodes} node(s) max = {n * pool.max_nodes}")
        else:
            lines.append(f"  {pool.name:<22} no: {why}")
    at_once = slots // workers
    if at_once == 0:
        biggest = max((per_node(p, need)[0] * p.max_nodes for p in pools), default=0)
        least = f"at least {workers} worker(s) (parallel.workers min)" if most > workers else f"{workers} worker(s)"
        lines.append(f"does not fit: {least} per run but the cluster holds {slots} at max scale "
                     f"(largest pool: {biggest}); lower parallel.workers or add a pool")
        return False, lines
    if most > workers:  # one elastic run: it starts at `workers` and grows while slots are free
        grown = min(most, slots)
        lines.append(f"at max scale: {slots} worker slot(s) -> the run starts once {workers} fit and grows to "
                     f"{grown} of {most}" + ("" if grown == most else f" (parallel.workers max {most} never fits)"))
        return True, lines
    lines.append(f"at max scale: {slots} worker slot(s) -> {min(at_once, runs)} of {runs} run(s) at once"
                 + (f" ({at_once} would fit)" if at_once > runs else ""))
    return True, lines
