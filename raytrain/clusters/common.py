"""What the cluster-file checks share: the one-line problem record, YAML loading, the kind of a file,
walking a document, and Kubernetes quantities."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml


@dataclass
class Problem:
    file: str
    path: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path or '<top>'}: {self.message} (fix: {self.fix})"


def load(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ValueError(f"not valid YAML{f' (line {mark.line + 1})' if mark else ''}") from None


def kind_of(doc: Any) -> str:
    if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
        return "kuberay"
    if isinstance(doc, dict) and "provider" in doc:
        return "launcher"
    return "unknown"


def walk(node: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, path + (i,))


def dotted(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def quantity(v) -> Optional[float]:
    """A Kubernetes quantity as a number of units ("4", 4, "500m" -> 0.5); None for memory-like values."""
    s = str(v).strip()
    try:
        return float(s[:-1]) / 1000 if s.endswith("m") else float(s)
    except ValueError:
        return None
