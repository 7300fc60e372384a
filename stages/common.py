"""Shared plumbing of the stage commands: params, progress bars, output writers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cellpipe.atomic import atomic_path
from cellpipe.errors import CellpipeError
from stages.schema import BUILTIN, validate_params

console = Console(stderr=True)
PARAMS_HELP = "params file (the pipeline's knobs, grouped per stage)"
DEFAULT_PARAMS = "params.yaml"


def load_params(path: str | Path, *sections: str, builtin: bool = False) -> dict[str, Any]:
    """Read and validate ``params.yaml``; return one section, several (by name) or all.

    A section a stage needs and the file lacks is an error naming both, not a
    ``KeyError`` later. With ``builtin``, a missing file at the default path means
    the built-in values of the sections (:data:`stages.schema.BUILTIN`), said in
    one log line: a model can be applied outside a repository.
    """
    path = Path(path)
    if not path.is_file() and builtin and str(path) == DEFAULT_PARAMS and all(s in BUILTIN for s in sections):
        chosen = {s: dict(BUILTIN[s]) for s in sections}
        log(f"no {path} here: built-in params {chosen}")
        return chosen[sections[0]] if len(sections) == 1 else chosen
    if not path.is_file():
        raise CellpipeError("params file is missing", where=str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CellpipeError("params file is not UTF-8 text", where=str(path)) from None
    except yaml.YAMLError as exc:
        raise CellpipeError(f"not valid YAML ({str(exc).splitlines()[0]})", where=str(path)) from None
    data = validate_params({} if data is None else data, where=str(path))
    missing = [s for s in sections if s not in data]
    if missing:
        held = ", ".join(data) if data else "no sections"
        raise CellpipeError(f"params section '{missing[0]}' is missing (the file holds {held})", where=str(path))
    if len(sections) == 1:
        return data[sections[0]]
    return {s: data[s] for s in sections} if sections else data


@contextmanager
def progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar driven by ``update(done, total)`` callbacks."""
    disable = os.environ.get("CELLPIPE_NO_PROGRESS") == "1"
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                  console=console, disable=disable, transient=False) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def log(message: str) -> None:
    console.print(f"[dim]cellpipe[/dim] {message}")


def write_parquet(df: pd.DataFrame, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)


def write_json(obj: Any, target: str | Path, indent: int | None = 2) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent) + "\n")


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise CellpipeError(f"{what} is missing", where=str(path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CellpipeError(f"not valid JSON ({exc.__class__.__name__})", where=str(path)) from None


def read_parquet(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise CellpipeError("table is missing (run the stage that writes it first)", where=str(path))
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise CellpipeError(f"unreadable Parquet ({exc.__class__.__name__})", where=str(path)) from None


def write_csv(df: pd.DataFrame, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        df.to_csv(tmp, index=False)
