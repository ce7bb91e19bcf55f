"""`raytrain clusters check FILE...`: cluster-launcher YAMLs through Ray's own config validator, KubeRay
manifests through the fields we rely on (and, given the CRDs, their OpenAPI schema, strictly), and
security lints on both. Every problem is one line: file, key path, what is wrong, how to fix it.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Any, Optional

from raytrain._ray_compat import autoscaler_util
from raytrain.clusters.common import Problem, dotted, kind_of, load, walk

RAY_PORTS = {8265: "dashboard", 6379: "GCS", 10001: "Ray client"}
OPEN = {"0.0.0.0/0", "::/0"}
SECRET_KEY = re.compile(r"(secret|password|passwd|access[_-]?key|private[_-]?key|credential|api[_-]?key|token)$", re.I)
SECRET_VALUE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY|AKIA[0-9A-Z]{16}|(aws_secret_access_key|password)\s*=\s*\S", re.I)
SECRET_REFS = {"secretName", "secretKeyRef", "secretRef", "ssh_private_key", "enableK8sTokenAuth"}  # names/paths, not secrets


def check_file(path: Path, crds: Optional[Path] = None) -> list[Problem]:
    name = str(path)
    try:
        doc = load(path)
    except FileNotFoundError:
        return [Problem(name, "", "file not found", "check the path")]
    except ValueError as e:
        return [Problem(name, "", str(e), "fix the YAML syntax")]
    kind = kind_of(doc)
    if kind == "launcher":
        problems = check_launcher(doc, name)
    elif kind == "kuberay":
        from raytrain.clusters.kuberay import check_manifest

        problems = check_manifest(doc, name, crds)
    else:
        return [Problem(name, "", "neither a Ray cluster-launcher config (no provider:) nor a KubeRay manifest "
                                  "(no apiVersion/kind)", "start from a file in clusters/")]
    return problems + security_lints(doc, name, kind)


def warnings_for(path: Path) -> list[str]:
    """Things that are valid but likely wrong (printed, exit code unchanged)."""
    try:
        doc = load(path)
    except (FileNotFoundError, ValueError):
        return []
    if kind_of(doc) != "kuberay":
        return []
    from raytrain.clusters.kuberay import local_output_warnings

    return local_output_warnings(doc, str(path))


# --------------------------------------------------------------------------- cluster launcher

def _prepared(config: dict) -> dict:
    """Ray's own preparation (defaults merged, node types filled), as `ray up` does before validating.
    The fake multi-node provider ships no defaults file in the wheel: fill what the schema needs."""
    util = autoscaler_util()
    if str(config.get("provider", {}).get("type", "")).startswith("fake_multinode"):
        merged = {"cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
                  "rsync_filter": [], "initialization_commands": [], **copy.deepcopy(config)}
        util.merge_setup_commands(merged)
        util.fill_node_type_min_max_workers(merged)
        return merged
    return util.prepare_config(copy.deepcopy(config))


def check_launcher(config: dict, name: str) -> list[Problem]:
    import jsonschema

    util = autoscaler_util()
    logging.getLogger("ray.autoscaler._private.util").setLevel(logging.WARNING)  # "setting max workers..." chatter
    try:
        util.validate_config(_prepared(config))
    except jsonschema.ValidationError as e:
        first = e.message.splitlines()[0][:200]
        return [Problem(name, dotted(e.absolute_path), first, "see Ray's cluster config reference "
                        "(docs.ray.io/en/latest/cluster/vms/references/ray-cluster-configuration.html)")]
    except Exception as e:  # Ray's cross-field checks raise ValueError / RuntimeError
        return [Problem(name, "", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", "follow Ray's message")]
    problems = []
    types = config.get("available_node_types", {})
    for tname, t in types.items():
        lo, hi = t.get("min_workers", 0), t.get("max_workers", config.get("max_workers", 0))
        if lo > hi:
            problems.append(Problem(name, f"available_node_types.{tname}.min_workers", f"{lo} > max_workers {hi}",
                                    "make min_workers <= max_workers"))
    return problems


# --------------------------------------------------------------------------- security lints

def _ports(rule: dict) -> Optional[set]:
    """Ports a firewall rule opens (None = all): AWS FromPort/ToPort, k8s ports[].port/endPort."""
    if "FromPort" in rule or "ToPort" in rule:
        lo, hi = int(rule.get("FromPort", -1)), int(rule.get("ToPort", -1))
        return None if lo < 0 else set(range(lo, hi + 1))
    if isinstance(rule.get("ports"), list) and rule["ports"]:
        opened = set()
        for p in rule["ports"]:
            if not isinstance(p, dict) or not isinstance(p.get("port"), int):
                return None  # named port or no port: assume it may be a Ray port
            opened |= set(range(p["port"], int(p.get("endPort", p["port"])) + 1))
        return opened
    return None


def security_lints(doc: Any, name: str, kind: str) -> list[Problem]:
    problems = []
    for path, node in walk(doc):
        is_rule = isinstance(node, dict) and any(k in node for k in ("FromPort", "ToPort", "IpRanges", "from"))
        if is_rule:  # an AWS IpPermission or a Kubernetes NetworkPolicy ingress rule
            if any(v in OPEN for _, v in walk(node) if isinstance(v, str)):
                opened = _ports(node)
                hit = sorted(RAY_PORTS) if opened is None else sorted(p for p in RAY_PORTS if p in opened)
                if hit:
                    which = ", ".join(f"{p} ({RAY_PORTS[p]})" for p in hit)
                    problems.append(Problem(name, dotted(path), f"open to the internet (0.0.0.0/0) on {which}",
                                            "restrict the CIDR to your VPN/bastion and reach the dashboard "
                                            "by `ray dashboard` or kubectl port-forward"))
        key = path[-1] if path else ""
        if isinstance(node, str) and node.strip():
            if isinstance(key, str) and SECRET_KEY.search(key) and key not in SECRET_REFS and not node.startswith(("${", "$(")):
                problems.append(Problem(name, dotted(path), "credential inline", "use the cloud's credential chain or a "
                                        "Kubernetes Secret (secretKeyRef), never a literal"))
            elif SECRET_VALUE.search(node) and not (isinstance(key, str) and key in SECRET_REFS):
                problems.append(Problem(name, dotted(path), "credential inline (key material in a value)",
                                        "move it to a secret store"))
            if re.search(r"--dashboard-host[= ]0\.0\.0\.0", node) and kind == "launcher":
                problems.append(Problem(name, dotted(path), "dashboard bound to all interfaces",
                                        "use --dashboard-host=127.0.0.1 and `ray dashboard CLUSTER.yaml`"))
            if re.search(r"RAY_AUTH_MODE=disabled", node):
                problems.append(Problem(name, dotted(path), "token authentication turned off", "remove RAY_AUTH_MODE=disabled"))
    return problems
