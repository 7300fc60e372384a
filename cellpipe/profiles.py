"""Profiles: ``profiles/NAME.yaml`` files of ``key: value`` lines, each applied as ``dvc exp run -S key=value``.

The one reading of them, for ``./run.sh profile NAME`` (through ``cellpipe profile``) and
for everything that applies a profile outside DVC (tests, benchmarks), so the two can
never disagree. A line is ``dotted.key: value``, the value read as YAML (a trailing
``# comment`` dropped, anchors refused); indentation and CRLF line ends are ignored;
a quoted flow list (``"[0, 1]"``, as older profiles wrote them for the shell) is a list.
:func:`overrides` writes each value back in the syntax of DVC's ``-S`` (Hydra's override
grammar), strings quoted, so a path with spaces or quotes stays one value.
"""

from __future__ import annotations

from typing import Any

import yaml

from cellpipe.errors import CellpipeError
from cellpipe.params_file import parse_yaml


def values(text: str, *, where: str = "profile") -> dict[str, Any]:
    """Dotted key → value of each ``key: value`` line (blank lines and ``#`` comments skipped)."""
    out = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or not key or any(c.isspace() for c in key):
            raise CellpipeError(f"line {n}: expected 'dotted.key: value', got {raw.strip()[:80]!r}", where=where)
        try:
            parsed = parse_yaml(value) if value.strip() else None
            if isinstance(parsed, str) and parsed.strip().startswith(("[", "{")):
                parsed = parse_yaml(parsed)
        except yaml.YAMLError as exc:
            raise CellpipeError(f"line {n}: {key}: not a YAML value ({str(exc).splitlines()[0][:120]})", where=where) from None
        out[key] = parsed
    return out


def apply(params: dict, text: str) -> dict[str, Any]:
    """Set a profile's values in a params mapping (in place); returns what it set."""
    applied = values(text)
    for key, value in applied.items():
        *parents, leaf = key.split(".")
        node = params
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return applied


def _hydra(value: Any) -> str:
    """``value`` in Hydra's override grammar (what ``dvc exp run -S key=value`` parses)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_hydra(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_hydra(v)}" for k, v in value.items()) + "}"
    raise CellpipeError(f"cannot pass a {type(value).__name__} value to dvc exp run -S")


def overrides(text: str, *, where: str = "profile") -> list[str]:
    """The ``key=value`` arguments of ``dvc exp run -S`` that set a profile's values."""
    return [f"{key}={_hydra(value)}" for key, value in values(text, where=where).items()]
