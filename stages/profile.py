"""``cellpipe profile``: a profile's ``-S`` arguments for ``dvc exp run`` (what ``./run.sh profile NAME`` passes)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cellpipe import profiles
from cellpipe.errors import CellpipeError


def show(
    name: str = typer.Argument(..., help="a profile name (profiles/NAME.yaml) or the path of a profile file"),
    null: bool = typer.Option(False, "--null", help="separate the arguments with NUL bytes instead of newlines (for scripts)"),
    absolute: bool = typer.Option(
        False,
        "--absolute",
        help="data paths that leave the repo (../…) made absolute, for dvc exp run --queue/--temp (which run in a copy)",
    ),
) -> None:
    """Print ``key=value`` for each line of the profile, in the syntax of ``dvc exp run -S``."""
    path = Path(name) if name.endswith((".yaml", ".yml")) or "/" in name else Path("profiles") / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path("profiles").glob("*.yaml"))
        raise CellpipeError(f"no such profile (known: {', '.join(known) or 'none here'})", where=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CellpipeError("profile is not UTF-8 text", where=str(path)) from None
    sep = "\0" if null else "\n"
    args = profiles.overrides(text, where=str(path), root=Path.cwd() if absolute else None)
    sys.stdout.write("".join(arg + sep for arg in args))
