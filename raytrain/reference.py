"""docs/configuration.md: the experiment YAML and search-spec reference, generated from the pydantic schema.

    make docs                                  # = python -m raytrain.reference: rewrite docs/configuration.md
    python -m raytrain.reference --check       # exit 1 when the page and the schema disagree

Every key, its type (with its bounds), its default and its meaning come from the models themselves: the
meaning is the field's attribute docstring (`use_attribute_docstrings`), a section's introduction its class
docstring. A key added to the schema with a docstring is documented by rerunning this; `tests/test_docs.py`
fails while the page is stale.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

HEAD = """# Configuration reference

<!-- Generated from the pydantic schema by `make docs` (python -m raytrain.reference); do not edit by hand.
     tests/test_docs.py fails when this page and the schema disagree. -->

An experiment is one YAML file (`experiments/*.yaml`); a search spec is an experiment plus a `search:` block
(`search/*.yaml`). Both are validated against this schema before anything runs: an unknown key, a wrong type
or a value out of bounds is one line naming the key, and exit code 2. `--set key.path=value` (the CLI) and
`raytrain.load_experiment(path, ["key.path=value"])` (Python) override any key below; values are YAML.

Types: `a` \\| `b` is one of the listed values; `[lo, hi)` gives a number's bounds (square: included);
`mapping` is a YAML mapping. A key left out takes its default.
"""


def _bounds(field: FieldInfo) -> str:
    lo = hi = None
    for m in field.metadata:
        if isinstance(m, (at.Ge, at.Gt)):
            lo = ("[", m.ge) if isinstance(m, at.Ge) else ("(", m.gt)
        elif isinstance(m, (at.Le, at.Lt)):
            hi = (m.le, "]") if isinstance(m, at.Le) else (m.lt, ")")
    if lo and hi:
        return f" in {lo[0]}{lo[1]:g}, {hi[0]:g}{hi[1]}"
    if lo:
        return f" {'≥' if lo[0] == '[' else '>'} {lo[1]:g}"
    if hi:
        return f" {'≤' if hi[1] == ']' else '<'} {hi[0]:g}"
    return ""


NAMES = {str: "string", int: "int", float: "float", bool: "bool", Any: "any", type(None): "null", dict: "mapping",
         list: "list"}


def type_name(kind: Any) -> str:
    """A YAML user's name for an annotation: `auto` | bool, list of int, mapping of string to float, ..."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal:
        return " | ".join(f"`{json.dumps(a) if not isinstance(a, str) else a}`" for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in sorted(args, key=lambda a: a is type(None)))
    if origin is list:
        item = type_name(args[0])
        return f"list of ({item})" if " | " in item else f"list of {item}"
    if origin is tuple:
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin is dict:
        plain = args[1] is Any or typing.get_origin(args[1])
        return "mapping" if plain else f"mapping of string to {type_name(args[1])}"
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return "mapping"
    return NAMES.get(kind, getattr(kind, "__name__", str(kind)))


def _typed(field: FieldInfo) -> str:
    """The type with its bounds on the number, `| null` last: `int ≥ 2 | null`."""
    kind, args = field.annotation, typing.get_args(field.annotation)
    if typing.get_origin(kind) in (Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        inner = type_name(rest[0]) if len(rest) == 1 else " | ".join(type_name(a) for a in rest)
        return f"{inner}{_bounds(field)} | null"
    return type_name(kind) + _bounds(field)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return ""
    return f"`{value}`" if isinstance(value, str) else f"`{json.dumps(value)}`"


def _model_in(kind: Any):
    """The model a field holds (itself, or inside Optional), else None."""
    for k in (kind, *typing.get_args(kind)):
        if isinstance(k, type) and issubclass(k, BaseModel):
            return k
    return None


def _item_model(kind: Any):
    """The model a list field's items may be (`list[str | Model]`), else None."""
    if typing.get_origin(kind) is list:
        return _model_in(typing.get_args(kind)[0])
    return None


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, meaning) for every key, in schema order; a section's own row comes first
    when it has a meaning of its own."""
    out = []
    for name, field in model.model_fields.items():
        key, sub = f"{prefix}{name}", _model_in(field.annotation)
        meaning = " ".join(filter(None, [field.description, sub and sub.__dict__.get("__doc__")]))
        if sub is None or meaning:
            out.append((key, _cell(_typed(field)), _default(field), _cell(meaning)))
        if sub is not None:
            out += rows(sub, f"{key}.")
        elif _item_model(field.annotation) is not None:
            out += rows(_item_model(field.annotation), f"{key}[].")
    return out


def _table(model: type[BaseModel], prefix: str) -> list[str]:
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    return lines + [f"| `{k}` | {t} | {d} | {m} |" for k, t, d, m in rows(model, prefix)]


def _intro(model: type[BaseModel]) -> list[str]:
    doc = model.__dict__.get("__doc__")
    return [" ".join(doc.split()), ""] if doc else []


def page() -> str:
    from raytrain.config import Experiment
    from raytrain.tuner.spec import SearchConfig

    out = [HEAD, "## Experiment", "", *_intro(Experiment), "### Top level", ""]
    fields = Experiment.model_fields
    top = [n for n, f in fields.items() if _model_in(f.annotation) is None]
    top += [f"{n}[].{k}" for n, f in fields.items() if _item_model(f.annotation)
            for k in _item_model(f.annotation).model_fields]
    out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    out += [f"| `{k}` | {t} | {d} | {m} |" for k, t, d, m in rows(Experiment) if k in top]
    for name, field in fields.items():
        sub = _model_in(field.annotation)
        if sub is not None:
            out += ["", f"### `{name}`", "", *_intro(sub), *_table(sub, f"{name}.")]
    out += ["", "## Search spec: the `search:` block", "",
            "A search spec is an experiment (every key above) plus this block; `raytrain search SPEC.yaml`.", "",
            *_intro(SearchConfig), *_table(SearchConfig, "search.")]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    target = Path(paths[0]) if paths else PAGE
    text = page()
    if check:
        fresh = target.is_file() and target.read_text() == text
        print(f"{target}: {'up to date' if fresh else 'stale: run make docs'}")
        return 0 if fresh else 1
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
