"""File names from data, and paths stored inside output files.

Image ids (``train.csv``), COCO ``file_name``s and test file names are data: joined to a
folder they must name a file *in* that folder, never ``../x`` or ``/etc/x``.

Outputs that refer to images (``images.parquet``, the COCO JSONs) store each path
relative to the folder of the file that holds it, so a stage reads the same images
whatever directory it runs from, and a repository moved or cloned elsewhere keeps
valid outputs (DVC would reuse them). A path the user gave as absolute stays absolute.
"""

from __future__ import annotations

import os
from pathlib import Path

from cellpipe.errors import CellpipeError

MAX_NAME_BYTES = 240  # file systems allow 255 bytes per name; room for a suffix (.png, .parquet)


def cut(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was: an error message never echoes a whole megabyte."""
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text):,} characters)"


def preview(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut (:func:`cut`)."""
    return cut(repr(value), limit)


def check_name(name: str, *, what: str, where: str) -> str:
    """``name`` if it is a plain file name in its folder; else a one-line error naming it."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
        raise CellpipeError(
            f"{what} {preview(name)} is not a plain name (no '/', '\\', '..' or leading '.'): "
            "it would become a path outside its folder",
            where=where,
        )
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise CellpipeError(
            f"{what} {preview(name, 40)} is {len(name.encode('utf-8', 'surrogatepass'))} bytes long: file names are "
            f"limited to 255 bytes, so no file can carry it (at most {MAX_NAME_BYTES})",
            where=where,
        )
    return name


def stored(path: str | os.PathLike[str], holder: str | os.PathLike[str]) -> str:
    """How ``path`` (absolute, or relative to the working directory) is written into ``holder``."""
    path = Path(path)
    if path.is_absolute():
        return str(path)
    return Path(os.path.relpath(path, Path(holder).parent)).as_posix()


def resolve(value: str, holder: str | os.PathLike[str]) -> Path:
    """The path a ``stored`` value in ``holder`` refers to (relative to the working directory or absolute)."""
    p = Path(value)
    return p if p.is_absolute() else Path(holder).parent / p


def moved(value: str, source: str | os.PathLike[str], target: str | os.PathLike[str]) -> str:
    """A path stored in ``source`` re-expressed for storing in ``target``."""
    return stored(resolve(value, source), target)
