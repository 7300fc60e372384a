"""Reading and writing the pipeline's files: atomic writes, one-line errors on bad reads.

Every output goes through :func:`cellpipe.atomic.atomic_path`, so a failing or killed
stage leaves the previous file or none, never a truncated one DVC would cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from cellpipe.atomic import atomic_path
from cellpipe.errors import CellpipeError


def write_json(obj: Any, target: str | Path, indent: int | None = 2) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent) + "\n")


def write_parquet(df: pd.DataFrame, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)


def write_csv(df: pd.DataFrame, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        df.to_csv(tmp, index=False)


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
