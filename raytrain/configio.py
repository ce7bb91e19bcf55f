"""Reading experiment YAML, applying `--set key.path=value` overrides, writing it back.

Overrides are applied to the raw mapping before validation, so they are validated exactly like the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from raytrain.config import Experiment
from raytrain.errors import UserError, format_validation_error


def read_yaml(path: Path) -> dict:
    """A YAML file's top-level mapping; one-line UserErrors for a missing file, bad syntax or a non-mapping."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: top level must be a mapping of keys")
    return raw


def set_dotted(raw: dict, key: str, value: Any, origin: str | None = None) -> dict:
    """Set `a.b.c` in a nested mapping (creating mappings on the way); `origin` names the culprit in errors."""
    node = raw
    parts = key.strip().split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"{origin or key}: {'.'.join(parts[: i + 1])} is not a mapping")
        node = child
    node[parts[-1]] = value
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `key.path=value` overrides (values parsed as YAML) to a nested mapping, in order."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item}: expected key.path=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise UserError(f"--set {item}: value is not valid YAML") from None
        set_dotted(raw, key, value, origin=f"--set {item}")
    return raw


def validate_experiment(raw: dict, source: str) -> Experiment:
    try:
        return Experiment.model_validate(raw)
    except ValidationError as e:
        raise UserError(format_validation_error(e, source)) from None


def load_experiment(path: str | Path, overrides: list[str] | None = None, extra_keys: tuple = ()) -> Experiment:
    """Read, override and validate an experiment YAML. `extra_keys` are top-level keys owned by
    another layer (e.g. `search`) and ignored here."""
    path = Path(path)
    raw = read_yaml(path)
    raw = {k: v for k, v in raw.items() if k not in extra_keys}
    source = f"{path}" + (" (with --set)" if overrides else "")
    return validate_experiment(apply_overrides(raw, list(overrides or [])), source)


def to_yaml(exp: Experiment) -> str:
    return yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False)
