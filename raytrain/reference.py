"""The README's experiment-YAML reference, generated from the pydantic schema (its field docstrings).

    python -m raytrain.reference README.md     # rewrite the table between the reference markers

`tests/test_docs.py` fails when the README's table and the schema disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from raytrain.config import Experiment

START, END = "<!-- reference:start -->", "<!-- reference:end -->"


def _default(field) -> str:
    if field.default_factory is not None:
        return f"`{json.dumps(field.default_factory())}`"
    value = field.default
    if isinstance(value, BaseModel):
        return ""
    return f"`{'null' if value is None else json.dumps(value) if not isinstance(value, str) else value}`"


def rows(model: type[BaseModel] = Experiment, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, meaning) for every leaf key, in schema order."""
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out += rows(kind, f"{key}.")
            continue
        doc = " ".join((field.description or "").split()).replace("|", "\\|")
        out.append((key, _default(field), doc))
    return out


def table() -> str:
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{k}` | {d} | {m} |" for k, d, m in rows()]
    return "\n".join(lines)


def section(text: str) -> str:
    """The text between the markers."""
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def write(readme: Path) -> None:
    text = readme.read_text()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(f"{head}{START}\n{table()}\n{END}{tail}")


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md"))
