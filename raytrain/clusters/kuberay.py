"""KubeRay RayCluster / RayJob manifests: the fields raytrain relies on, and (given the CRDs) strict
validation against their OpenAPI schema, closed the way `kubectl --validate=strict` rejects unknown fields."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Optional

import yaml

from raytrain.clusters.common import Problem, dotted, quantity

CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}


def cluster_spec(doc: dict) -> tuple[dict, str]:
    """(the RayCluster spec, its key path) for a RayCluster or a RayJob."""
    spec = doc.get("spec") or {}
    if doc.get("kind") == "RayJob":
        return spec.get("rayClusterSpec") or {}, "spec.rayClusterSpec"
    return spec, "spec"


def check_manifest(doc: dict, name: str, crds: Optional[Path]) -> list[Problem]:
    problems: list[Problem] = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(Problem(name, "apiVersion", f"{doc.get('apiVersion')!r} is not ray.io/v1", "use apiVersion: ray.io/v1"))
    kind = doc.get("kind")
    if kind not in CRD_FILES:
        return problems + [Problem(name, "kind", f"{kind!r} is not RayCluster or RayJob", "use kind: RayCluster or RayJob")]
    if crds is not None:
        problems += strict_schema(doc, name, crds)
    spec, at = cluster_spec(doc)
    if kind == "RayJob" and not (doc.get("spec") or {}).get("entrypoint"):
        problems.append(Problem(name, "spec.entrypoint", "missing", "e.g. python -m raytrain search search/digits-quick.yaml"))
    if not isinstance(spec.get("headGroupSpec"), dict):
        problems.append(Problem(name, f"{at}.headGroupSpec", "missing", "add a head group (see clusters/kuberay-gpu.yaml)"))
    else:
        head = spec["headGroupSpec"]
        if head.get("serviceType") in ("LoadBalancer", "NodePort"):
            problems.append(Problem(name, f"{at}.headGroupSpec.serviceType", f"{head['serviceType']} exposes the "
                                    "dashboard (8265) and GCS (6379) outside the cluster", "use ClusterIP and kubectl port-forward"))
        if head.get("enableIngress"):
            problems.append(Problem(name, f"{at}.headGroupSpec.enableIngress", "publishes the dashboard through an Ingress",
                                    "remove it; use kubectl port-forward"))
        problems += _group(head, f"{at}.headGroupSpec", name)
    if (spec.get("authOptions") or {}).get("mode") == "disabled":
        problems.append(Problem(name, f"{at}.authOptions.mode", "token authentication turned off", "use mode: token"))
    groups = spec.get("workerGroupSpecs")
    if not isinstance(groups, list) or not groups:
        problems.append(Problem(name, f"{at}.workerGroupSpecs", "no worker groups", "add at least one (the node pools)"))
        return problems
    for i, g in enumerate(groups):
        where = f"{at}.workerGroupSpecs[{i}]"
        if not isinstance(g, dict):
            problems.append(Problem(name, where, "not a mapping", "see clusters/kuberay-gpu.yaml"))
            continue
        if not g.get("groupName"):
            problems.append(Problem(name, f"{where}.groupName", "missing", "name the group (it is the node pool)"))
        lo, n, hi = g.get("minReplicas", 0), g.get("replicas", 0), g.get("maxReplicas", 2**31)
        if isinstance(lo, int) and isinstance(hi, int) and isinstance(n, int) and not lo <= n <= hi:
            problems.append(Problem(name, where, f"replicas {n} outside minReplicas {lo} .. maxReplicas {hi}",
                                    "make minReplicas <= replicas <= maxReplicas"))
        problems += _group(g, where, name)
    return problems


def local_output_warnings(doc: dict, name: str) -> list[str]:
    """A RayJob that deletes its cluster when it ends but writes its results to a local path loses them."""
    spec = doc.get("spec") or {}
    if doc.get("kind") != "RayJob" or not spec.get("shutdownAfterJobFinishes"):
        return []
    entry = str(spec.get("entrypoint") or "")
    if "raytrain" not in entry or re.search(r"output=(s3|s3a|gs|gcs)://", entry):
        return []
    where = re.search(r"output=(\S+)", entry)
    return [f"{name}: spec.entrypoint: the job deletes its cluster when it ends (shutdownAfterJobFinishes) but writes "
            f"its output to the local path {where.group(1) if where else 'runs'}: every checkpoint and result is lost "
            "with the cluster (fix: --set output=s3://... or gs://...)"]


def _group(group: dict, where: str, name: str) -> list[Problem]:
    """rayStartParams must agree with the container's limits: Ray schedules on the former, Kubernetes
    enforces the latter; a mismatch either idles GPUs or lets Ray place work the pod cannot run."""
    problems = []
    params = group.get("rayStartParams") or {}
    containers = (((group.get("template") or {}).get("spec") or {}).get("containers")) or []
    if not containers:
        return [Problem(name, f"{where}.template.spec.containers", "missing", "add the ray container")]
    limits = ((containers[0].get("resources") or {}).get("limits")) or {}
    cpath = f"{where}.template.spec.containers[0].resources.limits"
    gpu_limit = quantity(limits.get("nvidia.com/gpu", 0)) or 0.0
    if "num-gpus" in params:
        want = quantity(params["num-gpus"])
        if want != gpu_limit:
            problems.append(Problem(name, f"{where}.rayStartParams.num-gpus", f"{params['num-gpus']} but {cpath}"
                                    f"[nvidia.com/gpu] is {gpu_limit:g}", "make them equal"))
    if "num-cpus" in params and "cpu" in limits:
        want, have = quantity(params["num-cpus"]), quantity(limits["cpu"])
        if want is not None and have is not None and want > have:
            problems.append(Problem(name, f"{where}.rayStartParams.num-cpus", f"{params['num-cpus']} exceeds {cpath}.cpu "
                                    f"{limits['cpu']}", "lower num-cpus or raise the limit"))
    return problems


@functools.lru_cache(maxsize=4)
def _closed_schema(crd_path: str) -> dict:
    # A CRD is megabytes of YAML: libyaml's loader where PyYAML has it (seconds less per check), else PyYAML's own.
    crd = yaml.load(Path(crd_path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return _close(version["schema"]["openAPIV3Schema"])


def _close(node):
    """Reject unknown fields like the API server's strict validation: close every object schema that
    lists properties and neither sets additionalProperties nor preserves unknown fields."""
    if isinstance(node, dict):
        node = {k: _close(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_close(v) for v in node]
    return node


def strict_schema(doc: dict, name: str, crds: Path) -> list[Problem]:
    import jsonschema

    crd = Path(crds) / CRD_FILES[doc["kind"]]
    if not crd.is_file():
        return [Problem(name, "", f"CRD {crd} not found", "pass --crds the folder holding ray.io_rayclusters.yaml and "
                                                          "ray.io_rayjobs.yaml")]
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    schema = {k: v for k, v in _closed_schema(str(crd)).items()}
    schema["properties"] = {k: v for k, v in schema.get("properties", {}).items() if k not in ("apiVersion", "kind", "metadata")}
    validator = jsonschema.Draft7Validator(schema)
    out = []
    for e in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))[:10]:
        out.append(Problem(name, dotted(e.absolute_path), e.message.splitlines()[0][:200],
                           f"match the KubeRay CRD ({crd.name})"))
    return out
