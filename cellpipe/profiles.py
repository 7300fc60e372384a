"""Profiles: ``profiles/NAME.yaml`` files of ``key: value`` lines, each applied as ``dvc exp run -S key=value``.

One reading of them for everything that applies a profile outside DVC (tests, benchmarks),
so it matches what ``./run.sh profile NAME`` passes: surrounding quotes dropped, the value
read as YAML.
"""

from __future__ import annotations

from typing import Any

import yaml


def values(text: str) -> dict[str, Any]:
    """Dotted key → value of each ``key: value`` line (blank lines and ``#`` comments skipped)."""
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, value = line.split(":", 1)
        out[key.strip()] = yaml.safe_load(value.strip().strip('"'))
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
