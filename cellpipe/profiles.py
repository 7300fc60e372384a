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

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from cellpipe.config import Params
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


def _path_keys(model: type[BaseModel], prefix: str = "") -> frozenset[str]:
    """The dotted params keys of a schema's paths: config's ``_path`` fields, the ones with an alias (the
    option name params.yaml spells them by)."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys |= _path_keys(field.annotation, key + ".")
        elif field.alias:
            keys.add(key)
    return frozenset(keys)


PATH_KEYS = _path_keys(Params)  # the params keys that hold paths, as params.yaml spells them


def outside_made_absolute(value: Any, root: Path) -> Any:
    """A relative path that leaves ``root`` (``../shared/...``) as an absolute one; any other value as it is.

    An experiment that DVC runs in a copy of the repo (``dvc exp run --queue`` / ``--temp``: under
    ``.dvc/tmp/exps/``) resolves relative paths from that copy, where one that leaves the repo points
    nowhere. A path inside the repo stays relative: it must name the copy's own file (a stage's output).
    """
    if not isinstance(value, str) or os.path.isabs(value):
        return value
    if os.path.normpath(value).split(os.sep)[0] != os.pardir:
        return value
    return os.path.normpath(os.path.join(os.path.abspath(root), value))


def overrides(text: str, *, where: str = "profile", root: Path | None = None) -> list[str]:
    """The ``key=value`` arguments of ``dvc exp run -S`` that set a profile's values; with ``root`` (the repo),
    the paths of :data:`PATH_KEYS` that leave it made absolute (:func:`outside_made_absolute`)."""
    vals = values(text, where=where)
    if root is not None:
        vals = {k: outside_made_absolute(v, root) if k in PATH_KEYS else v for k, v in vals.items()}
    return [f"{key}={_hydra(value)}" for key, value in vals.items()]
