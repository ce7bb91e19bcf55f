"""User-facing errors: one line, exit code 2, no traceback.

Anything the user can fix (a YAML key, a file, a column, a resource request) raises
`UserError`; the CLI prints `raytrain: <message>` and exits 2. Everything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

from typing import Any

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's input, reported as one line naming the culprit."""


EXIT_INTERRUPTED = 143  # 128 + SIGTERM, what a process stopped by SIGTERM conventionally exits with


class Interrupted(Exception):
    """Training stopped on a notice (SIGTERM) after writing a checkpoint at a step boundary; `--resume`
    continues from it. The message says where."""


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_error(exc: Any, source: str) -> str:
    """One line for a pydantic ValidationError: `source: key.path: message (got value)`.

    Only the first error is shown: fixing it and re-running is faster than reading
    a wall of errors, and the line stays greppable.
    """
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if not str(p).startswith("function-"))
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    more = len(exc.errors()) - 1
    suffix = f" (+{more} more)" if more else ""
    got = ""
    if first.get("type") not in ("missing", "extra_forbidden") and "input" in first:
        if not isinstance(first["input"], dict):
            got = f" (got {_short(first['input'])})"
    if first.get("type") == "extra_forbidden":
        msg = "unknown key"
        if loc == "search":  # `raytrain validate` or `train` given a search spec
            msg += f" in an experiment: this is a search spec, run `raytrain search {source}`"
    where = f"{loc}: " if loc else ""
    return f"{source}: {where}{msg}{got}{suffix}"
